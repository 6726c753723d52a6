//! The guarantees at their edges (issue 15), each against real servers:
//!
//! - a command the target rejects inside a batch's `MULTI`/`EXEC` stops the pipeline for
//!   good: the checkpoint moved past it in the same `EXEC`, so retrying would skip it;
//! - after a full resynchronization the reader never acknowledges more than the target holds
//!   of the *new* replication history.

use std::time::{Duration, Instant};

use ferry_resp::Reply;
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// [`config`] with `coordinator.state_file` in `dir` (role swaps keep their role there).
fn config_with_state(src: &RedisServer, tgt: &RedisServer, file: &std::path::Path) -> (String, String) {
    let (cfg, status) = config(src, tgt);
    (cfg.replace("[coordinator]\n", &format!("[coordinator]\nstate_file = \"{}\"\n", file.display())), status)
}

fn config(src: &RedisServer, tgt: &RedisServer) -> (String, String) {
    config_with_ports(&format!(
        "[source]\ntype = \"standalone\"\naddress = \"{}\"\n[target]\ntype = \"standalone\"\naddress = \"{}\"\n",
        src.addr(),
        tgt.addr()
    ))
}

/// A command that ran on the source and that the target refused inside the `EXEC` of its
/// batch: the pipeline stops with the command and the key, stays stopped (a restarted writer
/// too) and applies nothing after it, until the operator removes the stop.
#[test]
fn a_command_the_target_rejects_inside_exec_stops_the_pipeline_for_good() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    // A key only the target holds, of another type than the source will write.
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        t.call(&["RPUSH", "clash", "a list on the target"]).await.unwrap();
        let mut s = src.connect().await.unwrap();
        s.call(&["SET", "before", "1"]).await.unwrap();
    });
    let (cfg, status) = config(&src, &tgt);
    let mut ferry = Ferry::start(&cfg, &status);
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));

    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        // One transaction on the source: the target runs it as one batch, the INCR fails
        // there with WRONGTYPE while the SET and the checkpoint succeed.
        s.call(&["MULTI"]).await.unwrap();
        s.call(&["INCR", "clash"]).await.unwrap();
        s.call(&["SET", "in-the-same-batch", "1"]).await.unwrap();
        s.call(&["EXEC"]).await.unwrap();
    });
    let p = ferry.wait_for("the pipeline to stop on the rejected INCR", Duration::from_secs(30), |p| {
        p["error"].as_str().is_some_and(|e| e.contains("INCR") && e.contains("clash") && e.contains("WRONGTYPE"))
    });
    assert!(p["error"].as_str().unwrap().contains("stopped"), "{p:#}");

    // Later writes never land while the pipeline is stopped, a restarted writer included.
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        s.call(&["SET", "after", "1"]).await.unwrap();
    });
    ferry.kill("ferry-writer");
    ferry.spawn("ferry-writer");
    ferry.wait_for("the reader to see the stop", Duration::from_secs(30), |p| p["phase"] != "incremental");
    let deadline = Instant::now() + Duration::from_secs(4);
    while Instant::now() < deadline {
        let p = ferry.status().unwrap()["pipelines"][0].clone();
        assert_ne!(p["phase"], "incremental", "the pipeline went on past a rejected command: {p:#}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let p = ferry.wait_for("the stop to be reported again", Duration::from_secs(30), |p| {
        p["error"].as_str().is_some_and(|e| e.contains("stopped") && e.contains("INCR") && e.contains("clash"))
    });
    assert_ne!(p["phase"], "incremental", "{p:#}");
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert!(t.call(&["GET", "after"]).await.unwrap().as_bytes().is_none(), "a write after the stop landed");
    });

    // The operator fixes the cause and removes the stop: the stream goes on from there.
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        t.call(&["DEL", "clash"]).await.unwrap();
        t.call(&["SET", "clash", "1"]).await.unwrap();
        t.call(&["DEL", &ferry_checkpoint::stop_key(src.addr().as_str())]).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

