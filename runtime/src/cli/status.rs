//! `wasmgate status`: reads the running host's `/status` document from its admin
//! listener and shows it as short tables, or passes it through for scripts (`--json`).
//!
//! The exit status is the verdict, so a health check or a script needs no JSON parsing:
//! [`EXIT_OK`], [`EXIT_FAILED`], [`EXIT_UNREACHABLE`].
//!
//! Split by job: `address` (which admin listener to ask), `fetch` (the `GET /status`
//! exchange and the errors that leave no document), `report` (the parsed document),
//! `verdict` (the problems and the exit codes they make) and `render` (the human tables),
//! with only [`run`], which wires them into the command, kept here.

mod address;
mod fetch;
mod render;
mod report;
mod verdict;

pub use address::{admin_address, DEFAULT_ADMIN};
pub use fetch::{fetch, StatusCmdError};
pub use report::{
    ComponentView, ConcurrencyView, DeploymentView, ErrorView, MemoryView, PartitionView,
    StatusReport, StorageView, TargetView, WfmView,
};
pub use verdict::{EXIT_FAILED, EXIT_OK, EXIT_UNREACHABLE};

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Runs the command: prints the document (or the tables) on stdout, a reason on stderr
/// when none could be read, and returns the exit status.
pub async fn run(
    admin: Option<SocketAddr>,
    config: Option<&Path>,
    json: bool,
    timeout: Duration,
) -> u8 {
    let fetched = match admin_address(admin, config) {
        Ok(addr) => fetch(addr, timeout).await,
        Err(err) => Err(err),
    };
    match fetched {
        Ok((body, report)) => {
            if json {
                let text = String::from_utf8_lossy(&body);
                println!("{}", text.trim_end());
            } else {
                print!("{}", report.render(SystemTime::now()));
            }
            report.exit_code()
        }
        Err(err) => {
            eprintln!("wasmgate status: {err}");
            EXIT_UNREACHABLE
        }
    }
}
