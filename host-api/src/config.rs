//! `wasi:config/store`: read-only values from the deployment's `parameters`.
//!
//! The runtime decides which parameters reach which component (Margo `targets`); this
//! module only serves the resulting map.

use crate::bindings::wasi::config::store as generated;
use crate::WasmgateCtxView;
use std::collections::BTreeMap;

/// The configuration values one component sees, keyed by the parameter target's `pointer`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigVars(BTreeMap<String, String>);

impl ConfigVars {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn insert(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.0.insert(key.into(), value.into());
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for ConfigVars {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        Self(
            iter.into_iter()
                .map(|(k, v)| (k.into(), v.into()))
                .collect(),
        )
    }
}

/// Errors of `wasi:config/store`; the host never fails a lookup today, but the WIT has the case.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

impl generated::Host for WasmgateCtxView<'_> {
    fn get(&mut self, key: String) -> Result<Option<String>, ConfigError> {
        Ok(self.ctx.config.get(&key).map(str::to_owned))
    }

    fn get_all(&mut self) -> Result<Vec<(String, String)>, ConfigError> {
        Ok(self
            .ctx
            .config
            .iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect())
    }

    fn convert_error(&mut self, err: ConfigError) -> wasmtime::Result<generated::Error> {
        Ok(generated::Error::Io(err.0))
    }
}
