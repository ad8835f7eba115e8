//! `[artifacts]` and `[registries."HOST"]`: where components come from, how much of
//! them is kept, and how each registry is reached.

use crate::units::{ByteSize, HumanDuration};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

/// `[artifacts]`: where components come from and how much of them is kept.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ArtifactsSettings {
    /// Largest component accepted (file or OCI layer); default 256Mi.
    pub max_component_size: Option<ByteSize>,
    /// Most disk space artifacts and compiled code may use together; unreferenced
    /// entries are evicted to stay below it. Default 2Gi.
    pub cache_quota: Option<ByteSize>,
    /// How long an artifact no deployment references is kept (for a quick rollback).
    /// Default 1h.
    pub gc_grace: Option<HumanDuration>,
    /// Docker-style `config.json` (`{"auths": {"HOST": {"auth": base64(USER:PASS)}}}`)
    /// for registries without credentials in `[registries]`.
    pub registry_auth_file: Option<PathBuf>,
    /// Bound on one manifest or layer download. Default 5m.
    pub pull_timeout: Option<HumanDuration>,
}

impl ArtifactsSettings {
    pub fn max_component_size(&self) -> u64 {
        self.max_component_size
            .map(|b| b.0)
            .unwrap_or(super::artifact::MAX_COMPONENT_BYTES)
    }

    pub fn cache_quota(&self) -> u64 {
        self.cache_quota.map(|b| b.0).unwrap_or(2 << 30)
    }

    pub fn gc_grace(&self) -> Duration {
        self.gc_grace
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(3600))
    }

    pub fn pull_timeout(&self) -> Duration {
        self.pull_timeout
            .map(|d| d.0)
            .unwrap_or(Duration::from_secs(300))
    }

    /// The checks serde's types do not make; the message names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.max_component_size.is_some_and(|b| b.0 < 8) {
            return Err("[artifacts] max-component-size: expected at least 8 bytes".into());
        }
        if self.pull_timeout.is_some_and(|d| d.0.is_zero()) {
            return Err("[artifacts] pull-timeout: expected more than 0s".into());
        }
        Ok(())
    }
}

/// How to talk to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryProtocol {
    Https,
    /// Plain HTTP: the default only for loopback registries; elsewhere it must be
    /// asked for explicitly.
    Http,
}

/// Per-registry settings, keyed by `HOST` or `HOST:PORT` as in `oci://HOST:PORT/...`.
pub type Registries = BTreeMap<String, RegistrySettings>;

/// `[registries."HOST:PORT"]`: credentials and TLS for one registry.
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct RegistrySettings {
    pub username: Option<String>,
    pub password: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Bearer token sent as is (instead of username / password).
    pub token: Option<String>,
    pub token_file: Option<PathBuf>,
    /// PEM file with the CA (or CAs) that signed the registry's certificate, trusted in
    /// addition to the system roots.
    pub ca_file: Option<PathBuf>,
    /// `https` (default) or `http` (default for 127.0.0.0/8, ::1 and localhost).
    pub protocol: Option<RegistryProtocol>,
}

/// Each `[registries."HOST"]` key and its credentials: one way to authenticate, given
/// once.
pub fn validate_registries(registries: &Registries) -> Result<(), String> {
    for (host, r) in registries {
        let at = format!("[registries.\"{host}\"]");
        let valid_host = !host.is_empty()
            && !host.contains('/')
            && !host.contains("://")
            && host.bytes().all(|b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']')
            });
        if !valid_host {
            return Err(format!(
                "{at}: expected a registry HOST or HOST:PORT as in oci://HOST:PORT/repo, without scheme or path"
            ));
        }
        let has_password = r.password.is_some() || r.password_file.is_some();
        let has_token = r.token.is_some() || r.token_file.is_some();
        if r.password.is_some() && r.password_file.is_some() {
            return Err(format!("{at}: set password or password-file, not both"));
        }
        if r.token.is_some() && r.token_file.is_some() {
            return Err(format!("{at}: set token or token-file, not both"));
        }
        if has_token && (r.username.is_some() || has_password) {
            return Err(format!(
                "{at}: set either token or username and password, not both"
            ));
        }
        if r.username.is_some() != has_password {
            return Err(format!(
                "{at}: username and password (or password-file) go together"
            ));
        }
    }
    Ok(())
}
