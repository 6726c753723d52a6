//! End to end: a standalone source synced into a standalone target through the four
//! ferry processes, against real redis-server processes.

use std::time::Duration;

use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config(src: &RedisServer, tgt: &RedisServer, extra_source: &str) -> (String, String) {
    config_with_ports(&format!(
        "[source]\ntype = \"standalone\"\naddress = \"{}\"\n{extra_source}\n[target]\ntype = \"standalone\"\naddress = \"{}\"\n",
        src.addr(),
        tgt.addr()
    ))
}

fn full_then_incremental(source_args: &[&str], extra_source: &str) {
    let src = RedisServer::start(source_args);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    let keys = rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap()
    });
    assert!(keys >= 30);
    let (cfg, status) = config(&src, &tgt, extra_source);
    let ferry = Ferry::start(&cfg, &status);
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(60));
    assert_eq!(p["full_syncs"], 1, "{p:#}");
    assert!(p["keys_applied"].as_u64().unwrap() >= keys as u64, "{p:#}");
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        let n = compare(&mut a, &mut b, 2000)
            .await
            .unwrap_or_else(|e| panic!("after the full copy: {e}\n{}", ferry.logs()));
        assert!(n >= keys);
        assert_eq!(functions(&mut a).await.unwrap(), functions(&mut b).await.unwrap());
        incremental_writes(&mut a).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(30));
    assert_eq!(p["error"], serde_json::Value::Null, "{p:#}");
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000)
            .await
            .unwrap_or_else(|e| panic!("after incremental writes: {e}\n{}", ferry.logs()));
        let counter = b.call(&["GET", "inc:counter"]).await.unwrap();
        assert_eq!(counter.as_bytes().map(|b| b.to_vec()), Some(b"150".to_vec()));
    });
    // Idle: the source's PINGs are acknowledged too, so lag returns to 0.
    ferry.wait_for("lag 0", Duration::from_secs(30), |p| p["phase"] == "incremental" && p["lag_bytes"] == 0);
    // The metrics of a real run: counters moved. CI parses this file with a real
    // Prometheus parser (.ci/validate.sh).
    let metrics = http_get(&status, "/metrics").unwrap();
    let keys_applied: f64 = metrics
        .lines()
        .find(|l| l.starts_with("ferry_keys_applied_total{"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0);
    assert!(keys_applied >= keys as f64, "{metrics}");
    let target = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target");
    std::fs::write(target.join("metrics-sample.txt"), metrics).unwrap();
    // Each stage's own /metrics: its counters moved too (and CI parses them the same way).
    let value = |text: &str, series: &str| -> f64 {
        text.lines()
            .find(|l| l.starts_with(series))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    };
    for (stage, series, at_least) in [
        ("reader", "ferry_stage_source_offset_bytes{process=\"reader\"", offset as f64),
        ("decoder", "ferry_stage_entries_decoded_total{process=\"decoder\"", keys as f64),
        ("writer", "ferry_stage_commands_applied_total{process=\"writer\"", 100.0),
        ("writer", "ferry_stage_keys_applied_total{process=\"writer\"", keys as f64),
    ] {
        let addr = metrics_addr_of(&cfg, stage);
        let text = http_get(&addr, "/metrics").unwrap();
        assert!(value(&text, series) >= at_least, "{stage}: {series} below {at_least}:\n{text}");
        assert_eq!(http_get(&addr, "/healthz").unwrap().trim(), "ok");
        std::fs::write(target.join(format!("metrics-{stage}.txt")), text).unwrap();
    }
}

#[test]
fn disk_source_full_copy_and_incremental() {
    full_then_incremental(&["--repl-diskless-sync", "no"], "");
}

#[test]
fn diskless_source_full_copy_and_incremental() {
    full_then_incremental(&["--repl-diskless-sync", "yes"], "");
}

