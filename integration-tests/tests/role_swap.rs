//! Seed 000 end to end, driven by `ferry-watcher run`: a 3-master cluster A (with replicas)
//! syncs into a Sentinel group B (1 master, 2 replicas, 3 sentinels); A is lost and the
//! watcher fences; B serves writes; A comes back (once empty, once with its stale data on
//! disk) and B's data flows back into A; an operator switches back; writes to A reach B
//! again. At each stage the serving side holds every acknowledged write, and nothing stale
//! from A ever overwrites B. The watcher and the coordinator are killed and restarted while
//! fenced and while recovering: the role survives.

use std::time::{Duration, Instant};

use ferry_resp::Reply;
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// B's keys (db 0), from its current master.
fn snapshot_b(b: &SentinelGroup) -> Snapshot {
    let addr = b.master_addr();
    rt().block_on(async {
        let mut c =
            ferry_resp::Connection::connect(&addr, &ferry_resp::Auth::default(), Duration::from_secs(5)).await.unwrap();
        snapshot_dbs(&mut c, 0..1).await.unwrap()
    })
}

fn b_call(b: &SentinelGroup, args: &[&str]) -> Reply {
    let addr = b.master_addr();
    rt().block_on(async {
        let mut c =
            ferry_resp::Connection::connect(&addr, &ferry_resp::Auth::default(), Duration::from_secs(5)).await.unwrap();
        c.call(args).await.unwrap()
    })
}

/// Replicas with port 0 (ferry's readers announce none) in the sentinels' lists of B.
fn reader_replicas(b: &SentinelGroup) -> usize {
    rt().block_on(async {
        let mut n = 0;
        for s in b.sentinel_addrs() {
            let mut c = ferry_resp::Connection::connect(&s, &ferry_resp::Auth::default(), Duration::from_secs(2))
                .await
                .unwrap();
            if let Reply::Array(Some(items)) = c.call(&["SENTINEL", "REPLICAS", &b.name]).await.unwrap() {
                for item in items {
                    let Reply::Array(Some(kv)) = item else { continue };
                    let port = kv
                        .chunks(2)
                        .find(|p| p[0].as_bytes().is_some_and(|k| &k[..] == b"port"))
                        .and_then(|p| p[1].as_bytes().cloned());
                    n += usize::from(port.as_deref() == Some(&b"0"[..]));
                }
            }
        }
        n
    })
}

