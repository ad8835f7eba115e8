//! What ends a cycle early, and how a WFM reply becomes one: the refusal's class and
//! retry hints decide whether the loop backs off, goes on, or keeps the previous state.

use crate::margo::http::{HttpError, Response};
use crate::margo::transport::TransportError;
use crate::margo::types::{Problem, ProblemClass};
use std::time::Duration;

/// Why a cycle stopped early.
#[derive(Debug, thiserror::Error)]
pub enum CycleError {
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error("WFM answered {status} to {what}: {detail}")]
    Refused {
        what: String,
        status: u16,
        /// The problem `type`, when the body had one.
        problem_type: Option<String>,
        class: ProblemClass,
        detail: String,
        retryable: bool,
        retry_after: Option<Duration>,
    },
    /// The desired state was refused; the previous state keeps running.
    #[error("desired state rejected: {0}")]
    Rejected(String),
    #[error("local state: {0}")]
    Local(String),
    /// The accepted-state record cannot be read: nothing is accepted until it can.
    #[error("accepted state unreadable: {0}")]
    StateUnreadable(String),
}

impl CycleError {
    pub(super) fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Refused { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// Whether the WFM refused who we are: nothing else is worth trying until it
    /// changes. Everything else a WFM refuses concerns one request only.
    pub(super) fn is_unauthorized(&self) -> bool {
        matches!(
            self,
            Self::Refused {
                class: ProblemClass::Unauthorized,
                ..
            }
        )
    }
}

pub(super) fn refused(what: String, response: &Response) -> CycleError {
    let problem = Problem::parse(&response.body).unwrap_or_default();
    let class = problem.class(response.status);
    let retry_after = response
        .header("retry-after")
        .and_then(|v| v.trim().parse::<u64>().ok())
        .or(problem.retry_after_seconds)
        .map(Duration::from_secs);
    // Margo: decide on `retryable`, not on the status code; without it, only the
    // transient statuses are worth another try.
    let retryable = problem
        .retryable
        .unwrap_or(matches!(response.status, 429 | 500 | 502 | 503 | 504));
    let problem_type = problem.kind.clone();
    let detail = problem.detail.or(problem.title).unwrap_or_else(|| {
        String::from_utf8_lossy(&response.body)
            .chars()
            .take(300)
            .collect()
    });
    CycleError::Refused {
        what,
        status: response.status,
        problem_type,
        class,
        detail,
        retryable,
        retry_after,
    }
}

pub(super) fn local<E: std::fmt::Display>(e: E) -> CycleError {
    CycleError::Local(e.to_string())
}

/// A reply over its size limit is desired state the device refuses (its digest cannot
/// even be checked), like a digest mismatch: a security refusal, not a network failure
/// to retry.
pub(super) fn oversize_is_rejected(
    err: TransportError,
    what: impl FnOnce() -> String,
) -> CycleError {
    match err {
        TransportError::Http(HttpError::TooLarge { limit, .. }) => {
            CycleError::Rejected(format!("{} is larger than {limit} bytes", what()))
        }
        other => other.into(),
    }
}