#[test]
fn source_with_requirepass() {
    full_then_incremental(&["--requirepass", "s3cret-pw"], "password = \"s3cret-pw\"");
}

#[test]
fn source_with_acl_user() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        c.call(&["ACL", "SETUSER", "ferry", "on", ">acl-pw", "+@all", "~*", "&*"]).await.unwrap();
        c.call(&["ACL", "SETUSER", "default", "off"]).await.unwrap();
    });
    let mut auth_src = src;
    auth_src.password = None;
    let (cfg, status) = config(&auth_src, &tgt, "username = \"ferry\"\npassword = \"${FERRY_TEST_ACL_PW}\"");
    // SAFETY: set before the child processes start; read only by them.
    unsafe { std::env::set_var("FERRY_TEST_ACL_PW", "acl-pw") };
    let ferry = Ferry::start(&cfg, &status);
    let p =
        ferry.wait_for("incremental", Duration::from_secs(60), |p| p["phase"] == "incremental" && p["lag_bytes"] == 0);
    assert_eq!(p["full_syncs"], 1);
    rt.block_on(async {
        let auth = ferry_resp::Auth { username: Some("ferry".into()), password: Some("acl-pw".into()) };
        let mut a = ferry_resp::Connection::connect(&auth_src.addr(), &auth, Duration::from_secs(5)).await.unwrap();
        a.call(&["SET", "acl:key", "value"]).await.unwrap();
        let mut b = tgt.connect().await.unwrap();
        for _ in 0..100 {
            if b.call(&["GET", "acl:key"]).await.unwrap().as_bytes().is_some() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("write through the ACL user did not reach the target\n{}", ferry.logs());
    });
}

#[test]
fn wrong_password_is_a_clear_error_in_status_and_log() {
    let src = RedisServer::start(&["--requirepass", "right"]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt, "password = \"wrong-pw-value\"");
    let ferry = Ferry::start(&cfg, &status);
    let p = ferry.wait_for("failed", Duration::from_secs(30), |p| p["phase"] == "failed");
    let err = p["error"].as_str().unwrap_or_default().to_string();
    assert!(err.contains("authentication") && err.contains(&src.addr()), "{err}");
    assert!(!err.contains('\n'));
    let logs = ferry.logs();
    assert!(logs.contains("authentication to"), "{logs}");
    assert!(!logs.contains("wrong-pw-value"), "the password leaked into the log");
    assert!(!http_get(&status, "/status").unwrap().contains("wrong-pw-value"));
}

#[test]
fn unreachable_source_is_a_clear_error() {
    let tgt = RedisServer::start(&[]);
    let dead = free_port();
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"127.0.0.1:{dead}\"\n[target]\naddress = \"{}\"\n",
        tgt.addr()
    ));
    let ferry = Ferry::start(&cfg, &status);
    let p = ferry.wait_for("failed", Duration::from_secs(30), |p| p["phase"] == "failed");
    let err = p["error"].as_str().unwrap_or_default();
    assert!(err.contains(&format!("cannot connect to 127.0.0.1:{dead}")), "{err}");
    let metrics = http_get(&status, "/metrics").unwrap();
    assert!(metrics.contains("ferry_pipeline_phase{pipeline=") && metrics.contains("phase=\"failed\"} 1"), "{metrics}");
    assert_eq!(http_get(&status, "/healthz").unwrap().trim(), "ok");
}

