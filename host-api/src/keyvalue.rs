//! `wasi:keyvalue/store` + `atomics` on a durable per-partition store.
//!
//! One [`KvStore`] (a `redb` file: crash-safe copy-on-write B-trees, every commit
//! fsynced) per sandbox partition holds the data of all its deployments. Each deployment
//! sees only its own namespace through a [`KvScope`]; buckets are namespaces inside that.
//! The partition's storage quota counts every key and value byte and is checked inside
//! the same write transaction that changes the data, so concurrent instances cannot
//! overshoot it together.
//!
//! Nothing here blocks an async worker: the host bindings are async; reads run on the
//! blocking pool, and writes go to the store's writer thread, which applies every write
//! queued at that moment in one transaction and commits it with one fsync (group
//! commit). A write is acknowledged to its guest only after the commit that carries it
//! is durable; a failed commit fails every write in it.

use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::WasmgateCtxView;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use wasmtime::component::Resource;

/// (namespace, bucket, key) -> value
const DATA: TableDefinition<(&str, &str, &str), &[u8]> = TableDefinition::new("data");
/// Bytes accounted against the quota, one row under [`USAGE_KEY`].
const USAGE: TableDefinition<&str, u64> = TableDefinition::new("usage");
const USAGE_KEY: &str = "total";

/// Keys longer than this are refused: they are identifiers, not payloads.
pub const MAX_KEY_BYTES: usize = 4096;
/// Bucket names longer than this are refused.
pub const MAX_BUCKET_BYTES: usize = 256;
/// `list-keys` returns at most this many keys per page.
const LIST_PAGE: usize = 1000;
/// Writes waiting for the writer thread; more wait for room (back-pressure on guests).
const WRITE_QUEUE: usize = 1024;
/// Most writes one commit carries.
const MAX_BATCH: usize = 256;

/// Failures opening or using a partition's store.
#[derive(Debug, thiserror::Error)]
pub enum KvStoreError {
    #[error("cannot open key-value store {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: Box<redb::Error>,
    },
    #[error("key-value store I/O failed: {0}")]
    Storage(String),
}

fn storage<E: Into<redb::Error>>(err: E) -> KvStoreError {
    KvStoreError::Storage(err.into().to_string())
}

/// A partition's durable key-value store with its quota.
pub struct KvStore {
    db: Arc<Database>,
    /// Shared with the writer thread, which reads it for every batch: a reloaded
    /// configuration may change it while the store stays open.
    quota_bytes: Arc<AtomicU64>,
    path: PathBuf,
    /// `None` only while dropping, so the writer sees the queue close.
    writes: Option<mpsc::Sender<Write>>,
    writer: Option<std::thread::JoinHandle<()>>,
}

/// A change to one key, as the writer thread applies it.
#[derive(Debug)]
enum Change {
    Set(Vec<u8>),
    Delete,
    Increment(u64),
}

/// One queued write and where its outcome goes once committed.
struct Write {
    namespace: Arc<str>,
    bucket: String,
    key: String,
    change: Change,
    /// The counter's new value for `Increment`, else 0.
    done: oneshot::Sender<Result<u64, KvError>>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("path", &self.path)
            .field("quota_bytes", &self.quota_bytes())
            .finish()
    }
}

