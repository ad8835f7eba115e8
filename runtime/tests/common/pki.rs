//! Test PKI for the Margo WFM client tests: a root CA, an intermediate CA, the WFM
//! server X.509-SVID and the WFM-client X.509-SVID (MIAF / WFM Identity Profile), plus
//! the material the legacy rc.2 profile needs (a plain client signing certificate).
//!
//! Every key is ECDSA P-256 (the MIAF mandatory-to-implement algorithm); certificates
//! are made with `rcgen`. Nothing here touches the network.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

/// A certificate chain (leaf first, then the intermediates a verifier needs; never the
/// root) and its private key.
#[derive(Clone, Debug)]
pub struct Identity {
    /// The leaf's single `spiffe://` URI SAN, when it has one.
    pub spiffe_id: Option<String>,
    /// PEM: leaf, then intermediate(s).
    pub chain_pem: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
    /// DER of every certificate in `chain_pem`, same order.
    pub chain_der: Vec<Vec<u8>>,
    /// PKCS#8 DER of the key.
    pub key_der: Vec<u8>,
}

impl Identity {
    pub fn leaf_der(&self) -> &[u8] {
        &self.chain_der[0]
    }

    /// PEM of the leaf alone.
    pub fn leaf_pem(&self) -> String {
        der_to_pem(&self.chain_der[0])
    }

    pub fn rustls_chain(&self) -> Vec<CertificateDer<'static>> {
        self.chain_der
            .iter()
            .map(|d| CertificateDer::from(d.clone()))
            .collect()
    }

    pub fn rustls_key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key_der.clone()))
    }

    /// Writes `<stem>.pem` (chain) and `<stem>.key` (PKCS#8) into `dir`.
    pub fn write(&self, dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        std::fs::create_dir_all(dir).unwrap();
        let cert = dir.join(format!("{stem}.pem"));
        let key = dir.join(format!("{stem}.key"));
        write_atomic(&cert, self.chain_pem.as_bytes());
        write_private_atomic(&key, self.key_pem.as_bytes());
        (cert, key)
    }
}

/// Paths written by [`Pki::write_client_files`].
#[derive(Clone, Debug)]
pub struct ClientFiles {
    /// Client X.509-SVID chain, PEM: leaf + intermediate.
    pub svid_cert: PathBuf,
    /// Client SVID key, PKCS#8 PEM.
    pub svid_key: PathBuf,
    /// Trust Bundle as PEM (the root CA).
    pub trust_bundle_pem: PathBuf,
    /// Trust Bundle as a SPIFFE bundle (JWK Set with `x509-svid` keys).
    pub trust_bundle_json: PathBuf,
    /// rc.2 profile: the client's signing certificate (PEM, leaf only) ...
    pub rc2_client_cert: PathBuf,
    /// ... and its key (PKCS#8 PEM, ECDSA P-256).
    pub rc2_client_key: PathBuf,
    /// The root CA PEM (same certificate as the trust bundle; the rc.2 pre-provisioned root).
    pub root_ca_pem: PathBuf,
}

impl ClientFiles {
    /// The `[wfm]` lines of the rc.2 profile that present these files.
    pub fn rc2_credentials(&self) -> String {
        format!(
            "profile = \"rc2\"\nclient-cert = {:?}\nclient-key = {:?}\nroot-ca = {:?}",
            self.rc2_client_cert, self.rc2_client_key, self.root_ca_pem
        )
    }

    /// The `[wfm]` lines of the rc.3 profile that present these files.
    pub fn rc3_credentials(&self) -> String {
        format!(
            "profile = \"rc3\"\nsvid-cert = {:?}\nsvid-key = {:?}\ntrust-bundle = {:?}",
            self.svid_cert, self.svid_key, self.trust_bundle_json
        )
    }
}

struct Ca {
    params: CertificateParams,
    key: KeyPair,
    der: Vec<u8>,
}

impl Ca {
    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }
}

/// Root + intermediate CA of one trust domain, and the identities issued from them.
pub struct Pki {
    pub trust_domain: String,
    pub wfm_id: String,
    pub client_id: String,
    root: Ca,
    intermediate: Ca,
    server: Identity,
    client: Mutex<Identity>,
    rc2_client: Identity,
}

