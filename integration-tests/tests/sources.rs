//! Sources other than a live replica: an RDB file, AOF files (one file, with or without
//! an RDB preamble, and the Redis 7 multi-part directory), and a scan of a live server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ferry_resp::Connection;
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn file_config(path: &Path, tgt: &RedisServer) -> (String, String) {
    config_with_ports(&format!(
        "[source]\ntype = \"file\"\npath = \"{}\"\n[target]\naddress = \"{}\"\n",
        path.display(),
        tgt.addr()
    ))
}

fn wait_done(ferry: &Ferry, n: usize) -> serde_json::Value {
    ferry.wait_all("the copy done", n, Duration::from_secs(90), |p| p["phase"] == "done" && p["error"].is_null())
}

fn assert_equal(src: &RedisServer, tgt: &RedisServer, ferry: &Ferry) {
    rt().block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

/// Writes that must apply exactly once: counters, list pushes, a transaction, an
/// expiry, a delete, another db.
async fn writes(c: &mut Connection, round: usize) {
    for i in 0..200 {
        c.call(&["INCR", &format!("witness:{}", i % 7)]).await.unwrap();
        c.call(&["RPUSH", "witness:list", &format!("{round}-{i}")]).await.unwrap();
    }
    c.call(&["MULTI"]).await.unwrap();
    c.call(&["INCRBY", "tx:a", "5"]).await.unwrap();
    c.call(&["HINCRBY", "tx:h", "f", "2"]).await.unwrap();
    c.call(&["EXEC"]).await.unwrap();
    c.call(&["SET", &format!("ttl:{round}"), "v", "EX", "1000"]).await.unwrap();
    c.call(&["DEL", "string:0"]).await.unwrap();
    c.call(&["SELECT", "3"]).await.unwrap();
    c.call(&["INCR", "db3:counter"]).await.unwrap();
    c.call(&["SELECT", "0"]).await.unwrap();
}

/// A server writing an AOF (fsync at every write), filled, rewritten (the base), then
/// written to (the incr file).
fn aof_server(preamble: bool) -> RedisServer {
    let pre = if preamble { "yes" } else { "no" };
    let src = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always", "--aof-use-rdb-preamble", pre]);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap();
        c.call(&["BGREWRITEAOF"]).await.unwrap();
        loop {
            let info = c.call(&["INFO", "persistence"]).await.unwrap();
            let field = |f| ferry_resp::replication::info_field(&info, f).map(str::to_string);
            if field("aof_rewrite_in_progress").as_deref() == Some("0")
                && field("aof_rewrite_scheduled").as_deref() == Some("0")
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        writes(&mut c, 0).await;
    });
    src
}

/// The base and incr files of a server's multi-part AOF.
fn aof_parts(src: &RedisServer) -> (PathBuf, PathBuf) {
    let dir = src.dir.path().join("appendonlydir");
    let files: Vec<PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    let find = |suffixes: &[&str]| {
        let found: Vec<&PathBuf> =
            files.iter().filter(|p| suffixes.iter().any(|s| p.to_string_lossy().ends_with(s))).collect();
        assert_eq!(found.len(), 1, "{files:?}");
        found[0].clone()
    };
    (find(&[".base.rdb", ".base.aof"]), find(&[".incr.aof"]))
}

#[test]
fn an_rdb_file_is_copied_once() {
    let src = RedisServer::start(&[]);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap();
        c.call(&["SAVE"]).await.unwrap();
    });
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = file_config(&src.dir.path().join("dump.rdb"), &tgt);
    let mut ferry = Ferry::start(&cfg, &status);
    let s = wait_done(&ferry, 1);
    assert_eq!(s["pipelines"][0]["full_syncs"], 1, "{s:#}");
    assert_equal(&src, &tgt, &ferry);
    // A restarted reader finds the copy in the target's checkpoint: no second copy. Done as
    // the new reader reports it (the killed one's last report says done for a while too).
    let old_reader = s["pipelines"][0]["stages"]["reader"]["instance"].clone();
    assert!(old_reader.is_string(), "{s:#}");
    ferry.kill("ferry-reader");
    ferry.spawn("ferry-reader");
    let s = ferry.wait_all("the restarted reader done", 1, Duration::from_secs(90), |p| {
        p["phase"] == "done" && p["error"].is_null() && p["stages"]["reader"]["instance"] != old_reader
    });
    assert_eq!(s["pipelines"][0]["full_syncs"], 1, "copied twice: {s:#}\n{}", ferry.logs());
}

