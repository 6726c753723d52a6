//! Command-line arguments shared by the binaries, and their entry points.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;
use ferry_config::Config;
use tokio_util::sync::CancellationToken;

/// Arguments every ferry process takes.
#[derive(Args, Debug, Clone)]
pub struct CommonArgs {
    /// The configuration file (the same ferry.toml for every process).
    #[arg(long, short, env = "FERRY_CONFIG", default_value = "ferry.toml")]
    pub config: PathBuf,
    /// The coordinator's gRPC address (default: coordinator.grpc_addr of the config).
    #[arg(long, env = "FERRY_COORDINATOR")]
    pub coordinator: Option<String>,
    /// Serve this pipeline only (sidecar deployments); default: whatever the coordinator assigns.
    #[arg(long, env = "FERRY_PIPELINE")]
    pub pipeline: Option<String>,
}

impl CommonArgs {
    /// Loads the config, sets up logging and returns a token cancelled on SIGINT/SIGTERM.
    pub fn start(&self, service: &str) -> anyhow::Result<(Config, String, CancellationToken)> {
        let cfg = Config::load(&self.config)?;
        crate::logging::init_logging(&cfg.log, &cfg.telemetry, service)?;
        crate::telemetry::init_metrics(&cfg.telemetry, service)?;
        crate::grpc::init_grpc_tls(&cfg.grpc, service)?;
        let peer = self.coordinator.as_deref().unwrap_or(&cfg.coordinator.grpc_addr);
        crate::grpc::check_plaintext(&cfg, peer)?;
        crate::grpc::init_deployment(cfg.deployment());
        let coordinator = crate::grpc::grpc_url(peer);
        let cancel = CancellationToken::new();
        crate::lifecycle::cancel_on_signal(cancel.clone());
        Ok((cfg, coordinator, cancel))
    }
}

/// Builds a multi-threaded runtime and runs `f` on it; spans not yet exported go out at the end.
pub fn block_on<F: std::future::Future<Output = anyhow::Result<()>>>(f: F) -> anyhow::Result<()> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime")?
        .block_on(async {
            let res = f.await;
            crate::telemetry::shutdown().await;
            res
        })
}

/// Exit codes: 0 clean shutdown, 1 runtime failure, 2 bad configuration or arguments.
pub fn exit(res: anyhow::Result<()>) -> std::process::ExitCode {
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            let msg = format!("{e:#}").replace('\n', " ");
            eprintln!("error: {msg}");
            let config = e.chain().any(|c| c.downcast_ref::<ferry_config::ConfigError>().is_some());
            std::process::ExitCode::from(if config { 2 } else { 1 })
        }
    }
}
