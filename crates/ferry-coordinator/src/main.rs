//! `ferry-coordinator`: see the `ferry_coordinator` library.

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use ferry_runtime::cli::{CommonArgs, block_on};

/// ferry's coordinator: reads ferry.toml, plans one pipeline per source leader, hands the
/// pipelines to the reader, decoder and writer stages, and serves /status, /metrics and
/// /healthz on coordinator.status_addr. `ferry-coordinator config --explain FILE` prints the
/// configuration a file (ferry.toml, or a RedisShake sync.toml / shake.toml) amounts to.
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
    /// Configuration tools.
    Config {
        /// Print the ferry configuration FILE amounts to (a ferry.toml, or a RedisShake v3
        /// sync.toml / v4 shake.toml, mapped), secrets redacted, then the warnings about
        /// RedisShake options ferry ignores. Exit code 2 if the file is not valid.
        #[arg(long, value_name = "FILE")]
        explain: PathBuf,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    if let Some(Cmd::Config { explain }) = args.cmd {
        return match ferry_config::redisshake::explain(&explain) {
            Ok(text) => {
                print!("{text}");
                std::process::ExitCode::SUCCESS
            }
            Err(e) => ferry_runtime::cli::exit(Err(e.into())),
        };
    }
    let res = block_on(async {
        let (cfg, _coordinator, cancel) = args.common.start("ferry-coordinator")?;
        ferry_coordinator::run(cfg, cancel).await
    });
    ferry_runtime::cli::exit(res)
}
