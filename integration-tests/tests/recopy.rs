//! A re-copy (the source's backlog no longer reaches back to the target's checkpoint) removes
//! the target's keys the source deleted meanwhile, and nothing outside the pipeline's keyspace.

use std::time::Duration;

use ferry_resp::{Auth, Connection};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Shrinks the backlog of `addr` and writes well past it (to `key`, which `addr` serves), so
/// a reader that comes back later cannot continue (`PSYNC` gets `FULLRESYNC`).
async fn overflow_backlog(addr: &str, key: &str) {
    let mut c = Connection::connect(addr, &Auth::default(), Duration::from_secs(5)).await.unwrap();
    c.call(&["CONFIG", "SET", "repl-backlog-size", "16384"]).await.unwrap();
    let filler = "x".repeat(8192);
    for i in 0..256 {
        c.call(&["SET", key, &format!("{i}{filler}")]).await.unwrap();
    }
}

#[test]
fn a_recopy_removes_keys_the_source_deleted_and_nothing_else() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        for i in 0..200 {
            c.call(&["SET", &format!("k:{i}"), &i.to_string()]).await.unwrap();
        }
        c.call(&["SELECT", "1"]).await.unwrap();
        c.call(&["RPUSH", "db1:list", "a", "b"]).await.unwrap();
        c.call(&["SET", "db1:gone", "x"]).await.unwrap();
        // A key only the target has, outside what ferry copies: [filter] blocks `cache:`.
        let mut t = tgt.connect().await.unwrap();
        t.call(&["SET", "cache:target-only", "mine"]).await.unwrap();
    });
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[filter]\nblock_key_prefix = [\"cache:\"]\n",
        src.addr(),
        tgt.addr()
    ));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));

    // While the reader is down the source deletes keys and its backlog moves on.
    ferry.kill("ferry-reader");
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        for i in 0..50 {
            c.call(&["DEL", &format!("k:{i}")]).await.unwrap();
        }
        c.call(&["SELECT", "1"]).await.unwrap();
        c.call(&["DEL", "db1:gone"]).await.unwrap();
        c.call(&["SELECT", "0"]).await.unwrap();
        c.call(&["SET", "cache:source", "blocked"]).await.unwrap();
        overflow_backlog(&src.addr(), "filler").await;
    });
    ferry.spawn("ferry-reader");
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_for("the re-copy caught up", Duration::from_secs(60), |p| {
        p["full_syncs"] == 2 && p["phase"] == "incremental" && p["applied_offset"].as_i64() >= Some(offset)
    });
    assert_eq!(p["stale_keys_removed"], 51, "{p:#}\n{}", ferry.logs());
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        // What [filter] keeps out of the copy stays as it was.
        assert_eq!(t.call(&["GET", "cache:target-only"]).await.unwrap().as_bytes().unwrap().as_ref(), b"mine");
        t.call(&["DEL", "cache:target-only"]).await.unwrap();
        let mut c = src.connect().await.unwrap();
        c.call(&["DEL", "cache:source"]).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
    assert!(ferry.logs().contains("a re-copy: keys the source no longer holds will be removed"), "{}", ferry.logs());
}

#[test]
fn a_recopy_of_a_cluster_source_into_a_cluster_target_removes_only_its_masters_keys() {
    let src = Cluster::start(3, 0);
    let tgt = Cluster::start(3, 0);
    for i in 0..300 {
        src.call(&["SET", &format!("k:{i}"), &i.to_string()]);
    }
    let (cfg, status) = config_with_ports(&format!("[source]\n{}\n[target]\n{}\n", src.toml(), tgt.toml()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("3 pipelines caught up", 3, Duration::from_secs(60), |p| {
        p["phase"] == "incremental" && p["lag_bytes"] == 0
    });

    ferry.kill("ferry-reader");
    for i in 0..60 {
        src.call(&["DEL", &format!("k:{i}")]);
    }
    let map = src.slot_map().unwrap();
    rt().block_on(async {
        for (n, m) in map.masters.iter().enumerate() {
            let key = (0..)
                .map(|i| format!("filler:{i}"))
                .find(|k| map.node_of(ferry_resp::cluster::key_slot(k.as_bytes())) == Some(n))
                .unwrap();
            overflow_backlog(m, &key).await;
        }
    });
    ferry.spawn("ferry-reader");
    let s = ferry.wait_all("3 re-copies caught up", 3, Duration::from_secs(90), |p| {
        p["full_syncs"] == 2 && p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["error"].is_null()
    });
    let removed: u64 =
        s["pipelines"].as_array().unwrap().iter().map(|p| p["stale_keys_removed"].as_u64().unwrap()).sum();
    assert_eq!(removed, 60, "{s:#}\n{}", ferry.logs());
    compare_snapshots(&src.snapshot(), &tgt.snapshot(), 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}