impl KvStore {
    /// Opens (or creates) the store at `path`; `quota_bytes` bounds the sum of all key
    /// and value sizes across every namespace.
    pub fn open(path: &Path, quota_bytes: u64) -> Result<Arc<Self>, KvStoreError> {
        let open_err = |source: redb::Error| KvStoreError::Open {
            path: path.to_owned(),
            source: Box::new(source),
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| open_err(redb::Error::Io(e)))?;
        }
        let db = Database::create(path).map_err(|e| open_err(e.into()))?;
        // Create both tables up front so that readers never see "table does not exist".
        let txn = db.begin_write().map_err(|e| open_err(e.into()))?;
        txn.open_table(DATA).map_err(|e| open_err(e.into()))?;
        txn.open_table(USAGE).map_err(|e| open_err(e.into()))?;
        txn.commit().map_err(|e| open_err(e.into()))?;
        let db = Arc::new(db);
        let (writes, queue) = mpsc::channel(WRITE_QUEUE);
        let quota_bytes = Arc::new(AtomicU64::new(quota_bytes));
        let writer = {
            let (db, quota) = (db.clone(), quota_bytes.clone());
            std::thread::Builder::new()
                .name("wasmgate-kv".into())
                .spawn(move || write_loop(&db, &quota, queue))
                .map_err(|e| open_err(redb::Error::Io(e)))?
        };
        Ok(Arc::new(Self {
            db,
            quota_bytes,
            path: path.to_owned(),
            writes: Some(writes),
            writer: Some(writer),
        }))
    }

    /// The namespace of one deployment.
    pub fn scope(self: &Arc<Self>, namespace: &str) -> KvScope {
        KvScope {
            store: self.clone(),
            namespace: namespace.into(),
        }
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes.load(Ordering::Relaxed)
    }

    /// Changes the quota for writes committed from now on. Data already stored stays
    /// when it is over a lowered quota; only writes that grow the data are refused.
    pub fn set_quota_bytes(&self, quota_bytes: u64) {
        self.quota_bytes.store(quota_bytes, Ordering::Relaxed);
    }

    /// Bytes currently counted against the quota.
    pub fn used_bytes(&self) -> Result<u64, KvStoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        recorded_usage(&txn.open_table(USAGE).map_err(storage)?)
    }

    /// Deletes every key of `namespace` (a deployment that left the device).
    pub fn remove_namespace(&self, namespace: &str) -> Result<u64, KvStoreError> {
        let txn = self.db.begin_write().map_err(storage)?;
        let mut freed = 0u64;
        {
            let mut data = txn.open_table(DATA).map_err(storage)?;
            let mut doomed = Vec::new();
            for entry in data.range((namespace, "", "")..).map_err(storage)? {
                let (k, v) = entry.map_err(storage)?;
                let (ns, bucket, key) = k.value();
                if ns != namespace {
                    break;
                }
                freed += entry_cost(bucket, key, v.value().len());
                doomed.push((bucket.to_owned(), key.to_owned()));
            }
            for (bucket, key) in &doomed {
                data.remove((namespace, bucket.as_str(), key.as_str()))
                    .map_err(storage)?;
            }
            let mut usage = txn.open_table(USAGE).map_err(storage)?;
            let used = recorded_usage(&usage)?;
            usage
                .insert(USAGE_KEY, used.saturating_sub(freed))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(freed)
    }
}

impl Drop for KvStore {
    fn drop(&mut self) {
        // Closing the queue ends the writer once it committed what is queued; waiting
        // for it releases the database file before a reopen.
        self.writes.take();
        if let Some(writer) = self.writer.take() {
            join_off_the_async_workers(writer);
        }
    }
}

/// Waits for `thread` (one last commit, an fsync). The last handle of a store is often
/// released on an async worker (a partition removed by a reload): there the wait goes
/// through `block_in_place`, so that the worker's other tasks move to another thread
/// instead of waiting with it.
fn join_off_the_async_workers(thread: std::thread::JoinHandle<()>) {
    use tokio::runtime::{Handle, RuntimeFlavor};
    let on_multi_thread_worker =
        Handle::try_current().is_ok_and(|h| h.runtime_flavor() == RuntimeFlavor::MultiThread);
    if on_multi_thread_worker {
        tokio::task::block_in_place(|| {
            let _ = thread.join();
        });
    } else {
        let _ = thread.join();
    }
}

/// The writer thread: takes every write queued, applies them in one transaction in
/// queue order, commits once, then acknowledges each.
fn write_loop(db: &Database, quota: &AtomicU64, mut queue: mpsc::Receiver<Write>) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = queue.blocking_recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match queue.try_recv() {
                Ok(write) => batch.push(write),
                Err(_) => break,
            }
        }
        let outcomes = commit_batch(db, quota.load(Ordering::Relaxed), &batch);
        for (write, outcome) in batch.drain(..).zip(outcomes) {
            // A guest that went away no longer waits for its answer.
            let _ = write.done.send(outcome);
        }
    }
}

