//! SIGKILL of every stage, during the full copy and during the incremental sync, with a
//! cluster (with replicas) as the source and another cluster as the target.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use ferry_resp::{Auth, Connection};
use integration_tests::*;

/// The coordinator first: see the test.
const KILL_ORDER: [&str; 4] = ["ferry-coordinator", "ferry-reader", "ferry-decoder", "ferry-writer"];

/// `n` keys of `size` bytes, written to the masters that serve them, pipelined.
fn fill(cluster: &Cluster, n: usize, size: usize) {
    let map = cluster.slot_map().unwrap();
    let value = Rng::seeded(7).bytes(size);
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        for (m, addr) in map.masters.iter().enumerate() {
            let mut c = Connection::connect(addr, &Auth::default(), Duration::from_secs(5)).await.unwrap();
            let keys: Vec<String> = (0..n)
                .map(|i| format!("fill:{i}"))
                .filter(|k| map.node_of(ferry_resp::cluster::key_slot(k.as_bytes())) == Some(m))
                .collect();
            for chunk in keys.chunks(500) {
                let mut out = BytesMut::new();
                for k in chunk {
                    // Each value differs (the key in front), so nothing deduplicates them.
                    let v = [k.as_bytes(), &value].concat();
                    ferry_resp::encode_command_into(&mut out, &[&b"SET"[..], k.as_bytes(), &v]);
                }
                c.send_raw(&out).await.unwrap();
                for _ in chunk {
                    assert!(c.read_reply().await.unwrap().first_error().is_none());
                }
            }
        }
    });
}

/// Waits until some pipeline is receiving its RDB (a full copy under way).
fn wait_full_copy(ferry: &Ferry) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = ferry.status()
            && s["pipelines"].as_array().is_some_and(|ps| {
                ps.iter().any(|p| p["phase"] == "full_sync" && p["rdb_bytes_received"].as_u64() > Some(0))
            })
        {
            return;
        }
        assert!(Instant::now() < deadline, "no full copy under way\n{}", ferry.logs());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Every pipeline incremental and within `lag` bytes of its source (0 once the writes stop;
/// while they go on, a few commands are always in flight).
fn caught_up(ferry: &Ferry, lag: u64) -> serde_json::Value {
    ferry.wait_all("3 pipelines caught up", 3, Duration::from_secs(120), |p| {
        p["phase"] == "incremental" && p["lag_bytes"].as_u64() <= Some(lag) && p["error"].is_null()
    })
}

fn sum(s: &serde_json::Value, field: &str) -> u64 {
    s["pipelines"].as_array().unwrap().iter().map(|p| p[field].as_u64().unwrap()).sum()
}

#[test]
fn every_stage_killed_in_both_phases_cluster_to_cluster() {
    let src = Cluster::start(3, 1);
    let tgt = Cluster::start(3, 0);
    // About 10 MB a shard, applied at 4 MB/s a pipeline: each full copy takes seconds.
    fill(&src, 30_000, 1000);
    let (cfg, status) = config_with_ports(&format!("[source]\n{}\n[target]\n{}\n", src.toml(), tgt.toml()));
    let cfg = cfg.replace("[writer]\n", "[writer]\nmax_bytes_per_sec = 4000000\n");
    let mut ferry = Ferry::start(&cfg, &status);
    let stop = Arc::new(AtomicBool::new(false));
    let writer = src.witness_writer(stop.clone());
    // During the full copy. The coordinator first: its restart does not restart the copy;
    // each of the others does (the checkpoint is removed while a copy is under way), so a
    // copy is under way again for the next kill.
    for stage in KILL_ORDER {
        wait_full_copy(&ferry);
        // Deliberate: the kill lands a little way into the copy, not at its first byte, and
        // the stage stays dead for a moment before it starts again.
        std::thread::sleep(Duration::from_millis(300));
        ferry.kill(stage);
        std::thread::sleep(Duration::from_millis(200));
        ferry.spawn(stage);
    }
    let s = caught_up(&ferry, 65536);
    assert!(sum(&s, "full_syncs") >= 3, "kills during the copy must restart it: {s:#}");
    // During the incremental sync: resumed from the checkpoints, no new full copy. The
    // counters survive the coordinator's restart too (it keeps them in the target).
    let (full, partial) = (sum(&s, "full_syncs"), sum(&s, "partial_resyncs"));
    for stage in KILL_ORDER {
        // Deliberate: writes flow for a while between two kills, and the stage stays dead for
        // a moment while they go on.
        std::thread::sleep(Duration::from_millis(400));
        ferry.kill(stage);
        std::thread::sleep(Duration::from_millis(300));
        ferry.spawn(stage);
        let s = caught_up(&ferry, 65536);
        assert!(sum(&s, "full_syncs") >= full, "the counters went back after {stage} restarted: {s:#}");
    }
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100, "only {n} witness writes");
    // Every write applied (a report from before the last writes would show a lag of 0 too):
    // one pipeline per master, so their applied offsets add up to the masters' offsets.
    ferry.wait_applied_total(3, src.masters_offset(), Duration::from_secs(120));
    let s = caught_up(&ferry, 0);
    assert_eq!(
        sum(&s, "full_syncs"),
        full,
        "a kill in the incremental phase caused a full copy: {s:#}\n{}",
        ferry.logs()
    );
    // The reader, decoder and writer kills end every session (the coordinator's ends none).
    assert!(sum(&s, "partial_resyncs") >= partial + 9, "{s:#}");
    compare_snapshots(&src.snapshot(), &tgt.snapshot(), 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}
