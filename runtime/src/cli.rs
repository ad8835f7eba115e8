//! Command line: `wasmgate up` and `wasmgate run`.

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
    },
}
