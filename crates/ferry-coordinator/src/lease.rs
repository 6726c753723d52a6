//! One coordinator acts on a pair at a time. The active one holds a lease in the target
//! (`ferry:checkpoint:coordinator`: its instance name, expiring after [`TTL`]) and renews it
//! every [`RENEW`]; another coordinator started on the same pair stands by — it plans
//! nothing and refuses role changes — until the lease is free, then takes over. A holder on
//! this host whose process is gone (a coordinator restarted after a crash: same host, its
//! pid no longer running, or the pid is this process's own in a restarted container) is
//! taken over at once instead of waiting for the lease to end.

use std::time::Duration;

use ferry_checkpoint::COORDINATOR_LEASE_KEY;
use ferry_config::RedisConfig;
use ferry_resp::{Connection, Reply, RespError};

/// How long a lease lasts without being renewed.
pub const TTL: Duration = Duration::from_secs(10);

/// How often the holder renews it.
pub const RENEW: Duration = Duration::from_secs(3);

/// Takes or renews the lease for `me` in one step: `Ok(None)` when `me` holds it now,
/// `Ok(Some(holder))` when another coordinator does. `conn` is kept between calls (dropped
/// on an error, opened again next time).
pub async fn hold(side: &RedisConfig, me: &str, conn: &mut Option<Connection>) -> anyhow::Result<Option<String>> {
    if conn.is_none() {
        *conn = Some(crate::key_conn(side, COORDINATOR_LEASE_KEY).await?);
    }
    let res = hold_on(conn.as_mut().expect("opened above"), me).await;
    if res.is_err() {
        *conn = None;
    }
    res
}

async fn hold_on(c: &mut Connection, me: &str) -> anyhow::Result<Option<String>> {
    // Takes the lease when it is free, `me`'s, or `ARGV[3]`'s (a holder known to be gone).
    const SCRIPT: &str = "local v = redis.call('GET', KEYS[1]) \
        if v == false or v == ARGV[1] or v == ARGV[3] then redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2]) return false end \
        return v";
    let ttl = TTL.as_millis().to_string();
    let mut gone = String::new();
    for _ in 0..2 {
        let res = c.call(&["EVAL", SCRIPT, "1", COORDINATOR_LEASE_KEY, me, &ttl, &gone]).await;
        match res {
            Ok(Reply::Bulk(Some(holder))) => {
                let holder = String::from_utf8_lossy(&holder).into_owned();
                if gone.is_empty() && is_gone(&holder, me) {
                    tracing::info!(holder = %holder, "the coordinator holding the lease ran on this host and is gone: taking over");
                    gone = holder;
                    continue;
                }
                return Ok(Some(holder));
            }
            Ok(_) => return Ok(None),
            // A target that refuses every write (min-replicas-to-write, a replica, out of
            // memory) keeps the lease as it is: whoever holds it, or nobody, acts.
            Err(RespError::Server { reply, .. }) if refuses_writes(&reply) => {
                let v = c.call(&["GET", COORDINATOR_LEASE_KEY]).await?;
                let holder = v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned());
                return Ok(holder.filter(|h| h != me && !is_gone(h, me)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Some(gone))
}

/// A reply that means "this node accepts no write now", whoever asks.
fn refuses_writes(reply: &str) -> bool {
    ["NOREPLICAS", "READONLY", "OOM", "MISCONF"].iter().any(|k| reply.starts_with(k))
}

/// Whether `holder` (an instance name, `host-pid-start`) ran on this host and is gone: its
/// pid runs no process, or is this process's own (a restarted container keeps pid 1).
fn is_gone(holder: &str, me: &str) -> bool {
    let split = |name: &str| {
        let mut parts = name.rsplitn(3, '-');
        let (_stamp, pid, host) = (parts.next()?, parts.next()?, parts.next()?);
        Some((host.to_string(), pid.parse::<u32>().ok()?))
    };
    let (Some((host, pid)), Some((my_host, my_pid))) = (split(holder), split(me)) else { return false };
    host == my_host && holder != me && (pid == my_pid || !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// Gives the lease up when `me` holds it (a clean shutdown: the next coordinator need not
/// wait for it to expire).
pub async fn release(side: &RedisConfig, me: &str) -> anyhow::Result<()> {
    const SCRIPT: &str = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";
    let mut c = crate::key_conn(side, COORDINATOR_LEASE_KEY).await?;
    c.call(&["EVAL", SCRIPT, "1", COORDINATOR_LEASE_KEY, me]).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::is_gone;

    #[test]
    fn a_holder_on_this_host_is_gone_when_its_pid_runs_nothing_or_is_ours() {
        let me = format!("my-host-{}-abc", std::process::id());
        assert!(is_gone("my-host-4000000-xyz", &me), "no such pid");
        assert!(is_gone(&format!("my-host-{}-old", std::process::id()), &me), "a restarted container");
        assert!(!is_gone("my-host-1-xyz", &me), "pid 1 runs");
        assert!(!is_gone("other-host-4000000-xyz", &me), "another host");
        assert!(!is_gone(&me, &me));
        assert!(!is_gone("garbage", &me));
    }
}
