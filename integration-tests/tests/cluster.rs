//! A Redis Cluster target: routing, full copy, incremental writes, and a failover.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_resp::{Auth, Connection, Reply};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

#[test]
fn cluster_target_full_copy_incremental_and_failover_exactly_once() {
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let cluster = Cluster::start(3, 1);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate_with(&mut c, false).await.unwrap();
    });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\n{}\n", src.addr(), cluster.toml()));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let source_snapshot = || rt().block_on(async { snapshot(&mut src.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&source_snapshot(), &cluster.snapshot(), 2000)
        .unwrap_or_else(|e| panic!("after the full copy: {e}\n{}", ferry.logs()));

    // Witnesses over many slots, multi-key commands that span slots (split), and a
    // transaction on one slot; a failover of one master in the middle.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (addr, stop) = (src.addr(), stop.clone());
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut c = Connection::connect(&addr, &Auth::default(), Duration::from_secs(2)).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    c.call(&["INCR", &format!("witness:{}:count", n % 11)]).await.unwrap();
                    c.call(&["RPUSH", &format!("witness:{}:list", n % 11), &n.to_string()]).await.unwrap();
                    if n.is_multiple_of(10) {
                        c.call(&["MSET", &format!("m:{n}:a"), "1", &format!("m:{n}:b"), "2"]).await.unwrap();
                        c.call(&["DEL", &format!("m:{}:a", n.saturating_sub(10)), "m:none"]).await.unwrap();
                        c.call(&["MULTI"]).await.unwrap();
                        c.call(&["INCR", "{tx}:a"]).await.unwrap();
                        c.call(&["INCR", "{tx}:b"]).await.unwrap();
                        c.call(&["EXEC"]).await.unwrap();
                    }
                    n += 1;
                    // Deliberate: pacing, so the load runs at a steady rate beside ferry.
                    if n.is_multiple_of(20) {
                        tokio::time::sleep(Duration::from_millis(2)).await;
                    }
                }
                n
            })
        })
    };
    // The failover comes once ferry writes the slot that fails over.
    wait_until("ferry to write witness:3:count on the cluster", Duration::from_secs(60), || {
        cluster.call(&["EXISTS", "witness:3:count"]) == Reply::Integer(1)
    });
    let slot = ferry_resp::cluster::key_slot(b"witness:3:count");
    cluster.failover_slot(slot);
    // The failover reaches the writer as a MOVED (see below) before the writer is killed.
    let moved =
        |logs: &str| logs.contains("re-routing commands after a redirection") || logs.contains("a floor's slot moved");
    assert!(
        poll_until(Duration::from_secs(60), || moved(&ferry.logs())),
        "the failover caused no MOVED:\n{}",
        ferry.logs()
    );
    // The writer killed mid-stream: the next one resumes from the floors and skips, slot by
    // slot, what the checkpoints cover; the witnesses go on until it has taken over.
    let writer_instance = |p: &serde_json::Value| p["stages"]["writer"]["instance"].as_str().map(str::to_string);
    let old_writer = ferry.status().ok().and_then(|s| writer_instance(&s["pipelines"][0])).expect("the writer");
    let mut ferry = ferry;
    ferry.kill("ferry-writer");
    ferry.spawn("ferry-writer");
    ferry.wait_for("the new writer incremental", Duration::from_secs(60), |p| {
        p["phase"] == "incremental" && writer_instance(p).is_some_and(|w| w != old_writer)
    });
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100, "only {n} writes");
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    assert!(p["error"].is_null() || p["phase"] == "incremental", "{p:#}");
    assert_eq!(p["full_syncs"], 1, "{p:#}\n{}", ferry.logs());
    let logs = ferry.logs();
    // The failover reaches the writer as a MOVED on a command or on a floor write, whichever
    // comes first; both make it read the slot map again.
    assert!(moved(&logs), "the failover caused no MOVED:\n{logs}");
    compare_snapshots(&source_snapshot(), &cluster.snapshot(), 2000)
        .unwrap_or_else(|e| panic!("after the failover: {e}\n{}", ferry.logs()));
}

#[test]
fn cluster_target_refuses_other_dbs_with_a_clear_error() {
    let src = RedisServer::start(&[]);
    let cluster = Cluster::start(3, 0);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        c.call(&["SELECT", "4"]).await.unwrap();
        c.call(&["SET", "k", "v"]).await.unwrap();
    });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\n{}\n", src.addr(), cluster.toml()));
    let ferry = Ferry::start(&cfg, &status);
    let p = ferry
        .wait_for("failed", Duration::from_secs(60), |p| p["error"].as_str().is_some_and(|e| e.contains("only db 0")));
    assert!(p["error"].as_str().unwrap().contains("db 4"), "{p:#}");
}

