//! Local mode's desired state: the one fixed document `wasmgate run` serves, and the
//! folder of YAMLs `wasmgate up` watches, each applied again after a reload.

use super::Host;
use crate::deploy::{local, DesiredDeployment, Reconfiguration};
use crate::margo::Reconfigured;
use anyhow::Context;
use arc_swap::ArcSwap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use tokio::sync::mpsc;

/// Why the folder watch woke up.
enum Wake {
    Timer,
    Progress,
    Reconfigured(Box<Reconfiguration>),
}

impl Host {
    /// Applies `document` until shutdown, and again after each reload.
    pub(super) async fn serve_fixed(
        &mut self,
        document: DesiredDeployment,
        served_at: &ArcSwap<SocketAddr>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        reconfigured: &mut mpsc::UnboundedReceiver<Reconfigured>,
    ) {
        self.reconciler.apply(vec![document.clone()]).await;
        self.announce(served_at);
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                Some(change) = reconfigured.recv() => {
                    self.reconciler.reconfigure(&change.deploy);
                    self.reconciler.apply(vec![document.clone()]).await;
                    self.announce(served_at);
                }
            }
        }
    }

    /// Applies the folder `dir` whenever it changes or the reconciler asks for a pass,
    /// until shutdown.
    pub(super) async fn watch_folder(
        &mut self,
        dir: PathBuf,
        served_at: &ArcSwap<SocketAddr>,
        mut shutdown: Pin<&mut impl Future<Output = ()>>,
        reconfigured: &mut mpsc::UnboundedReceiver<Reconfigured>,
    ) {
        let interval = self.config.watch_interval();
        // Polled on a blocking thread: stat and read calls must not hold an
        // async worker, and the watch remembers metadata so an unchanged
        // folder is not read again.
        let watch = Arc::new(std::sync::Mutex::new(local::FolderWatch::new(&dir)));
        let mut last_digest = None;
        loop {
            let watched = self.reconciler.watched_files();
            // A changed folder, or the reconciler asks for another pass
            // (retrying a failed pull, collecting garbage, placing again
            // after the partitions changed).
            let due = self.reconciler.pass_due();
            let poll = {
                let watch = watch.clone();
                tokio::task::spawn_blocking(move || {
                    let mut watch = watch.lock().unwrap_or_else(|e| e.into_inner());
                    watch.poll(&watched).map(|digest| {
                        let documents =
                            (Some(digest) != last_digest || due).then(|| watch.documents());
                        (digest, documents)
                    })
                })
            };
            match poll.await {
                Ok(Ok((digest, Some(documents)))) => {
                    last_digest = Some(digest);
                    self.reconciler
                        .apply_for(documents, crate::deploy::INSTALL_PATIENCE)
                        .await;
                    self.announce(served_at);
                }
                Ok(Ok((_, None))) => {}
                Ok(Err(err)) => {
                    tracing::error!(dir = %dir.display(), error = %err, "cannot read the deployments folder")
                }
                Err(err) => {
                    tracing::error!(dir = %dir.display(), error = %err, "the deployments folder watch failed")
                }
            }
            // An install that outlived its pass is committed as soon as it is done.
            let wake = tokio::select! {
                _ = tokio::time::sleep(interval) => Wake::Timer,
                _ = self.reconciler.install_progress() => Wake::Progress,
                Some(change) = reconfigured.recv() => Wake::Reconfigured(Box::new(change.deploy)),
                _ = &mut shutdown => break,
            };
            match wake {
                Wake::Timer => {}
                Wake::Progress => {
                    self.reconciler.advance().await;
                    self.announce(served_at);
                }
                // The next round's pass places what the change moved.
                Wake::Reconfigured(change) => self.reconciler.reconfigure(&change),
            }
        }
    }
}

/// The one-component document `wasmgate run` serves at `/`.
pub fn single_component_document(
    component: &std::path::Path,
    reuse: Option<u32>,
) -> anyhow::Result<DesiredDeployment> {
    let path = std::fs::canonicalize(component)
        .with_context(|| format!("cannot find component {}", component.display()))?;
    let name = path
        .file_stem()
        .and_then(|s| s.to_str())
        .map(|s| {
            s.chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_lowercase()
                    } else {
                        '-'
                    }
                })
                .collect::<String>()
        })
        // metadata.name must be a DNS-1123 label: no leading or trailing '-'.
        .map(|s| s.trim_matches('-').to_owned())
        .filter(|s| crate::deploy::model::is_dns_label(s))
        .unwrap_or_else(|| "component".into());
    let mut extensions = serde_json::json!({ "trigger": { "http": { "route": "/" } } });
    if let Some(requests) = reuse {
        // Checked with the rest of the document: a bad count is refused, named.
        extensions["reuse"] = serde_json::json!({ "requests": requests });
    }
    let document = serde_json::json!({
        "id": "00000000-0000-4000-8000-000000000001",
        "metadata": { "name": name, "namespace": "run" },
        "spec": {
            "applicationId": name,
            "deploymentProfile": {
                "type": "custom",
                "components": [{
                    "name": name,
                    "properties": { "repository": path.display().to_string() },
                    "x-wasmgate-extensions": extensions,
                }],
            },
        },
    });
    Ok(DesiredDeployment {
        source: path.display().to_string(),
        base_dir: path.parent().map(|p| p.to_owned()).unwrap_or_default(),
        yaml: serde_json::to_vec(&document)?,
        expected_id: None,
        refused: None,
    })
}
