//! Sentinel-managed sources and targets, followed through failovers.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use ferry_resp::{Auth, Connection};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn start_ferry(source: &str, target: &str) -> Ferry {
    let (cfg, status) = config_with_ports(&format!("[source]\n{source}\n[target]\n{target}\n"));
    Ferry::start(&cfg, &status)
}

fn compare_addrs(a: &str, b: &str, ferry: &Ferry) {
    compare_at(a, b).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}

#[test]
fn sentinel_target_followed_through_failover_exactly_once() {
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let group = SentinelGroup::start(2, 3);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap();
    });
    let ferry = start_ferry(&format!("address = \"{}\"", src.addr()), &group.toml());
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    // Witnesses on the (standalone) source while the target fails over.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let addr = src.addr();
        let stop = stop.clone();
        std::thread::spawn(move || {
            rt().block_on(async {
                let mut c = Connection::connect(&addr, &Auth::default(), Duration::from_secs(2)).await.unwrap();
                let mut n = 0u64;
                while !stop.load(Ordering::SeqCst) {
                    c.call(&["INCR", &format!("witness:{}:count", n % 7)]).await.unwrap();
                    c.call(&["RPUSH", &format!("witness:{}:list", n % 7), &n.to_string()]).await.unwrap();
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
    // Deliberate: the failover comes after a while of writes, and writes go on for a while
    // after it, so ferry meets it with writes in flight (no state marks "enough writes").
    std::thread::sleep(Duration::from_millis(500));
    let new_master = group.failover();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::SeqCst);
    let n = writer.join().unwrap();
    assert!(n > 100);
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    assert!(p["error"].is_null(), "{p:#}");
    assert_eq!(group.master_addr(), new_master);
    compare_addrs(&src.addr(), &new_master, &ferry);
}

#[test]
fn sentinel_source_failover_continues_without_a_full_copy() {
    let group = SentinelGroup::start(2, 3);
    let tgt = RedisServer::start(&[]);
    let master = group.master();
    rt().block_on(async {
        let mut c = master.connect().await.unwrap();
        populate(&mut c).await.unwrap();
    });
    let ferry = start_ferry(&group.toml(), &format!("address = \"{}\"", tgt.addr()));
    ferry.wait_caught_up(master_offset(&group.master_addr()), Duration::from_secs(60));

    // 1. Writes, then a failover once the replicas have everything (as CLUSTER FAILOVER or
    //    a planned switch-over does): ferry continues on the new master with PSYNC.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = sentinel_witnesses(group.sentinel_addrs(), group.name.clone(), stop.clone());
    // Deliberate: a while of writes (counted below), not a state to wait for.
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    assert!(writer.join().unwrap() > 50);
    rt().block_on(async {
        let mut c = master.connect().await.unwrap();
        c.call(&["WAIT", "2", "5000"]).await.unwrap();
    });
    let new_master = group.failover();
    let stop = Arc::new(AtomicBool::new(false));
    let writer = sentinel_witnesses(group.sentinel_addrs(), group.name.clone(), stop.clone());
    // Deliberate: a while of writes on the new master, for ferry to follow.
    std::thread::sleep(Duration::from_millis(800));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let p = ferry.wait_caught_up(master_offset(&new_master), Duration::from_secs(60));
    assert_eq!(p["full_syncs"], 1, "the source failover caused a full copy: {p:#}\n{}\n{}", ferry.logs(), group.logs());
    assert!(p["partial_resyncs"].as_u64().unwrap() >= 1, "{p:#}");
    compare_addrs(&new_master, &tgt.addr(), &ferry);

    // 2. A failover under write load: the old master accepts writes until Sentinel demotes it,
    //    and Redis itself drops them; ferry follows the new master (with a full copy when its
    //    checkpoint is past what the new master has) and ends equal to it.
    let stop = Arc::new(AtomicBool::new(false));
    let writer = sentinel_witnesses(group.sentinel_addrs(), group.name.clone(), stop.clone());
    // Deliberate: writes for a while before and after the failover, so it happens under load.
    std::thread::sleep(Duration::from_millis(300));
    let newer = group.failover();
    std::thread::sleep(Duration::from_millis(1000));
    stop.store(true, Ordering::SeqCst);
    writer.join().unwrap();
    let p = ferry.wait_caught_up(master_offset(&newer), Duration::from_secs(60));
    assert!(p["error"].is_null(), "{p:#}");
    compare_addrs(&newer, &tgt.addr(), &ferry);
}
