//! Which admin listener `wasmgate status` asks: the flag, the configuration, or the
//! bundled example's address.

use super::StatusCmdError;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;

/// Where `wasmgate status` looks without `--admin` or `--config`: the admin address of
/// the bundled example configuration (the host has no admin listener by default).
pub const DEFAULT_ADMIN: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 8081);

/// `--admin`, else the config file's `[http] admin`, else [`DEFAULT_ADMIN`].
pub fn admin_address(
    flag: Option<SocketAddr>,
    config: Option<&Path>,
) -> Result<SocketAddr, StatusCmdError> {
    if let Some(addr) = flag {
        return Ok(addr);
    }
    match config {
        Some(path) => crate::config::Config::load(path)?
            .http
            .admin
            .ok_or_else(|| StatusCmdError::NoAdmin {
                path: path.to_owned(),
            }),
        None => Ok(DEFAULT_ADMIN),
    }
}

/// A listener bound to the unspecified address is reached on loopback.
pub(super) fn dial_address(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::new(Ipv6Addr::LOCALHOST.into(), addr.port())
        }
        _ => addr,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admin_address_order() {
        let flag: SocketAddr = "127.0.0.1:7000".parse().unwrap();
        assert_eq!(admin_address(Some(flag), None).unwrap(), flag);
        assert_eq!(admin_address(None, None).unwrap(), DEFAULT_ADMIN);
        let dir = tempfile::tempdir().unwrap();
        let with = dir.path().join("with.toml");
        std::fs::write(&with, "[http]\nadmin = \"127.0.0.1:9009\"\n").unwrap();
        assert_eq!(admin_address(None, Some(&with)).unwrap().port(), 9009);
        assert_eq!(admin_address(Some(flag), Some(&with)).unwrap(), flag);
        let without = dir.path().join("without.toml");
        std::fs::write(&without, "[device]\nid = \"edge-01\"\n").unwrap();
        assert!(matches!(
            admin_address(None, Some(&without)),
            Err(StatusCmdError::NoAdmin { .. })
        ));
        assert_eq!(
            dial_address("0.0.0.0:8081".parse().unwrap()),
            "127.0.0.1:8081".parse().unwrap()
        );
        assert_eq!(
            dial_address("[::]:8081".parse().unwrap()),
            "[::1]:8081".parse().unwrap()
        );
    }
}
