//! How a registry is reached: protocol, extra CAs and credentials from the files the
//! settings name (read bounded, off the async workers), and the client built from them
//! once per registry.

use super::error::{chain, OciError, OciErrorKind};
use super::pull::OciFetcher;
use super::reference::ComponentRef;
use crate::deploy::settings::{RegistryProtocol, RegistrySettings};
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::Client;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::time::Duration;

fn is_loopback(registry: &str) -> bool {
    let host = match registry.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => registry,
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// `https://host:port/v1/` -> `host:port`, as docker config keys are written.
fn normalize_registry_key(key: &str) -> &str {
    let key = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    key.split('/').next().unwrap_or(key)
}

#[derive(Debug, Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
}

#[derive(Debug, Deserialize)]
struct DockerAuth {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    registrytoken: Option<String>,
}

/// Credentials for `registry` from a docker-style auth file.
fn auth_from_file(path: &std::path::Path, registry: &str) -> Result<Option<RegistryAuth>, String> {
    use base64::Engine as _;
    let text = crate::fsutil::read_regular_bounded(path, MAX_AUTH_FILE)
        .map_err(|e| format!("registry auth file: {e}"))?;
    let config: DockerConfig = serde_json::from_slice(&text).map_err(|e| {
        format!(
            "the registry auth file {} is not a docker-style config.json: {e}",
            path.display()
        )
    })?;
    let wanted: &[&str] = if registry == "docker.io" {
        &["docker.io", "index.docker.io", "registry-1.docker.io"]
    } else {
        &[registry]
    };
    let Some(entry) = config
        .auths
        .iter()
        .find(|(key, _)| wanted.contains(&normalize_registry_key(key)))
        .map(|(_, entry)| entry)
    else {
        return Ok(None);
    };
    if let Some(token) = &entry.registrytoken {
        return Ok(Some(RegistryAuth::Bearer(token.clone())));
    }
    if let (Some(user), Some(password)) = (&entry.username, &entry.password) {
        return Ok(Some(RegistryAuth::Basic(user.clone(), password.clone())));
    }
    if let Some(auth) = &entry.auth {
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|e| {
                format!(
                    "{}: auths.{registry}.auth is not base64: {e}",
                    path.display()
                )
            })?;
        let decoded = String::from_utf8(decoded)
            .map_err(|_| format!("{}: auths.{registry}.auth is not UTF-8", path.display()))?;
        let (user, password) = decoded.split_once(':').ok_or_else(|| {
            format!(
                "{}: auths.{registry}.auth is not base64 of USER:PASSWORD",
                path.display()
            )
        })?;
        return Ok(Some(RegistryAuth::Basic(user.into(), password.into())));
    }
    Ok(None)
}

/// The largest docker-style auth file read (one holds a few entries).
const MAX_AUTH_FILE: u64 = 1 << 20;
/// The largest password or token file read (registry tokens are a few KiB at most).
const MAX_SECRET_FILE: u64 = 64 << 10;

/// A password or token file: a regular file of bounded size (a FIFO or a device named
/// by mistake must not hang the pull or fill memory), trailing newlines dropped.
fn read_secret(path: &std::path::Path) -> Result<String, String> {
    let bytes =
        crate::fsutil::read_regular_bounded(path, MAX_SECRET_FILE).map_err(|e| e.to_string())?;
    String::from_utf8(bytes)
        .map(|s| s.trim_end_matches(['\r', '\n']).to_owned())
        .map_err(|_| format!("{} is not UTF-8 text", path.display()))
}

/// A PEM file of registry CAs: a regular file of bounded size, like every other file
/// the configuration names.
const MAX_CA_FILE: u64 = 1 << 20;

/// What a registry client is built from that lives in files: the protocol, extra CAs
/// and the credentials.
struct RegistryFiles {
    protocol: ClientProtocol,
    certificates: Vec<Certificate>,
    auth: RegistryAuth,
}

impl RegistryFiles {
    /// Blocking: reads the CA, password, token and auth files `settings` name.
    fn read(
        registry: &str,
        settings: Option<&RegistrySettings>,
        auth_file: Option<&std::path::Path>,
    ) -> Result<Self, String> {
        let protocol = match settings.and_then(|s| s.protocol) {
            Some(RegistryProtocol::Http) => ClientProtocol::Http,
            Some(RegistryProtocol::Https) => ClientProtocol::Https,
            None if is_loopback(registry) => ClientProtocol::Http,
            None => ClientProtocol::Https,
        };
        let mut certificates = Vec::new();
        if let Some(ca) = settings.and_then(|s| s.ca_file.as_ref()) {
            let data = crate::fsutil::read_regular_bounded(ca, MAX_CA_FILE).map_err(|e| {
                format!("[registries.\"{registry}\"] ca-file {}: {e}", ca.display())
            })?;
            certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data,
            });
        }
        let mut auth = RegistryAuth::Anonymous;
        if let Some(s) = settings {
            let password = match (&s.password, &s.password_file) {
                (Some(p), _) => Some(p.clone()),
                (None, Some(file)) => Some(read_secret(file)?),
                (None, None) => None,
            };
            let token = match (&s.token, &s.token_file) {
                (Some(t), _) => Some(t.clone()),
                (None, Some(file)) => Some(read_secret(file)?),
                (None, None) => None,
            };
            if let Some(token) = token {
                auth = RegistryAuth::Bearer(token);
            } else if let (Some(user), Some(password)) = (&s.username, password) {
                auth = RegistryAuth::Basic(user.clone(), password);
            }
        }
        if auth == RegistryAuth::Anonymous {
            if let Some(file) = auth_file {
                if let Some(found) = auth_from_file(file, registry)? {
                    auth = found;
                }
            }
        }
        Ok(Self {
            protocol,
            certificates,
            auth,
        })
    }
}

