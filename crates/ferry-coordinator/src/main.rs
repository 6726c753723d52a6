//! `ferry-coordinator`: see `ferry_pipeline::coordinator`.

use clap::Parser;
use ferry_pipeline::cli::{CommonArgs, block_on};

/// ferry's coordinator: reads ferry.toml, plans one pipeline per source leader, hands the
/// pipelines to the reader, decoder and writer stages, and serves /status, /metrics and
/// /healthz on coordinator.status_addr.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let res = block_on(async {
        let (cfg, _coordinator, cancel) = args.common.start("ferry-coordinator")?;
        ferry_pipeline::coordinator::run(cfg, cancel).await
    });
    ferry_pipeline::cli::exit(res)
}
