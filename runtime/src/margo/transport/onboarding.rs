//! rc2 onboarding happens once per device: the `clientId` and the WFM's root CA are
//! kept in the state directory so a restart neither onboards again nor trusts anew.

use super::error::state_err;
use super::rc2::Rc2;
use super::TransportError;
use crate::margo::http as wire;
use crate::margo::tls::{self, read_small_file, TlsError, MAX_PEM_FILE};
use base64::Engine as _;
use bytes::Bytes;
use httpsig_hyper::prelude::{AlgorithmName, SecretKey};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use url::Url;

/// The largest `client-id` file read (an id is a short URL-safe token).
const MAX_CLIENT_ID: u64 = 4 << 10;

/// The rc2 client certificate and key (PEM), checked and read; the state directory
/// made. Blocking file I/O.
fn read_client_files(
    cert_path: &Path,
    key_path: &Path,
    state_dir: &Path,
) -> Result<(String, String), TransportError> {
    tls::check_key_file("client key", key_path)?;
    let read = |what: &'static str, path: &Path| {
        let bytes = read_small_file(what, path, MAX_PEM_FILE)?;
        String::from_utf8(bytes).map_err(|_| TlsError::Read {
            what,
            path: path.display().to_string(),
            message: "not UTF-8 text (PEM expected)".into(),
        })
    };
    let cert_pem = read("client certificate", cert_path)?;
    let key_pem = read("client key", key_path)?;
    std::fs::create_dir_all(state_dir).map_err(state_err)?;
    Ok((cert_pem, key_pem))
}

impl Rc2 {
    /// Reads the client certificate and key, trusts the WFM's root (`root_ca`, or the
    /// one saved or downloaded at onboarding) and onboards once.
    pub(super) async fn onboard(
        (cert_path, key_path): (&PathBuf, &PathBuf),
        root_ca: Option<&Path>,
        base: &Url,
        state_dir: &Path,
    ) -> Result<Self, TransportError> {
        let (cert_path, key_path) = (cert_path.clone(), key_path.clone());
        let (cert_pem, key_pem) = {
            let (cert_path, key_path, state_dir) =
                (cert_path.clone(), key_path.clone(), state_dir.to_owned());
            tokio::task::spawn_blocking(move || {
                read_client_files(&cert_path, &key_path, &state_dir)
            })
            .await
            .map_err(state_err)??
        };
        let key = SecretKey::from_pem(&AlgorithmName::EcdsaP256Sha256, &key_pem).map_err(|e| {
            TransportError::Signing(format!(
                "client key {} is not an EC P-256 key: {e}",
                key_path.display()
            ))
        })?;
        let tls = Self::root_config(root_ca, base, state_dir).await?;
        let id_file = state_dir.join("client-id");
        let read = {
            let id_file = id_file.clone();
            tokio::task::spawn_blocking(move || {
                read_small_file("client id", &id_file, MAX_CLIENT_ID)
            })
            .await
            .map_err(state_err)?
        };
        let known = read.ok().and_then(|bytes| String::from_utf8(bytes).ok());
        let client_id = match known {
            Some(id) if !id.trim().is_empty() => id.trim().to_owned(),
            _ => {
                let url = base.join("api/v1/onboarding").map_err(state_err)?;
                let body = serde_json::json!({
                    "apiVersion": "onboarding.margo.org/v1alpha1",
                    "kind": "OnboardingRequest",
                    "certificate": base64::engine::general_purpose::STANDARD.encode(cert_pem.as_bytes()),
                });
                let request = ::http::Request::post(url.as_str())
                    .header(::http::header::CONTENT_TYPE, "application/json")
                    .body(Bytes::from(body.to_string()))
                    .map_err(state_err)?;
                let response = wire::send(tls.clone(), request, 64 << 10).await?;
                if response.status != 201 && response.status != 200 {
                    return Err(TransportError::Onboarding(format!(
                        "POST {url} answered {}: {}",
                        response.status,
                        String::from_utf8_lossy(&response.body)
                    )));
                }
                let reply: serde_json::Value = serde_json::from_slice(&response.body)
                    .map_err(|e| TransportError::Onboarding(format!("reply is not JSON: {e}")))?;
                let id = reply["clientId"]
                    .as_str()
                    .filter(|s| {
                        !s.is_empty()
                            && s.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b"-._~".contains(&b))
                    })
                    .ok_or_else(|| {
                        TransportError::Onboarding("reply has no URL-safe clientId".into())
                    })?
                    .to_owned();
                let written = id.clone();
                crate::fsutil::unblocked(move || {
                    crate::fsutil::write_atomic_private(&id_file, written.as_bytes())
                })
                .await
                .map_err(state_err)?;
                tracing::info!(client_id = %id, "onboarded with the WFM");
                id
            }
        };
        Ok(Self {
            tls,
            key,
            client_id,
        })
    }

    /// Trust for the WFM's server certificate: the configured root, else the one
    /// downloaded earlier, else fetched now over a channel the public web PKI vouches for.
    async fn root_config(
        root_ca: Option<&Path>,
        base: &Url,
        state_dir: &Path,
    ) -> Result<Arc<rustls::ClientConfig>, TransportError> {
        let saved = state_dir.join("root-ca.pem");
        let known = {
            let (configured, saved) = (root_ca.map(Path::to_owned), saved.clone());
            tokio::task::spawn_blocking(move || {
                match configured.or_else(|| saved.exists().then_some(saved)) {
                    Some(path) => tls::read_certs("root CA", &path).map(Some),
                    None => Ok(None),
                }
            })
            .await
            .map_err(state_err)??
        };
        let certs = match known {
            Some(certs) => certs,
            None => {
                let mut public = rustls::RootCertStore::empty();
                public.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
                let url = base
                    .join("api/v1/onboarding/certificate")
                    .map_err(state_err)?;
                let request = ::http::Request::get(url.as_str())
                    .body(Bytes::new())
                    .map_err(state_err)?;
                let response =
                    wire::send(tls::rc2_client_config(public)?, request, 64 << 10).await?;
                let reply: serde_json::Value =
                    serde_json::from_slice(&response.body).map_err(|e| {
                        TransportError::Onboarding(format!("root CA reply is not JSON: {e}"))
                    })?;
                let pem = reply["certificate"]
                    .as_str()
                    .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
                    .ok_or_else(|| {
                        TransportError::Onboarding("root CA reply has no base64 certificate".into())
                    })?;
                tokio::task::spawn_blocking(move || {
                    crate::fsutil::write_atomic(&saved, &pem)
                        .map_err(state_err)
                        .and_then(|()| Ok(tls::read_certs("root CA", &saved)?))
                })
                .await
                .map_err(state_err)??
            }
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in certs {
            roots
                .add(cert)
                .map_err(|e| TlsError::Config(format!("root CA: {e}")))?;
        }
        Ok(tls::rc2_client_config(roots)?)
    }
}

#[cfg(test)]
mod tests {
    use super::super::trust::read_trust_file;
    use super::*;

    #[test]
    fn configuration_files_are_read_within_their_limit() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("client-id");
        std::fs::write(&path, vec![b'a'; MAX_CLIENT_ID as usize]).unwrap();
        assert_eq!(
            read_small_file("client id", &path, MAX_CLIENT_ID)
                .unwrap()
                .len(),
            MAX_CLIENT_ID as usize
        );
        std::fs::write(&path, vec![b'a'; MAX_CLIENT_ID as usize + 1]).unwrap();
        let err = read_small_file("client id", &path, MAX_CLIENT_ID).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
        // A special file is refused without reading it (it would never end).
        let err = read_trust_file(Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
    }
}
