//! What happens to the target while ferry writes: a Sentinel target's master SIGKILLed and
//! the writer SIGKILLed again and again at seeded random moments; a cluster target's master
//! SIGKILLed; a cluster target's slots migrated between masters. Witnesses (INCR and RPUSH
//! on the source) must end equal on the target: nothing lost, nothing applied twice.
//!
//! `FERRY_TEST_SEED` replays a run (the seed is printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_resp::{Auth, Connection};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn source_snapshot(src: &RedisServer) -> Snapshot {
    rt().block_on(async { snapshot(&mut src.connect().await.unwrap()).await.unwrap() })
}

fn addr_snapshot(addr: &str) -> Snapshot {
    rt().block_on(async {
        let mut c = Connection::connect(addr, &Auth::default(), Duration::from_secs(5)).await.unwrap();
        snapshot(&mut c).await.unwrap()
    })
}

#[test]
fn sentinel_target_master_killed_and_writer_killed_many_times_exactly_once() {
    let mut rng = Rng::new("sentinel_target_master_killed_and_writer_killed_many_times_exactly_once");
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let mut group = SentinelGroup::start(2, 3);
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\n{}\n", src.addr(), group.toml()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = source_witnesses(src.addr(), 5, stop.clone());
    for round in 0..8 {
        // Deliberate: seeded random moments of the write load for each fault, and a random
        // time the writer stays dead: the timing is what the rounds vary.
        std::thread::sleep(Duration::from_millis(100 + rng.below(500)));
        if round == 3 {
            // The target master dies: what it had not replicated is lost, its checkpoint
            // with it, and ferry re-applies exactly that on the promoted replica.
            let new = group.kill_master();
            eprintln!("round {round}: target master killed, {new} promoted");
            continue;
        }
        ferry.kill("ferry-writer");
        std::thread::sleep(Duration::from_millis(rng.below(200)));
        ferry.spawn("ferry-writer");
    }
    // Deliberate: writes go on for a while after the last fault.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 200, "only {writes} writes");
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(90));
    assert_eq!(p["full_syncs"], 1, "a full copy was needed: {p:#}\n{}", ferry.logs());
    compare_snapshots(&source_snapshot(&src), &addr_snapshot(&group.master_addr()), 2000)
        .unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}

/// Witnesses on a standalone source while something happens to a cluster target; then
/// the target must equal the source.
fn cluster_target_survives(what: &str, event: impl FnOnce(&mut Cluster, &mut Ferry)) {
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let mut cluster = Cluster::start(3, 1);
    rt().block_on(async { populate_with(&mut src.connect().await.unwrap(), false).await.unwrap() });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\n{}\n", src.addr(), cluster.toml()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = source_witnesses(src.addr(), 0, stop.clone());
    // Deliberate: writes for a while before and after the event, so it happens under load.
    std::thread::sleep(Duration::from_millis(500));
    event(&mut cluster, &mut ferry);
    std::thread::sleep(Duration::from_millis(700));
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 100, "{what}: only {writes} writes");
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(90));
    assert_eq!(p["full_syncs"], 1, "{what}: a full copy was needed: {p:#}\n{}", ferry.logs());
    compare_snapshots(&source_snapshot(&src), &cluster.snapshot(), 2000)
        .unwrap_or_else(|e| panic!("{what}: {e}\n{}", ferry.logs()));
}

#[test]
fn cluster_target_master_killed_exactly_once() {
    cluster_target_survives("a target master killed", |cluster, ferry| {
        let slot = ferry_resp::cluster::key_slot(b"witness:counter:1");
        let new = cluster.kill_master_of(slot);
        eprintln!("slot {slot} now served by {new}");
        // And the writer killed after the failover, so it resumes from the checkpoints the
        // surviving masters hold.
        ferry.kill("ferry-writer");
        ferry.spawn("ferry-writer");
    });
}

#[test]
fn cluster_target_slots_migrated_during_the_sync() {
    cluster_target_survives("slots migrated", |cluster, _| {
        // Move the slots of every witness key to another master while ferry writes them
        // (ASK during the migration, MOVED after), and the first slot of a master, where
        // ferry keeps that master's checkpoints.
        let mut slots: Vec<u16> = (0..5)
            .map(|i| format!("witness:counter:{i}"))
            .chain((0..3).map(|i| format!("witness:list:{i}")))
            .map(|k| ferry_resp::cluster::key_slot(k.as_bytes()))
            .collect();
        slots.push(0);
        for slot in slots {
            let now = cluster.slot_map().unwrap();
            let to = (0..16384u16).find(|s| now.node_of(*s) != now.node_of(slot)).unwrap();
            let before = cluster.master_of(slot);
            cluster.migrate_slot(slot, to);
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while cluster.master_of(slot) == before {
                assert!(std::time::Instant::now() < deadline, "slot {slot} did not move");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    });
}