impl Pki {
    /// Creates the CAs, the WFM server SVID `spiffe://<td>/margo/wfm/<wfm-id>` (with DNS SAN
    /// `localhost` and IP SAN `127.0.0.1`) and the client SVID
    /// `spiffe://<td>/margo/wfm/<wfm-id>/client/<client-id>`.
    pub fn new(trust_domain: &str, wfm_id: &str, client_id: &str) -> Pki {
        let root = make_ca(&format!("{trust_domain} test root CA"), trust_domain, None);
        let intermediate = make_ca(
            &format!("{trust_domain} test intermediate CA"),
            trust_domain,
            Some(&root),
        );
        let mut pki = Pki {
            trust_domain: trust_domain.to_string(),
            wfm_id: wfm_id.to_string(),
            client_id: client_id.to_string(),
            root,
            intermediate,
            server: placeholder(),
            client: Mutex::new(placeholder()),
            rc2_client: placeholder(),
        };
        pki.server = pki.wfm_svid_with_id(&pki.wfm_spiffe_id());
        pki.client = Mutex::new(pki.client_svid_with_id(&pki.client_spiffe_id()));
        pki.rc2_client = pki.issue_leaf(
            &format!("{client_id} (rc.2 signing certificate)"),
            vec![],
            LeafKind::Client,
        );
        pki
    }

    /// `spiffe://<td>/margo/wfm/<wfm-id>`
    pub fn wfm_spiffe_id(&self) -> String {
        format!("spiffe://{}/margo/wfm/{}", self.trust_domain, self.wfm_id)
    }

    /// `spiffe://<td>/margo/wfm/<wfm-id>/client/<client-id>`
    pub fn client_spiffe_id(&self) -> String {
        format!("{}/client/{}", self.wfm_spiffe_id(), self.client_id)
    }

    pub fn root_der(&self) -> &[u8] {
        &self.root.der
    }

    pub fn root_pem(&self) -> String {
        der_to_pem(&self.root.der)
    }

    pub fn intermediate_der(&self) -> &[u8] {
        &self.intermediate.der
    }

    /// The WFM server identity the mock presents by default.
    pub fn wfm_server(&self) -> Identity {
        self.server.clone()
    }

    /// The current client SVID (changes after [`Pki::renew_client_svid`]).
    pub fn client_svid(&self) -> Identity {
        self.client.lock().unwrap().clone()
    }

    /// The rc.2 client signing certificate (leaf only, issued by the intermediate).
    pub fn rc2_client(&self) -> Identity {
        self.rc2_client.clone()
    }

    /// SPIFFE bundle (JWK Set) holding the root CA as an `x509-svid` key.
    pub fn trust_bundle_json(&self, sequence: u64, refresh_hint_secs: u64) -> String {
        let raw = self.root.key.public_key_raw(); // 0x04 || X || Y
        assert_eq!(raw.len(), 65, "root key is not an uncompressed P-256 point");
        let b64url = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let bundle = serde_json::json!({
            "spiffe_sequence": sequence,
            "spiffe_refresh_hint": refresh_hint_secs,
            "keys": [{
                "use": "x509-svid",
                "kty": "EC",
                "crv": "P-256",
                "x": b64url.encode(&raw[1..33]),
                "y": b64url.encode(&raw[33..65]),
                "x5c": [base64::engine::general_purpose::STANDARD.encode(&self.root.der)],
            }],
        });
        serde_json::to_string_pretty(&bundle).unwrap()
    }

    /// Writes the client's provisioning material into `dir` (created if missing):
    /// `svid.pem`, `svid.key`, `bundle.pem`, `bundle.json`, `rc2-client.pem`,
    /// `rc2-client.key`, `root-ca.pem`.
    pub fn write_client_files(&self, dir: &Path) -> ClientFiles {
        std::fs::create_dir_all(dir).unwrap();
        let (svid_cert, svid_key) = self.client_svid().write(dir, "svid");
        let files = ClientFiles {
            svid_cert,
            svid_key,
            trust_bundle_pem: dir.join("bundle.pem"),
            trust_bundle_json: dir.join("bundle.json"),
            rc2_client_cert: dir.join("rc2-client.pem"),
            rc2_client_key: dir.join("rc2-client.key"),
            root_ca_pem: dir.join("root-ca.pem"),
        };
        write_atomic(&files.trust_bundle_pem, self.root_pem().as_bytes());
        write_atomic(
            &files.trust_bundle_json,
            self.trust_bundle_json(1, 300).as_bytes(),
        );
        write_atomic(&files.rc2_client_cert, self.rc2_client.chain_pem.as_bytes());
        write_private_atomic(&files.rc2_client_key, self.rc2_client.key_pem.as_bytes());
        write_atomic(&files.root_ca_pem, self.root_pem().as_bytes());
        files
    }

