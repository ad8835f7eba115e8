//! Proves the mock WFM (tests/common/wfm.rs) is strict, using a small raw HTTP/1.1 client
//! over tokio-rustls written here (independent of the runtime's own Margo client).

mod common;

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use bytes::Bytes;
use common::pki::{self, Identity, Pki};
use common::wfm::{self, DownMode, Fixture, MockWfm, Profile, PREFIX};
use http::HeaderMap;
use http_body_util::{BodyExt, Full};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[allow(dead_code)]
fn assert_send_sync<T: Send + Sync>() {}
const _: fn() = || {
    assert_send_sync::<MockWfm>();
    assert_send_sync::<Pki>();
};

fn new_pki() -> Pki {
    Pki::new("plant-a.example", "wfm-1", "line3-client")
}

fn examples() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/margo/examples")
}

fn example(name: &str) -> Vec<u8> {
    std::fs::read(examples().join(name)).unwrap()
}

fn example_json(name: &str) -> Value {
    serde_json::from_slice(&example(name)).unwrap()
}

struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// Raw HTTPS client: one TLS connection per request, checks the WFM's SPIFFE ID.
struct Raw {
    addr: SocketAddr,
    connector: tokio_rustls::TlsConnector,
    expect_server_id: String,
}

impl Raw {
    fn new(mock: &MockWfm, pki: &Pki, client: Option<&Identity>) -> Raw {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(
                pki.root_der().to_vec(),
            ))
            .unwrap();
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])
            .unwrap()
            .with_root_certificates(roots);
        let mut config = match client {
            Some(id) => builder
                .with_client_auth_cert(id.rustls_chain(), id.rustls_key())
                .unwrap(),
            None => builder.with_no_client_auth(),
        };
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Raw {
            addr: mock.addr(),
            connector: tokio_rustls::TlsConnector::from(Arc::new(config)),
            expect_server_id: pki.wfm_spiffe_id(),
        }
    }

    fn host(&self) -> String {
        self.addr.to_string()
    }

    /// `path` is below the API prefix (e.g. `/api/v1/deployments`).
    async fn send(
        &self,
        method: &str,
        path: &str,
        headers: &[(String, String)],
        body: &[u8],
    ) -> Result<Resp, String> {
        let tcp = tokio::net::TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let name = rustls::pki_types::ServerName::IpAddress(self.addr.ip().into());
        let tls = self
            .connector
            .connect(name, tcp)
            .await
            .map_err(|e| format!("tls: {e}"))?;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
        let ids = pki::uri_sans(&leaf);
        if ids != vec![self.expect_server_id.clone()] {
            return Err(format!(
                "spiffe: WFM presented {ids:?}, expected {:?}",
                self.expect_server_id
            ));
        }
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
                .await
                .map_err(|e| format!("http handshake: {e}"))?;
        tokio::spawn(conn);
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(format!("{PREFIX}{path}"))
            .header("host", self.host());
        for (k, v) in headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let req = req.body(Full::new(Bytes::copy_from_slice(body))).unwrap();
        let resp = sender
            .send_request(req)
            .await
            .map_err(|e| format!("request: {e}"))?;
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    async fn call(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.send(method, path, &headers, body)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    async fn put_json(&self, path: &str, body: &Value) -> Resp {
        self.call(
            "PUT",
            path,
            &[("content-type", "application/json")],
            &serde_json::to_vec(body).unwrap(),
        )
        .await
    }

    async fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.call(
            "POST",
            path,
            &[("content-type", "application/json")],
            &serde_json::to_vec(body).unwrap(),
        )
        .await
    }
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn tar_entries(gz: &[u8]) -> Vec<(Vec<u8>, tar::EntryType, Vec<u8>)> {
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(gz));
    archive
        .entries()
        .unwrap()
        .map(|e| {
            let mut e = e.unwrap();
            let name = e.path_bytes().to_vec();
            let kind = e.header().entry_type();
            let mut data = vec![];
            e.read_to_end(&mut data).unwrap();
            (name, kind, data)
        })
        .collect()
}

fn problem_type(r: &Resp) -> String {
    assert_eq!(r.header("content-type"), "application/problem+json");
    r.json()["type"].as_str().unwrap().to_string()
}

fn has_violation(mock: &MockWfm, needle: &str) -> bool {
    mock.violations().iter().any(|v| v.contains(needle))
}

const CHILD_DEPLOYMENT: &str = "7c1f3e2a-5b4d-4e8f-9a61-2d0c8b7e4f13";
const WASM_DEPLOYMENT: &str = "0b9e6a4c-3f2d-4c1b-8e7a-6d5f4c3b2a19";

fn example_deployments() -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (CHILD_DEPLOYMENT, example("application-deployment.yaml")),
        (
            WASM_DEPLOYMENT,
            example("application-deployment-custom-wasm.yaml"),
        ),
    ]
}

