//! What a failed pull is: the kinds an operator acts on (each a status code), and the
//! mapping of oci-client's errors onto them with the whole cause chain and a hint.

use super::reference::ComponentRef;
use oci_client::errors::{OciDistributionError, OciErrorCode};

/// What went wrong, as far as the operator needs to know; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OciErrorKind {
    /// The reference or the registry settings are unusable (bad reference, plain HTTP
    /// to a remote registry, unreadable CA or credentials file).
    Config,
    /// No such repository, tag or blob.
    NotFound,
    /// The registry refused the credentials (or their absence).
    Unauthorized,
    /// Connection refused, DNS, TLS, timeout or a 5xx / 429 answer.
    Unreachable,
    /// Content does not match its digest.
    Digest,
    /// The artifact is not one Wasm component layer.
    MediaType,
    /// The layer is larger than `artifacts.max-component-size`.
    TooLarge,
    /// Anything else the registry did not do by the distribution spec.
    Protocol,
}

impl OciErrorKind {
    /// The status error code reported for this failure.
    pub fn code(self) -> &'static str {
        match self {
            Self::Config => "wasmgate.oci.config",
            Self::NotFound => "wasmgate.oci.not-found",
            Self::Unauthorized => "wasmgate.oci.unauthorized",
            Self::Unreachable => "wasmgate.oci.unreachable",
            Self::Digest => "wasmgate.oci.digest",
            Self::MediaType => "wasmgate.oci.media-type",
            Self::TooLarge => "wasmgate.oci.too-large",
            Self::Protocol => "wasmgate.oci",
        }
    }
}

/// A failed pull, naming the reference.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{reference}: {message}")]
pub struct OciError {
    pub kind: OciErrorKind,
    /// `oci://registry/repository:tag` as the deployment wrote it (plus the digest).
    pub reference: String,
    pub message: String,
}

fn classify(err: &OciDistributionError) -> OciErrorKind {
    use OciDistributionError as E;
    match err {
        E::UnauthorizedError { .. } | E::AuthenticationFailure(_) => OciErrorKind::Unauthorized,
        E::ImageManifestNotFoundError(_) => OciErrorKind::NotFound,
        E::DigestError(_) => OciErrorKind::Digest,
        E::RegistryError { envelope, .. } => {
            let codes: Vec<&OciErrorCode> = envelope.errors.iter().map(|e| &e.code).collect();
            if codes.iter().any(|c| {
                matches!(
                    c,
                    OciErrorCode::ManifestUnknown
                        | OciErrorCode::NameUnknown
                        | OciErrorCode::BlobUnknown
                        | OciErrorCode::NotFound
                )
            }) {
                OciErrorKind::NotFound
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Unauthorized | OciErrorCode::Denied))
            {
                OciErrorKind::Unauthorized
            } else if codes
                .iter()
                .any(|c| matches!(c, OciErrorCode::Toomanyrequests))
            {
                OciErrorKind::Unreachable
            } else {
                OciErrorKind::Protocol
            }
        }
        E::ServerError { code, .. } => match code {
            401 | 403 => OciErrorKind::Unauthorized,
            404 => OciErrorKind::NotFound,
            429 | 500..=599 => OciErrorKind::Unreachable,
            _ => OciErrorKind::Protocol,
        },
        E::RequestError(e) if e.is_connect() || e.is_timeout() || e.is_request() => {
            OciErrorKind::Unreachable
        }
        E::RequestError(e) if e.status().is_some_and(|s| s.is_server_error()) => {
            OciErrorKind::Unreachable
        }
        E::IoError(_) => OciErrorKind::Unreachable,
        _ => OciErrorKind::Protocol,
    }
}

/// The whole error chain on one line (reqwest hides the cause, e.g. the TLS error).
pub(super) fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

/// `err` as the operator sees it: its kind, the whole cause chain, and a hint at the
/// setting that usually fixes that kind.
pub(super) fn pull_error(r: &ComponentRef, what: &str, err: OciDistributionError) -> OciError {
    let kind = classify(&err);
    let text = chain(&err);
    let lower = text.to_ascii_lowercase();
    let hint = match kind {
        OciErrorKind::Unauthorized => {
            " (configure credentials in [registries.\"HOST\"] or artifacts.registry-auth-file)"
        }
        OciErrorKind::Unreachable if lower.contains("certificate") || lower.contains("tls") => {
            " (for a registry with a private CA set [registries.\"HOST\"] ca-file)"
        }
        OciErrorKind::Unreachable => " (is the registry up?)",
        _ => "",
    };
    r.error(kind, format!("{what}: {text}{hint}"))
}