/// Installs the process-wide rustls crypto provider (ring) once.
fn ensure_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another part of the process installed one first: fine.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

impl OciFetcher {
    /// The client and credentials for `r`'s registry, built on first use. The files the
    /// registry's settings name are read on a blocking thread: a slow disk or a FIFO
    /// named by mistake must not hold an async worker.
    pub(super) async fn client(
        &self,
        r: &ComponentRef,
    ) -> Result<(Client, RegistryAuth), OciError> {
        let registry = r.registry().to_owned();
        if let Some(found) = self.cached_client(&registry) {
            return Ok(found);
        }
        let config_err = |m: String| r.error(OciErrorKind::Config, m);
        let settings = self.settings.registries.get(&registry).cloned();
        let auth_file = self.settings.auth_file.clone();
        let files = {
            let registry = registry.clone();
            tokio::task::spawn_blocking(move || {
                RegistryFiles::read(&registry, settings.as_ref(), auth_file.as_deref())
            })
            .await
            .map_err(|e| config_err(format!("reading the registry's files failed: {e}")))?
            .map_err(config_err)?
        };
        ensure_crypto_provider();
        let config = ClientConfig {
            protocol: files.protocol,
            extra_root_certificates: files.certificates,
            platform_resolver: None,
            connect_timeout: Some(Duration::from_secs(10)),
            read_timeout: Some(Duration::from_secs(60)),
            user_agent: concat!("wasmgate/", env!("CARGO_PKG_VERSION")),
            ..Default::default()
        };
        let client = Client::try_from(config)
            .map_err(|e| config_err(format!("cannot set up the registry client: {}", chain(&e))))?;
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        // Two pulls of one registry may have built a client at once: keep the first.
        let entry = clients
            .entry(registry)
            .or_insert((client, files.auth))
            .clone();
        Ok(entry)
    }

    fn cached_client(&self, registry: &str) -> Option<(Client, RegistryAuth)> {
        let clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        clients.get(registry).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A FIFO, an oversized file or a missing one named as a registry's CA, password or
    /// token file is a configuration error naming the key, at once (never a hang).
    #[test]
    fn registry_files_are_read_bounded_and_regular() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success());
        let big = dir.path().join("big.pem");
        std::fs::write(&big, vec![b'A'; (MAX_CA_FILE + 1) as usize]).unwrap();
        let secret = dir.path().join("secret");
        std::fs::write(&secret, "s3cret\n").unwrap();
        let started = std::time::Instant::now();
        for (settings, what) in [
            (
                RegistrySettings {
                    ca_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "ca-file",
            ),
            (
                RegistrySettings {
                    ca_file: Some(big),
                    ..Default::default()
                },
                "ca-file",
            ),
            (
                RegistrySettings {
                    username: Some("u".into()),
                    password_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "fifo",
            ),
            (
                RegistrySettings {
                    token_file: Some(fifo.clone()),
                    ..Default::default()
                },
                "fifo",
            ),
        ] {
            let err = RegistryFiles::read("reg.example.com", Some(&settings), None)
                .err()
                .unwrap_or_else(|| panic!("{settings:?} accepted"));
            assert!(err.contains(what), "{err}");
        }
        assert!(started.elapsed() < Duration::from_secs(5));
        let ok = RegistrySettings {
            username: Some("u".into()),
            password_file: Some(secret),
            ..Default::default()
        };
        let files = RegistryFiles::read("reg.example.com", Some(&ok), None).unwrap();
        assert_eq!(files.auth, RegistryAuth::Basic("u".into(), "s3cret".into()));
        assert!(matches!(files.protocol, ClientProtocol::Https));
        let local = RegistryFiles::read("127.0.0.1:5000", None, None).unwrap();
        assert!(matches!(local.protocol, ClientProtocol::Http));
    }

    #[test]
    fn loopback_and_auth_file() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(
            &path,
            r#"{"auths": {"https://reg.example.com/v1/": {"auth": "dXNlcjpwYXNz"},
                          "tok.example.com": {"registrytoken": "t0k"}}}"#,
        )
        .unwrap();
        assert_eq!(
            auth_from_file(&path, "reg.example.com").unwrap(),
            Some(RegistryAuth::Basic("user".into(), "pass".into()))
        );
        assert_eq!(
            auth_from_file(&path, "tok.example.com").unwrap(),
            Some(RegistryAuth::Bearer("t0k".into()))
        );
        assert_eq!(auth_from_file(&path, "other.example.com").unwrap(), None);
    }
}