#[tokio::test]
async fn rc3_happy_path() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    assert!(mock.base_url().starts_with("https://127.0.0.1:"));
    assert!(mock.base_url().ends_with("/v1alpha2/margo"));
    mock.set_deployments(&example_deployments());
    let version = mock.manifest_version();
    assert_eq!(version, 2, "first manifest is 1 (empty), the set bumps it");
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));

    // Capabilities: gateway first, then its child; the hosting device with `custom`.
    let r = c
        .put_json(
            "/api/v1/capabilities/line3-gw",
            &example_json("capabilities-gateway.json"),
        )
        .await;
    assert_eq!(r.status, 201);
    let r = c
        .put_json(
            "/api/v1/capabilities/line3-gw",
            &example_json("capabilities-gateway.json"),
        )
        .await;
    assert_eq!(r.status, 200);
    let r = c
        .put_json(
            "/api/v1/capabilities/line3-gw/press-07",
            &example_json("capabilities-gateway-child.json"),
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = c
        .put_json(
            "/api/v1/capabilities/northwind-edge-042",
            &example_json("capabilities-device.json"),
        )
        .await;
    assert_eq!(
        r.status,
        201,
        "custom is valid in rc.3: {}",
        String::from_utf8_lossy(&r.body)
    );

    // State manifest.
    let accept = [("accept", wfm::MANIFEST_MEDIA_TYPE)];
    let r = c.call("GET", "/api/v1/deployments", &accept, b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), wfm::MANIFEST_MEDIA_TYPE);
    assert_eq!(r.header("cache-control"), "private");
    let etag = r.header("etag").to_string();
    assert_eq!(etag, format!("\"{}\"", digest(&r.body)));
    let m = r.json();
    assert_eq!(m["manifestVersion"], json!(version));
    assert_eq!(m, mock.current_manifest());
    let deployments = m["deployments"].as_array().unwrap();
    assert_eq!(deployments.len(), 2);
    assert_eq!(m["bundle"]["mediaType"], wfm::BUNDLE_MEDIA_TYPE);
    let bundle_digest = m["bundle"]["digest"].as_str().unwrap();
    assert_eq!(
        m["bundle"]["url"],
        json!(format!("/api/v1/bundles/{bundle_digest}"))
    );

    // Conditional GET.
    let r = c
        .call(
            "GET",
            "/api/v1/deployments",
            &[
                ("accept", wfm::MANIFEST_MEDIA_TYPE),
                ("if-none-match", &etag),
            ],
            b"",
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());

    // Bundle.
    let r = c
        .call("GET", m["bundle"]["url"].as_str().unwrap(), &[], b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), wfm::BUNDLE_MEDIA_TYPE);
    assert_eq!(
        r.header("cache-control"),
        "private, max-age=31536000, immutable"
    );
    assert_eq!(r.header("etag"), format!("\"{bundle_digest}\""));
    assert_eq!(digest(&r.body), bundle_digest);
    assert_eq!(m["bundle"]["sizeBytes"], json!(r.body.len()));
    let entries = tar_entries(&r.body);
    assert_eq!(entries.len(), 2);
    for (name, kind, data) in &entries {
        assert_eq!(*kind, tar::EntryType::Regular);
        let d = deployments
            .iter()
            .find(|d| d["digest"] == json!(digest(data)))
            .expect("entry matches a manifest digest");
        assert_eq!(
            String::from_utf8_lossy(name),
            format!("{}.yaml", d["deploymentId"].as_str().unwrap())
        );
    }
    // Conditional bundle fetch.
    let r = c
        .call(
            "GET",
            m["bundle"]["url"].as_str().unwrap(),
            &[("if-none-match", &format!("\"{bundle_digest}\""))],
            b"",
        )
        .await;
    assert_eq!(r.status, 304);

    // One deployment YAML.
    let child = deployments
        .iter()
        .find(|d| d["deploymentId"] == CHILD_DEPLOYMENT)
        .unwrap();
    let r = c
        .call("GET", child["url"].as_str().unwrap(), &[], b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/yaml");
    assert_eq!(r.header("vary"), "Accept-Encoding");
    assert_eq!(r.body, example("application-deployment.yaml"));
    assert_eq!(child["digest"], json!(digest(&r.body)));

    // Status reports.
    let mut status = example_json("deployment-status.json");
    status["adoptedManifestVersion"] = json!(version);
    let path = format!("/api/v1/deployments/{CHILD_DEPLOYMENT}/status");
    let r = c.post_json(&path, &status).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    status["status"]["state"] = json!("installed");
    status["components"][1]["state"] = json!("installed");
    let r = c.post_json(&path, &status).await;
    assert_eq!(r.status, 200);
    let mut failed = example_json("deployment-status-failed-component.json");
    failed["adoptedManifestVersion"] = json!(version);
    let r = c
        .post_json(
            &format!("/api/v1/deployments/{WASM_DEPLOYMENT}/status"),
            &failed,
        )
        .await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));

    // A child goes away.
    let r = c
        .call("DELETE", "/api/v1/capabilities/line3-gw/press-07", &[], b"")
        .await;
    assert_eq!(r.status, 204);

    mock.assert_no_violations();
    assert_eq!(mock.statuses().len(), 3);
    assert_eq!(mock.statuses()[1]["status"]["state"], "installed");
    let caps = mock.capabilities();
    assert_eq!(
        caps.keys().collect::<Vec<_>>(),
        vec!["line3-gw", "northwind-edge-042"]
    );
    let requests = mock.requests();
    assert_eq!(requests[0].method, "PUT");
    assert_eq!(requests[0].path, "/api/v1/capabilities/line3-gw");
    assert_eq!(
        requests[0].peer_spiffe_id.as_deref(),
        Some(pki.client_spiffe_id().as_str())
    );
    assert!(mock.tls_failures().is_empty(), "{:?}", mock.tls_failures());

    // Same set again: no version bump; changed content: bump.
    mock.set_deployments(&example_deployments());
    assert_eq!(mock.manifest_version(), version);
    mock.set_deployments(&[(CHILD_DEPLOYMENT, example("application-deployment.yaml"))]);
    assert_eq!(mock.manifest_version(), version + 1);
    mock.set_deployments::<&str, &[u8]>(&[]);
    let m = mock.current_manifest();
    assert_eq!(m["bundle"], Value::Null);
    assert_eq!(m["deployments"], json!([]));
}

