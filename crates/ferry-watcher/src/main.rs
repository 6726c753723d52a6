//! `ferry-watcher`: role changes of Sentinel-managed deployments. Thin: the logic is in
//! `ferry_pipeline::promote`.

use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_pipeline::cli::block_on;
use ferry_resp::Auth;

/// ferry's watcher. Today: `promote`, the Sentinel promotion cut-over of seed 001.
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Make NODE the master of a Sentinel-managed group without losing an acknowledged
    /// write: attach it as a replica, wait until it is caught up, make it the only replica
    /// Sentinel can pick, pause writes on the old master, SENTINEL FAILOVER, wait until the
    /// sentinels and the node agree, restore priorities. Refuses (exit 1, one line) when the
    /// sentinels have no quorum or the node cannot catch up.
    Promote {
        /// Sentinel addresses, comma-separated (host:port,...).
        #[arg(long, value_delimiter = ',', required = true)]
        sentinels: Vec<String>,
        /// The name the sentinels monitor the master under.
        #[arg(long)]
        master_name: String,
        /// The node to promote, host:port as the sentinels see it.
        #[arg(long)]
        node: String,
        /// Password of the data nodes.
        #[arg(long, env = "FERRY_PASSWORD", hide_env_values = true)]
        password: Option<String>,
        /// ACL user of the data nodes.
        #[arg(long)]
        username: Option<String>,
        /// Password of the sentinels.
        #[arg(long, env = "FERRY_SENTINEL_PASSWORD", hide_env_values = true)]
        sentinel_password: Option<String>,
        /// Time limit of each step, in seconds.
        #[arg(long, default_value_t = 60)]
        timeout: u64,
    },
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    let res = block_on(async {
        match args.cmd {
            Cmd::Promote { sentinels, master_name, node, password, username, sentinel_password, timeout } => {
                let opts = ferry_pipeline::promote::PromoteOptions {
                    sentinels,
                    master_name,
                    sentinel_auth: Auth { username: None, password: sentinel_password },
                    auth: Auth { username, password },
                    node,
                    timeout: Duration::from_secs(timeout),
                };
                let r = ferry_pipeline::promote::promote(&opts).await?;
                println!(
                    "promoted {} to master of {} (was {}) at offset {} in {:.1}s",
                    r.new_master,
                    opts.master_name,
                    r.old_master,
                    r.offset,
                    r.took.as_secs_f64()
                );
                Ok(())
            }
        }
    });
    ferry_pipeline::cli::exit(res)
}
