//! A RedisShake v3 `sync.toml` (the appendix of seed 000, verbatim but for its addresses and
//! passwords) used as ferry's config file: `ferry-coordinator config --explain` prints the
//! mapped config and the warnings, and the four processes copy a source into a target with it.

use std::process::Command;
use std::time::Duration;

use integration_tests::*;

/// The appendix of seed 000 (`sync.toml`), verbatim.
const SEED_SYNC_TOML: &str = r#"type = "sync"
 
[source]
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
address = "10.233.109.145:6379"
username = "" # keep empty if not using ACL
password = "3wPxzWffdn" # keep empty if no authentication is required
tls = false
elasticache_psync = "" # using when source is ElastiCache. ref: https://github.com/alibaba/RedisShake/issues/373
 
[target]
type = "cluster" # "standalone" or "cluster"
version = 6.0 # redis version, such as 2.8, 4.0, 5.0, 6.0, 6.2, 7.0, ...
# When the target is a cluster, write the address of one of the nodes.
# RedisShake will obtain other nodes through the __cluster nodes__  command.
address = "10.233.103.2:6379"
username = "" # keep empty if not using ACL
password = "Aa123456" # keep empty if no authentication is required
tls = false
 
[advanced]
dir = "data"
 
# runtime.GOMAXPROCS, 0 means use runtime.NumCPU() cpu cores
ncpu = 4
 
# pprof port, 0 means disable
pprof_port = 0
 
# metric port, 0 means disable
metrics_port = 0
 
# log
log_file = "redis-shake.log"
log_level = "info" # debug, info or warn
log_interval = 5 # in seconds
 
# redis-shake gets key and value from rdb file, and uses RESTORE command to
# create the key in target redis. Redis RESTORE will return a "Target key name
# is busy" error when key already exists. You can use this configmap
# to change the default behavior of restore:
# panic:   redis-shake will stop when meet "Target key name is busy" error.
# rewrite: redis-shake will replace the key with new value.
# ignore:  redis-shake will skip restore the key when meet "Target key name is busy" error.
rdb_restore_command_behavior = "rewrite" # panic, rewrite or skip
 
# pipeline
pipeline_count_limit = 1024
 
# Client query buffers accumulate new commands. They are limited to a fixed
# amount by default. This amount is normally 1gb.
target_redis_client_max_querybuf_len = 1024_000_000
 
# In the Redis protocol, bulk requests, that are, elements representing single
# strings, are normally limited to 512 mb.
target_redis_proto_max_bulk_len = 512_000_000
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Replaces exactly one occurrence of `from` in `text`.
fn replace_once(text: &str, from: &str, to: &str) -> String {
    assert_eq!(text.matches(from).count(), 1, "{from:?} is not in the seed's sync.toml exactly once");
    text.replacen(from, to, 1)
}