#[test]
fn existing_key_policy_skip_keeps_target_values() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut a = src.connect().await.unwrap();
        a.call(&["SET", "shared", "from-source"]).await.unwrap();
        a.call(&["SET", "only-source", "x"]).await.unwrap();
        let mut b = tgt.connect().await.unwrap();
        b.call(&["SET", "shared", "from-target"]).await.unwrap();
    });
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[writer]\nexisting_key = \"skip\"\n",
        src.addr(),
        tgt.addr()
    ));
    // config_with_ports appends its own [writer] listen: merge by moving ours after.
    let cfg = cfg
        .replacen("[writer]\nexisting_key = \"skip\"\n", "", 1)
        .replace("[writer]\n", "[writer]\nexisting_key = \"skip\"\n");
    let ferry = Ferry::start(&cfg, &status);
    let p = ferry.wait_for("incremental", Duration::from_secs(60), |p| p["phase"] == "incremental");
    assert_eq!(p["keys_skipped"], 1, "{p:#}");
    rt.block_on(async {
        let mut b = tgt.connect().await.unwrap();
        assert_eq!(b.call(&["GET", "shared"]).await.unwrap().as_bytes().unwrap().as_ref(), b"from-target");
        assert_eq!(b.call(&["GET", "only-source"]).await.unwrap().as_bytes().unwrap().as_ref(), b"x");
    });
}

#[test]
fn killed_stages_resume_with_partial_resync_and_exact_witnesses() {
    // A backlog that outlives a stage restart under this write rate.
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        populate(&mut c).await.unwrap();
    });
    let (cfg, status) = config(&src, &tgt, "");
    let mut ferry = Ferry::start(&cfg, &status);
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = source_witnesses(src.addr(), 5, stop.clone());
    for stage in ["ferry-coordinator", "ferry-writer", "ferry-decoder", "ferry-reader"] {
        // Deliberate: writes flow for a while before the kill, and the stage stays dead for a
        // moment while they go on.
        std::thread::sleep(Duration::from_millis(400));
        ferry.kill(stage);
        std::thread::sleep(Duration::from_millis(300));
        ferry.spawn(stage);
        // Let it reconnect and make progress before the next kill.
        let before = rt.block_on(src.repl_offset()).unwrap();
        ferry.wait_caught_up(before, Duration::from_secs(60));
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let writes = writer.join().unwrap();
    assert!(writes > 100, "only {writes} witness writes");
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(60));
    assert_eq!(p["full_syncs"], 1, "a stage restart caused a full copy: {p:#}\n{}", ferry.logs());
    assert!(p["partial_resyncs"].as_u64().unwrap() >= 3, "{p:#}");
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