    /// Mints a replacement client SVID (same SPIFFE ID, new key and serial) and writes it
    /// over `svid.pem` / `svid.key` in `dir` (each file replaced atomically, cert first).
    pub fn renew_client_svid(&self, dir: &Path) -> Identity {
        let fresh = self.client_svid_with_id(&self.client_spiffe_id());
        fresh.write(dir, "svid");
        *self.client.lock().unwrap() = fresh.clone();
        fresh
    }

    /// A WFM server SVID with an arbitrary SPIFFE ID (e.g. `.../margo/wfm/other-wfm`),
    /// issued by this PKI's intermediate; also DNS SAN `localhost`, IP SAN `127.0.0.1`.
    pub fn wfm_svid_with_id(&self, spiffe_id: &str) -> Identity {
        self.issue_leaf(
            "wfm",
            vec![
                SanType::URI(spiffe_id.try_into().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            LeafKind::Server,
        )
    }

    /// A client SVID with an arbitrary SPIFFE ID (same intermediate, valid chain).
    pub fn client_svid_with_id(&self, spiffe_id: &str) -> Identity {
        self.issue_leaf(
            "wfm-client",
            vec![SanType::URI(spiffe_id.try_into().unwrap())],
            LeafKind::Client,
        )
    }

    /// A WFM server SVID with the right SPIFFE ID whose chain ends at a different root.
    pub fn foreign_ca_wfm(&self) -> Identity {
        let other = Pki::new(&self.trust_domain, &self.wfm_id, &self.client_id);
        other.wfm_server()
    }

    /// A client SVID with the right SPIFFE ID whose chain ends at a different root.
    pub fn foreign_ca_client(&self) -> Identity {
        let other = Pki::new(&self.trust_domain, &self.wfm_id, &self.client_id);
        other.client_svid()
    }

    /// A WFM server SVID with the right SPIFFE ID and chain but a defect of `shape`
    /// (validity window, key usage or extended key usage), for hostile-peer tests.
    pub fn wfm_svid_shaped(&self, shape: LeafShape) -> Identity {
        let id = self.wfm_spiffe_id();
        self.issue_leaf_shaped(
            "wfm",
            vec![
                SanType::URI(id.as_str().try_into().unwrap()),
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress([127, 0, 0, 1].into()),
            ],
            LeafKind::Server,
            shape,
        )
    }

    fn issue_leaf(&self, cn: &str, sans: Vec<SanType>, kind: LeafKind) -> Identity {
        self.issue_leaf_shaped(cn, sans, kind, LeafShape::Valid)
    }

    fn issue_leaf_shaped(
        &self,
        cn: &str,
        sans: Vec<SanType>,
        kind: LeafKind,
        shape: LeafShape,
    ) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::default();
        params.distinguished_name = dn(cn, &self.trust_domain);
        params.serial_number = Some(random_serial());
        let now = time::OffsetDateTime::now_utc();
        (params.not_before, params.not_after) = match shape {
            LeafShape::Expired => (now - time::Duration::days(8), now - time::Duration::days(1)),
            LeafShape::NotYetValid => {
                (now + time::Duration::days(1), now + time::Duration::days(8))
            }
            _ => (
                now - time::Duration::hours(1),
                now + time::Duration::days(7),
            ),
        };
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = match shape {
            LeafShape::NoDigitalSignature => vec![KeyUsagePurpose::KeyEncipherment],
            _ => vec![KeyUsagePurpose::DigitalSignature],
        };
        params.extended_key_usages = vec![match (kind, shape) {
            (LeafKind::Server, LeafShape::ClientAuthOnly) => ExtendedKeyUsagePurpose::ClientAuth,
            (LeafKind::Server, _) => ExtendedKeyUsagePurpose::ServerAuth,
            (LeafKind::Client, _) => ExtendedKeyUsagePurpose::ClientAuth,
        }];
        params.use_authority_key_identifier_extension = true;
        let spiffe_id = sans.iter().find_map(|s| match s {
            SanType::URI(u) if u.as_str().starts_with("spiffe://") => Some(u.as_str().to_string()),
            _ => None,
        });
        params.subject_alt_names = sans;
        let cert = params.signed_by(&key, &self.intermediate.issuer()).unwrap();
        let leaf = cert.der().to_vec();
        let chain_der = if matches!(kind, LeafKind::Client) && spiffe_id.is_none() {
            // rc.2 signing certificate: leaf only.
            vec![leaf]
        } else {
            vec![leaf, self.intermediate.der.clone()]
        };
        Identity {
            spiffe_id,
            chain_pem: chain_der.iter().map(|d| der_to_pem(d)).collect(),
            key_pem: key.serialize_pem(),
            chain_der,
            key_der: key.serialize_der(),
        }
    }
}

/// What is wrong with a leaf from [`Pki::wfm_svid_shaped`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeafShape {
    /// Nothing: the leaf the default constructors issue.
    Valid,
    /// `notAfter` a day in the past.
    Expired,
    /// `notBefore` a day in the future.
    NotYetValid,
    /// extendedKeyUsage `clientAuth` only: not usable for TLS server authentication.
    ClientAuthOnly,
    /// keyUsage `keyEncipherment` only: the key may not sign the TLS handshake.
    NoDigitalSignature,
}