#[tokio::test]
async fn rc3_child_before_parent_is_404() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let r = c
        .put_json(
            "/api/v1/capabilities/line3-gw/press-07",
            &example_json("capabilities-gateway-child.json"),
        )
        .await;
    assert_eq!(r.status, 404);
    assert_eq!(
        problem_type(&r),
        "https://docs.margo.org/specification/problem-types#gateway-not-found"
    );
    assert!(has_violation(&mock, "before its parent"));
    // Unknown device delete.
    let r = c
        .call("DELETE", "/api/v1/capabilities/nope", &[], b"")
        .await;
    assert_eq!(r.status, 404);
    assert!(problem_type(&r).ends_with("#device-not-found"));
    // Percent-encoded hierarchy separators are refused.
    let r = c
        .put_json(
            "/api/v1/capabilities/line3-gw%2Fpress-07",
            &example_json("capabilities-gateway-child.json"),
        )
        .await;
    assert_eq!(r.status, 400);
}

#[tokio::test]
async fn rc3_wrong_client_identity_is_rejected() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    let body = example_json("capabilities-gateway.json");

    // Valid chain, wrong SPIFFE ID: 403 #not-authorized.
    let intruder = pki.client_svid_with_id(&format!("{}/client/intruder", pki.wfm_spiffe_id()));
    let c = Raw::new(&mock, &pki, Some(&intruder));
    let r = c.put_json("/api/v1/capabilities/line3-gw", &body).await;
    assert_eq!(r.status, 403);
    assert!(problem_type(&r).ends_with("#not-authorized"));
    assert!(has_violation(&mock, "not the accepted client"));

    // Chain to a foreign root: the handshake fails.
    let c = Raw::new(&mock, &pki, Some(&pki.foreign_ca_client()));
    let err = c
        .send("GET", "/api/v1/deployments", &[], b"")
        .await
        .err()
        .expect("foreign client certificate must fail");
    assert!(!err.is_empty());
    // No client certificate at all.
    let c = Raw::new(&mock, &pki, None);
    assert!(c
        .send("GET", "/api/v1/deployments", &[], b"")
        .await
        .is_err());
    mock.wait_for("two TLS failures", Duration::from_secs(5), |m| {
        m.tls_failures().len() >= 2
    })
    .await;
    assert!(mock.capabilities().is_empty());

    // Policy denial of the right client (retired relationship).
    mock.set_authorized(false);
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let r = c.call("GET", "/api/v1/deployments", &[], b"").await;
    assert_eq!(r.status, 403);
    mock.set_authorized(true);

    // A renewed SVID (same SPIFFE ID, new key) is accepted.
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_client_files(dir.path());
    let before = std::fs::read(&files.svid_cert).unwrap();
    let renewed = pki.renew_client_svid(dir.path());
    assert_ne!(std::fs::read(&files.svid_cert).unwrap(), before);
    assert_eq!(
        renewed.spiffe_id.as_deref(),
        Some(pki.client_spiffe_id().as_str())
    );
    let c = Raw::new(&mock, &pki, Some(&renewed));
    let r = c
        .call("GET", "/api/v1/deployments", &[("accept", "*/*")], b"")
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test]
async fn rc3_schema_and_semantic_errors_are_422() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    mock.set_deployments(&example_deployments());
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));

    let mut bad = example_json("capabilities-device.json");
    bad["properties"]["peripherals"] = json!([{"type": "laser"}]);
    let r = c
        .put_json("/api/v1/capabilities/northwind-edge-042", &bad)
        .await;
    assert_eq!(r.status, 422);
    assert!(problem_type(&r).ends_with("#semantic-error"));
    let errors = r.json()["errors"].as_array().unwrap().clone();
    assert!(errors
        .iter()
        .any(|e| e["field"] == "properties.peripherals.0.type"));

    for (field, value) in [
        ("/properties/interfaces", json!([{"type": "serial"}])),
        (
            "/properties/cpus",
            json!([{"cores": 2, "architecture": "sparc"}]),
        ),
        ("/properties/supportedRuntimes", json!([])),
    ] {
        let mut bad = example_json("capabilities-device.json");
        *bad.pointer_mut(field).unwrap() = value;
        let r = c
            .put_json("/api/v1/capabilities/northwind-edge-042", &bad)
            .await;
        assert_eq!(r.status, 422, "{field}");
    }
    // rc.2-style envelope is not allowed in rc.3 (additionalProperties: false).
    let mut bad = example_json("capabilities-gateway.json");
    bad["apiVersion"] = json!("device.margo.org/v1alpha1");
    let r = c.put_json("/api/v1/capabilities/line3-gw", &bad).await;
    assert_eq!(r.status, 422);
    // Path deviceId != properties.id.
    let r = c
        .put_json(
            "/api/v1/capabilities/other-gw",
            &example_json("capabilities-gateway.json"),
        )
        .await;
    assert_eq!(r.status, 422);
    // Half a hosting device.
    let mut bad = example_json("capabilities-device.json");
    bad["properties"].as_object_mut().unwrap().remove("storage");
    let r = c
        .put_json("/api/v1/capabilities/northwind-edge-042", &bad)
        .await;
    assert_eq!(r.status, 422);
    // Malformed JSON / wrong content type: 400.
    let r = c
        .call(
            "PUT",
            "/api/v1/capabilities/line3-gw",
            &[("content-type", "application/json")],
            b"{",
        )
        .await;
    assert_eq!(r.status, 400);
    assert!(problem_type(&r).ends_with("#invalid-request"));

    // Status: missing adoptedManifestVersion, path/body mismatch, unknown id, bad components.
    let version = mock.manifest_version();
    let mut status = example_json("deployment-status.json");
    status["adoptedManifestVersion"] = json!(version);
    let path = format!("/api/v1/deployments/{CHILD_DEPLOYMENT}/status");
    let mut missing = status.clone();
    missing
        .as_object_mut()
        .unwrap()
        .remove("adoptedManifestVersion");
    assert_eq!(c.post_json(&path, &missing).await.status, 422);
    let other = format!("/api/v1/deployments/{WASM_DEPLOYMENT}/status");
    assert_eq!(c.post_json(&other, &status).await.status, 422);
    let mut unknown = status.clone();
    unknown["deploymentId"] = json!("11111111-2222-4333-8444-555555555555");
    assert_eq!(
        c.post_json(
            "/api/v1/deployments/11111111-2222-4333-8444-555555555555/status",
            &unknown
        )
        .await
        .status,
        422
    );
    let mut comps = status.clone();
    comps["components"].as_array_mut().unwrap().pop();
    assert_eq!(c.post_json(&path, &comps).await.status, 422);
    let mut future = status.clone();
    future["adoptedManifestVersion"] = json!(version + 5);
    assert_eq!(c.post_json(&path, &future).await.status, 422);
    let mut no_device = status.clone();
    no_device.as_object_mut().unwrap().remove("deviceId");
    assert_eq!(c.post_json(&path, &no_device).await.status, 422);
    let mut state = status.clone();
    state["status"]["state"] = json!("done");
    assert_eq!(c.post_json(&path, &state).await.status, 422);
    assert!(mock.statuses().is_empty());
    // And the right one passes.
    assert_eq!(c.post_json(&path, &status).await.status, 201);

    // Accept negotiation.
    let r = c
        .call(
            "GET",
            "/api/v1/deployments",
            &[("accept", "application/json")],
            b"",
        )
        .await;
    assert_eq!(r.status, 406);
    assert!(problem_type(&r).ends_with("#server-cannot-generate-response"));
    // Unknown digest / prefix-less URL.
    let r = c
        .call("GET", "/api/v1/bundles/not-the-right-digest", &[], b"")
        .await;
    assert_eq!(r.status, 404);
    assert!(problem_type(&r).ends_with("#invalid-bundle"));
    assert!(!mock.violations().is_empty());
}

