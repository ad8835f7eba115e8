//! Connection handling shared by the ingress and admin listeners: a cap on open
//! connections (one budget per listener, so a flood on one leaves the other answering),
//! header and idle timeouts, a bounded request head, accept errors backed off without
//! flooding the log, graceful drain, and a lingering close so that a response sent
//! before the request body was read (413) reaches the client instead of a reset.
//!
//! Split by job: `limits` (the connection budget and head limits, sized against the
//! open-file limit), `accept` (the accept loop, its back-off and throttled warnings, and
//! the drain), `trim` (handing heap back after a connection burst), `activity` (what the
//! idle timer watches) and `connection` (serving one connection and its lingering close).

mod accept;
mod activity;
mod connection;
mod limits;
mod trim;

pub use accept::serve_with;
pub use limits::{
    default_max_connections, fd_limit, raise_fd_limit, ConnectionLimits, ADMIN_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS,
};
