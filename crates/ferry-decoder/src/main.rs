//! `ferry-decoder`: see the `ferry_decoder` library. Thin by design: arguments in, library call out.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_runtime::cli::{CommonArgs, block_on};

/// ferry's decoder stage. Start it on its own (a sidecar) or let `cargo xtask up` start it.
/// It reads the same ferry.toml as every other stage and asks the coordinator which
/// pipeline to serve. `ferry-decoder inspect FILE` prints the keys of an RDB file.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    common: CommonArgs,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Print the keys of an RDB file as JSON lines: {"db","key","type","value","expire_ms"}.
    /// Bytes that are not UTF-8 are shown as {"hex": "..."}; keys too big to hold whole are
    /// printed in several lines with "part". Exit code 1 (and the byte offset) on a bad file.
    Inspect {
        /// The RDB file ("-" for standard input).
        file: PathBuf,
        /// Accept RDB versions newer than this ferry knows.
        #[arg(long)]
        allow_newer_rdb: bool,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Inspect { file, allow_newer_rdb }) = args.cmd {
        return ferry_runtime::cli::exit(ferry_decoder::inspect(&file, allow_newer_rdb));
    }
    let res = block_on(async {
        let (cfg, coordinator, cancel) = args.common.start("ferry-decoder")?;
        ferry_decoder::run(cfg, coordinator, args.common.pipeline.clone(), cancel).await
    });
    ferry_runtime::cli::exit(res)
}