#[tokio::test]
async fn rc3_fixtures_alter_what_is_served() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    mock.set_deployments(&example_deployments());
    let clean = mock.current_manifest();
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let accept = [("accept", wfm::MANIFEST_MEDIA_TYPE)];

    let v0 = mock.manifest_version();
    mock.set_fixture(Fixture::UnsupportedDigestAlgorithm);
    assert_eq!(mock.manifest_version(), v0 + 1);
    let m = c
        .call("GET", "/api/v1/deployments", &accept, b"")
        .await
        .json();
    assert!(m["bundle"]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha512:"));
    assert!(m["deployments"][0]["digest"]
        .as_str()
        .unwrap()
        .starts_with("sha512:"));
    assert_eq!(m["bundle"]["url"], clean["bundle"]["url"]);
    // Fetching content of a manifest that must be rejected is a violation.
    let r = c
        .call("GET", m["bundle"]["url"].as_str().unwrap(), &[], b"")
        .await;
    assert_eq!(r.status, 200);
    assert!(has_violation(&mock, "must be rejected without fetching"));
    mock.clear_records();

    mock.set_fixture(Fixture::BundleDigestMismatch);
    let m = mock.current_manifest();
    assert_ne!(m["bundle"]["digest"], clean["bundle"]["digest"]);
    assert_eq!(m["bundle"]["url"], clean["bundle"]["url"]);
    mock.set_fixture(Fixture::DeploymentDigestMismatch);
    let m = mock.current_manifest();
    assert_ne!(
        m["deployments"][0]["digest"],
        clean["deployments"][0]["digest"]
    );
    assert_eq!(
        m["deployments"][1]["digest"],
        clean["deployments"][1]["digest"]
    );
    mock.set_fixture(Fixture::NonIncreasingManifestVersion);
    assert_eq!(mock.current_manifest()["manifestVersion"], 1);
    mock.set_fixture(Fixture::ManifestVersionRollback { to: 2 });
    assert_eq!(mock.current_manifest()["manifestVersion"], 2);
    mock.set_fixture(Fixture::WrongSizeBytes);
    let m = mock.current_manifest();
    assert_eq!(m["bundle"]["sizeBytes"], 1);
    assert_eq!(m["deployments"][1]["sizeBytes"], 1);
    mock.set_fixture(Fixture::BundleNullWithDeployments);
    let m = mock.current_manifest();
    assert_eq!(m["bundle"], Value::Null);
    assert_eq!(m["deployments"].as_array().unwrap().len(), 2);
    mock.set_fixture(Fixture::UnknownBundleMediaType);
    let m = mock.current_manifest();
    assert_eq!(m["bundle"]["mediaType"], wfm::UNKNOWN_BUNDLE_MEDIA_TYPE);

    let fetch_bundle = |m: Value| {
        let url = m["bundle"]["url"].as_str().unwrap().to_string();
        let d = m["bundle"]["digest"].as_str().unwrap().to_string();
        let c = &c;
        async move {
            let r = c.call("GET", &url, &[], b"").await;
            assert_eq!(r.status, 200);
            assert_eq!(digest(&r.body), d, "fixture bundles keep a correct digest");
            r
        }
    };
    mock.set_fixture(Fixture::TarPathTraversal);
    let r = fetch_bundle(mock.current_manifest()).await;
    let names: Vec<String> = tar_entries(&r.body)
        .into_iter()
        .map(|e| String::from_utf8(e.0).unwrap())
        .collect();
    assert!(names.contains(&"../evil.yaml".to_string()), "{names:?}");
    mock.set_fixture(Fixture::TarDuplicateEntry);
    let r = fetch_bundle(mock.current_manifest()).await;
    let entries = tar_entries(&r.body);
    assert_eq!(entries.len(), 3);
    assert_eq!(entries[0].0, entries[1].0);
    mock.set_fixture(Fixture::TarSymlink);
    let r = fetch_bundle(mock.current_manifest()).await;
    assert!(tar_entries(&r.body)
        .iter()
        .any(|e| e.1 == tar::EntryType::Symlink));
    mock.set_fixture(Fixture::OversizeBundle);
    let m = mock.current_manifest();
    let r = fetch_bundle(m.clone()).await;
    assert!(r.body.len() > wfm::OVERSIZE_LIMIT);
    assert_eq!(m["bundle"]["sizeBytes"], json!(r.body.len()));
    assert_eq!(
        tar_entries(&r.body).len(),
        2,
        "tar readers stop at end-of-archive"
    );

    let before = mock.manifest_version();
    mock.clear_fixture();
    assert_eq!(mock.manifest_version(), before + 1);
    let m = mock.current_manifest();
    assert_eq!(m["bundle"]["digest"], clean["bundle"]["digest"]);
    assert_eq!(m["manifestVersion"], json!(before + 1));
    mock.assert_no_violations();
}