/// The acknowledged offset of the source's replicas, from `INFO replication`.
async fn replica_ack_offsets(c: &mut ferry_resp::Connection) -> (i64, Vec<i64>) {
    let info = c.call(&["INFO", "replication"]).await.unwrap();
    let text = String::from_utf8_lossy(info.as_bytes().unwrap()).into_owned();
    let master: i64 = ferry_resp::replication::info_field(&info, "master_repl_offset").unwrap().parse().unwrap();
    let acks = text
        .lines()
        .filter(|l| l.starts_with("slave"))
        .filter_map(|l| l.split(',').find_map(|kv| kv.strip_prefix("offset=")).and_then(|v| v.parse().ok()))
        .collect();
    (master, acks)
}

/// The source restarts empty (a new replication history, its offset starting again near
/// 0) after ferry applied a long stream: during the full copy that follows, the reader must
/// not acknowledge the old history's offset, which the target does not hold of the new one.
#[test]
fn after_a_full_resync_the_reader_never_acknowledges_the_old_history() {
    let mut src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    let (cfg, status) = config(&src, &tgt);
    // A slow target, so the full copy after the restart lasts a few seconds.
    let cfg = format!("{cfg}max_ops_per_sec = 400\n");
    let ferry = Ferry::start(&cfg, &status);
    // Attached first: a source without replicas keeps no backlog and its offset stays 0.
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        let big = "x".repeat(20_000);
        for i in 0..60 {
            s.call(&["SET", &format!("big:{i}"), &big]).await.unwrap();
        }
    });
    let old = rt.block_on(src.repl_offset()).unwrap();
    assert!(old > 1_000_000, "{old}");
    ferry.wait_caught_up(old, Duration::from_secs(60));

    src.kill();
    src.restart();
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        for i in 0..2000 {
            s.call(&["SET", &format!("k:{i}"), "v"]).await.unwrap();
        }
    });
    let new = rt.block_on(src.repl_offset()).unwrap();
    assert!(new < old, "{new} {old}");
    // Until the target holds the new copy, no acknowledgement may claim more than the
    // source has sent in its new history.
    let deadline = Instant::now() + Duration::from_secs(90);
    let mut seen_replica = false;
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        let mut t = tgt.connect().await.unwrap();
        let mut polls = 0u32;
        loop {
            let (master, acks) = replica_ack_offsets(&mut s).await;
            for a in &acks {
                seen_replica = true;
                assert!(*a <= master, "the reader acknowledged {a}, the source is at {master}\n{}", ferry.logs());
            }
            polls += 1;
            // Until the target holds the new copy (and the re-copy removed the old keys).
            if polls.is_multiple_of(25) && compare(&mut s, &mut t, 2000).await.is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "the second copy did not complete\n{}", ferry.logs());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    assert!(seen_replica, "the reader never showed up as a replica of the restarted source");
    let p = ferry.status().unwrap()["pipelines"][0].clone();
    assert_eq!(p["full_syncs"], 2, "{p:#}");
}