#[test]
fn cluster_source_one_pipeline_per_master_follows_a_failover() {
    let cluster = Cluster::start(3, 1);
    let tgt = RedisServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = cluster.witness_writer(stop.clone());
    // The load under way before ferry starts: its full copies run during writes.
    wait_until("the witness writes to begin", Duration::from_secs(30), || {
        cluster.call(&["EXISTS", "witness:1"]) == Reply::Integer(1)
    });
    let (cfg, status) =
        config_with_ports(&format!("[source]\n{}\n[target]\naddress = \"{}\"\n", cluster.toml(), tgt.addr()));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("3 pipelines incremental", 3, Duration::from_secs(60), |p| p["phase"] == "incremental");
    let slot = ferry_resp::cluster::key_slot(b"witness:1");
    cluster.failover_slot(slot);
    // Deliberate: writes go on for a while on the new master, so the pipeline follows the
    // failover with writes in flight (no state marks "enough writes").
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100, "only {n} writes");
    // Every write applied (a report from before the last writes would show a lag of 0 too).
    ferry.wait_applied_total(3, cluster.masters_offset(), Duration::from_secs(90));
    let s = ferry.wait_all("caught up", 3, Duration::from_secs(60), |p| {
        p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["error"].is_null()
    });
    for p in s["pipelines"].as_array().unwrap() {
        assert_eq!(p["full_syncs"], 1, "a source failover caused a full copy: {p:#}\n{}", ferry.logs());
    }
    let partial: u64 = s["pipelines"].as_array().unwrap().iter().map(|p| p["partial_resyncs"].as_u64().unwrap()).sum();
    assert!(partial >= 1, "{s:#}");
    let target = rt().block_on(async { snapshot(&mut tgt.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&cluster.snapshot(), &target, 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}

#[test]
fn many_source_dbs_into_a_cluster_target_with_db_map() {
    let src = RedisServer::start(&[]);
    let cluster = Cluster::start(3, 0);
    let write = |db: &str, k: &str, v: &str| {
        rt().block_on(async {
            let mut c = src.connect().await.unwrap();
            c.call(&["SELECT", db]).await.unwrap();
            c.call(&["SET", k, v]).await.unwrap();
        })
    };
    write("1", "one:a", "1");
    write("2", "two:a", "2");
    write("0", "zero:a", "0");
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\n{}\n[filter]\ndb_map = {{ 1 = 0, 2 = 0 }}\n",
        src.addr(),
        cluster.toml()
    ));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    // Writes to dbs 1 and 2 during the incremental phase land in db 0 of the cluster too.
    write("2", "two:b", "22");
    write("1", "one:b", "11");
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let keys: Vec<String> = cluster
        .snapshot()
        .get(&0)
        .map(|m| m.keys().map(|k| String::from_utf8_lossy(k).to_string()).collect())
        .unwrap_or_default();
    assert_eq!(keys, vec!["one:a", "one:b", "two:a", "two:b", "zero:a"], "{}", ferry.logs());
}

#[test]
fn source_slot_migrations_and_a_new_master_keep_every_key_once() {
    source_slot_migrations(&Flavor::system(), &Flavor::system());
}

#[test]
fn a_restarted_coordinator_after_a_slot_migration_leaves_no_master_unread() {
    let cluster = Cluster::start(3, 0);
    let tgt = RedisServer::start(&[]);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = cluster.witness_writer(stop.clone());
    let (cfg, status) =
        config_with_ports(&format!("[source]\n{}\n[target]\naddress = \"{}\"\n", cluster.toml(), tgt.addr()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("3 pipelines incremental", 3, Duration::from_secs(60), |p| p["phase"] == "incremental");
    // Slot 0 names the first master's pipeline; it moves to the second master. A new
    // coordinator finds which pipeline reads which master from their checkpoints on the
    // target (by replication id), so every pipeline keeps its name and nothing is copied
    // again; named after the first slots it sees now, shard-0 would be the second master's,
    // and two masters would start over with a full copy.
    cluster.migrate_slot(0, 5461);
    // Deliberate: the running pipelines go on with the writes of the migrated slot for a
    // while before the coordinator dies, so the restart comes after the migration has settled
    // rather than in the middle of it; no single state marks the hand-over as done.
    std::thread::sleep(Duration::from_millis(2500));
    ferry.kill("ferry-coordinator");
    ferry.spawn("ferry-coordinator");
    // The new coordinator's three pipelines running, and every master read again: the writes
    // made since it came up are applied while the load goes on.
    ferry.wait_all("3 pipelines incremental under the new coordinator", 3, Duration::from_secs(60), |p| {
        p["phase"] == "incremental" && p["error"].is_null()
    });
    ferry.wait_applied_total(3, cluster.masters_offset(), Duration::from_secs(90));
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100, "only {n} writes");
    let s = ferry.wait_all("3 pipelines caught up", 3, Duration::from_secs(90), |p| {
        p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["error"].is_null()
    });
    let mut ids: Vec<&str> = s["pipelines"].as_array().unwrap().iter().map(|p| p["id"].as_str().unwrap()).collect();
    ids.sort();
    assert_eq!(ids, ["shard-0", "shard-10923", "shard-5461"], "{}", ferry.logs());
    for p in s["pipelines"].as_array().unwrap() {
        assert_eq!(p["full_syncs"], 1, "the restarted coordinator caused a full copy: {p:#}\n{}", ferry.logs());
    }
    assert!(ferry.logs().contains("pipeline found from its checkpoint on the target"), "{}", ferry.logs());
    let target = rt().block_on(async { snapshot(&mut tgt.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&cluster.snapshot(), &target, 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}