#[tokio::test]
async fn down_modes() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc3, &pki);
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let get = || c.send("GET", "/api/v1/deployments", &[], b"");
    mock.set_down(DownMode::Refuse);
    let err = get().await.err().expect("refused");
    assert!(err.starts_with("connect"), "{err}");
    mock.set_down(DownMode::ServiceUnavailable {
        retry_after_secs: 7,
    });
    let r = get().await.unwrap();
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), "7");
    assert_eq!(r.json()["retryable"], true);
    mock.set_up();
    let r = c
        .call(
            "GET",
            "/api/v1/deployments",
            &[("accept", wfm::MANIFEST_MEDIA_TYPE)],
            b"",
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.json(),
        json!({"manifestVersion": 1, "bundle": null, "deployments": []})
    );
    mock.assert_no_violations();
}

// ---------------------------------------------------------------------------------------
// rc.2

struct Signer {
    key: p256::ecdsa::SigningKey,
    host: String,
}

enum Tamper {
    None,
    FlipSignatureBit,
    WrongContentDigest,
    BodyAfterSigning,
    DerSignature,
    Old,
}

impl Signer {
    /// Headers for an RFC 9421 signature over @method, @target-uri, @authority and
    /// (with a body) content-digest, built by hand here.
    fn headers(
        &self,
        method: &str,
        path: &str,
        body: &[u8],
        tamper: &Tamper,
    ) -> Vec<(String, String)> {
        let mut out = vec![];
        let mut components = vec!["@method", "@target-uri", "@authority"];
        let digest_of = |b: &[u8]| format!("sha-256=:{}:", B64.encode(Sha256::digest(b)));
        let content_digest = match tamper {
            Tamper::WrongContentDigest => digest_of(b"something else"),
            _ => digest_of(body),
        };
        if method == "GET" && path.ends_with("/deployments") {
            out.push(("accept".to_string(), wfm::MANIFEST_MEDIA_TYPE.to_string()));
        }
        if !body.is_empty() {
            components.push("content-digest");
            out.push(("content-type".to_string(), "application/json".to_string()));
            out.push(("content-digest".to_string(), content_digest.clone()));
        }
        let mut created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        if let Tamper::Old = tamper {
            created -= 3600;
        }
        let params = format!(
            "({});created={created};keyid=\"rc2-client\";alg=\"ecdsa-p256-sha256\"",
            components
                .iter()
                .map(|c| format!("\"{c}\""))
                .collect::<Vec<_>>()
                .join(" ")
        );
        let mut base = String::new();
        for c in &components {
            let v = match *c {
                "@method" => method.to_string(),
                "@target-uri" => format!("https://{}{PREFIX}{path}", self.host),
                "@authority" => self.host.clone(),
                "content-digest" => content_digest.clone(),
                _ => unreachable!(),
            };
            base.push_str(&format!("\"{c}\": {v}\n"));
        }
        base.push_str(&format!("\"@signature-params\": {params}"));
        use p256::ecdsa::signature::Signer as _;
        let sig: p256::ecdsa::Signature = self.key.sign(base.as_bytes());
        let mut bytes = match tamper {
            Tamper::DerSignature => sig.to_der().as_bytes().to_vec(),
            _ => sig.to_bytes().to_vec(),
        };
        if let Tamper::FlipSignatureBit = tamper {
            bytes[10] ^= 0x01;
        }
        out.push(("signature-input".into(), format!("sig1={params}")));
        out.push(("signature".into(), format!("sig1=:{}:", B64.encode(bytes))));
        out
    }
}