#[test]
fn seed_000_sync_toml_explains_and_syncs() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let status_port = free_port();

    // Only the addresses, the passwords (the test servers have none), the metrics port (where
    // the status API goes) and the target type change. The target is one standalone server,
    // and the seed itself says to set `type = "standalone"` for such a target.
    let mut text = SEED_SYNC_TOML.to_string();
    text = replace_once(&text, "address = \"10.233.109.145:6379\"", &format!("address = \"{}\"", src.addr()));
    text = replace_once(&text, "password = \"3wPxzWffdn\"", "password = \"\"");
    text = replace_once(&text, "address = \"10.233.103.2:6379\"", &format!("address = \"{}\"", tgt.addr()));
    text = replace_once(&text, "password = \"Aa123456\"", "password = \"\"");
    text = replace_once(&text, "type = \"cluster\" #", "type = \"standalone\" #");
    text = replace_once(&text, "metrics_port = 0", &format!("metrics_port = {status_port}"));

    // A RedisShake file has no [coordinator]/[decoder]/[writer]: the ferry processes (children
    // of this test) take those addresses from the environment.
    let grpc = format!("127.0.0.1:{}", free_port());
    let decoder = format!("127.0.0.1:{}", free_port());
    let writer = format!("127.0.0.1:{}", free_port());
    // SAFETY: set before any thread of this test binary reads the environment concurrently
    // (this is the only test in this file).
    unsafe {
        std::env::set_var("FERRY_COORDINATOR_GRPC_ADDR", &grpc);
        std::env::set_var("FERRY_DECODER_LISTEN", &decoder);
        std::env::set_var("FERRY_WRITER_LISTEN", &writer);
        std::env::remove_var("FERRY_COORDINATOR_STATUS_ADDR");
    }

    // `ferry-coordinator config --explain FILE`, as a process.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sync.toml");
    std::fs::write(&path, &text).unwrap();
    let out = Command::new(bin_dir().join("ferry-coordinator"))
        .arg("config")
        .arg("--explain")
        .arg(&path)
        .output()
        .expect("run ferry-coordinator config --explain");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "exit {:?}\nstdout:\n{stdout}\nstderr:\n{stderr}", out.status);
    for expected in [
        "a RedisShake v3 sync.toml".to_string(),
        format!("[source]\ntype = \"standalone\"\naddress = \"{}\"", src.addr()),
        format!("[target]\ntype = \"standalone\"\naddress = \"{}\"", tgt.addr()),
        format!("status_addr = \"127.0.0.1:{status_port}\""),
        format!("grpc_addr = \"{grpc}\""),
        format!("[decoder]\nlisten = \"{decoder}\""),
        format!("[writer]\nlisten = \"{writer}\"\npipeline_count_limit = 1024\nexisting_key = \"rewrite\""),
        "restore_max_bytes = 16777216".to_string(),
        "[log]\nlevel = \"info\"".to_string(),
        "# 7 warning(s):".to_string(),
        "# warning: advanced.ncpu: ".to_string(),
        "# warning: advanced.pprof_port: ".to_string(),
        "max_inflight_bytes = 1024000000".to_string(),
        "# warning: source.version: ".to_string(),
    ] {
        assert!(stdout.contains(&expected), "missing {expected:?} in:\n{stdout}");
    }
    // The output (warnings are comments) is itself a ferry.toml that loads.
    let explained = dir.path().join("explained.toml");
    std::fs::write(&explained, stdout.as_bytes()).unwrap();
    ferry_config::Config::load(&explained).unwrap_or_else(|e| panic!("{e}\n{stdout}"));

    // The full copy, then incremental writes.
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap();
    });
    let ferry = Ferry::start(&text, &format!("127.0.0.1:{status_port}"));
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let n = rt()
        .block_on(async { compare(&mut src.connect().await.unwrap(), &mut tgt.connect().await.unwrap(), 2000).await });
    let n = n.unwrap_or_else(|e| panic!("after the full copy: {e}\n{}", ferry.logs()));
    assert!(n > 0, "nothing was copied");

    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        for args in [
            &["SET", "shake:a", "1"][..],
            &["INCR", "shake:counter"],
            &["RPUSH", "shake:list", "x", "y"],
            &["HSET", "shake:hash", "f", "v"],
            &["DEL", "shake:a"],
            &["SET", "shake:b", "2", "PX", "600000"],
        ] {
            let r = c.call(args).await.unwrap();
            assert!(r.as_error().is_none(), "{args:?}: {r:?}");
        }
    });
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(30));
    assert_eq!(p["phase"], "incremental", "{p:#}");
    rt().block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert!(t.call(&["GET", "shake:a"]).await.unwrap().as_bytes().is_none());
        assert_eq!(t.call(&["GET", "shake:b"]).await.unwrap().as_bytes().map(|b| b.to_vec()), Some(b"2".to_vec()));
        compare(&mut src.connect().await.unwrap(), &mut t, 2000).await
    })
    .unwrap_or_else(|e| panic!("after the incremental writes: {e}\n{}", ferry.logs()));

    // Every process logged the ignored RedisShake options at start.
    let logs = ferry.logs();
    for stage in STAGES {
        assert!(
            logs.lines().any(|l| l.starts_with(&format!("{stage}: ")) && l.contains("advanced.ncpu")),
            "{stage} did not warn about advanced.ncpu:\n{logs}"
        );
    }
}