/// An older writer session of the pipeline whose last transaction is still on its way to
/// the target (a stalled or partitioned writer: its connection is open, the `EXEC` not in
/// yet) while a new session starts: the new session must make sure that transaction can no
/// longer run before it reads the checkpoint, or the write is applied twice — once by the
/// old transaction, once by the new session resuming from the checkpoint before it.
///
/// The older session is played by a client connection named as the writer names its own
/// (`CLIENT SETNAME ferry-writer:<pipeline>`), holding `MULTI`, the source's `INCR` and the
/// checkpoint write, its `EXEC` sent only after the new session has read the checkpoint.
#[test]
fn a_new_writer_session_never_applies_what_an_older_one_had_queued() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    let (cfg, status) = config(&src, &tgt);
    let mut ferry = Ferry::start(&cfg, &status);
    let pipeline = src.addr();
    rt.block_on(async {
        src.connect().await.unwrap().call(&["INCR", "witness"]).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));

    // The stream goes on while no session applies it.
    ferry.kill("ferry-reader");
    let (replid, end) = rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        s.call(&["INCR", "witness"]).await.unwrap();
        let info = s.call(&["INFO", "replication"]).await.unwrap();
        let replid = ferry_resp::replication::info_field(&info, "master_replid").unwrap().to_string();
        (replid, src.repl_offset().await.unwrap())
    });
    // The older session's transaction of that INCR, waiting for its EXEC.
    let mut old = rt.block_on(async {
        let mut c = tgt.connect().await.unwrap();
        c.call(&["CLIENT", "SETNAME", &format!("ferry-writer:{pipeline}")]).await.unwrap();
        c.call(&["MULTI"]).await.unwrap();
        c.call(&["INCR", "witness"]).await.unwrap();
        let value = ferry_checkpoint::value(&replid, end, end, 0);
        c.call(&["SET", &ferry_checkpoint::key(&pipeline), &value]).await.unwrap();
        c
    });
    // A new session: it reads the checkpoint and applies the INCR itself.
    ferry.spawn("ferry-reader");
    ferry.wait_caught_up(end, Duration::from_secs(60));
    // The older session's EXEC arrives: it must find nothing to run.
    let exec = rt.block_on(old.call(&["EXEC"]));
    let witness = rt.block_on(async {
        let w = tgt.connect().await.unwrap().call(&["GET", "witness"]).await.unwrap();
        w.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    });
    assert_eq!(
        witness.as_deref(),
        Some("2"),
        "the INCR ran twice on the target (old EXEC: {exec:?})\n{}",
        ferry.logs()
    );
    assert!(exec.is_err(), "the older session's connection was still open: {exec:?}");
}

/// `ferry-watcher` with `--config`, its exit code and its output.
fn watcher(ferry: &Ferry, args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(bin_dir().join("ferry-watcher"))
        .args(args)
        .arg("--config")
        .arg(ferry.dir.path().join("ferry.toml"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

/// Side A lost and fenced, never recovered: `switchback --force` must not make it the
/// source again (its stale data would overwrite B, seed 000's disaster); only the loudly
/// named `--overwrite-with-stale-source` does.
#[test]
fn force_never_makes_a_lost_unrecovered_source_the_source_again() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let (cfg, status) = config_with_state(&src, &tgt, &state.path().join("role.json"));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");

    let (code, out) = watcher(&ferry, &["fence", "--reason", "A lost"]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = watcher(&ferry, &["switchback", "--force"]);
    assert_eq!(code, 1, "switchback --force from fenced was allowed: {out}");
    assert!(out.contains("refused") && out.contains("overwrite-with-stale-source"), "{out}");
    let doc = ferry.status().unwrap();
    assert_eq!(doc["role"], "fenced", "{doc:#}");

    let (code, out) = watcher(&ferry, &["switchback", "--force", "--overwrite-with-stale-source", "--reason", "drill"]);
    assert_eq!(code, 0, "{out}");
    let doc = ferry.status().unwrap();
    assert_eq!(doc["role"], "forward", "{doc:#}");
    assert!(ferry.logs().contains("overwrite-with-stale-source"), "the override was not logged");
}

/// `existing_key = "skip"` keeps a key the target held before ferry's first copy; a re-copy
/// (the backlog overrun while the reader was down) replaces ferry's own earlier copy, so a
/// key that changed in between is not left stale.
#[test]
fn a_recopy_replaces_ferrys_earlier_copy_whatever_existing_key_says() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let rt = rt();
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        s.call(&["SET", "changed", "v1"]).await.unwrap();
        s.call(&["SET", "theirs", "source's"]).await.unwrap();
        let mut t = tgt.connect().await.unwrap();
        t.call(&["SET", "theirs", "the target's own"]).await.unwrap();
    });
    let (cfg, status) = config(&src, &tgt);
    let cfg = format!("{cfg}existing_key = \"skip\"\n");
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let get = |k: &str| {
        rt.block_on(async {
            let v = tgt.connect().await.unwrap().call(&["GET", k]).await.unwrap();
            v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
        })
    };
    assert_eq!(get("theirs").as_deref(), Some("the target's own"), "skip kept the target's key");
    assert_eq!(get("changed").as_deref(), Some("v1"));

    // While the reader is down the key changes and the source's backlog moves past it.
    ferry.kill("ferry-reader");
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        s.call(&["SET", "changed", "v2"]).await.unwrap();
        s.call(&["CONFIG", "SET", "repl-backlog-size", "16384"]).await.unwrap();
        let filler = "x".repeat(8192);
        for i in 0..256 {
            s.call(&["SET", "filler", &format!("{i}{filler}")]).await.unwrap();
        }
    });
    ferry.spawn("ferry-reader");
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_for("the re-copy caught up", Duration::from_secs(60), |p| {
        p["full_syncs"] == 2 && p["phase"] == "incremental" && p["applied_offset"].as_i64() >= Some(offset)
    });
    assert_eq!(get("changed").as_deref(), Some("v2"), "the re-copy left ferry's earlier copy stale\n{}", ferry.logs());
}