#[test]
fn a_multi_part_aof_directory_is_copied_and_resumed_after_more_writes() {
    let src = aof_server(true);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = file_config(&src.dir.path().join("appendonlydir"), &tgt);
    let mut ferry = Ferry::start(&cfg, &status);
    wait_done(&ferry, 1);
    assert_equal(&src, &tgt, &ferry);
    // The server goes on appending to its incr file; a restarted reader applies what was
    // added, from the target's checkpoint, and nothing twice (the counters say so).
    rt().block_on(async { writes(&mut src.connect().await.unwrap(), 1).await });
    ferry.kill("ferry-reader");
    ferry.spawn("ferry-reader");
    let s = ferry.wait_all("resumed and done", 1, Duration::from_secs(90), |p| {
        p["phase"] == "done" && p["partial_resyncs"].as_u64() >= Some(1)
    });
    assert_eq!(s["pipelines"][0]["full_syncs"], 1, "{s:#}");
    assert_equal(&src, &tgt, &ferry);
}

#[test]
fn single_aof_files_with_and_without_an_rdb_preamble() {
    for preamble in [true, false] {
        let src = aof_server(preamble);
        let (base, incr) = aof_parts(&src);
        assert_eq!(base.to_string_lossy().ends_with(".rdb"), preamble);
        // One file, as Redis before 7 wrote it: the rewrite, then the commands after it.
        let single = src.dir.path().join("single.aof");
        let mut bytes = std::fs::read(&base).unwrap();
        bytes.extend(std::fs::read(&incr).unwrap());
        std::fs::write(&single, bytes).unwrap();
        let tgt = RedisServer::start(&[]);
        let (cfg, status) = file_config(&single, &tgt);
        let ferry = Ferry::start(&cfg, &status);
        wait_done(&ferry, 1);
        if !preamble {
            // The rewrite writes a big sorted set as ZADDs of 64 members; replayed, the first
            // one makes a listpack, which keeps an integral score as an integer: the -0 of
            // `negzero` comes back as 0, for Redis loading this file as for ferry.
            rt().block_on(async {
                for s in [&src, &tgt] {
                    let mut c = s.connect().await.unwrap();
                    let score = c.call(&["ZSCORE", "zset:big", "negzero"]).await.unwrap();
                    assert!(matches!(score.as_bytes().map(|b| &b[..]), Some(b"-0") | Some(b"0")), "{score:?}");
                    c.call(&["ZREM", "zset:big", "negzero"]).await.unwrap();
                }
            });
        }
        assert_equal(&src, &tgt, &ferry);
    }
}

#[test]
fn a_file_that_is_neither_rdb_nor_aof_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    std::fs::write(&path, "hello").unwrap();
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = file_config(&path, &tgt);
    let ferry = Ferry::start(&cfg, &status);
    let s = ferry.wait_all("an error", 1, Duration::from_secs(60), |p| {
        p["error"].as_str().is_some_and(|e| e.contains("neither"))
    });
    let err = s["pipelines"][0]["error"].as_str().unwrap();
    assert!(err.contains("notes.txt") && err.contains("neither an RDB"), "{err}");
}

#[test]
fn scan_sources_standalone_and_cluster() {
    let src = RedisServer::start(&[]);
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[reader]\nmethod = \"scan\"\nscan_count = 7\n",
        src.addr(),
        tgt.addr()
    ));
    let ferry = Ferry::start(&cfg, &status);
    let s = wait_done(&ferry, 1);
    assert_eq!(s["pipelines"][0]["full_syncs"], 1, "{s:#}");
    assert_equal(&src, &tgt, &ferry);
    drop(ferry);

    let cluster = Cluster::start(3, 0);
    for i in 0..300 {
        cluster.call(&["SET", &format!("s:{i}"), &"x".repeat(i)]);
        cluster.call(&["RPUSH", &format!("l:{i}"), "a", "b"]);
        cluster.call(&["HSET", &format!("h:{i}"), "f", &i.to_string()]);
        cluster.call(&["ZADD", &format!("z:{i}"), "1.5", "m"]);
        cluster.call(&["SET", &format!("t:{i}"), "v", "PX", "900000"]);
    }
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config_with_ports(&format!(
        "[source]\n{}\n[target]\naddress = \"{}\"\n[reader]\nmethod = \"scan\"\n",
        cluster.toml(),
        tgt.addr()
    ));
    let ferry = Ferry::start(&cfg, &status);
    wait_done(&ferry, 3);
    let target = rt().block_on(async { snapshot(&mut tgt.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&cluster.snapshot(), &target, 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
}
