//! Scenarios run against more than one server build (the tests of each topology, and the
//! server matrix of `tests/matrix.rs`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::*;

/// A cluster source (3 masters of `from`) whose slots move while witnesses are written: to
/// another master, away from the slot that names a pipeline, to a new master and back. Every
/// key lands once in a standalone target of `to`, with one full copy per pipeline.
pub fn source_slot_migrations(from: &Flavor, to: &Flavor) {
    let mut cluster = Cluster::start_on(from, 3, 0);
    let tgt = RedisServer::start_on(to, &[]);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let slot = |k: &str| ferry_resp::cluster::key_slot(k.as_bytes());
    // Keys of other types in the slots that move, next to the INCR witnesses.
    for w in ["witness:1", "witness:3", "witness:5"] {
        for i in 0..50 {
            let k = format!("{{{w}}}:list:{i}");
            cluster.call(&["RPUSH", &k, "a", "b", "c"]);
            cluster.call(&["SET", &format!("{{{w}}}:str:{i}"), &"v".repeat(i * 10)]);
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let writer = cluster.witness_writer(stop.clone());
    let (cfg, status) =
        config_with_ports(&format!("[source]\n{}\n[target]\naddress = \"{}\"\n", cluster.toml(), tgt.addr()));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("3 pipelines incremental", 3, Duration::from_secs(60), |p| p["phase"] == "incremental");
    // A witness's slot to another master, while it is written to.
    let (s1, s5) = (slot("witness:1"), slot("witness:5"));
    let other = (0..3u16).map(|n| n * 5461 + 100).find(|&s| cluster.master_of(s) != cluster.master_of(s1)).unwrap();
    cluster.migrate_slot(s1, other);
    // Slot 0 names a pipeline (shard-0): its master keeps its pipeline when the slot leaves.
    cluster.migrate_slot(0, 16383);
    // A new master, given two witness slots: it gets a pipeline of its own.
    let new = cluster.add_master();
    cluster.migrate_slot_to(slot("witness:3"), &new);
    cluster.migrate_slot_to(s5, &new);
    // And one back from the new master, so its pipeline exports as well as imports.
    cluster.migrate_slot(s5, 5000);
    // Deliberate: writes go on for a while against the final topology (no state marks
    // "enough writes").
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100, "only {n} writes");
    let s = ferry.wait_all("4 pipelines caught up", 4, Duration::from_secs(90), |p| {
        p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["error"].is_null()
    });
    for p in s["pipelines"].as_array().unwrap() {
        assert_eq!(p["full_syncs"], 1, "a topology change caused a second full copy: {p:#}\n{}", ferry.logs());
    }
    let target = rt.block_on(async { snapshot(&mut tgt.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&cluster.snapshot(), &target, 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}