/// Applies `batch` in one transaction. A write refused by its own rules (quota, not a
/// counter) changes nothing and fails alone; a storage failure fails the whole batch.
fn commit_batch(db: &Database, quota: u64, batch: &[Write]) -> Vec<Result<u64, KvError>> {
    let fail_all = |err: KvStoreError| {
        let message = err.to_string();
        batch
            .iter()
            .map(|_| Err(KvError::Store(KvStoreError::Storage(message.clone()))))
            .collect()
    };
    let txn = match db.begin_write() {
        Ok(txn) => txn,
        Err(err) => return fail_all(storage(err)),
    };
    let mut outcomes = Vec::with_capacity(batch.len());
    for write in batch {
        match apply(&txn, quota, write) {
            Err(KvError::Store(err)) => return fail_all(err),
            outcome => outcomes.push(outcome),
        }
    }
    match txn.commit() {
        Ok(()) => outcomes,
        Err(err) => fail_all(storage(err)),
    }
}

/// One write inside the batch's transaction.
fn apply(txn: &redb::WriteTransaction, quota: u64, write: &Write) -> Result<u64, KvError> {
    let (bucket, key) = (write.bucket.as_str(), write.key.as_str());
    let mut counter = 0;
    update(
        txn,
        quota,
        (&write.namespace, bucket, key),
        |old| match &write.change {
            Change::Set(value) => Ok(Some(value.clone())),
            Change::Delete => Ok(None),
            Change::Increment(delta) => {
                let current = match old {
                    None => 0,
                    Some(bytes) => std::str::from_utf8(bytes)
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| KvError::NotACounter { key: key.into() })?,
                };
                counter = current
                    .checked_add(*delta)
                    .ok_or_else(|| KvError::Overflow { key: key.into() })?;
                Ok(Some(counter.to_string().into_bytes()))
            }
        },
    )?;
    Ok(counter)
}

/// Replaces the value at `id` with what `change` returns, enforcing the quota. Fails
/// before touching the tables when `change` or the quota refuses.
fn update(
    txn: &redb::WriteTransaction,
    quota: u64,
    id: (&str, &str, &str),
    change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, KvError>,
) -> Result<(), KvError> {
    let (_, bucket, key) = id;
    let mut data = txn.open_table(DATA).map_err(storage)?;
    let old = data.get(id).map_err(storage)?.map(|v| v.value().to_vec());
    let new = change(old.as_deref())?;
    let old_cost = old.as_ref().map_or(0, |v| entry_cost(bucket, key, v.len()));
    let new_cost = new.as_ref().map_or(0, |v| entry_cost(bucket, key, v.len()));
    let mut usage = txn.open_table(USAGE).map_err(storage)?;
    let used = recorded_usage(&usage)?;
    let after = used.saturating_sub(old_cost) + new_cost;
    if new_cost > old_cost && after > quota {
        return Err(KvError::QuotaExceeded {
            used,
            quota,
            needed: new_cost - old_cost,
        });
    }
    match new {
        Some(value) => {
            data.insert(id, value.as_slice()).map_err(storage)?;
        }
        None => {
            data.remove(id).map_err(storage)?;
        }
    }
    usage.insert(USAGE_KEY, after).map_err(storage)?;
    Ok(())
}

/// The bytes the usage table records (0 for a new store).
fn recorded_usage(usage: &impl ReadableTable<&'static str, u64>) -> Result<u64, KvStoreError> {
    Ok(usage
        .get(USAGE_KEY)
        .map_err(storage)?
        .map(|v| v.value())
        .unwrap_or(0))
}

/// What one entry costs against the quota.
fn entry_cost(bucket: &str, key: &str, value_len: usize) -> u64 {
    (bucket.len() + key.len() + value_len) as u64
}

/// A deployment's view of its partition's store.
#[derive(Debug, Clone)]
pub struct KvScope {
    store: Arc<KvStore>,
    namespace: Arc<str>,
}