#[derive(Clone, Copy)]
enum LeafKind {
    Server,
    Client,
}

fn placeholder() -> Identity {
    Identity {
        spiffe_id: None,
        chain_pem: String::new(),
        key_pem: String::new(),
        chain_der: vec![],
        key_der: vec![],
    }
}

fn dn(cn: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, org);
    dn.push(DnType::CommonName, cn);
    dn
}

fn random_serial() -> SerialNumber {
    let mut bytes = *uuid::Uuid::new_v4().as_bytes();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn make_ca(cn: &str, org: &str, parent: Option<&Ca>) -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::default();
    params.distinguished_name = dn(cn, org);
    params.serial_number = Some(random_serial());
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(365);
    params.is_ca = IsCa::Ca(match parent {
        None => BasicConstraints::Unconstrained,
        Some(_) => BasicConstraints::Constrained(0),
    });
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = parent.is_some();
    let cert = match parent {
        None => params.self_signed(&key).unwrap(),
        Some(parent) => params.signed_by(&key, &parent.issuer()).unwrap(),
    };
    Ca {
        der: cert.der().to_vec(),
        params,
        key,
    }
}

pub fn der_to_pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).unwrap());
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// DER of every `CERTIFICATE` block in `pem`, in order.
pub fn pem_certificates(pem: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut rest = pem;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let after = &rest[start + "-----BEGIN CERTIFICATE-----".len()..];
        let Some(end) = after.find("-----END CERTIFICATE-----") else {
            break;
        };
        let b64: String = after[..end]
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect();
        if let Ok(der) = base64::engine::general_purpose::STANDARD.decode(b64) {
            out.push(der);
        }
        rest = &after[end..];
    }
    out
}

/// The URI SANs of a DER certificate (empty when it has none or does not parse).
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    use x509_parser::prelude::*;
    let Ok((_, cert)) = X509Certificate::from_der(der) else {
        return vec![];
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return vec![];
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::URI(u) => Some(u.to_string()),
            _ => None,
        })
        .collect()
}

/// Checks the X.509-SVID leaf constraints of the WFM Identity Profile: exactly one URI
/// SAN, `spiffe` scheme with a non-root path, basicConstraints cA=false, no
/// keyCertSign/cRLSign. Returns the SPIFFE ID.
pub fn check_svid_leaf(der: &[u8]) -> Result<String, String> {
    use x509_parser::prelude::*;
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| format!("leaf does not parse: {e}"))?;
    let uris = uri_sans(der);
    if uris.len() != 1 {
        return Err(format!(
            "an X.509-SVID has exactly one URI SAN, this leaf has {}",
            uris.len()
        ));
    }
    let id = uris.into_iter().next().unwrap();
    let Some(rest) = id.strip_prefix("spiffe://") else {
        return Err(format!("URI SAN {id:?} is not a spiffe:// ID"));
    };
    match rest.split_once('/') {
        Some((td, path)) if !td.is_empty() && !path.is_empty() => {}
        _ => {
            return Err(format!(
                "SPIFFE ID {id:?} has no trust domain or a root path"
            ))
        }
    }
    if let Ok(Some(bc)) = cert.basic_constraints() {
        if bc.value.ca {
            return Err("leaf has basicConstraints cA=true".into());
        }
    }
    if let Ok(Some(ku)) = cert.key_usage() {
        if ku.value.key_cert_sign() || ku.value.crl_sign() {
            return Err("leaf has keyCertSign or cRLSign key usage".into());
        }
    }
    Ok(id)
}

fn write_atomic(path: &Path, bytes: &[u8]) {
    write_atomic_mode(path, bytes, 0o644);
}

/// Private keys as a provisioning agent leaves them: 0600 (the host refuses wider).
fn write_private_atomic(path: &Path, bytes: &[u8]) {
    write_atomic_mode(path, bytes, 0o600);
}

fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let tmp = path.with_extension(format!(
        "{}.tmp",
        path.extension().and_then(|e| e.to_str()).unwrap_or("")
    ));
    std::fs::write(&tmp, bytes).unwrap();
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
