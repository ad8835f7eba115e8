use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use wasmgate::cli::{Cli, Command};
use wasmgate::config::Config;
use wasmgate::host::{single_component_document, DesiredSource, Host};

fn load_config(path: Option<&PathBuf>) -> anyhow::Result<Config> {
    match path {
        Some(path) => Ok(Config::load(path)?),
        None => {
            let mut config = Config::default();
            config.fill_defaults();
            Ok(config)
        }
    }
}

fn main() -> anyhow::Result<std::process::ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("WASMGATE_LOG").unwrap_or_else(|_| {
                tracing_subscriber::EnvFilter::new("info,cranelift=warn,wasmtime=warn")
            }),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let cli = Cli::parse();
    if let Command::Status {
        admin,
        config,
        json,
        timeout,
    } = &cli.command
    {
        // One short exchange: no worker threads needed.
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("cannot start the async runtime")?;
        let code = runtime.block_on(wasmgate::cli::status::run(
            *admin,
            config.as_deref(),
            *json,
            *timeout,
        ));
        return Ok(code.into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmgate")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        match cli.command {
            Command::Up {
                config,
                deployments,
                state_dir,
                listen,
                admin,
            } => {
                let mut config = load_config(config.as_ref())?;
                if let Some(dir) = state_dir {
                    config.state_dir = dir;
                }
                if let Some(listen) = listen {
                    config.http.listen = listen;
                }
                if admin.is_some() {
                    config.http.admin = admin;
                }
                let source = match config.wfm_settings()? {
                    Some(settings) => DesiredSource::Wfm(Box::new(settings)),
                    None => {
                        if !deployments.is_dir() {
                            tracing::warn!(dir = %deployments.display(), "deployments folder does not exist yet; serving nothing until it appears");
                        }
                        DesiredSource::Folder(deployments)
                    }
                };
                Host::new(config)?.run(source).await
            }
            Command::Run {
                component,
                listen,
                state_dir,
                config,
            } => {
                let mut config = load_config(config.as_ref())?;
                if let Some(dir) = state_dir {
                    config.state_dir = dir;
                }
                if let Some(listen) = listen {
                    config.http.listen = listen;
                }
                let document = single_component_document(&component)?;
                Host::new(config)?.run(DesiredSource::Fixed(document)).await
            }
            #[cfg(feature = "compiler")]
            Command::Compile {
                component,
                target,
                output,
                config,
            } => compile(&component, target, output, config.as_ref()),
            Command::Status { .. } => unreachable!("handled before the runtime starts"),
        }
    })
    .map(|()| std::process::ExitCode::SUCCESS)
}

/// `wasmgate compile`: the device's engine settings come from its configuration, so the
/// code fits the pool it will run in.
#[cfg(feature = "compiler")]
fn compile(
    component: &std::path::Path,
    target: Option<wasmgate::engine::Arch>,
    output: Option<PathBuf>,
    config: Option<&PathBuf>,
) -> anyhow::Result<()> {
    let config = load_config(config)?;
    let progress =
        wasmgate::cli::progress::Progress::stderr(&format!("reading {}", component.display()));
    let repository = component.to_string_lossy();
    let source = wasmgate::deploy::artifact::load_local(&repository, std::path::Path::new("."))?;
    let memory = wasmgate::host::pool_sizing(&config).max_instance_memory;
    progress.step(&format!(
        "compiling {} ({} bytes) for {}",
        component.display(),
        source.bytes.len(),
        target
            .and_then(|t| clap::ValueEnum::to_possible_value(&t))
            .map_or_else(|| "this machine".to_owned(), |t| t.get_name().to_owned())
    ));
    let (header, file) = wasmgate::engine::precompiled::compile(&source.bytes, target, memory)
        .with_context(|| format!("cannot precompile {}", component.display()))?;
    let output = output.unwrap_or_else(|| component.with_extension("cwasm"));
    progress.step(&format!("writing {}", output.display()));
    wasmgate::fsutil::write_atomic(&output, &file)
        .with_context(|| format!("cannot write {}", output.display()))?;
    let elapsed = progress.elapsed();
    progress.finish();
    println!(
        "wasmgate: compiled {} ({}) for {}, memory reservation {} bytes, engine {}: {} ({} bytes, {:.2}s)",
        component.display(),
        source.digest,
        header.profile.target,
        header.profile.memory_reservation,
        header.fingerprint,
        output.display(),
        file.len(),
        elapsed.as_secs_f64()
    );
    Ok(())
}
