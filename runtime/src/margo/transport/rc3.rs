//! The rc3 profile's state: the SVID files behind the mTLS client config, and the
//! anchors that config trusts, kept apart from how new bundles arrive (`trust`).

use super::trust::{read_trust_file, Discovery};
use super::{Profiled, Transport, TransportError};
use crate::margo::settings::Rc3Trust;
use crate::margo::tls::{self, ClientIdentity, TlsError, TrustAnchors, TrustBundle};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// Modification time and length: enough to notice a credential file was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp(Vec<(Option<SystemTime>, u64)>);

impl FileStamp {
    fn of(paths: &[&Path]) -> Self {
        Self(
            paths
                .iter()
                .map(|p| {
                    std::fs::metadata(p)
                        .map(|m| (m.modified().ok(), m.len()))
                        .unwrap_or((None, 0))
                })
                .collect(),
        )
    }
}

pub(super) struct Rc3 {
    pub(super) discovery: Option<Discovery>,
    svid_cert: PathBuf,
    svid_key: PathBuf,
    pub(super) trust_file: Option<PathBuf>,
    pub(super) anchors: Arc<TrustAnchors>,
    bundle_sequence: Mutex<Option<u64>>,
    cached: Mutex<Option<(FileStamp, Arc<rustls::ClientConfig>)>>,
    identity: Mutex<Option<ClientIdentity>>,
}

impl Rc3 {
    /// The rc3 transport: SVID (certificate and key files), trust bundle (the file, or
    /// the last one fetched through discovery, for an offline start). Blocking file I/O.
    pub(super) fn open(
        (svid_cert, svid_key): (PathBuf, PathBuf),
        trust: Rc3Trust,
        state_dir: &Path,
    ) -> Result<Self, TransportError> {
        let (discovery, trust_file) = match trust {
            Rc3Trust::Discovery { url, pinned_ca } => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in tls::read_certs("pinned CA", &pinned_ca)? {
                    roots
                        .add(cert)
                        .map_err(|e| TlsError::Config(format!("pinned CA: {e}")))?;
                }
                let discovery = Discovery {
                    url,
                    tls: tls::rc2_client_config(roots)?,
                    next_refresh: Mutex::new(None),
                    saved: state_dir.join("trust-bundle.json"),
                };
                (Some(discovery), None)
            }
            Rc3Trust::File(file) => (None, Some(file)),
        };
        let rc3 = Rc3 {
            discovery,
            svid_cert,
            svid_key,
            trust_file,
            anchors: TrustAnchors::new(Vec::new()),
            bundle_sequence: Mutex::new(None),
            cached: Mutex::new(None),
            identity: Mutex::new(None),
        };
        if rc3.trust_file.is_some() {
            rc3.reload_trust_file()?;
        } else if let Ok(bytes) = read_trust_file(&state_dir.join("trust-bundle.json")) {
            // Offline start: the last bundle fetched through discovery.
            if let Ok(bundle) = TrustBundle::parse(&bytes) {
                rc3.accept_bundle(bundle)?;
            }
        }
        rc3.client_config()?;
        Ok(rc3)
    }

    /// The TLS configuration for the current SVID files; rebuilt when they change on
    /// disk (renewal), so the next connection presents the new SVID.
    pub(super) fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let stamp = FileStamp::of(&[&self.svid_cert, &self.svid_key]);
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((seen, config)) = cached.as_ref() {
            if *seen == stamp {
                return Ok(config.clone());
            }
        }
        let chain = tls::read_certs("SVID certificate", &self.svid_cert)?;
        let key = tls::read_key("SVID key", &self.svid_key)?;
        let own = tls::spiffe_id(&chain[0]).map_err(|message| TlsError::OwnSvid {
            path: self.svid_cert.display().to_string(),
            message,
        })?;
        let identity = ClientIdentity::parse(&own).map_err(|message| TlsError::OwnSvid {
            path: self.svid_cert.display().to_string(),
            message,
        })?;
        let config =
            tls::rc3_client_config(chain, key, self.anchors.clone(), identity.expected_wfm())?;
        if cached.is_some() {
            tracing::info!(svid = %self.svid_cert.display(), "SVID changed on disk; new connections present the renewed SVID");
        }
        *self.identity.lock().unwrap_or_else(|e| e.into_inner()) = Some(identity);
        *cached = Some((stamp, config.clone()));
        Ok(config)
    }

    pub(super) fn accept_bundle(&self, bundle: TrustBundle) -> Result<bool, TlsError> {
        let mut sequence = self
            .bundle_sequence
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if let (Some(have), Some(new)) = (*sequence, bundle.sequence) {
            if new < have {
                return Err(TlsError::Bundle(format!(
                    "spiffe_sequence went back from {have} to {new}; keeping the current bundle"
                )));
            }
            if new == have {
                return Ok(false);
            }
        }
        if bundle.sequence.is_some() {
            *sequence = bundle.sequence;
        }
        self.anchors.replace(bundle.anchors);
        Ok(true)
    }
}

impl Transport {
    /// Our client identity (rc3) for logs.
    pub fn identity(&self) -> Option<ClientIdentity> {
        match &self.profile {
            Profiled::Rc3(rc3) => rc3
                .identity
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            Profiled::Rc2(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(sequence: Option<u64>) -> TrustBundle {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        TrustBundle {
            anchors: vec![cert.der().clone()],
            sequence,
            refresh_hint: None,
        }
    }

    /// Bundles replace each other as a whole, and `spiffe_sequence` never goes back.
    #[test]
    fn bundle_sequence_never_goes_back() {
        let rc3 = Rc3 {
            discovery: None,
            svid_cert: PathBuf::new(),
            svid_key: PathBuf::new(),
            trust_file: None,
            anchors: TrustAnchors::new(Vec::new()),
            bundle_sequence: Mutex::new(None),
            cached: Mutex::new(None),
            identity: Mutex::new(None),
        };
        assert!(rc3.accept_bundle(bundle(Some(5))).unwrap());
        let five = rc3.anchors.snapshot();
        assert!(rc3.accept_bundle(bundle(Some(4))).is_err());
        assert!(
            !rc3.accept_bundle(bundle(Some(5))).unwrap(),
            "same sequence is no change"
        );
        assert_eq!(
            rc3.anchors.snapshot(),
            five,
            "a refused bundle must not change the anchors"
        );
        assert!(rc3.accept_bundle(bundle(Some(6))).unwrap());
        assert_eq!(rc3.anchors.len(), 1, "replaced, not merged");
        assert_ne!(rc3.anchors.snapshot(), five);
    }
}