/// Errors surfaced to guests as `wasi:keyvalue/store.error`.
#[derive(Debug, thiserror::Error)]
pub enum KvError {
    #[error("no key-value store is available to this component")]
    AccessDenied,
    #[error("invalid bucket name: {0}")]
    InvalidBucket(String),
    #[error("key is {len} bytes, the limit is {MAX_KEY_BYTES}")]
    KeyTooLong { len: usize },
    #[error(
        "storage quota exceeded: the partition uses {used} of {quota} bytes and this write needs {needed} more"
    )]
    QuotaExceeded { used: u64, quota: u64, needed: u64 },
    #[error("value of key {key:?} is not a decimal u64, so it cannot be incremented")]
    NotACounter { key: String },
    #[error("incrementing key {key:?} overflows u64")]
    Overflow { key: String },
    #[error(transparent)]
    Store(#[from] KvStoreError),
    #[error("invalid bucket handle: {0}")]
    Handle(#[from] wasmtime::component::ResourceTableError),
}

/// An open bucket: just its validated name.
#[derive(Debug)]
pub struct Bucket {
    name: String,
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::KeyTooLong { len: key.len() });
    }
    Ok(())
}

impl KvScope {
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn get(&self, bucket: &str, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let txn = self.store.db.begin_read().map_err(storage)?;
        let data = txn.open_table(DATA).map_err(storage)?;
        let value = data
            .get((&*self.namespace, bucket, key))
            .map_err(storage)?
            .map(|v| v.value().to_vec());
        Ok(value)
    }

    pub fn exists(&self, bucket: &str, key: &str) -> Result<bool, KvError> {
        Ok(self.get(bucket, key)?.is_some())
    }

    pub async fn set(&self, bucket: &str, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        check_key(key)?;
        self.write(bucket, key, Change::Set(value))
            .await
            .map(|_| ())
    }

    pub async fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.write(bucket, key, Change::Delete).await.map(|_| ())
    }

    /// Adds `delta` to the decimal u64 stored at `key` (absent counts as 0) in one
    /// transaction, so concurrent instances never lose an increment.
    pub async fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        check_key(key)?;
        self.write(bucket, key, Change::Increment(delta)).await
    }

    /// Queues a write for the writer thread and waits until it is durable.
    async fn write(&self, bucket: &str, key: &str, change: Change) -> Result<u64, KvError> {
        let closed = || KvError::Store(KvStoreError::Storage("the store is closed".into()));
        let (done, outcome) = oneshot::channel();
        let write = Write {
            namespace: self.namespace.clone(),
            bucket: bucket.to_owned(),
            key: key.to_owned(),
            change,
            done,
        };
        let queue = self.store.writes.as_ref().ok_or_else(closed)?;
        queue.send(write).await.map_err(|_| closed())?;
        outcome.await.map_err(|_| closed())?
    }

    /// Keys of `bucket` in order, a page at a time; the cursor is the number of keys
    /// already returned.
    pub fn list_keys(
        &self,
        bucket: &str,
        cursor: Option<u64>,
    ) -> Result<(Vec<String>, Option<u64>), KvError> {
        let skip = cursor.unwrap_or(0) as usize;
        let txn = self.store.db.begin_read().map_err(storage)?;
        let data = txn.open_table(DATA).map_err(storage)?;
        let mut keys = Vec::new();
        let mut more = false;
        for entry in data
            .range((&*self.namespace, bucket, "")..)
            .map_err(storage)?
            .skip(skip)
        {
            let (k, _) = entry.map_err(storage)?;
            let (ns, b, key) = k.value();
            if ns != &*self.namespace || b != bucket {
                break;
            }
            if keys.len() == LIST_PAGE {
                more = true;
                break;
            }
            keys.push(key.to_owned());
        }
        let next = more.then(|| (skip + keys.len()) as u64);
        Ok((keys, next))
    }
}

impl WasmgateCtxView<'_> {
    fn scope(&self) -> Result<&KvScope, KvError> {
        self.ctx.kv.as_ref().ok_or(KvError::AccessDenied)
    }

    fn bucket_name(&self, bucket: &Resource<Bucket>) -> Result<String, KvError> {
        Ok(self.table.get(bucket)?.name.clone())
    }
}

/// Runs a read on the blocking pool: redb reads may wait on the disk.
async fn read<T: Send + 'static>(
    scope: &KvScope,
    read: impl FnOnce(&KvScope) -> Result<T, KvError> + Send + 'static,
) -> Result<T, KvError> {
    let scope = scope.clone();
    tokio::task::spawn_blocking(move || read(&scope))
        .await
        .map_err(|e| KvError::Store(KvStoreError::Storage(format!("read task failed: {e}"))))?
}