#[test]
fn counters_survive_a_coordinator_restart_and_stages_that_died_meanwhile() {
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = config(&src, &tgt, "");
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    ferry.kill("ferry-reader");
    ferry.spawn("ferry-reader");
    let p = ferry.wait_for("a partial resync", Duration::from_secs(60), |p| p["partial_resyncs"] == 1);
    assert_eq!(p["full_syncs"], 1, "{p:#}");
    // The coordinator saves the counters in the target every 2 s: wait until they hold this
    // reader (its instance, its partial resync). That reader dies while the coordinator is
    // away, and the new one starts counting from zero.
    let reader = p["stages"]["reader"]["instance"].as_str().expect("the reader's instance").to_string();
    wait_until("the counters saved with the current reader", Duration::from_secs(30), || {
        let saved = rt.block_on(async {
            let mut c = tgt.connect().await.ok()?;
            let r = c.call(&["GET", ferry_checkpoint::COUNTERS_KEY]).await.ok()?;
            serde_json::from_slice::<serde_json::Value>(r.as_bytes()?).ok()
        });
        saved.and_then(|v| v.as_object().cloned()).is_some_and(|pipelines| {
            pipelines.values().any(|stages| {
                let r = &stages["reader"];
                let partial = |c: &serde_json::Value| c["partial_resyncs"].as_u64().unwrap_or(0);
                r["instance"] == reader && partial(&r["base"]) + partial(&r["last"]) >= 1
            })
        })
    });
    ferry.kill("ferry-coordinator");
    ferry.kill("ferry-reader");
    ferry.spawn("ferry-reader");
    ferry.spawn("ferry-coordinator");
    let p = ferry.wait_for("the counters of every reader so far", Duration::from_secs(60), |p| {
        p["partial_resyncs"] == 2 && p["phase"] == "incremental"
    });
    assert_eq!(p["full_syncs"], 1, "{p:#}\n{}", ferry.logs());
    assert!(p["keys_applied"].as_u64().unwrap() > 0, "{p:#}");
    assert!(ferry.logs().contains("counters restored from the target"), "{}", ferry.logs());
    // ferry's own keys: the counters live beside the checkpoints, never compared.
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

#[test]
fn a_slow_target_never_gets_the_reader_disconnected_the_spool_drains() {
    // A source that disconnects a replica as soon as 2 MB wait for it.
    let src = RedisServer::start(&["--client-output-buffer-limit", "replica 2mb 1mb 2"]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[reader]\nbuffer_bytes = 262144\n",
        src.addr(),
        tgt.addr()
    ));
    // A target far slower than the writes below: 3 MB/s, so that what the stages between
    // the reader and the target hold (two gRPC streams of up to 8 MiB unread each, and the
    // decoder's batches: about 25 MB) and what drains while the writes run (they take
    // seconds on a loaded machine) leave megabytes in the spool.
    let cfg = cfg.replace("[writer]\n", "[writer]\nmax_ops_per_sec = 2000\n");
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("incremental", Duration::from_secs(60), |p| p["phase"] == "incremental");
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        // ~60 MB of replication stream in a few seconds; the stages between the reader and
        // the target hold far less than that. Rounds of 1.5 MB: under the source's 2 MB
        // limit, which only a reader that stops reading would reach.
        let value = "v".repeat(1500);
        for round in 0..40 {
            let mut buf = bytes::BytesMut::new();
            for i in 0..1_000 {
                ferry_resp::encode_command_into(&mut buf, &["SET", &format!("bulk:{round}:{i}"), &value]);
            }
            c.send_raw(&buf).await.unwrap();
            for _ in 0..1_000 {
                c.read_reply().await.unwrap();
            }
        }
    });
    // Over a megabyte spooled at some point (a status taken as the spool starts to fill
    // shows less, so wait for it rather than assert on the first non-zero one).
    ferry.wait_for("over 1 MB in the spool", Duration::from_secs(30), |p| {
        p["spool_bytes"].as_u64().unwrap_or(0) > 1_000_000
    });
    // Behind in time as well as in bytes.
    ferry.wait_for("a lag in seconds", Duration::from_secs(30), |p| p["lag_seconds"].as_f64() > Some(0.2));
    let p = ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(90));
    assert_eq!(
        (p["full_syncs"].as_u64(), p["partial_resyncs"].as_u64()),
        (Some(1), Some(0)),
        "the reader was disconnected: {p:#}\n{}\n{}",
        ferry.logs(),
        src.log()
    );
    assert_eq!(p["spool_bytes"], 0);
    assert_eq!(p["lag_seconds"], 0.0, "{p:#}");
    assert!(!src.log().contains("output buffer limits"), "{}", src.log());
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

#[test]
fn byte_limits_pace_the_target_and_lose_nothing() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    // 6 MB of values of 100 KB that LZF cannot shrink: every batch is bigger than the
    // in-flight limit below.
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        let mut rng = Rng::seeded(0x2545_f491_4f6c_dd1d);
        for i in 0..60 {
            let value = rng.bytes(100_000);
            c.call(&[&b"SET"[..], format!("big:{i}").as_bytes(), &value]).await.unwrap();
        }
    });
    let (cfg, status) = config(&src, &tgt, "");
    let cfg = cfg.replace("[writer]\n", "[writer]\nmax_bytes_per_sec = 2000000\nmax_inflight_bytes = 65536\n");
    let _ = bin_dir(); // built before the clock starts
    let t0 = std::time::Instant::now();
    let ferry = Ferry::start(&cfg, &status);
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    // 6 MB at 2 MB/s: at least 2 s after the first second's allowance (a lower bound only).
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2), "6 MB applied in {took:?} despite max_bytes_per_sec = 2 MB/s");
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        let value = "i".repeat(50_000);
        for i in 0..20 {
            c.call(&["APPEND", &format!("big:{i}"), &value]).await.unwrap();
        }
    });
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        assert_eq!(compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs())), 60);
    });
}

