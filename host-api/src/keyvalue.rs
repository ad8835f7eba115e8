//! `wasi:keyvalue/store` + `atomics` on a durable per-partition store.
//!
//! One [`KvStore`] (a `redb` file: crash-safe copy-on-write B-trees, every commit
//! fsynced) per sandbox partition holds the data of all its deployments. Each deployment
//! sees only its own namespace through a [`KvScope`]; buckets are namespaces inside that.
//! The partition's storage quota counts every key and value byte and is checked inside
//! the same write transaction that changes the data, so concurrent instances cannot
//! overshoot it together.

use crate::bindings::wasi::keyvalue::{atomics, store};
use crate::WasmgateCtxView;
use redb::{Database, ReadableTable, TableDefinition};
use std::path::{Path, PathBuf};
use std::sync::Arc;
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
    db: Database,
    quota_bytes: u64,
    path: PathBuf,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("path", &self.path)
            .field("quota_bytes", &self.quota_bytes)
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
        Ok(Arc::new(Self {
            db,
            quota_bytes,
            path: path.to_owned(),
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
        self.quota_bytes
    }

    /// Bytes currently counted against the quota.
    pub fn used_bytes(&self) -> Result<u64, KvStoreError> {
        let txn = self.db.begin_read().map_err(storage)?;
        let usage = txn.open_table(USAGE).map_err(storage)?;
        Ok(usage
            .get(USAGE_KEY)
            .map_err(storage)?
            .map(|v| v.value())
            .unwrap_or(0))
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
            let used = usage
                .get(USAGE_KEY)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0);
            usage
                .insert(USAGE_KEY, used.saturating_sub(freed))
                .map_err(storage)?;
        }
        txn.commit().map_err(storage)?;
        Ok(freed)
    }
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

    pub fn set(&self, bucket: &str, key: &str, value: &[u8]) -> Result<(), KvError> {
        check_key(key)?;
        self.update(bucket, key, |_| Ok(Some(value.to_vec())))
            .map(|_| ())
    }

    pub fn delete(&self, bucket: &str, key: &str) -> Result<(), KvError> {
        self.update(bucket, key, |_| Ok(None)).map(|_| ())
    }

    /// Adds `delta` to the decimal u64 stored at `key` (absent counts as 0) in one
    /// transaction, so concurrent instances never lose an increment.
    pub fn increment(&self, bucket: &str, key: &str, delta: u64) -> Result<u64, KvError> {
        check_key(key)?;
        let mut result = 0;
        self.update(bucket, key, |old| {
            let current = match old {
                None => 0,
                Some(bytes) => std::str::from_utf8(bytes)
                    .ok()
                    .and_then(|s| s.parse::<u64>().ok())
                    .ok_or_else(|| KvError::NotACounter { key: key.into() })?,
            };
            result = current
                .checked_add(delta)
                .ok_or_else(|| KvError::Overflow { key: key.into() })?;
            Ok(Some(result.to_string().into_bytes()))
        })?;
        Ok(result)
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

    /// Replaces the value at `key` with what `change` returns, enforcing the quota.
    fn update(
        &self,
        bucket: &str,
        key: &str,
        change: impl FnOnce(Option<&[u8]>) -> Result<Option<Vec<u8>>, KvError>,
    ) -> Result<(), KvError> {
        let txn = self.store.db.begin_write().map_err(storage)?;
        {
            let mut data = txn.open_table(DATA).map_err(storage)?;
            let id = (&*self.namespace, bucket, key);
            let old = data.get(id).map_err(storage)?.map(|v| v.value().to_vec());
            let new = change(old.as_deref())?;
            let old_cost = old.as_ref().map_or(0, |v| entry_cost(bucket, key, v.len()));
            let new_cost = new.as_ref().map_or(0, |v| entry_cost(bucket, key, v.len()));
            let mut usage = txn.open_table(USAGE).map_err(storage)?;
            let used = usage
                .get(USAGE_KEY)
                .map_err(storage)?
                .map(|v| v.value())
                .unwrap_or(0);
            let after = used.saturating_sub(old_cost) + new_cost;
            if new_cost > old_cost && after > self.store.quota_bytes {
                return Err(KvError::QuotaExceeded {
                    used,
                    quota: self.store.quota_bytes,
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
        }
        txn.commit().map_err(storage)?;
        Ok(())
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

impl store::Host for WasmgateCtxView<'_> {
    fn open(&mut self, identifier: String) -> Result<Resource<Bucket>, KvError> {
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
    fn get(&mut self, bucket: Resource<Bucket>, key: String) -> Result<Option<Vec<u8>>, KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.get(&name, &key)
    }

    fn set(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        value: Vec<u8>,
    ) -> Result<(), KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.set(&name, &key, &value)
    }

    fn delete(&mut self, bucket: Resource<Bucket>, key: String) -> Result<(), KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.delete(&name, &key)
    }

    fn exists(&mut self, bucket: Resource<Bucket>, key: String) -> Result<bool, KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.exists(&name, &key)
    }

    fn list_keys(
        &mut self,
        bucket: Resource<Bucket>,
        cursor: Option<u64>,
    ) -> Result<store::KeyResponse, KvError> {
        let name = self.bucket_name(&bucket)?;
        let (keys, cursor) = self.scope()?.list_keys(&name, cursor)?;
        Ok(store::KeyResponse { keys, cursor })
    }

    fn drop(&mut self, bucket: Resource<Bucket>) -> wasmtime::Result<()> {
        self.table.delete(bucket)?;
        Ok(())
    }
}

impl atomics::Host for WasmgateCtxView<'_> {
    fn increment(
        &mut self,
        bucket: Resource<Bucket>,
        key: String,
        delta: u64,
    ) -> Result<u64, KvError> {
        let name = self.bucket_name(&bucket)?;
        self.scope()?.increment(&name, &key, delta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            store.scope("d1").set("b", "k", b"v1").unwrap();
            assert_eq!(store.scope("d1").increment("b", "n", 5).unwrap(), 5);
        }
        let store = KvStore::open(&path, 1 << 20).unwrap();
        assert_eq!(store.scope("d1").get("b", "k").unwrap().unwrap(), b"v1");
        assert_eq!(store.scope("d1").increment("b", "n", 1).unwrap(), 6);
    }

    #[test]
    fn namespaces_are_isolated() {
        let (_dir, store) = store(1 << 20);
        store.scope("a").set("default", "k", b"from a").unwrap();
        assert_eq!(store.scope("b").get("default", "k").unwrap(), None);
        let (keys, next) = store.scope("b").list_keys("default", None).unwrap();
        assert!(keys.is_empty() && next.is_none());
    }

    #[test]
    fn quota_is_enforced_and_released() {
        let (_dir, store) = store(100);
        let scope = store.scope("d");
        scope.set("b", "k", &[0u8; 90]).unwrap();
        let err = scope.set("b", "k2", &[0u8; 20]).unwrap_err();
        assert!(
            matches!(err, KvError::QuotaExceeded { quota: 100, .. }),
            "{err}"
        );
        // Shrinking an existing value is always allowed.
        scope.set("b", "k", &[0u8; 10]).unwrap();
        scope.set("b", "k2", &[0u8; 20]).unwrap();
        assert_eq!(store.used_bytes().unwrap(), (1 + 1 + 10) + (1 + 2 + 20));
        assert_eq!(store.remove_namespace("d").unwrap(), 35);
        assert_eq!(store.used_bytes().unwrap(), 0);
    }

    #[test]
    fn increment_rejects_non_numbers() {
        let (_dir, store) = store(1 << 20);
        let scope = store.scope("d");
        scope.set("b", "k", b"abc").unwrap();
        assert!(matches!(
            scope.increment("b", "k", 1),
            Err(KvError::NotACounter { .. })
        ));
        assert!(matches!(
            scope
                .set("b", "x", b"18446744073709551615")
                .and_then(|_| scope.increment("b", "x", 1)),
            Err(KvError::Overflow { .. })
        ));
    }

    #[test]
    fn list_keys_pages() {
        let (_dir, store) = store(1 << 24);
        let scope = store.scope("d");
        for i in 0..(LIST_PAGE + 5) {
            scope.set("b", &format!("k{i:05}"), b"").unwrap();
        }
        scope.set("other", "zzz", b"").unwrap();
        let (first, next) = scope.list_keys("b", None).unwrap();
        assert_eq!(first.len(), LIST_PAGE);
        let (rest, end) = scope.list_keys("b", next).unwrap();
        assert_eq!(rest.len(), 5);
        assert_eq!(end, None);
        assert_eq!(rest.last().unwrap(), &format!("k{:05}", LIST_PAGE + 4));
    }
}
