//! The profiles root the same API at different paths, and a manifest may name any URL:
//! resolving both here keeps requests on the WFM's own origin.

use super::error::state_err;
use super::{Profiled, Transport, TransportError};
use url::Url;

impl Transport {
    /// The `/api/v1/...` URL of an API-relative path.
    pub fn api_url(&self, path: &str) -> Result<Url, TransportError> {
        let relative = match &self.profile {
            Profiled::Rc3(_) => format!("api/v1/{path}"),
            Profiled::Rc2(rc2) => format!("api/v1/clients/{}/{path}", rc2.client_id),
        };
        self.base
            .join(&relative)
            .map_err(|e| state_err(format!("{relative}: {e}")))
    }

    /// Resolves a `url` from a state manifest: server-relative paths, with or without
    /// the base prefix, or absolute URLs on the WFM's own origin.
    pub fn manifest_url(&self, url: &str) -> Result<Url, TransportError> {
        let foreign = || TransportError::ForeignUrl {
            url: url.into(),
            base: self.base.to_string(),
        };
        let resolved = if url.starts_with("https://") || url.starts_with("http://") {
            Url::parse(url).map_err(|_| foreign())?
        } else if let Some(rest) = url.strip_prefix('/') {
            let prefix = self.base.path();
            if url.starts_with(prefix) && prefix != "/" {
                self.base.join(url).map_err(|_| foreign())?
            } else {
                self.base.join(rest).map_err(|_| foreign())?
            }
        } else {
            self.base.join(url).map_err(|_| foreign())?
        };
        if resolved.origin() != self.base.origin() {
            return Err(foreign());
        }
        Ok(resolved)
    }
}
