//! `[http]`: the listeners and the limits every connection is held to.

use super::ConnectionLimits;
use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::net::SocketAddr;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct HttpSettings {
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Admin listener (`/healthz`, `/status`, `/metrics`); off when absent.
    pub admin: Option<SocketAddr>,
    /// Host names the admin listener answers to besides IP literals and `localhost`
    /// (a DNS-rebinding page arrives with its own name in `Host` and is refused).
    #[serde(default)]
    pub admin_hosts: Vec<String>,
    /// Largest request body handed to a guest; a larger declared `content-length` is
    /// answered 413 before routing.
    #[serde(default = "default_max_body")]
    pub max_request_body: ByteSize,
    /// Longest a connection may take to deliver a complete request head, counted from
    /// accept or from the end of its previous response. Default 10s.
    pub header_timeout: Option<HumanDuration>,
    /// Longest a connection may stay open without a request in progress and without a
    /// byte of the next one. Default 5s.
    pub idle_timeout: Option<HumanDuration>,
    /// Most ingress connections open at once; more wait in the listen backlog. Default
    /// 1024, lowered when the open-file limit leaves less room.
    pub max_connections: Option<u32>,
    /// Largest request head (request line and headers); larger ones get 431. Default 32Ki.
    pub max_header_size: Option<ByteSize>,
    /// Bound on a graceful shutdown (SIGTERM / Ctrl-C). Default: the largest partition
    /// `timeout` plus its `queue-timeout` plus 5s.
    pub shutdown_timeout: Option<HumanDuration>,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            admin: None,
            admin_hosts: Vec::new(),
            max_request_body: default_max_body(),
            header_timeout: None,
            idle_timeout: None,
            max_connections: None,
            max_header_size: None,
            shutdown_timeout: None,
        }
    }
}

pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(5);
pub const DEFAULT_MAX_HEADER_SIZE: u64 = 32 << 10;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_max_body() -> ByteSize {
    ByteSize(16 << 20)
}

impl HttpSettings {
    /// The ingress connection limits; `max_connections` as configured (`None`: a
    /// default that fits the open-file limit).
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_timeout: self.header_timeout.map_or(DEFAULT_HEADER_TIMEOUT, |d| d.0),
            idle_timeout: self.idle_timeout.map_or(DEFAULT_IDLE_TIMEOUT, |d| d.0),
            max_connections: self
                .max_connections
                .map_or_else(super::default_max_connections, |n| n as usize),
            max_header_size: self
                .max_header_size
                .map_or(DEFAULT_MAX_HEADER_SIZE, |b| b.0) as usize,
        }
    }

    /// The checks serde's types do not make; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        let invalid = |m: &str| Err(format!("[http] {m}"));
        let positive = [
            ("header-timeout", self.header_timeout),
            ("idle-timeout", self.idle_timeout),
            ("shutdown-timeout", self.shutdown_timeout),
        ];
        for (key, value) in positive {
            if value.is_some_and(|d| d.0.is_zero()) {
                return invalid(&format!("{key}: expected more than 0s"));
            }
        }
        if self
            .max_connections
            .is_some_and(|n| n == 0 || n > 1_000_000)
        {
            return invalid("max-connections: expected 1 to 1000000");
        }
        if self
            .max_header_size
            .is_some_and(|b| !(1 << 10..=1 << 20).contains(&b.0))
        {
            return invalid("max-header-size: expected 1Ki to 1Mi");
        }
        if let Some(bad) = self
            .admin_hosts
            .iter()
            .find(|h| !crate::names::is_dns_name(h))
        {
            return invalid(&format!(
                "admin-hosts: {bad:?} is not a DNS name (letters, digits, '-' and '.', no port, no wildcard)"
            ));
        }
        Ok(())
    }
}