#[test]
fn a_target_that_needs_replicas_to_accept_writes_is_waited_for() {
    let src = RedisServer::start(&[]);
    // Like a newly promoted master whose replicas have not reconnected yet.
    let tgt = RedisServer::start(&["--min-replicas-to-write", "1", "--min-replicas-max-lag", "10"]);
    let rt = rt();
    rt.block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) = config(&src, &tgt, "");
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the writer waiting for the target's replicas", Duration::from_secs(60), |p| {
        p["error"].as_str().is_some_and(|e| e.contains("min-replicas-to-write"))
    });
    // The replica arrives; ferry goes on by itself and nothing is missing.
    let _replica = RedisServer::start(&["--replicaof", "127.0.0.1", &tgt.port.to_string()]);
    let p = ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(90));
    assert!(p["errors_by_kind"]["NOREPLICAS"].as_u64().unwrap_or(0) > 0, "{p:#}");
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

#[test]
fn empty_target_before_full_copy_removes_target_only_keys() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut a = src.connect().await.unwrap();
        a.call(&["SET", "from-source", "1"]).await.unwrap();
        let mut b = tgt.connect().await.unwrap();
        b.call(&["SET", "only-on-target", "x"]).await.unwrap();
        b.call(&["SELECT", "3"]).await.unwrap();
        b.call(&["SET", "only-on-target-db3", "x"]).await.unwrap();
    });
    let (cfg, status) = config(&src, &tgt, "");
    let cfg = cfg.replace("[writer]\n", "[writer]\nempty_target_before_full_copy = true\n");
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
    assert!(ferry.logs().contains("emptying the target before the full copy"));
}

#[test]
fn the_reader_is_never_a_failover_target_and_wait_means_on_the_target() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt, "");
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        // The reader is the only replica: WAIT returns once the write is on the target.
        for i in 0..5 {
            c.call(&["SET", "waited", &i.to_string()]).await.unwrap();
            assert_eq!(c.call(&["WAIT", "1", "5000"]).await.unwrap(), ferry_resp::Reply::Integer(1));
            let mut t = tgt.connect().await.unwrap();
            assert_eq!(
                t.call(&["GET", "waited"]).await.unwrap().as_bytes().unwrap().as_ref(),
                i.to_string().as_bytes()
            );
        }
    });
    // A real replica joins after the reader (so the reader comes first in the master's list):
    // FAILOVER without TO must pick the real one.
    let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &src.port.to_string()]);
    rt().block_on(async {
        let mut r = replica.connect().await.unwrap();
        loop {
            let info = r.call(&["INFO", "replication"]).await.unwrap();
            if ferry_resp::replication::info_field(&info, "master_link_status") == Some("up") {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut c = src.connect().await.unwrap();
        c.call(&["SET", "before-failover", "1"]).await.unwrap();
        assert_eq!(c.call(&["WAIT", "2", "5000"]).await.unwrap(), ferry_resp::Reply::Integer(2));
        c.call(&["FAILOVER", "TIMEOUT", "5000"]).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let info = c.call(&["INFO", "replication"]).await.unwrap();
            let field = |f| ferry_resp::replication::info_field(&info, f).map(str::to_string);
            if field("role").as_deref() == Some("slave")
                && field("master_failover_state").as_deref() == Some("no-failover")
            {
                assert_eq!(field("master_port"), Some(replica.port.to_string()), "{info:?}");
                break;
            }
            assert!(std::time::Instant::now() < deadline, "the failover did not complete: {info:?}\n{}", ferry.logs());
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    });
}