impl store::Host for WasmgateCtxView<'_> {
    async fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
        self.scope()?;
        if identifier.len() > MAX_BUCKET_BYTES || identifier.contains('\0') {
            return Err(KvError::InvalidBucket(format!(
                "bucket names are at most {MAX_BUCKET_BYTES} bytes without NUL characters"
            )));
        }
        // `""` and `"default"` name the same bucket, as in Spin and wasmtime's store.
        let name = if identifier.is_empty() {
            "default".to_owned()
        } else {
            identifier
        };
        Ok(self.table.push(Bucket { name })?)
    }

    fn convert_error(&mut self, err: KvError) -> wasmtime::Result<store::Error> {
        Ok(match err {
            KvError::AccessDenied => store::Error::AccessDenied,
            other => store::Error::Other(other.to_string()),
        })
    }
}

impl store::HostBucket for WasmgateCtxView<'_> {
    async fn get(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
    ) -> Result<Option<Vec<u8>>, KvError> {
        let name = self.bucket_name(&bucket)?;
        read(self.scope()?, move |scope| scope.get(&name, &key)).await
    }

    async fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.set(&name, &key, value).await
    }

    async fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.delete(&name, &key).await
    }

    async fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let name = self.bucket_name(&bucket)?;
        read(self.scope()?, move |scope| scope.exists(&name, &key)).await
    }

    async fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let name = self.bucket_name(&bucket)?;
        let (keys, cursor) =
            read(self.scope()?, move |scope| scope.list_keys(&name, cursor)).await?;
        Ok(store::KeyResponse { keys, cursor })
    }

    async fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for WasmgateCtxView<'_> {
    async fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.increment(&name, &key, delta).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a write (an async call) to completion from a plain test.
    fn block<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(future)
    }

    fn store(quota: u64) -> (tempfile::TempDir, Arc<KvStore>) {
        let dir = tempfile::tempdir().unwrap();
        let store = KvStore::open(&dir.path().join("kv.redb"), quota).unwrap();
        (dir, store)
    }

    #[test]
    fn values_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let store = KvStore::open(&path, 1 << 20).unwrap();
            block(store.scope("d1").set("b", "k", b"v1".to_vec())).unwrap();
            assert_eq!(block(store.scope("d1").increment("b", "n", 5)).unwrap(), 5);
        }
        let store = KvStore::open(&path, 1 << 20).unwrap();
        assert_eq!(store.scope("d1").get("b", "k").unwrap().unwrap(), b"v1");
        assert_eq!(block(store.scope("d1").increment("b", "n", 1)).unwrap(), 6);
    }

    /// The last handle may go anywhere: on a multi-thread worker (a reload), in
    /// `block_on`, on a current-thread runtime, outside any runtime. Each drop commits
    /// what was queued and releases the file, so a reopen sees the value.
    #[test]
    fn the_last_handle_drops_on_any_thread() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        let reopen_sees = |n: u64| {
            let store = KvStore::open(&path, 1 << 20).unwrap();
            assert_eq!(block(store.scope("d").increment("b", "n", 0)).unwrap(), n);
        };
        let multi = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .build()
            .unwrap();
        let store = KvStore::open(&path, 1 << 20).unwrap();
        let on_worker = multi.spawn(async move {
            store.scope("d").increment("b", "n", 1).await.unwrap();
            drop(store);
        });
        multi.block_on(on_worker).unwrap();
        reopen_sees(1);
        let store = KvStore::open(&path, 1 << 20).unwrap();
        multi.block_on(async move {
            store.scope("d").increment("b", "n", 1).await.unwrap();
            drop(store);
        });
        reopen_sees(2);
        let store = KvStore::open(&path, 1 << 20).unwrap();
        block(async move {
            store.scope("d").increment("b", "n", 1).await.unwrap();
            drop(store);
        });
        reopen_sees(3);
    }

    #[test]
    fn namespaces_are_isolated() {
        let (_dir, store) = store(1 << 20);
        block(store.scope("a").set("default", "k", b"from a".to_vec())).unwrap();
        assert_eq!(store.scope("b").get("default", "k").unwrap(), None);
        let (keys, next) = store.scope("b").list_keys("default", None).unwrap();
        assert!(keys.is_empty() && next.is_none());
    }

    #[test]
    fn quota_is_enforced_and_released() {
        let (_dir, store) = store(100);
        let scope = store.scope("d");
        block(scope.set("b", "k", vec![0u8; 90])).unwrap();
        let err = block(scope.set("b", "k2", vec![0u8; 20])).unwrap_err();
        assert!(
            matches!(err, KvError::QuotaExceeded { quota: 100, .. }),
            "{err}"
        );
        // Shrinking an existing value is always allowed.
        block(scope.set("b", "k", vec![0u8; 10])).unwrap();
        block(scope.set("b", "k2", vec![0u8; 20])).unwrap();
        assert_eq!(store.used_bytes().unwrap(), (1 + 1 + 10) + (1 + 2 + 20));
        assert_eq!(store.remove_namespace("d").unwrap(), 35);
        assert_eq!(store.used_bytes().unwrap(), 0);
    }

    #[test]
    fn a_changed_quota_holds_for_the_next_writes() {
        let (_dir, store) = store(100);
        let scope = store.scope("d");
        block(scope.set("b", "k", vec![0u8; 50])).unwrap();
        store.set_quota_bytes(40);
        assert_eq!(store.quota_bytes(), 40);
        // Over the lowered quota: what is stored stays, growth is refused, shrinking is not.
        assert_eq!(store.scope("d").get("b", "k").unwrap().unwrap().len(), 50);
        let err = block(scope.set("b", "k2", vec![0u8; 1])).unwrap_err();
        assert!(
            matches!(err, KvError::QuotaExceeded { quota: 40, .. }),
            "{err}"
        );
        block(scope.set("b", "k", vec![0u8; 10])).unwrap();
        store.set_quota_bytes(1000);
        block(scope.set("b", "k2", vec![0u8; 500])).unwrap();
    }

    #[test]
    fn increment_rejects_non_numbers() {
        let (_dir, store) = store(1 << 20);
        let scope = store.scope("d");
        block(scope.set("b", "k", b"abc".to_vec())).unwrap();
        assert!(matches!(
            block(scope.increment("b", "k", 1)),
            Err(KvError::NotACounter { .. })
        ));
        block(scope.set("b", "x", b"18446744073709551615".to_vec())).unwrap();
        assert!(matches!(
            block(scope.increment("b", "x", 1)),
            Err(KvError::Overflow { .. })
        ));
    }

    /// Many writers at once: every write lands, in as many commits as the writer
    /// needed (fewer than writes), and each result is the one its own write produced.
    #[test]
    fn concurrent_writes_are_grouped_and_all_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kv.redb");
        {
            let store = KvStore::open(&path, 1 << 20).unwrap();
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .build()
                .unwrap();
            let mut results: Vec<u64> = runtime.block_on(async {
                let tasks: Vec<_> = (0..200)
                    .map(|_| {
                        let scope = store.scope("d");
                        tokio::spawn(async move { scope.increment("b", "n", 1).await.unwrap() })
                    })
                    .collect();
                let mut results = Vec::new();
                for task in tasks {
                    results.push(task.await.unwrap());
                }
                results
            });
            results.sort();
            assert_eq!(results, (1..=200).collect::<Vec<_>>());
        }
        let store = KvStore::open(&path, 1 << 20).unwrap();
        assert_eq!(store.scope("d").get("b", "n").unwrap().unwrap(), b"200");
    }

    #[test]
    fn list_keys_pages() {
        let (_dir, store) = store(1 << 24);
        let scope = store.scope("d");
        for i in 0..(LIST_PAGE + 5) {
            block(scope.set("b", &format!("k{i:05}"), Vec::new())).unwrap();
        }
        block(scope.set("other", "zzz", Vec::new())).unwrap();
        let (first, next) = scope.list_keys("b", None).unwrap();
        assert_eq!(first.len(), LIST_PAGE);
        let (rest, end) = scope.list_keys("b", next).unwrap();
        assert_eq!(rest.len(), 5);
        assert_eq!(end, None);
        assert_eq!(rest.last().unwrap(), &format!("k{:05}", LIST_PAGE + 4));
    }
}
