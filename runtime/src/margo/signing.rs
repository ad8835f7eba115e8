//! RFC 9421 request signatures as the rc.2 profile sends them, built so that Margo's
//! reference stack accepts them.
//!
//! Margo's reference device agent, its Symphony-based WFM and the conformance mock all
//! verify with the Go library `lestrrat-go/htmsig` v1.0.0. Its verifier does not take
//! `@signature-params` from the received `Signature-Input` (RFC 9421 §3.2) but rebuilds
//! it with the parameters in a fixed order: `created`, `expires`, `keyid`, `alg`. A
//! signature is only accepted there when we sign exactly that serialisation, so this
//! module emits the parameters in that order (any order is valid RFC 9421, so strict
//! verifiers accept it too). The `httpsig` crate serialises `alg` before `keyid` and
//! cannot be told otherwise, so the base is built here; `httpsig` still does the
//! cryptography (`SecretKey::sign`, raw `r || s` for ECDSA P-256 as §3.3.4 asks).
//! (`httpsig`'s own verifier likewise rebuilds the parameters in its fixed order
//! `created;alg;keyid`; no single order satisfies both narrow verifiers, and the Go
//! reference stack is the one Margo WFMs run.)
//!
//! Conservative choices, each because the reference stack is narrower than the RFC:
//! - parameters `created;keyid;alg` only: no `expires`, `nonce` or `tag`;
//! - covered components `@method`, `@target-uri`, `@authority` and, with a body,
//!   `content-digest`: the ones Margo rc.2 names, no component parameters;
//! - one signature, labelled `sig1`;
//! - `Content-Digest` with `sha-256` only (RFC 9530), base64 with padding.

use httpsig_hyper::prelude::{AlgorithmName, SecretKey, SigningKey};
use sha2::{Digest as _, Sha256};

/// The label of the one signature we send.
pub const SIGNATURE_LABEL: &str = "sig1";

#[derive(Debug, thiserror::Error)]
pub enum SigningError {
    #[error("keyid {0:?} cannot be an RFC 8941 string (printable ASCII only)")]
    KeyId(String),
    #[error("request URI {0:?} has no authority to sign")]
    NoAuthority(String),
    #[error("signing failed: {0}")]
    Crypto(String),
}

/// The headers a signed request carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureHeaders {
    /// `Content-Digest`, when the request has a body.
    pub content_digest: Option<String>,
    pub signature_input: String,
    pub signature: String,
}

/// `sha-256=:BASE64:` over `body` (RFC 9530).
pub fn content_digest(body: &[u8]) -> String {
    use base64::Engine as _;
    let digest = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(body));
    format!("sha-256=:{digest}:")
}

/// An RFC 8941 sf-string, or `None` if `text` holds a character it cannot carry.
fn sf_string(text: &str) -> Option<String> {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => return None,
        }
    }
    out.push('"');
    Some(out)
}

/// `@authority` (RFC 9421 §2.2.3): host and port, lowercase, without the scheme's
/// default port.
fn authority(uri: &::http::Uri) -> Option<String> {
    let host = uri.host()?.to_ascii_lowercase();
    let default_port = match uri.scheme_str() {
        Some("http") => Some(80),
        _ => Some(443),
    };
    Some(match uri.port_u16() {
        Some(port) if Some(port) != default_port => format!("{host}:{port}"),
        _ => host,
    })
}

/// `@target-uri` (RFC 9421 §2.2.2): the absolute request URI, built from the parts so
/// the authority is normalised the same way as `@authority`.
fn target_uri(uri: &::http::Uri, authority: &str) -> String {
    let scheme = uri.scheme_str().unwrap_or("https");
    let path = uri.path_and_query().map_or("/", |pq| pq.as_str());
    format!("{scheme}://{authority}{path}")
}

/// The `@signature-params` value: components in the order given, then `created`,
/// `keyid`, `alg` (the reference verifier's fixed order).
fn signature_params(components: &[&str], created: u64, keyid: &str) -> String {
    let list = components
        .iter()
        .map(|c| format!("\"{c}\""))
        .collect::<Vec<_>>()
        .join(" ");
    format!(
        "({list});created={created};keyid={keyid};alg=\"{}\"",
        AlgorithmName::EcdsaP256Sha256.as_str()
    )
}

/// Signs a request to `uri` with `key` as `keyid`, at Unix time `created`.
pub fn sign(
    method: &::http::Method,
    uri: &::http::Uri,
    body: &[u8],
    key: &SecretKey,
    keyid: &str,
    created: u64,
) -> Result<SignatureHeaders, SigningError> {
    let keyid = sf_string(keyid).ok_or_else(|| SigningError::KeyId(keyid.to_owned()))?;
    let authority = authority(uri).ok_or_else(|| SigningError::NoAuthority(uri.to_string()))?;
    let digest = (!body.is_empty()).then(|| content_digest(body));
    let mut lines = vec![
        ("@method", method.as_str().to_owned()),
        ("@target-uri", target_uri(uri, &authority)),
        ("@authority", authority),
    ];
    if let Some(digest) = &digest {
        lines.push(("content-digest", digest.clone()));
    }
    let components: Vec<&str> = lines.iter().map(|(name, _)| *name).collect();
    let params = signature_params(&components, created, &keyid);
    let mut base = String::new();
    for (name, value) in &lines {
        base.push_str(&format!("\"{name}\": {value}\n"));
    }
    base.push_str(&format!("\"@signature-params\": {params}"));
    let raw = key
        .sign(base.as_bytes())
        .map_err(|e| SigningError::Crypto(e.to_string()))?;
    use base64::Engine as _;
    Ok(SignatureHeaders {
        content_digest: digest,
        signature_input: format!("{SIGNATURE_LABEL}={params}"),
        signature: format!(
            "{SIGNATURE_LABEL}=:{}:",
            base64::engine::general_purpose::STANDARD.encode(raw)
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_in_the_reference_order() {
        let params = signature_params(&["@method", "@authority"], 7, "\"dev-1\"");
        assert_eq!(
            params,
            r#"("@method" "@authority");created=7;keyid="dev-1";alg="ecdsa-p256-sha256""#
        );
    }

    #[test]
    fn authority_is_normalised() {
        let uri: ::http::Uri = "https://WFM.Example:443/a?b=1".parse().unwrap();
        let a = authority(&uri).unwrap();
        assert_eq!(a, "wfm.example");
        assert_eq!(target_uri(&uri, &a), "https://wfm.example/a?b=1");
        let uri: ::http::Uri = "https://127.0.0.1:3001/x".parse().unwrap();
        assert_eq!(authority(&uri).unwrap(), "127.0.0.1:3001");
    }

    #[test]
    fn keyid_escaping() {
        assert_eq!(sf_string(r#"a"b\c"#).unwrap(), r#""a\"b\\c""#);
        assert!(sf_string("tab\there").is_none());
        assert!(sf_string("é").is_none());
    }
}
