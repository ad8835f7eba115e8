//! TLS for the two transport profiles.
//!
//! rc.3: mutual TLS with X.509-SVIDs. The WFM is authenticated by its SPIFFE ID, which
//! must be exactly `spiffe://<td>/margo/wfm/<wfm-id>` with `<td>` and `<wfm-id>` taken
//! from our own SVID; its chain must validate against the current SPIFFE trust bundle.
//! DNS names play no part. rc.2: ordinary server-side TLS against a configured root.

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use std::path::Path;
use std::sync::{Arc, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {message}")]
    Read {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("{what} {path} holds no {expected}")]
    Empty {
        what: &'static str,
        path: String,
        expected: &'static str,
    },
    #[error("{what} {path} is not a regular file; give the key as a file only its owner can read")]
    KeyNotRegular { what: &'static str, path: String },
    #[error("{what} {path} has mode {mode:04o}: group or others may read or write it; run `chmod 600 {path}`")]
    KeyPermissions {
        what: &'static str,
        path: String,
        mode: u32,
    },
    #[error("our SVID {path}: {message}")]
    OwnSvid { path: String, message: String },
    #[error("trust bundle: {0}")]
    Bundle(String),
    #[error("TLS configuration: {0}")]
    Config(String),
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The largest PEM file (certificates, chains, keys) read: far above any real chain, and
/// a bound on what a wrong path (a device, a log file) can make the host hold.
pub const MAX_PEM_FILE: u64 = 1 << 20;

/// The bytes of the regular file `path`, at most `limit`: a FIFO cannot hang the read,
/// a device cannot fill memory. Blocking I/O.
pub fn read_small_file(what: &'static str, path: &Path, limit: u64) -> Result<Vec<u8>, TlsError> {
    crate::fsutil::read_regular_bounded(path, limit).map_err(|e| TlsError::Read {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read_small_file(what, path, MAX_PEM_FILE)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Read {
            what,
            path: path.display().to_string(),
            message: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TlsError::Empty {
            what,
            path: path.display().to_string(),
            expected: "PEM certificate",
        });
    }
    Ok(certs)
}

/// Refuses a private key that is not a regular file (a FIFO would block the read, a
/// device has no end) or that another local user may read or replace (mode & 0o077).
/// A symlink is followed: what is checked is the file that will be read, so keys placed
/// by an agent through links (e.g. Kubernetes secret volumes) are judged by their target.
pub fn check_key_file(what: &'static str, path: &Path) -> Result<(), TlsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let meta = std::fs::metadata(path).map_err(|e| TlsError::Read {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })?;
    if !meta.file_type().is_file() {
        return Err(TlsError::KeyNotRegular {
            what,
            path: path.display().to_string(),
        });
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o077 != 0 {
        return Err(TlsError::KeyPermissions {
            what,
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

/// Reads a PEM private key after [`check_key_file`].
pub fn read_key(what: &'static str, path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    check_key_file(what, path)?;
    let pem = read_small_file(what, path, MAX_PEM_FILE)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| TlsError::Read {
        what,
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The URI SANs of a certificate.
pub fn uri_sans(cert: &[u8]) -> Result<Vec<String>, String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert)
        .map_err(|e| format!("not an X.509 certificate: {e}"))?;
    let mut uris = Vec::new();
    if let Ok(Some(san)) = parsed.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::URI(uri) = name {
                uris.push((*uri).to_owned());
            }
        }
    }
    Ok(uris)
}

/// The single `spiffe://` URI SAN of an SVID.
pub fn spiffe_id(cert: &[u8]) -> Result<String, String> {
    let uris = uri_sans(cert)?;
    match uris.as_slice() {
        [one] if one.starts_with("spiffe://") => Ok(one.clone()),
        [] => Err("no URI SAN (an SVID has exactly one spiffe:// URI)".into()),
        [other] => Err(format!("URI SAN {other:?} is not a spiffe:// ID")),
        _ => Err(format!("{} URI SANs (an SVID has exactly one)", uris.len())),
    }
}

/// An ID segment of the Margo SPIFFE path: unreserved characters, not `.` or `..`.
fn valid_segment(s: &str) -> bool {
    !s.is_empty()
        && s != "."
        && s != ".."
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
}

/// Our own identity, read from our SVID: `spiffe://<td>/margo/wfm/<wfm-id>/client/<client-id>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientIdentity {
    pub trust_domain: String,
    pub wfm_id: String,
    pub client_id: String,
}

impl ClientIdentity {
    pub fn parse(spiffe: &str) -> Result<Self, String> {
        let rest = spiffe
            .strip_prefix("spiffe://")
            .ok_or_else(|| format!("{spiffe:?} is not a spiffe:// ID"))?;
        let parts: Vec<&str> = rest.split('/').collect();
        match parts.as_slice() {
            [td, "margo", "wfm", wfm, "client", client] if !td.is_empty() && valid_segment(wfm) && valid_segment(client) => Ok(Self {
                trust_domain: (*td).to_owned(),
                wfm_id: (*wfm).to_owned(),
                client_id: (*client).to_owned(),
            }),
            _ => Err(format!(
                "{spiffe:?} is not a Margo WFM client ID (spiffe://<trust-domain>/margo/wfm/<wfm-id>/client/<client-id>)"
            )),
        }
    }

    /// The only SPIFFE ID the WFM may present.
    pub fn expected_wfm(&self) -> String {
        format!("spiffe://{}/margo/wfm/{}", self.trust_domain, self.wfm_id)
    }
}

/// The X.509 anchors of the current trust bundle; replaced as a whole on refresh.
#[derive(Debug, Default)]
pub struct TrustAnchors {
    certs: RwLock<Vec<CertificateDer<'static>>>,
}

impl TrustAnchors {
    pub fn new(certs: Vec<CertificateDer<'static>>) -> Arc<Self> {
        Arc::new(Self {
            certs: RwLock::new(certs),
        })
    }

    /// Replaces (never merges) the anchors.
    pub fn replace(&self, certs: Vec<CertificateDer<'static>>) {
        *self.certs.write().unwrap_or_else(|e| e.into_inner()) = certs;
    }

    pub fn len(&self) -> usize {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub(crate) fn snapshot(&self) -> Vec<CertificateDer<'static>> {
        self.certs.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// X.509-SVID §4.3: a leaf's key signs (`digitalSignature`, which the TLS 1.3
/// CertificateVerify needs) and never certifies. webpki checks the extended key usage
/// but not this, so a certificate whose issuer restricted the key would pass otherwise.
fn svid_key_usage(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<(), String> {
    let usage = cert
        .key_usage()
        .map_err(|e| format!("unreadable key usage extension: {e}"))?;
    let Some(usage) = usage else {
        return Ok(());
    };
    if !usage.value.digital_signature() {
        return Err(format!(
            "key usage {} lacks digitalSignature, so the key may not sign the TLS handshake",
            usage.value
        ));
    }
    if usage.value.key_cert_sign() || usage.value.crl_sign() {
        return Err(format!(
            "key usage {} allows certificate or CRL signing, which an SVID leaf must not",
            usage.value
        ));
    }
    Ok(())
}

/// Verifies the WFM's SVID: chain to the trust bundle (server-auth usage), exactly one
/// `spiffe://` URI SAN equal to the expected WFM ID, leaf not a CA.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    anchors: Arc<TrustAnchors>,
    expected: String,
    provider: Arc<CryptoProvider>,
}

impl SpiffeServerVerifier {
    pub fn new(anchors: Arc<TrustAnchors>, expected: String) -> Self {
        Self {
            anchors,
            expected,
            provider: provider(),
        }
    }
}

fn bad_cert(message: String) -> rustls::Error {
    rustls::Error::General(message)
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let roots = self.anchors.snapshot();
        if roots.is_empty() {
            return Err(bad_cert(
                "the trust bundle has no X.509 anchors; refusing to trust anything".into(),
            ));
        }
        let anchors: Vec<_> = roots
            .iter()
            .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
            .collect();
        let cert = webpki::EndEntityCert::try_from(end_entity)
            .map_err(|e| bad_cert(format!("WFM certificate: {e}")))?;
        cert.verify_for_usage(
            webpki::ALL_VERIFICATION_ALGS,
            &anchors,
            intermediates,
            now,
            webpki::KeyUsage::server_auth(),
            None,
            None,
        )
        .map_err(|e| {
            bad_cert(format!(
                "WFM certificate does not chain to the trust bundle: {e}"
            ))
        })?;
        let id = spiffe_id(end_entity).map_err(|e| bad_cert(format!("WFM certificate: {e}")))?;
        if id != self.expected {
            return Err(bad_cert(format!(
                "WFM presented SPIFFE ID {id:?}, expected exactly {:?}",
                self.expected
            )));
        }
        let (_, parsed) = x509_parser::parse_x509_certificate(end_entity)
            .map_err(|e| bad_cert(format!("WFM certificate: {e}")))?;
        if parsed.is_ca() {
            return Err(bad_cert(
                "WFM certificate is a CA certificate, not an SVID".into(),
            ));
        }
        svid_key_usage(&parsed).map_err(|e| bad_cert(format!("WFM certificate: {e}")))?;
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Client configuration for rc.3: our SVID chain + key, the WFM checked by SPIFFE ID.
pub fn rc3_client_config(
    svid_chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    anchors: Arc<TrustAnchors>,
    expected_wfm: String,
) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(SpiffeServerVerifier::new(
            anchors,
            expected_wfm,
        )))
        .with_client_auth_cert(svid_chain, key)
        .map_err(|e| TlsError::Config(format!("our SVID and key do not fit together: {e}")))?;
    Ok(Arc::new(config))
}

/// Client configuration for rc.2: server-side TLS (1.3) trusting `roots`.
pub fn rc2_client_config(roots: RootCertStore) -> Result<Arc<ClientConfig>, TlsError> {
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// A SPIFFE trust bundle document (JWK set) or PEM, reduced to what we act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustBundle {
    pub anchors: Vec<CertificateDer<'static>>,
    pub sequence: Option<u64>,
    pub refresh_hint: Option<u64>,
}

impl TrustBundle {
    /// Parses a SPIFFE bundle (JSON) or a PEM file of CA certificates. Keys other than
    /// `x509-svid` are ignored; a bundle without X.509 anchors is refused (fail closed).
    pub fn parse(bytes: &[u8]) -> Result<Self, TlsError> {
        let text = String::from_utf8_lossy(bytes);
        let bundle = if text.trim_start().starts_with('{') {
            let doc: serde_json::Value = serde_json::from_slice(bytes)
                .map_err(|e| TlsError::Bundle(format!("not JSON: {e}")))?;
            let keys = doc["keys"]
                .as_array()
                .ok_or_else(|| TlsError::Bundle("no `keys` array".into()))?;
            let mut anchors = Vec::new();
            for key in keys.iter().filter(|k| k["use"] == "x509-svid") {
                let chain = key["x5c"]
                    .as_array()
                    .ok_or_else(|| TlsError::Bundle("x509-svid key without x5c".into()))?;
                let first = chain
                    .first()
                    .and_then(|c| c.as_str())
                    .ok_or_else(|| TlsError::Bundle("empty x5c".into()))?;
                use base64::Engine as _;
                let der = base64::engine::general_purpose::STANDARD
                    .decode(first)
                    .map_err(|e| TlsError::Bundle(format!("x5c is not base64: {e}")))?;
                anchors.push(CertificateDer::from(der));
            }
            Self {
                anchors,
                sequence: doc["spiffe_sequence"].as_u64(),
                refresh_hint: doc["spiffe_refresh_hint"].as_u64(),
            }
        } else {
            let anchors = CertificateDer::pem_slice_iter(bytes)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| TlsError::Bundle(format!("not PEM: {e}")))?;
            Self {
                anchors,
                sequence: None,
                refresh_hint: None,
            }
        };
        if bundle.anchors.is_empty() {
            return Err(TlsError::Bundle("no X.509 anchors (fail closed)".into()));
        }
        for anchor in &bundle.anchors {
            webpki::anchor_from_trusted_cert(anchor).map_err(|e| {
                TlsError::Bundle(format!("an anchor is not a usable certificate: {e}"))
            })?;
        }
        Ok(bundle)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_identity() {
        let id =
            ClientIdentity::parse("spiffe://example.org/margo/wfm/wfm-1/client/edge-01").unwrap();
        assert_eq!(id.expected_wfm(), "spiffe://example.org/margo/wfm/wfm-1");
        for bad in [
            "spiffe://example.org/margo/wfm/wfm-1",
            "spiffe://example.org/wfm/wfm-1/client/x",
            "spiffe://example.org/margo/wfm/../client/x",
            "https://example.org/margo/wfm/a/client/b",
            "spiffe://example.org/margo/wfm/a/client/b/c",
        ] {
            assert!(ClientIdentity::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn certificate_and_key_files_are_read_bounded_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec!["x.example".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        std::fs::set_permissions(
            &key_path,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .unwrap();
        assert_eq!(read_certs("cert", &cert_path).unwrap().len(), 1);
        read_key("key", &key_path).unwrap();
        // A device in the configuration is refused, not read until memory runs out.
        let err = read_certs("cert", Path::new("/dev/zero")).unwrap_err();
        assert!(err.to_string().contains("not a regular file"), "{err}");
        // Nor a file past the limit, even if it starts with a valid certificate.
        let mut big = cert.pem().into_bytes();
        big.resize(MAX_PEM_FILE as usize + 1, b'\n');
        std::fs::write(&cert_path, big).unwrap();
        let err = read_certs("cert", &cert_path).unwrap_err();
        assert!(err.to_string().contains("limit"), "{err}");
    }

    fn leaf_with(usages: Vec<rcgen::KeyUsagePurpose>) -> Vec<u8> {
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.key_usages = usages;
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn svid_leaf_key_usage() {
        use rcgen::KeyUsagePurpose::*;
        let check = |usages| {
            let der = leaf_with(usages);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            svid_key_usage(&cert)
        };
        assert!(check(vec![DigitalSignature]).is_ok());
        assert!(check(vec![DigitalSignature, KeyEncipherment]).is_ok());
        assert!(check(vec![]).is_ok(), "no extension: no restriction");
        let err = check(vec![KeyEncipherment]).unwrap_err();
        assert!(err.contains("digitalSignature"), "{err}");
        assert!(check(vec![DigitalSignature, KeyCertSign]).is_err());
        assert!(check(vec![DigitalSignature, CrlSign]).is_err());
    }

    #[test]
    fn key_files_must_be_private_regular_files() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("svid.key");
        std::fs::write(&key, b"-----BEGIN PRIVATE KEY-----\n").unwrap();
        for (mode, ok) in [
            (0o600, true),
            (0o400, true),
            (0o640, false),
            (0o644, false),
            (0o602, false),
        ] {
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(mode)).unwrap();
            let result = check_key_file("SVID key", &key);
            assert_eq!(result.is_ok(), ok, "mode {mode:o}: {result:?}");
            if let Err(err) = result {
                let text = err.to_string();
                let path = key.display().to_string();
                assert!(text.contains(&path), "{text}");
                assert!(text.contains(&format!("{mode:04o}")), "{text}");
                assert!(text.contains(&format!("chmod 600 {path}")), "{text}");
            }
        }
        // A link to a private file is judged by that file.
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
        let link = dir.path().join("link.key");
        std::os::unix::fs::symlink(&key, &link).unwrap();
        assert!(check_key_file("SVID key", &link).is_ok());
        // Not regular: a directory (a FIFO is refused the same way, see hostile_tls).
        let err = check_key_file("SVID key", dir.path()).unwrap_err();
        assert!(matches!(err, TlsError::KeyNotRegular { .. }), "{err}");
        assert!(check_key_file("SVID key", &dir.path().join("missing")).is_err());
    }

    #[test]
    fn bundles_fail_closed() {
        assert!(TrustBundle::parse(br#"{"keys": []}"#).is_err());
        assert!(TrustBundle::parse(br#"{"keys": [{"use": "jwt-svid", "kty": "EC"}]}"#).is_err());
        assert!(TrustBundle::parse(b"").is_err());
    }
}
