//! Command line: `wasmgate up`, `wasmgate run`, `wasmgate status` and (with the
//! compiler) `wasmgate compile`.

pub mod progress;
pub mod status;

use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;

#[derive(Debug, Parser)]
#[command(
    name = "wasmgate",
    version,
    about = "A Margo edge runtime for WebAssembly components"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the device: serve the deployments of a folder (local mode) or of the WFM.
    Up {
        /// Host configuration (TOML); without it one partition `default` gets a share of
        /// the machine.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Folder of ApplicationDeployment YAMLs, watched for changes.
        #[arg(long, short, default_value = "deployments")]
        deployments: PathBuf,
        /// Overrides `state-dir` of the config.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Overrides `[http] listen` (default 127.0.0.1:8080).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Overrides `[http] admin`.
        #[arg(long)]
        admin: Option<SocketAddr>,
    },
    /// Serve one component at `/`, like `wasmtime serve`.
    Run {
        /// The component (.wasm) exporting wasi:http/incoming-handler.
        component: PathBuf,
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Where key-value data and compiled code are kept.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Host configuration (TOML) for partition limits.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Serve requests from reused instances, each serving up to REQUESTS requests
        /// (the deployment field `reuse: {requests: REQUESTS}`; idle timeout 1s). Off by
        /// default: the guest's memory then survives from one request to the next.
        #[arg(long, value_name = "REQUESTS")]
        reuse: Option<u32>,
    },
    /// Show the running host's partitions, deployments and WFM sync state, read from its
    /// admin listener. Exit status: 0 all well, 1 something failed (a deployment, a
    /// capabilities report, the WFM exchange), 2 no status could be read.
    Status {
        /// The admin listener; default: `[http] admin` of `--config`, else 127.0.0.1:8081.
        #[arg(long)]
        admin: Option<SocketAddr>,
        /// The host configuration (TOML) whose `[http] admin` to use.
        #[arg(long, short)]
        config: Option<PathBuf>,
        /// Print the `/status` JSON document instead of tables.
        #[arg(long)]
        json: bool,
        /// How long to wait for the answer.
        #[arg(long, default_value = "5s", value_parser = crate::units::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Precompile a component for a device (build hosts only: the device build has no
    /// compiler). The device loads OUT when it lies next to the .wasm as `NAME.cwasm`.
    #[cfg(feature = "compiler")]
    Compile {
        /// The component (.wasm).
        component: PathBuf,
        /// The device's CPU architecture (baseline CPU features); default: this machine,
        /// with its own CPU features.
        #[arg(long)]
        target: Option<crate::engine::Arch>,
        /// Output file; default: the component's path with the extension `.cwasm`.
        #[arg(long, short)]
        output: Option<PathBuf>,
        /// The device's host configuration (TOML): its partitions' `instance-memory`
        /// shapes the code, so compile with the configuration the device runs.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}
