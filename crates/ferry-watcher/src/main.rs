//! `ferry-watcher`: role swaps of a deployment pair and the Sentinel promotion cut-over.
//! Thin: the logic is in the `ferry_watcher` library.

use std::time::Duration;

use clap::{Parser, Subcommand};
use ferry_resp::Auth;
use ferry_runtime::Role;
use ferry_runtime::cli::{CommonArgs, block_on};

/// ferry's watcher: the role swaps of seed 000 (`run`, and `fence`, `recover`,
/// `switchback`, `status` by hand), and the Sentinel promotion cut-over of seed 001
/// (`promote`).
#[derive(Parser, Debug)]
#[command(version, about, long_about)]
struct Args {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Arguments of a role change by hand.
#[derive(clap::Args, Debug)]
struct RoleArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Why, for the log and the status.
    #[arg(long, default_value = "operator")]
    reason: String,
    /// Even off the cycle forward → fenced → recovering → switchback → forward. Never makes
    /// a lost, unrecovered source the source again: see --overwrite-with-stale-source.
    #[arg(long)]
    force: bool,
    /// DANGER: make the configured source the source again although it was lost and not
    /// recovered in this epoch; its stale data overwrites the target and every write the
    /// target took since is lost. Logged with --reason.
    #[arg(long)]
    overwrite_with_stale_source: bool,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Health-check the configured source and swap roles on its own: forward → fenced when
    /// the source is lost, → recovering when it is back, → switchback and forward again
    /// when the reverse copy has caught up (with watcher.auto_switchback) or on `switchback`.
    Run {
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Stop every pipeline now (the safe state: nothing writes anywhere).
    Fence {
        #[command(flatten)]
        common: CommonArgs,
        /// Why, for the log and the status.
        #[arg(long, default_value = "operator")]
        reason: String,
    },
    /// Start the reverse pipelines (target → source) from fenced (`--force`: from any
    /// role; never two directions at once is then the operator's to ensure).
    Recover(RoleArgs),
    /// Stop the reverse pipelines and go forward again (a full copy source → target). Move
    /// the writers back to the source first. Refused until the reverse copy has caught up
    /// (`--force` does not override that; `--overwrite-with-stale-source` does).
    Switchback(RoleArgs),
    /// Print the role, its epoch and why.
    Status {
        #[command(flatten)]
        common: CommonArgs,
    },
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
            Cmd::Run { common } => {
                let (cfg, coordinator, cancel) = common.start("ferry-watcher")?;
                ferry_watcher::run(cfg, coordinator, cancel).await
            }
            Cmd::Fence { common, reason } => {
                let (_, coordinator, _) = common.start("ferry-watcher")?;
                manual(&coordinator, Role::Fenced, &reason, false, false).await
            }
            Cmd::Recover(RoleArgs { common, reason, force, overwrite_with_stale_source }) => {
                let (_, coordinator, _) = common.start("ferry-watcher")?;
                manual(&coordinator, Role::Recovering, &reason, force, overwrite_with_stale_source).await
            }
            Cmd::Switchback(RoleArgs { common, reason, force, overwrite_with_stale_source }) => {
                let (cfg, coordinator, _) = common.start("ferry-watcher")?;
                manual(&coordinator, Role::Switchback, &reason, force, overwrite_with_stale_source).await?;
                let s = ferry_watcher::finish_switchback(&cfg, &coordinator).await?;
                println!("{}", ferry_watcher::describe(&s));
                Ok(())
            }
            Cmd::Status { common } => {
                let (_, coordinator, _) = common.start("ferry-watcher")?;
                println!("{}", ferry_watcher::describe(&ferry_watcher::get_role(&coordinator).await?));
                Ok(())
            }
            Cmd::Promote { sentinels, master_name, node, password, username, sentinel_password, timeout } => {
                let opts = ferry_watcher::promote::PromoteOptions {
                    sentinels,
                    master_name,
                    sentinel_auth: Auth { username: None, password: sentinel_password },
                    auth: Auth { username, password },
                    node,
                    timeout: Duration::from_secs(timeout),
                };
                let r = ferry_watcher::promote::promote(&opts).await?;
                println!(
                    "promoted {} to master of {} (was {}) at offset {} in {:.1}s{}",
                    r.new_master,
                    opts.master_name,
                    r.old_master,
                    r.offset,
                    r.took.as_secs_f64(),
                    if r.settled { "" } else { "; some sentinels are still finishing the failover" }
                );
                Ok(())
            }
        }
    });
    ferry_runtime::cli::exit(res)
}

/// A role change asked for by an operator.
async fn manual(coordinator: &str, role: Role, reason: &str, force: bool, overwrite: bool) -> anyhow::Result<()> {
    let s = ferry_watcher::set_role_with(coordinator, role, reason, force, overwrite).await?;
    println!("{}", ferry_watcher::describe(&s));
    Ok(())
}
