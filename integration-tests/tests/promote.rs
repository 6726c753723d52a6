//! `ferry-watcher promote`: seed 001's Sentinel promotion cut-over, with a Sentinel-aware
//! client writing the whole time.

use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_resp::{Auth, Connection, Reply};
use integration_tests::*;

fn promote(group: &SentinelGroup, node: &str) -> std::process::Output {
    Command::new(bin_dir().join("ferry-watcher"))
        .args([
            "promote",
            "--sentinels",
            &group.sentinel_addrs().join(","),
            "--master-name",
            &group.name,
            "--node",
            node,
        ])
        .args(["--timeout", "30"])
        .output()
        .expect("run ferry-watcher")
}

/// The sum of the witness counters and the number of witness list items on `addr`.
fn witnesses_on(addr: &str) -> (u64, u64) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = Connection::connect(addr, &Auth::default(), Duration::from_secs(2)).await.unwrap();
        let (mut counts, mut items) = (0u64, 0u64);
        for k in 0..7 {
            if let Some(b) = c.call(&["GET", &format!("witness:{k}:count")]).await.unwrap().as_bytes() {
                counts += String::from_utf8_lossy(b).parse::<u64>().unwrap();
            }
            if let Reply::Integer(n) = c.call(&["LLEN", &format!("witness:{k}:list")]).await.unwrap() {
                items += n as u64;
            }
        }
        (counts, items)
    })
}

/// How many of the other sentinels `sentinel` flags as subjectively down (`s_down`).
fn sentinels_flagged_down(sentinel: &RedisServer, name: &str) -> usize {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut c = sentinel.connect().await.unwrap();
        let Reply::Array(Some(others)) = c.call(&["SENTINEL", "SENTINELS", name]).await.unwrap() else { return 0 };
        others
            .iter()
            .filter(|o| {
                let Reply::Array(Some(kv)) = o else { return false };
                kv.chunks(2).any(|p| {
                    p[0].as_bytes().is_some_and(|k| &k[..] == b"flags")
                        && p.get(1)
                            .and_then(Reply::as_bytes)
                            .is_some_and(|v| String::from_utf8_lossy(v).contains("s_down"))
                })
            })
            .count()
    })
}

#[test]
fn promote_a_new_node_without_losing_an_acknowledged_write() {
    let group = SentinelGroup::start(1, 3);
    let node = RedisServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = sentinel_witnesses(group.sentinel_addrs(), group.name.clone(), stop.clone());
    // The client writing before the promotion starts.
    let master = group.master_addr();
    wait_until("the client's first writes", Duration::from_secs(30), || witnesses_on(&master).0 > 0);
    let out = promote(&group, &node.addr());
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("promoted {}", node.addr())));
    assert_eq!(group.master_addr(), node.addr());
    // The client keeps writing, now to the new master (only the client writes there: what
    // the node holds grows only by its writes).
    let promoted = witnesses_on(&node.addr()).0;
    wait_until("the client's writes on the new master", Duration::from_secs(30), || {
        witnesses_on(&node.addr()).0 > promoted
    });
    stop.store(true, Ordering::SeqCst);
    let acknowledged = writer.join().unwrap();
    assert!(acknowledged > 100, "only {acknowledged} writes");
    // Every acknowledged write is on the new master, once.
    assert_eq!(witnesses_on(&node.addr()), (acknowledged, acknowledged), "an acknowledged write is missing or doubled");
}

#[test]
fn promote_refuses_without_a_sentinel_quorum() {
    let mut group = SentinelGroup::start(1, 3);
    let node = RedisServer::start(&[]);
    group.sentinels[1].kill();
    group.sentinels[2].kill();
    // The remaining sentinel counts the others as down after down-after-milliseconds (1 s).
    wait_until("the remaining sentinel to flag the other two down", Duration::from_secs(30), || {
        sentinels_flagged_down(&group.sentinels[0], &group.name) == 2
    });
    let out = promote(&group, &node.addr());
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("refusing to promote") && err.trim().lines().count() == 1, "{err}");
}

/// Seed 001 with the client users run: redis-py's Sentinel support, in a Python script
/// (`scripts/sentinel_client.py`), writing and reading through the promotion.
#[test]
fn promote_with_a_redis_py_sentinel_client_writing_throughout() {
    let group = SentinelGroup::start(1, 3);
    let node = RedisServer::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let stop = dir.path().join("stop");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/sentinel_client.py");
    let client = Command::new("python3")
        .arg(script)
        .arg(group.sentinel_addrs().join(","))
        .arg(&group.name)
        .arg(&stop)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install -y python3; pip install redis)");
    // The client started (python and redis-py loaded) and writing before the promotion.
    let master = group.master_addr();
    wait_until("the redis-py client's first writes", Duration::from_secs(60), || witnesses_on(&master).0 > 0);
    let out = promote(&group, &node.addr());
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(!text.contains("still finishing"), "{text}");
    assert_eq!(group.master_addr(), node.addr());
    // Deliberate: the client writes on for a while after the promotion, and the sentinels
    // have that time to undo it, which the assertion below checks they do not.
    std::thread::sleep(Duration::from_millis(1000));
    std::fs::write(&stop, b"").unwrap();
    assert_eq!(group.master_addr(), node.addr(), "{}", group.logs());
    let out = client.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the redis-py client failed (is redis-py installed? pip install redis):\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let acknowledged = report["acknowledged"].as_u64().unwrap();
    assert!(acknowledged > 100, "{report}");
    assert_eq!(report["master"].as_str(), Some(node.addr().as_str()), "the client follows the sentinels: {report}");
    assert_eq!(
        witnesses_on(&node.addr()),
        (acknowledged, acknowledged),
        "an acknowledged write is missing or doubled: {report}"
    );
}
