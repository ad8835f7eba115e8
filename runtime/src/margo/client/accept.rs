//! Manifest acceptance: poll the desired state, refuse what is not newer than the
//! accepted version (rollback, replay), apply the verified deployments, then record them.

use super::error::{local, oversize_is_rejected, refused};
use super::{CycleError, WfmClient, MAX_DOCUMENT, SOURCE_PREFIX};
use crate::deploy::{DesiredDeployment, Reconciler};
use crate::margo::state::Accepted;
use crate::margo::types::{DeploymentId, StateManifest, MANIFEST_MEDIA_TYPE};

impl WfmClient {
    pub(super) async fn poll(&mut self, reconciler: &mut Reconciler) -> Result<(), CycleError> {
        let url = self.transport()?.api_url("deployments")?;
        let mut headers = vec![("accept", MANIFEST_MEDIA_TYPE.to_owned())];
        // The replay guard: without a readable accepted record, nothing is accepted.
        let Some(accepted) = self.state.accepted() else {
            return Err(CycleError::StateUnreadable(
                self.state.unreadable().unwrap_or_default().to_owned(),
            ));
        };
        let accepted_version = accepted.manifest_version;
        if let Some(etag) = &accepted.etag {
            headers.push(("if-none-match", etag.clone()));
        }
        let response = self
            .send(
                "state",
                ::http::Method::GET,
                &url,
                &headers,
                None,
                MAX_DOCUMENT,
            )
            .await
            .map_err(|e| oversize_is_rejected(e, || "the state manifest".into()))?;
        match response.status {
            304 => return Ok(()),
            200 => {}
            _ => return Err(refused("GET deployments".into(), &response)),
        }
        let content_type = response.header("content-type").unwrap_or_default();
        if !content_type.starts_with(MANIFEST_MEDIA_TYPE) {
            return Err(CycleError::Rejected(format!(
                "state manifest has Content-Type {content_type:?}, expected {MANIFEST_MEDIA_TYPE}"
            )));
        }
        let manifest = StateManifest::parse(&response.body)
            .map_err(|e| CycleError::Rejected(e.to_string()))?;
        if manifest.version <= accepted_version {
            return Err(CycleError::Rejected(format!(
                "manifestVersion {} is not greater than the accepted {accepted_version} (rollback or replay)",
                manifest.version
            )));
        }
        let documents = self.fetch_documents(&manifest).await?;
        let etag = response.header("etag").map(str::to_owned);
        tracing::info!(
            manifest_version = %manifest.version,
            deployments = documents.len(),
            "applying desired state"
        );
        self.applying = manifest.version;
        let desired = documents
            .iter()
            .map(|(id, (_, yaml))| self.desired(id, yaml.clone()))
            .collect();
        reconciler
            .apply_for(desired, crate::deploy::INSTALL_PATIENCE)
            .await;
        self.collect_events().await?;
        self.state
            .accept(Accepted {
                manifest_version: manifest.version,
                etag,
                deployments: documents
                    .iter()
                    .map(|(id, (d, _))| (id.to_string(), d.to_string()))
                    .collect(),
            })
            .await
            .map_err(local)?;
        Ok(())
    }

    pub(super) fn desired(&self, id: &DeploymentId, yaml: Vec<u8>) -> DesiredDeployment {
        DesiredDeployment {
            source: format!("{SOURCE_PREFIX}{id}"),
            base_dir: self.state_dir.clone(),
            yaml,
            // The manifest's deploymentId; a YAML declaring another fails alone.
            expected_id: Some(id.clone()),
            refused: None,
        }
    }
}