async fn signed(
    c: &Raw,
    s: &Signer,
    method: &str,
    path: &str,
    body: &[u8],
    tamper: Tamper,
) -> Resp {
    let headers = s.headers(method, path, body, &tamper);
    let mut sent = body.to_vec();
    if let Tamper::BodyAfterSigning = tamper {
        sent = br#"{"tampered": true}"#.to_vec();
    }
    c.send(method, path, &headers, &sent)
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
}

fn rc2_capabilities(id: &str) -> Value {
    json!({
        "apiVersion": wfm::RC2_CAPABILITIES_API_VERSION,
        "kind": "DeviceCapabilitiesManifest",
        "properties": {
            "id": id,
            "vendor": "Northwind Devices",
            "modelNumber": "NW-EC200",
            "serialNumber": "NW200-000042",
            "cpu": [{"cores": 4, "architecture": "arm64"}],
            "memory": "8Gi",
            "storage": "64Gi",
            "otelCollector": true,
            "supportedRuntimes": ["oci"],
            "supportedDeploymentTypes": ["compose"]
        }
    })
}

#[tokio::test]
async fn rc2_onboarding_and_signatures() {
    let pki = new_pki();
    let mock = MockWfm::start(Profile::Rc2, &pki);
    mock.set_deployments(&[(CHILD_DEPLOYMENT, example("application-deployment.yaml"))]);
    let c = Raw::new(&mock, &pki, None);

    // Root CA download.
    let r = c
        .call("GET", "/api/v1/onboarding/certificate", &[], b"")
        .await;
    assert_eq!(r.status, 200);
    let root = B64
        .decode(r.json()["certificate"].as_str().unwrap())
        .unwrap();
    assert_eq!(String::from_utf8(root).unwrap(), pki.root_pem());

    // Onboarding with a wrong kind, then properly.
    let client = pki.rc2_client();
    let onboarding = json!({
        "apiVersion": wfm::RC2_ONBOARDING_API_VERSION,
        "kind": "OnboardingRequest",
        "certificate": B64.encode(client.chain_pem.as_bytes()),
    });
    let mut bad = onboarding.clone();
    bad["kind"] = json!("Onboarding");
    assert_eq!(c.post_json("/api/v1/onboarding", &bad).await.status, 400);
    let mut der = onboarding.clone();
    der["certificate"] = json!(B64.encode(client.leaf_der()));
    assert_eq!(c.post_json("/api/v1/onboarding", &der).await.status, 400);
    let r = c.post_json("/api/v1/onboarding", &onboarding).await;
    assert_eq!(r.status, 201);
    let client_id = r.json()["clientId"].as_str().unwrap().to_string();
    assert_eq!(mock.rc2_client_ids(), vec![client_id.clone()]);
    mock.clear_records();

    use p256::pkcs8::DecodePrivateKey;
    let s = Signer {
        key: p256::ecdsa::SigningKey::from_pkcs8_pem(&client.key_pem).unwrap(),
        host: c.host(),
    };
    let base = format!("/api/v1/clients/{client_id}");

    // Correctly signed capabilities (rc.2 body shape).
    let caps = serde_json::to_vec(&rc2_capabilities("northwind-edge-042")).unwrap();
    let path = format!("{base}/capabilities/northwind-edge-042");
    let r = signed(&c, &s, "PUT", &path, &caps, Tamper::None).await;
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    let r = signed(&c, &s, "POST", &path, &caps, Tamper::None).await;
    assert_eq!(r.status, 201);
    // Signed GET of the manifest: URLs carry the clientId.
    let r = signed(
        &c,
        &s,
        "GET",
        &format!("{base}/deployments"),
        b"",
        Tamper::None,
    )
    .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let m = r.json();
    let url = m["deployments"][0]["url"].as_str().unwrap().to_string();
    assert!(url.starts_with(&format!("{base}/deployments/{CHILD_DEPLOYMENT}/sha256:")));
    let r = signed(
        &c,
        &s,
        "GET",
        m["bundle"]["url"].as_str().unwrap(),
        b"",
        Tamper::None,
    )
    .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("cache-control"),
        "public, max-age=31536000, immutable"
    );
    let r = signed(&c, &s, "GET", &url, b"", Tamper::None).await;
    assert_eq!(r.status, 200);
    // Status (rc.2 envelope, no adoptedManifestVersion).
    let mut status = example_json("deployment-status.json");
    let obj = status.as_object_mut().unwrap();
    obj.remove("adoptedManifestVersion");
    obj.insert("apiVersion".into(), json!(wfm::RC2_STATUS_API_VERSION));
    obj.insert("kind".into(), json!("DeploymentStatusManifest"));
    let status = serde_json::to_vec(&status).unwrap();
    let status_path = format!("{base}/deployments/{CHILD_DEPLOYMENT}/status");
    let r = signed(&c, &s, "POST", &status_path, &status, Tamper::None).await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    mock.assert_no_violations();
    assert_eq!(mock.statuses().len(), 1);
    assert_eq!(mock.capabilities().len(), 1);

    // Tampered signature: 401.
    let r = signed(
        &c,
        &s,
        "POST",
        &status_path,
        &status,
        Tamper::FlipSignatureBit,
    )
    .await;
    assert_eq!(r.status, 401);
    assert_eq!(
        problem_type(&r),
        "https://docs.margo.org/specification/problems/signature-verification-failed"
    );
    // Wrong Content-Digest (consistently signed): 400.
    let r = signed(
        &c,
        &s,
        "POST",
        &status_path,
        &status,
        Tamper::WrongContentDigest,
    )
    .await;
    assert_eq!(r.status, 400);
    assert!(problem_type(&r).ends_with("/invalid-digest-header"));
    // Body changed after signing: 400 (digest no longer matches).
    let r = signed(
        &c,
        &s,
        "POST",
        &status_path,
        &status,
        Tamper::BodyAfterSigning,
    )
    .await;
    assert_eq!(r.status, 400);
    // DER-encoded ECDSA signature, stale `created`, unsigned: 401.
    let r = signed(&c, &s, "POST", &status_path, &status, Tamper::DerSignature).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].as_str().unwrap().contains("DER"));
    let r = signed(
        &c,
        &s,
        "GET",
        &format!("{base}/deployments"),
        b"",
        Tamper::Old,
    )
    .await;
    assert_eq!(r.status, 401);
    let r = c
        .call("GET", &format!("{base}/deployments"), &[], b"")
        .await;
    assert_eq!(r.status, 401);
    // Signed by a different key: 401.
    let other = Signer {
        key: p256::ecdsa::SigningKey::from_pkcs8_pem(&pki.client_svid().key_pem).unwrap(),
        host: c.host(),
    };
    let r = signed(
        &c,
        &other,
        "GET",
        &format!("{base}/deployments"),
        b"",
        Tamper::None,
    )
    .await;
    assert_eq!(r.status, 401);
    // Unknown clientId: 404.
    let r = signed(
        &c,
        &s,
        "GET",
        "/api/v1/clients/nobody/deployments",
        b"",
        Tamper::None,
    )
    .await;
    assert_eq!(r.status, 404);
    assert!(problem_type(&r).ends_with("/invalid-client"));
    // rc.2 schema is strict: `custom` and the rc.3 `cpus` name are refused.
    let mut custom = rc2_capabilities("northwind-edge-042");
    custom["properties"]["supportedRuntimes"] = json!(["oci", "custom"]);
    custom["labels"] = json!({"example.com/wasm": true});
    let body = serde_json::to_vec(&custom).unwrap();
    assert_eq!(
        signed(&c, &s, "PUT", &path, &body, Tamper::None)
            .await
            .status,
        422
    );
    let mut rc3_shape = rc2_capabilities("northwind-edge-042");
    let cpu = rc3_shape["properties"]
        .as_object_mut()
        .unwrap()
        .remove("cpu")
        .unwrap();
    rc3_shape["properties"]["cpus"] = cpu;
    let body = serde_json::to_vec(&rc3_shape).unwrap();
    assert_eq!(
        signed(&c, &s, "PUT", &path, &body, Tamper::None)
            .await
            .status,
        422
    );
    let body = serde_json::to_vec(&example_json("capabilities-device.json")).unwrap();
    assert_eq!(
        signed(&c, &s, "PUT", &path, &body, Tamper::None)
            .await
            .status,
        422
    );

    let v = mock.violations();
    assert!(
        v.iter().any(|v| v.contains("signature does not verify")),
        "{v:?}"
    );
    assert!(
        v.iter()
            .any(|v| v.contains("content-digest sha-256 does not match")),
        "{v:?}"
    );
    assert_eq!(mock.statuses().len(), 1);
}

