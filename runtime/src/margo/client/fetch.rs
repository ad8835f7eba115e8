//! Bundle and document fetch: every deployment YAML a manifest lists, from the local
//! store, the bundle or one by one, each checked against its digest before it is kept.

use super::error::{local, oversize_is_rejected, refused};
use super::{CycleError, WfmClient, MAX_DOCUMENT};
use crate::margo::bundle;
use crate::margo::types::{DeploymentId, Digest, StateManifest, BUNDLE_MEDIA_TYPE};
use std::collections::{BTreeMap, BTreeSet};

impl WfmClient {
    /// Every deployment YAML of `manifest`, verified; from the local store when held,
    /// otherwise from the bundle (several missing) or one by one. All or nothing.
    pub(super) async fn fetch_documents(
        &mut self,
        manifest: &StateManifest,
    ) -> Result<BTreeMap<DeploymentId, (Digest, Vec<u8>)>, CycleError> {
        let mut documents = BTreeMap::new();
        let mut missing = Vec::new();
        for d in &manifest.deployments {
            match self.state.document(&d.digest).await {
                Some(yaml) => {
                    documents.insert(d.deployment_id.clone(), (d.digest.clone(), yaml));
                }
                None => missing.push(d.clone()),
            }
        }
        if missing.len() > 1 {
            if let Some(bundle) = &manifest.bundle {
                let url = self.transport()?.manifest_url(&bundle.url)?;
                let max = self.settings.max_bundle;
                let response = self
                    .send(
                        "bundle",
                        ::http::Method::GET,
                        &url,
                        &[("accept", BUNDLE_MEDIA_TYPE.to_owned())],
                        None,
                        max,
                    )
                    .await
                    .map_err(|e| oversize_is_rejected(e, || format!("bundle {}", bundle.digest)))?;
                if response.status != 200 {
                    return Err(refused(format!("GET bundle {}", bundle.digest), &response));
                }
                let content_type = response.header("content-type").unwrap_or_default();
                if !content_type.starts_with(BUNDLE_MEDIA_TYPE) {
                    return Err(CycleError::Rejected(format!(
                        "bundle has Content-Type {content_type:?}, expected {BUNDLE_MEDIA_TYPE}"
                    )));
                }
                if !bundle.digest.matches(&response.body) {
                    return Err(CycleError::Rejected(format!(
                        "bundle bytes hash to {}, the manifest says {}",
                        Digest::of(&response.body),
                        bundle.digest
                    )));
                }
                let members = bundle::read_members(&response.body, max)
                    .map_err(|e| CycleError::Rejected(e.to_string()))?;
                let named: BTreeSet<&Digest> =
                    manifest.deployments.iter().map(|d| &d.digest).collect();
                let held: BTreeSet<&Digest> = members.keys().collect();
                if named != held {
                    return Err(CycleError::Rejected(format!(
                        "bundle holds {} YAMLs that do not match the {} the manifest lists",
                        held.len(),
                        named.len()
                    )));
                }
                for d in &missing {
                    let yaml = members[&d.digest].clone();
                    documents.insert(d.deployment_id.clone(), (d.digest.clone(), yaml));
                }
                missing.clear();
            }
        }
        for d in &missing {
            let url = self.transport()?.manifest_url(&d.url)?;
            let response = self
                .send(
                    "deployment",
                    ::http::Method::GET,
                    &url,
                    &[],
                    None,
                    MAX_DOCUMENT,
                )
                .await
                .map_err(|e| {
                    oversize_is_rejected(e, || format!("deployment {} YAML", d.deployment_id))
                })?;
            if response.status != 200 {
                return Err(refused(
                    format!("GET deployment {} {}", d.deployment_id, d.digest),
                    &response,
                ));
            }
            if !d.digest.matches(&response.body) {
                return Err(CycleError::Rejected(format!(
                    "deployment {} YAML hashes to {}, the manifest says {}",
                    d.deployment_id,
                    Digest::of(&response.body),
                    d.digest
                )));
            }
            documents.insert(
                d.deployment_id.clone(),
                (d.digest.clone(), response.body.to_vec()),
            );
        }
        // A YAML that is not a valid ApplicationDeployment (or declares another id
        // than the manifest lists it under) fails that deployment alone, in the
        // reconciler; the digest vouched for its bytes, so it is kept like the others
        // and not fetched again until the manifest names another digest.
        for (digest, yaml) in documents.values() {
            self.state
                .store_document(digest, yaml)
                .await
                .map_err(local)?;
        }
        Ok(documents)
    }
}
