//! Talking to a service manager (systemd `Type=notify`): readiness once the listeners
//! are bound and the desired state on disk is applied, reloading while a SIGHUP is
//! applied, stopping when a drain begins.
//! Without `NOTIFY_SOCKET` in the environment every call is a no-op.

use std::sync::Once;

static READY: Once = Once::new();

/// Tells the service manager the host serves; only the first call sends anything.
pub fn ready(status: &str) {
    READY.call_once(|| {
        send(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(status),
        ])
    });
}

/// Tells the service manager a graceful shutdown started.
pub fn stopping() {
    send(&[
        sd_notify::NotifyState::Stopping,
        sd_notify::NotifyState::Status("draining"),
    ]);
}

/// A configuration reload (SIGHUP) began: `RELOADING=1` with the monotonic time, as
/// systemd asks. Nothing before the first readiness: the start is still in progress.
pub fn reloading() {
    if !READY.is_completed() {
        return;
    }
    let mut states = vec![sd_notify::NotifyState::Reloading];
    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
        states.push(now);
    }
    send(&states);
}

/// The reload ended, applied or refused (the host serves either way): ready again.
pub fn reloaded(status: &str) {
    if !READY.is_completed() {
        return;
    }
    send(&[
        sd_notify::NotifyState::Ready,
        sd_notify::NotifyState::Status(status),
    ]);
}

/// A failed notification is logged, never fatal: the host serves either way, and a
/// manager that waits for readiness times the start out on its own.
fn send(states: &[sd_notify::NotifyState]) {
    if let Err(err) = sd_notify::notify(states) {
        tracing::warn!(error = %err, "cannot notify the service manager (NOTIFY_SOCKET)");
    }
}