#[tokio::test]
async fn rc2_custom_can_be_allowed() {
    let pki = new_pki();
    let mock = MockWfm::start_with(
        Profile::Rc2,
        &pki,
        wfm::MockOptions {
            rc2_allow_custom: true,
            ..Default::default()
        },
    );
    let c = Raw::new(&mock, &pki, None);
    let client = pki.rc2_client();
    let r = c
        .post_json(
            "/api/v1/onboarding",
            &json!({
                "apiVersion": wfm::RC2_ONBOARDING_API_VERSION,
                "kind": "OnboardingRequest",
                "certificate": B64.encode(client.chain_pem.as_bytes()),
            }),
        )
        .await;
    let id = r.json()["clientId"].as_str().unwrap().to_string();
    use p256::pkcs8::DecodePrivateKey;
    let s = Signer {
        key: p256::ecdsa::SigningKey::from_pkcs8_pem(&client.key_pem).unwrap(),
        host: c.host(),
    };
    let mut custom = rc2_capabilities("dev");
    custom["properties"]["supportedRuntimes"] = json!(["oci", "custom"]);
    let path = format!("/api/v1/clients/{id}/capabilities/dev");
    // Margo's custom-runtime extension: a device reporting `custom` must report labels.
    let body = serde_json::to_vec(&custom).unwrap();
    assert_eq!(
        signed(&c, &s, "PUT", &path, &body, Tamper::None)
            .await
            .status,
        422
    );
    mock.clear_records();
    custom["labels"] = json!({ "wasm": true });
    let body = serde_json::to_vec(&custom).unwrap();
    assert_eq!(
        signed(&c, &s, "PUT", &path, &body, Tamper::None)
            .await
            .status,
        201
    );
    mock.assert_no_violations();
}

