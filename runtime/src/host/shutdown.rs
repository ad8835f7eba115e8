//! SIGTERM / SIGINT: the drain, its bound, and the second signal that cuts it short.

use crate::ingress;
use std::time::Duration;

/// Exit status when a graceful shutdown overran its bound.
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 124;

/// SIGTERM and SIGINT (Ctrl-C).
pub(super) struct Signals {
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
}

impl Signals {
    pub(super) fn install() -> std::io::Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{signal, SignalKind};
            Ok(Self {
                term: signal(SignalKind::terminate())?,
                interrupt: signal(SignalKind::interrupt())?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// The next signal's name and the exit status that reports being ended by it
    /// (128 + its number, as a shell does).
    async fn next(&mut self) -> (&'static str, i32) {
        #[cfg(unix)]
        {
            tokio::select! {
                _ = self.term.recv() => ("SIGTERM", 128 + 15),
                _ = self.interrupt.recv() => ("SIGINT", 128 + 2),
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            ("Ctrl-C", 130)
        }
    }
}

/// First signal: stop accepting and drain (in-flight requests and streaming bodies run
/// to their deadlines); the process exits 0 once everything closed. The drain is bounded
/// by `bound`: past it, or at a second signal, the process exits at once with
/// [`EXIT_SHUTDOWN_TIMEOUT`] or 128 + the signal's number.
pub(super) async fn handle_signals(
    mut signals: Signals,
    shutdown: ingress::Shutdown,
    bound: Duration,
) {
    let (name, _) = signals.next().await;
    println!(
        "wasmgate: {name} received; draining for at most {}s (a second signal stops at once)",
        bound.as_secs_f64()
    );
    shutdown.trigger();
    crate::service::stopping();
    // A thread, not a task: the bound holds even if every async worker is stuck.
    let watchdog = std::thread::Builder::new()
        .name("shutdown-bound".into())
        .spawn(move || {
            std::thread::sleep(bound);
            eprintln!(
                "wasmgate: shutdown did not finish within {}s; exiting with in-flight requests cut",
                bound.as_secs_f64()
            );
            std::process::exit(EXIT_SHUTDOWN_TIMEOUT);
        });
    if let Err(err) = watchdog {
        tracing::error!(error = %err, "cannot start the shutdown watchdog; a second signal still stops at once");
    }
    let (name, status) = signals.next().await;
    eprintln!("wasmgate: second signal ({name}); exiting without waiting for in-flight requests");
    std::process::exit(status);
}
