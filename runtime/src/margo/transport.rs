//! The two transport profiles behind one type. Everything above speaks in API-relative
//! paths (`capabilities/edge-01`, `deployments`, ...); this module turns them into URLs,
//! authenticates (mTLS or RFC 9421 signatures) and sends them.
//!
//! Split by job: `error` (the error type and which failures are transient or remote),
//! `urls` (API-relative paths and manifest URLs onto the WFM's origin), `rc3` (the
//! mTLS client config rebuilt on SVID renewal, and the anchors it trusts), `trust`
//! (keeping the rc3 trust bundle current through discovery or its file), `onboarding`
//! (rc2 client files, the WFM's root CA and the one-time `clientId`) and `rc2` (RFC 9421
//! signing of each request).

mod error;
mod onboarding;
mod rc2;
mod rc3;
mod trust;
mod urls;

pub use error::TransportError;

use super::http::{self as wire, Response};
use super::settings::{Profile, ProfileSettings, WfmSettings};
use bytes::Bytes;
use error::state_err;
use rc2::Rc2;
use rc3::Rc3;
use std::path::Path;
use url::Url;

enum Profiled {
    Rc3(Box<Rc3>),
    Rc2(Rc2),
}

pub struct Transport {
    base: Url,
    profile: Profiled,
}

impl Transport {
    /// Prepares the transport; for rc2 this onboards (once: the `clientId` is kept in
    /// `state_dir`).
    pub async fn new(settings: &WfmSettings, state_dir: &Path) -> Result<Self, TransportError> {
        let mut base = settings.url.clone();
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let profile = match &settings.credentials {
            ProfileSettings::Rc3 {
                svid_cert,
                svid_key,
                trust,
            } => {
                // Reads certificate, key and bundle files (and may be slow on a busy
                // SD card): off the async workers the ingress shares.
                let (svid, trust, state_dir) = (
                    (svid_cert.clone(), svid_key.clone()),
                    trust.clone(),
                    state_dir.to_owned(),
                );
                let rc3 = tokio::task::spawn_blocking(move || Rc3::open(svid, trust, &state_dir))
                    .await
                    .map_err(state_err)??;
                Profiled::Rc3(Box::new(rc3))
            }
            ProfileSettings::Rc2 {
                client_cert,
                client_key,
                root_ca,
            } => Profiled::Rc2(
                Rc2::onboard(
                    (client_cert, client_key),
                    root_ca.as_deref(),
                    &base,
                    state_dir,
                )
                .await?,
            ),
        };
        Ok(Self { base, profile })
    }

    pub fn profile(&self) -> Profile {
        match self.profile {
            Profiled::Rc3(_) => Profile::Rc3,
            Profiled::Rc2(_) => Profile::Rc2,
        }
    }

    /// Sends a request to `url`, authenticated per profile.
    pub async fn send(
        &self,
        method: ::http::Method,
        url: &Url,
        headers: &[(&str, String)],
        body: Option<Bytes>,
        max_body: u64,
    ) -> Result<Response, TransportError> {
        let mut builder = ::http::Request::builder().method(method).uri(url.as_str());
        for (name, value) in headers {
            builder = builder.header(*name, value);
        }
        if body.is_some() {
            builder = builder.header(::http::header::CONTENT_TYPE, "application/json");
        }
        let request = builder
            .body(body.unwrap_or_default())
            .map_err(|e| state_err(format!("building request: {e}")))?;
        match &self.profile {
            Profiled::Rc3(rc3) => Ok(wire::send(rc3.client_config()?, request, max_body).await?),
            Profiled::Rc2(rc2) => {
                let request = rc2.sign(request).await?;
                Ok(wire::send(rc2.tls.clone(), request, max_body).await?)
            }
        }
    }
}