#[tokio::test]
async fn server_identity_variants_fail_client_checks() {
    let pki = new_pki();
    // Wrong WFM SPIFFE ID: the chain verifies, the ID check must fail.
    let wrong = pki.wfm_svid_with_id(&format!(
        "spiffe://{}/margo/wfm/other-wfm",
        pki.trust_domain
    ));
    let mock = MockWfm::start_with(
        Profile::Rc3,
        &pki,
        wfm::MockOptions {
            server_identity: Some(wrong),
            ..Default::default()
        },
    );
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let err = c
        .send("GET", "/api/v1/deployments", &[], b"")
        .await
        .err()
        .expect("wrong WFM SPIFFE ID must be refused");
    assert!(err.starts_with("spiffe"), "{err}");
    drop(mock);

    // Foreign root: the TLS handshake fails on the client side.
    let mock = MockWfm::start_with(
        Profile::Rc3,
        &pki,
        wfm::MockOptions {
            server_identity: Some(pki.foreign_ca_wfm()),
            ..Default::default()
        },
    );
    let c = Raw::new(&mock, &pki, Some(&pki.client_svid()));
    let err = c
        .send("GET", "/api/v1/deployments", &[], b"")
        .await
        .err()
        .unwrap();
    assert!(err.starts_with("tls"), "{err}");
}

#[test]
fn pki_files_and_svid_shape() {
    let pki = new_pki();
    let dir = tempfile::tempdir().unwrap();
    let files = pki.write_client_files(dir.path());
    let chain = pki::pem_certificates(&std::fs::read_to_string(&files.svid_cert).unwrap());
    assert_eq!(chain.len(), 2, "leaf + intermediate");
    assert_eq!(chain[1], pki.intermediate_der());
    assert_eq!(
        pki::check_svid_leaf(&chain[0]).unwrap(),
        "spiffe://plant-a.example/margo/wfm/wfm-1/client/line3-client"
    );
    assert!(std::fs::read_to_string(&files.svid_key)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));
    let server = pki.wfm_server();
    assert_eq!(
        pki::check_svid_leaf(server.leaf_der()).unwrap(),
        "spiffe://plant-a.example/margo/wfm/wfm-1"
    );
    let bundle: Value =
        serde_json::from_slice(&std::fs::read(&files.trust_bundle_json).unwrap()).unwrap();
    assert_eq!(bundle["spiffe_sequence"], 1);
    assert_eq!(bundle["keys"][0]["use"], "x509-svid");
    assert_eq!(bundle["keys"][0]["kty"], "EC");
    assert_eq!(bundle["keys"][0]["crv"], "P-256");
    assert_eq!(
        B64.decode(bundle["keys"][0]["x5c"][0].as_str().unwrap())
            .unwrap(),
        pki.root_der()
    );
    assert_eq!(
        std::fs::read_to_string(&files.trust_bundle_pem).unwrap(),
        pki.root_pem()
    );
    assert_eq!(
        pki::pem_certificates(&std::fs::read_to_string(&files.rc2_client_cert).unwrap()).len(),
        1
    );
    assert!(files.rc2_client_key.exists() && files.root_ca_pem.exists());
}

/// The signature base builder reproduces RFC 9421 §2.5's example, and the Content-Digest
/// of RFC 9530's example matches.
#[test]
fn rfc9421_signature_base_vector() {
    let input = r#"sig1=("@method" "@authority" "@path" "content-digest" "content-length" "content-type");created=1618884473;keyid="test-key-rsa-pss""#;
    let dict = wfm::parse_dictionary(input).unwrap();
    let wfm::Member::Inner(items, params) = &dict[0].1 else {
        panic!()
    };
    let headers = |name: &str| -> Option<String> {
        match name {
            "content-digest" => Some("sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:".into()),
            "content-length" => Some("18".into()),
            "content-type" => Some("application/json".into()),
            _ => None,
        }
    };
    let base = wfm::signature_base(
        "POST",
        "example.com",
        "/foo?param=Value&Pet=dog",
        &headers,
        items,
        params,
    )
    .unwrap();
    let expected = "\"@method\": POST\n\"@authority\": example.com\n\"@path\": /foo\n\
\"content-digest\": sha-512=:WZDPaVn/7XgHaAy8pmojAkGWoRx2UFChF41A2svX+TaPm+AbwAgBWnrIiYllu7BNNyealdVLvRwEmTHWXvJwew==:\n\
\"content-length\": 18\n\"content-type\": application/json\n\
\"@signature-params\": (\"@method\" \"@authority\" \"@path\" \"content-digest\" \"content-length\" \"content-type\");created=1618884473;keyid=\"test-key-rsa-pss\"";
    assert_eq!(base, expected);
    // RFC 9530 Appendix: {"hello": "world"}
    assert_eq!(
        B64.encode(Sha256::digest(b"{\"hello\": \"world\"}")),
        "X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE="
    );
    // Structured-field details: target-uri and query derivation.
    let dict = wfm::parse_dictionary(r#"a=("@target-uri" "@query");created=1"#).unwrap();
    let wfm::Member::Inner(items, params) = &dict[0].1 else {
        panic!()
    };
    let base = wfm::signature_base(
        "GET",
        "WWW.Example.com:443",
        "/p?x=1",
        &|_| None,
        items,
        params,
    )
    .unwrap();
    assert!(base.starts_with("\"@target-uri\": https://www.example.com/p?x=1\n\"@query\": ?x=1\n"));
}
