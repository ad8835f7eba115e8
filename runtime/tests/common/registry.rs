//! A real OCI distribution registry for the tests: Debian's `docker-registry` (the CNCF
//! distribution registry) on a free loopback port with a private storage directory,
//! optionally behind TLS with a test CA and htpasswd authentication. Components are
//! pushed with `oci-client`, the crate wasmgate pulls with. `.ci/run` installs the
//! package; without it these tests fail and say so, they never skip.

use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use sha2::{Digest, Sha256};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WASM_CONFIG: &str = "application/vnd.wasm.config.v0+json";
pub const WASM_LAYER: &str = "application/wasm";

/// Where the registry binary is, or a failure that says how to get it.
pub fn registry_binary() -> PathBuf {
    if let Ok(path) = std::env::var("WASMGATE_TEST_REGISTRY") {
        return PathBuf::from(path);
    }
    for candidate in ["/usr/bin/docker-registry", "/usr/local/bin/docker-registry"] {
        if Path::new(candidate).exists() {
            return PathBuf::from(candidate);
        }
    }
    panic!(
        "the OCI registry tests need Debian's `docker-registry` package (the CNCF distribution \
         registry, /usr/bin/docker-registry), which is not installed: run .ci/run, which \
         installs it (or `apt-get install -y docker-registry`; or point WASMGATE_TEST_REGISTRY \
         at a `registry` binary)"
    );
}

#[derive(Default, Clone)]
pub struct Options {
    /// Serve HTTPS with a certificate for 127.0.0.1 and localhost from a test CA.
    pub tls: bool,
    /// Require HTTP basic authentication (htpasswd) with this user and password.
    pub user: Option<(String, String)>,
}

pub struct Registry {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    options: Options,
    /// PEM of the test CA when `tls`.
    pub ca_pem: Option<PathBuf>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn test_ca(dir: &Path) -> PathBuf {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, "wasmgate test registry CA");
    ca.distinguished_name = dn;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut leaf =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    leaf.distinguished_name = DistinguishedName::new();
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let cert = leaf
        .signed_by(&key, &Issuer::from_params(&ca, &ca_key))
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("server.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("server.key"), key.serialize_pem()).unwrap();
    dir.join("ca.pem")
}

impl Registry {
    pub fn start() -> Self {
        Self::start_with(Options::default())
    }

    pub fn start_with(options: Options) -> Self {
        let binary = registry_binary();
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("storage")).unwrap();
        let ca_pem = options.tls.then(|| test_ca(dir.path()));
        if let Some((user, password)) = &options.user {
            let hash = bcrypt::hash(password, 4).unwrap();
            std::fs::write(dir.path().join("htpasswd"), format!("{user}:{hash}\n")).unwrap();
        }
        let mut registry = Registry {
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            dir,
            options,
            ca_pem,
        };
        registry.spawn(&binary);
        registry
    }

