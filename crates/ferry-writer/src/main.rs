//! `ferry-writer`: see the `ferry_writer` library. Thin by design: arguments in, library call out.

use clap::Parser;
use ferry_runtime::cli::{CommonArgs, block_on};

/// ferry's writer stage. Start it on its own (a sidecar) or let `cargo xtask up` start it.
/// It reads the same ferry.toml as every other stage and asks the coordinator which
/// pipeline to serve.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let res = block_on(async {
        let (cfg, coordinator, cancel) = args.common.start("ferry-writer")?;
        ferry_writer::run(cfg, coordinator, args.common.pipeline.clone(), cancel).await
    });
    ferry_runtime::cli::exit(res)
}
