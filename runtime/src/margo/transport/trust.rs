//! Keeping the rc3 trust bundle current: fetched through discovery on the bundle's
//! own refresh hint, or re-read from its file; the sequence rule lives with the
//! anchors (`rc3`).

use super::error::state_err;
use super::rc3::Rc3;
use super::{Profiled, Transport, TransportError};
use crate::margo::http as wire;
use crate::margo::tls::{read_small_file, TlsError, TrustBundle};
use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use url::Url;

/// Where the trust bundle comes from when it is not a file: the MIS discovery document,
/// fetched over TLS that the pinned CA authenticates (never trust on first use).
pub(super) struct Discovery {
    pub(super) url: Url,
    pub(super) tls: Arc<rustls::ClientConfig>,
    pub(super) next_refresh: Mutex<Option<std::time::Instant>>,
    pub(super) saved: PathBuf,
}

/// The largest trust bundle accepted, fetched or read from a file.
const MAX_TRUST_BUNDLE: u64 = 1 << 20;

/// Refresh period when a bundle carries no `spiffe_refresh_hint`.
const DEFAULT_BUNDLE_REFRESH: std::time::Duration = std::time::Duration::from_secs(300);

impl Transport {
    /// Keeps the trust bundle current: a discovered bundle is fetched again every
    /// `spiffe_refresh_hint` seconds; a bundle file is re-read (a no-op when unchanged).
    pub async fn refresh_trust(&self) -> Result<(), TransportError> {
        let Profiled::Rc3(rc3) = &self.profile else {
            return Ok(());
        };
        let Some(discovery) = &rc3.discovery else {
            return self.refresh_trust_file().await;
        };
        let due = discovery
            .next_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_none_or(|at| std::time::Instant::now() >= at);
        if !due {
            return Ok(());
        }
        let fetch = |url: Url| async move {
            let request = ::http::Request::get(url.as_str())
                .header(::http::header::ACCEPT, "application/json")
                .body(Bytes::new())
                .map_err(state_err)?;
            let response = wire::send(discovery.tls.clone(), request, MAX_TRUST_BUNDLE).await?;
            if response.status != 200 {
                return Err(
                    TlsError::Bundle(format!("GET {url} answered {}", response.status)).into(),
                );
            }
            Ok::<_, TransportError>(response.body)
        };
        let document: serde_json::Value =
            serde_json::from_slice(&fetch(discovery.url.clone()).await?)
                .map_err(|e| TlsError::Bundle(format!("discovery document is not JSON: {e}")))?;
        let bundle_url = document["trustBundleUri"]
            .as_str()
            .and_then(|u| Url::parse(u).ok())
            .filter(|u| u.scheme() == "https")
            .ok_or_else(|| {
                TlsError::Bundle("discovery document has no https trustBundleUri".into())
            })?;
        let trust_domain = document["trustDomain"].as_str().unwrap_or_default();
        if let Some(identity) = self.identity() {
            if trust_domain != identity.trust_domain {
                return Err(TlsError::Bundle(format!(
                    "discovery names trust domain {trust_domain:?}, our SVID is in {:?} (misconfiguration)",
                    identity.trust_domain
                ))
                .into());
            }
        }
        let bytes = fetch(bundle_url).await?;
        let bundle = TrustBundle::parse(&bytes)?;
        let hint = bundle
            .refresh_hint
            .map(std::time::Duration::from_secs)
            .unwrap_or(DEFAULT_BUNDLE_REFRESH);
        if rc3.accept_bundle(bundle)? {
            let saved = discovery.saved.clone();
            crate::fsutil::unblocked(move || crate::fsutil::write_atomic(&saved, &bytes))
                .await
                .map_err(state_err)?;
            tracing::info!(
                anchors = rc3.anchors.len(),
                "trust bundle refreshed through discovery"
            );
        }
        *discovery
            .next_refresh
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(std::time::Instant::now() + hint);
        Ok(())
    }

    /// Re-reads a file trust bundle (an unchanged one changes nothing).
    async fn refresh_trust_file(&self) -> Result<(), TransportError> {
        let Profiled::Rc3(rc3) = &self.profile else {
            return Ok(());
        };
        let Some(file) = rc3.trust_file.clone() else {
            return Ok(());
        };
        let bytes = tokio::task::spawn_blocking(move || read_trust_file(&file))
            .await
            .map_err(state_err)??;
        rc3.accept_bundle(TrustBundle::parse(&bytes)?)?;
        Ok(())
    }

    /// Accepts a bundle fetched through discovery (sequence must not go back).
    pub fn accept_bundle(&self, bundle: TrustBundle) -> Result<bool, TransportError> {
        match &self.profile {
            Profiled::Rc3(rc3) => Ok(rc3.accept_bundle(bundle)?),
            Profiled::Rc2(_) => Ok(false),
        }
    }
}

pub(super) fn read_trust_file(file: &Path) -> Result<Vec<u8>, TlsError> {
    read_small_file("trust bundle", file, MAX_TRUST_BUNDLE)
}

impl Rc3 {
    pub(super) fn reload_trust_file(&self) -> Result<(), TlsError> {
        let Some(file) = &self.trust_file else {
            return Ok(());
        };
        self.accept_bundle(TrustBundle::parse(&read_trust_file(file)?)?)?;
        Ok(())
    }
}