/// A standalone source whose streams have consumer groups, into a 3-master cluster target:
/// `XGROUP CREATE|SETID|CREATECONSUMER|DELCONSUMER|DESTROY`, `XREADGROUP` and `XACK` after the
/// full copy. The keys of `XGROUP`'s subcommands are in their own key specs (the target's
/// `COMMAND` reply), not in `XGROUP`'s: before, the command went to every master as a keyless
/// one and the pipeline stopped for good on `BUSYGROUP`. A keyless command (`FUNCTION
/// LOAD`) still goes to every master, once each, even when the writer restarts after it.
#[test]
fn subcommand_keys_route_on_a_cluster_target_and_keyless_commands_run_once_per_master() {
    let src = RedisServer::start(&[]);
    let cluster = Cluster::start(3, 0);
    let rt = rt();
    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        for i in 0..5 {
            s.call(&["XADD", "orders", "*", "n", &i.to_string()]).await.unwrap();
        }
        s.call(&["XGROUP", "CREATE", "orders", "billing", "0"]).await.unwrap();
    });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\n{}\n", src.addr(), cluster.toml()));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt.block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));

    rt.block_on(async {
        let mut s = src.connect().await.unwrap();
        let commands: [&[&str]; 8] = [
            &["XGROUP", "CREATE", "orders", "shipping", "$", "MKSTREAM"],
            &["XGROUP", "CREATE", "audit", "all", "$", "MKSTREAM"],
            &["XREADGROUP", "GROUP", "billing", "c1", "COUNT", "2", "STREAMS", "orders", ">"],
            &["XGROUP", "CREATECONSUMER", "orders", "billing", "c2"],
            &["XGROUP", "CREATECONSUMER", "orders", "billing", "c3"],
            &["XGROUP", "DELCONSUMER", "orders", "billing", "c3"],
            &["XGROUP", "SETID", "orders", "shipping", "0"],
            &["XGROUP", "DESTROY", "audit", "all"],
        ];
        for args in commands {
            s.call(args).await.unwrap();
        }
        let Reply::Array(Some(read)) = s.call(&["XRANGE", "orders", "-", "+", "COUNT", "1"]).await.unwrap() else {
            panic!("no entries")
        };
        let Reply::Array(Some(entry)) = &read[0] else { panic!("bad entry") };
        let id = String::from_utf8_lossy(entry[0].as_bytes().unwrap()).into_owned();
        s.call(&["XACK", "orders", "billing", &id]).await.unwrap();
        s.call(&[
            "FUNCTION",
            "LOAD",
            "#!lua name=ferrylib\nredis.register_function('ferry_one', function() return 1 end)",
        ])
        .await
        .unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    // A restarted writer resumes from the checkpoints: FUNCTION LOAD must not run again.
    ferry.kill("ferry-writer");
    ferry.spawn("ferry-writer");
    rt.block_on(async {
        src.connect().await.unwrap().call(&["SET", "after", "restart"]).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(60));
    assert!(p["error"].is_null(), "{p:#}");
    let source = rt.block_on(async { snapshot(&mut src.connect().await.unwrap()).await.unwrap() });
    compare_snapshots(&source, &cluster.snapshot(), 2000).unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    for node in cluster.nodes.iter().take(3) {
        let list = rt.block_on(async {
            node.connect().await.unwrap().call(&["FUNCTION", "LIST", "LIBRARYNAME", "ferrylib"]).await.unwrap()
        });
        assert!(matches!(&list, Reply::Array(Some(l)) if l.len() == 1), "{} {list:?}", node.addr());
    }
}

/// A partition between the reader and the coordinator (a TCP proxy that refuses): the
/// coordinator fences (side A lost), the applications write to B, and A — alive on the other
/// side of the partition, still taking writes — must not land one more byte in B, whatever
/// the reader believes. The fence is held by B itself: the coordinator writes the role's
/// epoch there and closes ferry's writer connections into it; a writer session checks it
/// before writing. The cut-off reader stops on its own once its plan goes unconfirmed.
#[test]
fn in_a_partition_a_fenced_source_never_writes_into_the_target() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let (cfg, status) = config_with_state(&src, &tgt, &state.path().join("role.json"));
    let grpc = cfg
        .lines()
        .skip_while(|l| *l != "[coordinator]")
        .find_map(|l| l.strip_prefix("grpc_addr = \""))
        .map(|a| a.trim_end_matches('"').to_string())
        .unwrap();
    let proxy = proxy::Proxy::start(&grpc);
    let mut ferry = Ferry::start_without(&cfg, &status, "ferry-reader");
    ferry.spawn_with("ferry-reader", &["--coordinator", &proxy.addr]);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");

    // A keeps taking writes throughout.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = source_witnesses(src.addr(), 0, stop.clone());
    let rt = rt();
    let on_b = |key: &str| {
        rt.block_on(async {
            let v = tgt.connect().await.unwrap().call(&["GET", key]).await.unwrap();
            v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
        })
    };
    wait_until("A's writes to reach B", Duration::from_secs(30), || on_b("witness:counter:0").is_some());

    // The partition, then the fence.
    proxy.refuse(true);
    proxy.cut();
    let (code, out) = watcher(&ferry, &["fence", "--reason", "A lost"]);
    assert_eq!(code, 0, "{out}");
    let frozen = on_b("witness:counter:0");
    rt.block_on(async {
        tgt.connect().await.unwrap().call(&["SET", "written-to-b", "after the fence"]).await.unwrap();
    });
    // A goes on writing for a while: nothing of it may reach B.
    let before = rt.block_on(src.repl_offset()).unwrap();
    wait_until("A to take more writes", Duration::from_secs(30), || {
        rt.block_on(src.repl_offset()).unwrap() > before + 100_000
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        assert_eq!(on_b("witness:counter:0"), frozen, "a write from the fenced A landed in B\n{}", ferry.logs());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(on_b("written-to-b").as_deref(), Some("after the fence"));
    // The reader, cut off from the coordinator, stops its pipeline on its own.
    wait_until("the cut-off reader to stop", Duration::from_secs(30), || {
        ferry.logs().contains("the coordinator has not confirmed")
    });
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    load.join().unwrap();
}

/// A coordinator restarted without its state file (lost, or an old copy) after a fence would
/// start "forward" again and copy the stale side A over B; the fence B holds says the role
/// moved on: the coordinator refuses to start, with exit code 2 and one line naming the file.
#[test]
fn a_coordinator_whose_state_file_is_missing_after_a_fence_refuses_to_start() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let state = tempfile::tempdir().unwrap();
    let file = state.path().join("role.json");
    let (cfg, status) = config_with_state(&src, &tgt, &file);
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");
    let (code, out) = watcher(&ferry, &["fence", "--reason", "A lost"]);
    assert_eq!(code, 0, "{out}");

    ferry.kill("ferry-coordinator");
    std::fs::remove_file(&file).unwrap();
    let out = std::process::Command::new(bin_dir().join("ferry-coordinator"))
        .arg("--config")
        .arg(ferry.dir.path().join("ferry.toml"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("coordinator.state_file") && text.contains("none 0"), "{text}");
    // Nothing was copied into B meanwhile.
    let role = rt().block_on(async {
        let v = tgt.connect().await.unwrap().call(&["GET", &ferry_checkpoint::fence_key()]).await.unwrap();
        v.as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
    });
    assert_eq!(role.as_deref(), Some("none 0"));
}

/// A source command with an argument bigger than one message between ferry's processes
/// (a 300 MB `SET`): before, the reader framed it and the decoder refused the frame, a session
/// failing again and again for as long as the source's backlog held it. Now the reader stops
/// at its header (one line naming the command, the key and the limit, the value never read
/// into memory) and asks for a full copy, whose RDB carries the value in bounded chunks.
#[test]
fn a_source_command_too_big_for_one_message_goes_by_a_full_copy() {
    // A backlog that holds the command: the stream could go on, and must not.
    let src = RedisServer::start(&["--repl-backlog-size", "512mb"]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt);
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");
    rt().block_on(async {
        let big = vec![b'v'; 300 * 1024 * 1024];
        let mut c = src.connect().await.unwrap();
        c.call_timeout(&[&b"SET"[..], b"huge:value", &big], Duration::from_secs(60)).await.unwrap();
        c.call(&["SET", "after", "the big one"]).await.unwrap();
    });
    let offset = rt().block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_for("a full copy past the big command", Duration::from_secs(120), |p| {
        p["full_syncs"] == 2 && p["phase"] == "incremental" && p["applied_offset"].as_i64() >= Some(offset)
    });
    assert!(p["errors_by_kind"]["COMMAND_TOO_LARGE"].as_u64() >= Some(1), "{p:#}");
    let logs = ferry.logs();
    assert!(
        logs.lines().any(|l| l.contains("SET on key \"huge:value\"") && l.contains("314572800 bytes")),
        "no line naming the command, the key and its size:\n{logs}"
    );
    rt().block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert_eq!(t.call(&["STRLEN", "huge:value"]).await.unwrap(), Reply::Integer(300 * 1024 * 1024));
        let after = t.call(&["GET", "after"]).await.unwrap();
        assert_eq!(after.as_bytes().map(|b| b.to_vec()), Some(b"the big one".to_vec()));
    });
}

/// A source transaction of 200,000 commands reaches the target exactly (one batch: it is far
/// below what the decoder holds of one transaction; bigger ones go in parts, see the
/// decoder's unit tests).
#[test]
fn a_200k_command_transaction_arrives_exactly() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt);
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");
    let n = 200_000;
    rt().block_on(async {
        let mut blob = bytes::BytesMut::new();
        ferry_resp::encode_command_into(&mut blob, &[&b"MULTI"[..]]);
        for i in 0..n {
            ferry_resp::encode_command_into(&mut blob, &[&b"INCR"[..], format!("tx:{}", i % 100).as_bytes()]);
        }
        ferry_resp::encode_command_into(&mut blob, &[&b"EXEC"[..]]);
        let mut c = src.connect().await.unwrap();
        c.send_raw(&blob).await.unwrap();
        for _ in 0..n + 1 {
            c.read_reply().await.unwrap();
        }
        let exec = c.read_reply().await.unwrap();
        assert!(matches!(&exec, Reply::Array(Some(r)) if r.len() == n), "EXEC: {:?}", exec.first_error());
    });
    let offset = rt().block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(120));
    assert!(p["error"].is_null(), "{p:#}");
    rt().block_on(async {
        let mut t = tgt.connect().await.unwrap();
        for i in [0, 42, 99] {
            let v = t.call(&["GET", &format!("tx:{i}")]).await.unwrap();
            assert_eq!(v.as_bytes().map(|b| b.to_vec()), Some(b"2000".to_vec()), "tx:{i}");
        }
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

/// A cluster source replicates `FLUSHALL` from the one master it ran on, and function
/// commands from every master they ran on. One master's `FLUSHALL` must empty only that
/// master's keys on the target (before, it emptied the whole target: every other pipeline's
/// keys and checkpoints); a library loaded or deleted on every master is applied as often
/// without failing (before, the second `FUNCTION LOAD` stopped its pipeline with "already
/// exists").
#[test]
fn a_cluster_source_masters_flushall_and_functions_apply_to_what_they_own() {
    let cluster = Cluster::start(3, 0);
    let tgt = RedisServer::start(&[]);
    for i in 0..300 {
        cluster.call(&["SET", &format!("k:{i}"), &i.to_string()]);
    }
    let (cfg, status) =
        config_with_ports(&format!("[source]\n{}\n[target]\naddress = \"{}\"\n", cluster.toml(), tgt.addr()));
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_all("every master copied", 3, Duration::from_secs(60), |p| p["phase"] == "incremental");
    let masters: Vec<String> = cluster.slot_map().unwrap().masters;
    let on_master = |addr: &str, args: &[&str]| {
        rt().block_on(async {
            let mut c = ferry_resp::Connection::connect(addr, &ferry_resp::Auth::default(), Duration::from_secs(5))
                .await
                .unwrap();
            c.call(args).await.unwrap()
        })
    };
    let lib = |name: &str| format!("#!lua name={name}\nredis.register_function('{name}_f', function() return 1 end)");
    for m in &masters {
        on_master(m, &["FUNCTION", "LOAD", &lib("first")]);
        on_master(m, &["FUNCTION", "LOAD", &lib("second")]);
        on_master(m, &["FUNCTION", "DELETE", "first"]);
    }
    on_master(&masters[0], &["FLUSHALL"]);
    for i in 300..330 {
        cluster.call(&["SET", &format!("k:{i}"), "after"]);
    }
    let offset = cluster.masters_offset();
    ferry.wait_applied_total(3, offset, Duration::from_secs(60));
    let doc = ferry.wait_all("every pipeline incremental", 3, Duration::from_secs(60), |p| {
        p["phase"] == "incremental" && p["error"].is_null()
    });
    compare_snapshots(
        &cluster.snapshot(),
        &rt().block_on(async { snapshot(&mut tgt.connect().await.unwrap()).await.unwrap() }),
        2000,
    )
    .unwrap_or_else(|e| panic!("{e}\n{doc:#}\n{}", ferry.logs()));
    let libs = rt().block_on(async { tgt.connect().await.unwrap().call(&["FUNCTION", "LIST"]).await.unwrap() });
    let text = format!("{libs:?}");
    assert!(text.contains("second") && !text.contains("\"first\""), "{text}");
}

/// Two coordinators started on one pair: the second stands by (no plan, role changes
/// refused, `standby` in its `/status` naming the first) while the first holds the lease in
/// the target, and takes over once the first is gone.
#[test]
fn a_second_coordinator_on_the_same_pair_stands_by_until_the_first_is_gone() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt);
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_for("the first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");

    // The same pair, the second coordinator's own listeners.
    let line = |key: &str| cfg.lines().find(|l| l.starts_with(key)).unwrap().to_string();
    let (second_status, second_grpc) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let second_cfg = cfg
        .replace(&line("status_addr = "), &format!("status_addr = \"{second_status}\""))
        .replace(&line("grpc_addr = "), &format!("grpc_addr = \"{second_grpc}\""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), &second_cfg).unwrap();
    let log = std::fs::File::create(dir.path().join("second.log")).unwrap();
    let mut second = std::process::Command::new(bin_dir().join("ferry-coordinator"))
        .arg("--config")
        .arg(dir.path().join("ferry.toml"))
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let status_of =
        |addr: &str| http_get(addr, "/status").ok().and_then(|b| serde_json::from_str::<serde_json::Value>(&b).ok());
    wait_until("the second coordinator to answer, standing by", Duration::from_secs(30), || {
        status_of(&second_status)
            .is_some_and(|s| s["standby"].as_str().is_some_and(|w| w.contains("another coordinator")))
    });
    let s = status_of(&second_status).unwrap();
    assert_eq!(s["pipelines"].as_array().map(Vec::len), Some(0), "{s:#}");
    assert!(status_of(&status).unwrap()["standby"].is_null());
    let out = std::process::Command::new(bin_dir().join("ferry-watcher"))
        .args(["fence", "--coordinator", &second_grpc, "--config"])
        .arg(dir.path().join("ferry.toml"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "a standby coordinator took a role change");
    assert!(String::from_utf8_lossy(&out.stderr).contains("does not act on the pair"));

    // The first one dies: the second takes over once its lease ends.
    ferry.kill("ferry-coordinator");
    wait_until("the second coordinator to take over", Duration::from_secs(60), || {
        status_of(&second_status)
            .is_some_and(|s| s["standby"].is_null() && s["pipelines"].as_array().is_some_and(|p| p.len() == 1))
    });
    let _ = second.kill();
    let _ = second.wait();
}

/// A listener that cannot be bound (another run holds the port) stops the process at once
/// with exit code 2 and one line naming the address and the key to change: starting it again
/// and again (as a supervisor does on exit code 1) cannot help.
#[test]
fn a_port_in_use_is_a_configuration_error_naming_the_key() {
    let src = RedisServer::start(&[]);
    let tgt = RedisServer::start(&[]);
    let (cfg, _) = config(&src, &tgt);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let line = cfg.lines().find(|l| l.starts_with("grpc_addr = ")).unwrap().to_string();
    let cfg = cfg.replace(&line, &format!("grpc_addr = \"{addr}\""));
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ferry.toml"), cfg).unwrap();
    let out = std::process::Command::new(bin_dir().join("ferry-coordinator"))
        .arg("--config")
        .arg(dir.path().join("ferry.toml"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("coordinator.grpc_addr") && err.contains(&addr) && err.trim().lines().count() == 1, "{err}");
}

/// Two runs on one machine: a reader of run B pointed at run A's coordinator is refused, with
/// an error naming both deployments, instead of taking A's pipelines (and failing against a
/// source that is not its own).
#[test]
fn a_stage_of_another_deployment_is_refused_naming_both() {
    let (src_a, tgt_a) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let (src_b, tgt_b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let (cfg_a, status_a) = config(&src_a, &tgt_a);
    let ferry_a = Ferry::start(&cfg_a, &status_a);
    ferry_a.wait_for("run A's first copy", Duration::from_secs(60), |p| p["phase"] == "incremental");
    let grpc_a =
        cfg_a.lines().find_map(|l| l.strip_prefix("grpc_addr = \"")).unwrap().trim_end_matches('"').to_string();
    let (cfg_b, status_b) = config(&src_b, &tgt_b);
    let mut ferry_b = Ferry::start_without(&cfg_b, &status_b, "ferry-reader");
    ferry_b.spawn_with("ferry-reader", &["--coordinator", &grpc_a]);
    wait_until("run B's reader to be refused", Duration::from_secs(30), || {
        ferry_b.logs().lines().any(|l| l.contains("ferry-reader") && l.contains("belongs to deployment"))
    });
    let logs = ferry_b.logs();
    let line = logs.lines().find(|l| l.contains("belongs to deployment")).unwrap();
    assert_eq!(line.matches("deployment ferry-").count() + line.matches("to ferry-").count(), 2, "{line}");
    // Run A goes on unharmed: one pipeline, its own.
    let doc = ferry_a.status().unwrap();
    assert_eq!(doc["pipelines"].as_array().map(Vec::len), Some(1), "{doc:#}");
    assert_eq!(doc["pipelines"][0]["source"], src_a.addr().as_str(), "{doc:#}");
}
