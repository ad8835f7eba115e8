//! How many connections a listener may hold and how long and big their request heads
//! may be, including the budget left by the process's open-file limit.

use std::time::Duration;

/// Limits of one listener's connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionLimits {
    /// From accept, or from the end of the previous response, until a complete
    /// request head arrived (hyper's header read timeout).
    pub header_timeout: Duration,
    /// With no request in progress and no byte of the next one received.
    pub idle_timeout: Duration,
    /// Open connections at most; further ones wait in the kernel's listen backlog.
    pub max_connections: usize,
    /// Request line plus headers; bigger heads get 431. Also hyper's buffer size, so
    /// a connection never buffers more than this of an unfinished head.
    pub max_header_size: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self {
            header_timeout: crate::ingress::DEFAULT_HEADER_TIMEOUT,
            idle_timeout: crate::ingress::DEFAULT_IDLE_TIMEOUT,
            max_connections: default_max_connections(),
            max_header_size: crate::ingress::DEFAULT_MAX_HEADER_SIZE as usize,
        }
    }
}

impl ConnectionLimits {
    /// The admin listener's: the same timeouts with its own, small connection budget.
    pub fn admin(&self) -> Self {
        Self {
            max_connections: ADMIN_MAX_CONNECTIONS,
            ..*self
        }
    }
}

/// Connections the admin listener serves at once (probes and scrapes are few).
pub const ADMIN_MAX_CONNECTIONS: usize = 32;
/// Ingress connections when the configuration names no number.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// File descriptors kept free of ingress connections by the default cap: the admin
/// listener, state and artifact files, registry and WFM connections, guests' outbound
/// requests.
const FD_RESERVE: usize = 256;

/// The open-file limit (soft), where the platform has one.
pub fn fd_limit() -> Option<usize> {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit only writes the struct it is given.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0 {
            return Some(usize::try_from(limit.rlim_cur).unwrap_or(usize::MAX));
        }
    }
    None
}

/// Raises the soft open-file limit to the hard one (as Go and nginx do): the default
/// soft limit of many distributions (1024) is what an idle-connection flood exhausts.
pub fn raise_fd_limit() {
    #[cfg(unix)]
    {
        let mut limit = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit / setrlimit only read or write the struct they are given.
        unsafe {
            if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
                return;
            }
            // Unlimited hard limits are refused by some kernels as a soft value.
            let wanted = limit.rlim_max.min(1 << 20);
            if wanted > limit.rlim_cur {
                limit.rlim_cur = wanted;
                let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
            }
        }
    }
}

/// 1024, or fewer when the open-file limit would not leave [`FD_RESERVE`] descriptors
/// and the admin listener's budget free.
pub fn default_max_connections() -> usize {
    fd_limit().map_or(DEFAULT_MAX_CONNECTIONS, |limit| {
        limit
            .saturating_sub(FD_RESERVE + ADMIN_MAX_CONNECTIONS)
            .clamp(16, DEFAULT_MAX_CONNECTIONS)
    })
}
