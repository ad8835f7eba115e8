use anyhow::Context;
use clap::Parser;
use std::path::PathBuf;
use wasmgate::cli::{Cli, Command};
use wasmgate::config::Config;
use wasmgate::host::{single_component_document, ConfigSource, DesiredSource, Host, Overrides};

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

/// Longest the OTLP pipeline may take per signal to send what is queued at exit.
const TELEMETRY_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

fn main() -> anyhow::Result<std::process::ExitCode> {
    let cli = Cli::parse();
    if let Command::Status {
        admin,
        config,
        json,
        timeout,
    } = &cli.command
    {
        // One short exchange: no worker threads, no telemetry pipeline needed.
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
    // Read before the subscriber exists: the file says where telemetry goes.
    let config_path = match &cli.command {
        Command::Up { config, .. } | Command::Run { config, .. } => config.clone(),
        #[cfg(feature = "compiler")]
        Command::Compile { config, .. } => config.clone(),
        Command::Status { .. } => None,
    };
    let loaded = load_config(config_path.as_ref())?;
    let otlp = match &cli.command {
        Command::Up { .. } | Command::Run { .. } => loaded.otlp_settings(),
        _ => None,
    };
    let pipeline = wasmgate::telemetry::init(otlp.as_ref(), loaded.log_filter.as_deref())
        .context("cannot start the OTLP pipeline")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wasmgate")
        .build()
        .context("cannot start the async runtime")?;
    let result = run(cli, loaded, &runtime);
    // Also on SIGTERM: Host::run returns once drained, and what is queued goes out
    // within a bound.
    if let Some(pipeline) = pipeline {
        pipeline.shutdown(TELEMETRY_FLUSH);
    }
    result
}

fn run(
    cli: Cli,
    loaded: Config,
    runtime: &tokio::runtime::Runtime,
) -> anyhow::Result<std::process::ExitCode> {
    runtime.block_on(async {
        match cli.command {
            Command::Up {
                config: path,
                deployments,
                state_dir,
                listen,
                admin,
            } => {
                let mut config = loaded;
                let overrides = Overrides {
                    state_dir,
                    listen,
                    admin,
                };
                overrides.apply(&mut config);
                let reload = ConfigSource { path, overrides };
                let source = match config.wfm.clone() {
                    Some(settings) => DesiredSource::Wfm(Box::new(settings)),
                    None => {
                        if !deployments.is_dir() {
                            tracing::warn!(dir = %deployments.display(), "deployments folder does not exist yet; serving nothing until it appears");
                        }
                        DesiredSource::Folder(deployments)
                    }
                };
                Host::new(config)?
                    .reloading_from(reload)
                    .run(source)
                    .await
            }
            Command::Run {
                component,
                listen,
                state_dir,
                config: path,
                reuse,
            } => {
                let mut config = loaded;
                let overrides = Overrides {
                    state_dir,
                    listen,
                    admin: None,
                };
                overrides.apply(&mut config);
                let reload = ConfigSource { path, overrides };
                let document = single_component_document(&component, reuse)?;
                Host::new(config)?
                    .reloading_from(reload)
                    .run(DesiredSource::Fixed(document))
                    .await
            }
            #[cfg(feature = "compiler")]
            Command::Compile {
                component,
                target,
                output,
                config: _,
            } => compile(&component, target, output, loaded),
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
    config: Config,
) -> anyhow::Result<()> {
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