    fn config(&self, port: u16) -> String {
        let d = self.dir.path().display();
        let mut yaml = format!(
            "version: 0.1\nlog:\n  level: info\n  formatter: text\n  accesslog:\n    disabled: false\n\
             storage:\n  filesystem:\n    rootdirectory: {d}/storage\n  delete:\n    enabled: true\n\
             http:\n  addr: 127.0.0.1:{port}\n"
        );
        if self.options.tls {
            yaml.push_str(&format!(
                "  tls:\n    certificate: {d}/server.pem\n    key: {d}/server.key\n"
            ));
        }
        if self.options.user.is_some() {
            yaml.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: wasmgate-test\n    path: {d}/htpasswd\n"
            ));
        }
        yaml
    }

    fn spawn(&mut self, binary: &Path) {
        for _ in 0..5 {
            let port = if self.addr.port() == 0 {
                free_port()
            } else {
                self.addr.port()
            };
            let config = self.dir.path().join("config.yml");
            std::fs::write(&config, self.config(port)).unwrap();
            let log = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.log_path())
                .unwrap();
            let mut child = Command::new(binary)
                .arg("serve")
                .arg(&config)
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("starting docker-registry");
            let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                    self.addr = addr;
                    self.child = Some(child);
                    return;
                }
                if Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if self.addr.port() != 0 {
                // A restart on the same port: wait for it to be released.
                std::thread::sleep(Duration::from_millis(300));
            }
        }
        panic!("docker-registry did not start:\n{}", self.log());
    }

    /// Stops the registry (a registry that is down).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and storage.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn(&registry_binary());
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `oci://127.0.0.1:PORT/<repository>`.
    pub fn oci(&self, repository: &str) -> String {
        format!("oci://{}/{repository}", self.host())
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("registry.log")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    /// Access-log lines of requests wasmgate made (by user agent) containing `needle`
    /// (e.g. `GET /v2/examples/hello/blobs/`).
    pub fn wasmgate_requests(&self, needle: &str) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("\"wasmgate/") && l.contains(needle))
            .count()
    }

    /// All access-log lines of wasmgate's requests.
    pub fn wasmgate_request_lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| l.contains("\"wasmgate/") && l.contains("\" "))
            .map(str::to_owned)
            .collect()
    }

    /// Where the registry keeps blob `sha256:<hex>`, for tampering with it.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.strip_prefix("sha256:").unwrap();
        self.dir
            .path()
            .join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    fn client(&self) -> (Client, RegistryAuth) {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut config = ClientConfig {
            protocol: if self.options.tls {
                ClientProtocol::Https
            } else {
                ClientProtocol::Http
            },
            ..Default::default()
        };
        if let Some(ca) = &self.ca_pem {
            config.extra_root_certificates.push(Certificate {
                encoding: CertificateEncoding::Pem,
                data: std::fs::read(ca).unwrap(),
            });
        }
        let auth = match &self.options.user {
            Some((user, password)) => RegistryAuth::Basic(user.clone(), password.clone()),
            None => RegistryAuth::Anonymous,
        };
        (Client::try_from(config).unwrap(), auth)
    }

    /// Pushes an artifact: one blob per `(media type, bytes)` layer and a config; returns
    /// the manifest digest.
    pub fn push(
        &self,
        repository: &str,
        tag: &str,
        config: (&str, Vec<u8>),
        layers: &[(&str, Vec<u8>)],
        artifact_type: Option<&str>,
    ) -> String {
        let reference: Reference = format!("{}/{repository}:{tag}", self.host())
            .parse()
            .unwrap();
        let layers: Vec<oci_client::client::ImageLayer> = layers
            .iter()
            .map(|(media_type, bytes)| {
                oci_client::client::ImageLayer::new(bytes.clone(), media_type.to_string(), None)
            })
            .collect();
        let config = oci_client::client::Config::new(config.1, config.0.to_string(), None);
        let mut manifest = OciImageManifest::build(&layers, &config, None);
        manifest.media_type = Some(oci_client::manifest::OCI_IMAGE_MEDIA_TYPE.to_string());
        manifest.artifact_type = artifact_type.map(str::to_owned);
        let (client, auth) = self.client();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            client
                .push(&reference, &layers, config, &auth, Some(manifest))
                .await
                .unwrap_or_else(|e| panic!("push {reference}: {e}\n{}", self.log()));
            client
                .fetch_manifest_digest(&reference, &auth)
                .await
                .unwrap()
        })
    }

    /// Pushes `bytes` as a Wasm component in the CNCF Wasm OCI artifact layout; returns
    /// `(manifest digest, layer digest)`.
    pub fn push_component(&self, repository: &str, tag: &str, bytes: &[u8]) -> (String, String) {
        let layer = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        let config = serde_json::json!({
            "created": "2026-01-01T00:00:00Z",
            "architecture": "wasm",
            "os": "wasip2",
            "layerDigests": [layer],
            "component": {"exports": [], "imports": [], "target": null},
        });
        let manifest = self.push(
            repository,
            tag,
            (WASM_CONFIG, serde_json::to_vec(&config).unwrap()),
            &[(WASM_LAYER, bytes.to_vec())],
            None,
        );
        (manifest, layer)
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `bytes` (a component) with a custom section appended: the same program, another
/// digest, so tests can publish "new revisions" of an example guest.
pub fn with_custom_section(bytes: &[u8], name: &str, payload: &[u8]) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let mut section = Vec::new();
    leb(name.len(), &mut section);
    section.extend_from_slice(name.as_bytes());
    section.extend_from_slice(payload);
    let mut out = bytes.to_vec();
    out.push(0);
    leb(section.len(), &mut out);
    out.extend_from_slice(&section);
    out
}

/// `sha256:<hex>` of `bytes`.
pub fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}