fn wait_role(ferry: &Ferry, role: &str, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = ferry.status()
            && s["role"] == role
        {
            return s;
        }
        assert!(Instant::now() < deadline, "role never became {role}: {:?}\n{}", ferry.status().ok(), ferry.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the role is `role` and its `n` pipelines are incremental with lag 0.
fn wait_synced(ferry: &Ferry, role: &str, n: usize, timeout: Duration) -> serde_json::Value {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(s) = ferry.status()
            && s["role"] == role
            && let Some(ps) = s["pipelines"].as_array()
            && ps.len() == n
            && ps.iter().all(|p| p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["error"].is_null())
        {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "{role} with {n} pipelines never caught up: {:#}\n{}",
            ferry.status().unwrap_or_default(),
            ferry.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Snapshots equal after the writes settle (the last ones may still be on their way).
fn assert_converges(what: &str, a: impl Fn() -> Snapshot, b: impl Fn() -> Snapshot, ferry: &Ferry) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (sa, sb) = (a(), b());
        match compare_snapshots(&sa, &sb, 2000) {
            Ok(n) if n > 0 => return,
            Ok(_) => panic!("{what}: both sides are empty"),
            Err(e) if Instant::now() > deadline => panic!("{what}: {e}\n{}", ferry.logs()),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

fn watcher_config(a: &Cluster, b: &SentinelGroup, state: &std::path::Path) -> (String, String) {
    let (cfg, status) = config_with_ports(&format!(
        "[source]\n{}\n[target]\n{}\n[watcher]\ncheck_interval_ms = 200\nlost_after_secs = 2\nback_after_secs = 2\n\
         caught_up_secs = 1\n",
        a.toml(),
        b.toml()
    ));
    let cfg = cfg.replace("[coordinator]\n", &format!("[coordinator]\nstate_file = \"{}\"\n", state.display()));
    (cfg, status)
}

fn watcher_cli(ferry: &Ferry, args: &[&str]) -> std::process::Output {
    std::process::Command::new(bin_dir().join("ferry-watcher"))
        .args(args)
        .arg("--config")
        .arg(ferry.dir.path().join("ferry.toml"))
        .output()
        .unwrap()
}

fn seed_000(stale_a: bool) {
    const MASTERS: usize = 3;
    let mut a = Cluster::start(MASTERS, 1);
    let b = SentinelGroup::start(2, 3);
    for i in 0..200 {
        a.call(&["SET", &format!("k:{i}"), &format!("from A {i}")]);
        a.call(&["INCRBY", &format!("count:{}", i % 10), "1"]);
    }
    let state_dir = tempfile::tempdir().unwrap();
    let (cfg, status) = watcher_config(&a, &b, &state_dir.path().join("role.json"));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.spawn("ferry-watcher");

    // FORWARD: A → B, one pipeline per master of A.
    let s = wait_synced(&ferry, "forward", MASTERS, Duration::from_secs(90));
    assert_eq!(s["epoch"], 0);
    assert_converges("forward: B holds A", || a.snapshot(), || snapshot_b(&b), &ferry);

    // A is lost. The watcher fences: no pipeline runs.
    if stale_a {
        a.save_all();
    }
    a.kill_all();
    let s = wait_role(&ferry, "fenced", Duration::from_secs(30));
    assert_eq!(s["pipelines"].as_array().map(Vec::len), Some(0), "{s:#}");
    assert!(s["role_reason"].as_str().unwrap().contains("source lost"), "{s:#}");

    // B serves: new keys, changed keys, a deleted key, counters moved on.
    for i in 0..50 {
        b_call(&b, &["SET", &format!("k:{i}"), &format!("from B {i}")]);
        b_call(&b, &["SET", &format!("b-only:{i}"), "written while A was away"]);
    }
    b_call(&b, &["DEL", "k:199"]);
    for i in 0..10 {
        b_call(&b, &["INCRBY", &format!("count:{i}"), "1000"]);
    }
    let b_truth = snapshot_b(&b);

    // The coordinator and the watcher die while fenced; the role survives them.
    ferry.kill("ferry-watcher");
    ferry.kill("ferry-coordinator");
    ferry.spawn("ferry-coordinator");
    ferry.spawn("ferry-watcher");
    let s = wait_role(&ferry, "fenced", Duration::from_secs(30));
    assert_eq!(s["epoch"], 0);

    // A comes back (empty, or with its stale data): nothing of A may reach B.
    a.restart_all(MASTERS);
    if stale_a {
        assert_eq!(a.call(&["GET", "k:0"]), Reply::Bulk(Some("from A 0".into())), "A restarted with its data");
    }
    // RECOVERING: B → A, one reverse pipeline; A is emptied first (watcher.recovery_empty_target).
    let s = wait_synced(&ferry, "recovering", 1, Duration::from_secs(90));
    assert_eq!(s["epoch"], 1);
    assert!(s["pipelines"][0]["id"].as_str().unwrap().starts_with("reverse-"), "{s:#}");
    assert_eq!(compare_snapshots(&b_truth, &snapshot_b(&b), 0).map_err(|e| e.to_string()), Ok(b_truth[&0].len()));
    assert_converges("recovering: A holds B", || a.snapshot(), || snapshot_b(&b), &ferry);
    assert_eq!(a.call(&["EXISTS", "k:199"]), Reply::Integer(0), "a key deleted on B came back on A");

    // Writes on B during the recovery follow to A.
    b_call(&b, &["SET", "during-recovery", "yes"]);
    ferry.kill("ferry-watcher");
    ferry.kill("ferry-coordinator");
    ferry.spawn("ferry-coordinator");
    ferry.spawn("ferry-watcher");
    let s = wait_synced(&ferry, "recovering", 1, Duration::from_secs(60));
    assert_eq!(s["epoch"], 1);
    assert_converges("recovering after restarts", || a.snapshot(), || snapshot_b(&b), &ferry);
    if stale_a {
        // B's sentinels see the reverse pipeline's reader as a replica (port 0) once their
        // INFO refresh (every 10 s) has run: wait for it, so the clean-up below is tested.
        let deadline = Instant::now() + Duration::from_secs(30);
        while reader_replicas(&b) == 0 {
            assert!(Instant::now() < deadline, "the sentinels never listed the reverse reader");
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    // SWITCHBACK by the operator: the reverse pipeline stops, forward starts again (epoch 2).
    let out = watcher_cli(&ferry, &["switchback", "--reason", "test: writers moved back to A"]);
    let cli = format!("{}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{cli}");
    let s = wait_synced(&ferry, "forward", MASTERS, Duration::from_secs(90));
    assert_eq!(s["epoch"], 2);
    // The reverse reader is gone from B, and no sentinel keeps it as a phantom replica.
    let deadline = Instant::now() + Duration::from_secs(60);
    while reader_replicas(&b) > 0 {
        assert!(Instant::now() < deadline, "B's sentinels still list ferry's reader:\n{cli}\n{}", ferry.logs());
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(s["pipelines"][0]["id"].as_str().unwrap().ends_with("@2"), "{s:#}");
    for i in 0..30 {
        a.call(&["SET", &format!("after-switchback:{i}"), "from A again"]);
    }
    a.call(&["INCRBY", "count:0", "5"]);
    assert_converges("forward again: B holds A", || a.snapshot(), || snapshot_b(&b), &ferry);
    let out = watcher_cli(&ferry, &["status"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.starts_with("role forward (epoch 2"), "{text}");
    // Every transition is in the log with its reason.
    let logs = ferry.logs();
    for to in ["to=\"fenced\"", "to=\"recovering\"", "to=\"switchback\"", "to=\"forward\""] {
        assert!(logs.contains(to), "no transition {to} in the log:\n{logs}");
    }
}

#[test]
fn seed_000_a_lost_and_back_empty() {
    seed_000(false);
}

#[test]
fn seed_000_a_lost_and_back_with_stale_data() {
    seed_000(true);
}

/// A replica that announces no port (as ferry's readers) stays in Sentinel's lists after it
/// left; the clean-up after a switch back makes every sentinel forget it, and only it.
#[test]
fn sentinels_forget_ferrys_readers() {
    let b = SentinelGroup::start(1, 3);
    let port = b.master().port.to_string();
    let mut reader = std::process::Command::new("redis-cli")
        .args(["-p", &port, "--replica"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    while reader_replicas(&b) < 3 {
        assert!(Instant::now() < deadline, "the sentinels never listed the port-0 replica");
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = reader.kill();
    let _ = reader.wait();
    let cfg = ferry_config::Config::parse(
        &format!("[source]\naddress = \"127.0.0.1:1\"\n[target]\n{}\n", b.toml()),
        "test.toml",
    )
    .unwrap();
    let n = rt().block_on(ferry_watcher::forget_ferry_replicas(&cfg.target)).unwrap();
    assert_eq!(n, 3, "every sentinel listed it, every sentinel is reset");
    assert_eq!(reader_replicas(&b), 0);
    // The real replica is known again everywhere.
    rt().block_on(async {
        for s in b.sentinel_addrs() {
            let mut c = ferry_resp::Connection::connect(&s, &ferry_resp::Auth::default(), Duration::from_secs(2))
                .await
                .unwrap();
            let Reply::Array(Some(items)) = c.call(&["SENTINEL", "REPLICAS", &b.name]).await.unwrap() else {
                panic!("bad SENTINEL REPLICAS reply")
            };
            assert_eq!(items.len(), 1, "{s} forgot the real replica");
        }
    });
}
