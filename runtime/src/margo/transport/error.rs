//! One error type for both profiles, so callers decide on retrying without knowing
//! which profile failed.

use crate::margo::http as wire;
use crate::margo::tls::TlsError;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error(transparent)]
    Http(#[from] wire::HttpError),
    #[error("onboarding with the WFM failed: {0}")]
    Onboarding(String),
    #[error("cannot sign the request: {0}")]
    Signing(String),
    #[error("state directory: {0}")]
    State(String),
    #[error("manifest URL {url:?} does not point into the WFM at {base}")]
    ForeignUrl { url: String, base: String },
}

impl TransportError {
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Http(e) if e.is_transient())
    }

    /// A problem on the WFM's side or of the network between (not reachable, TLS
    /// handshake refused, onboarding refused): worth retrying without any local change.
    pub fn is_remote(&self) -> bool {
        matches!(self, Self::Http(_) | Self::Onboarding(_))
    }
}

pub(super) fn state_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::State(e.to_string())
}
