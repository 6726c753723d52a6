//! End to end: the `[filter]` section (keys, dbs, commands, db remapping) on the full copy
//! and on the command stream, against real redis-server processes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use ferry_resp::{Connection, Reply};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// Source and target servers, with `filter` as the body of the `[filter]` section.
fn config(src: &RedisServer, tgt: &RedisServer, filter: &str) -> (String, String) {
    config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[filter]\n{filter}\n",
        src.addr(),
        tgt.addr()
    ))
}

/// The keys of every non-empty db of the server: db → sorted key names.
async fn keys(c: &mut Connection) -> BTreeMap<u32, BTreeSet<String>> {
    snapshot(c)
        .await
        .unwrap()
        .into_iter()
        .filter(|(_, keys)| !keys.is_empty())
        .map(|(db, keys)| (db, keys.into_keys().map(|k| String::from_utf8_lossy(&k).into_owned()).collect()))
        .collect()
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| s.to_string()).collect()
}

async fn run(c: &mut Connection, cmds: &[&[&str]]) {
    for args in cmds {
        let r = c.call(args).await.unwrap();
        assert!(r.as_error().is_none(), "{args:?}: {r:?}");
    }
}

async fn get(c: &mut Connection, key: &str) -> Option<String> {
    c.call(&["GET", key]).await.unwrap().as_bytes().map(|b| String::from_utf8_lossy(b).into_owned())
}

/// The logs without terminal colours (`key=value` as written).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Waits until ferry applied everything the source wrote so far.
fn caught_up(rt: &tokio::runtime::Runtime, src: &RedisServer, ferry: &Ferry) -> serde_json::Value {
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(60));
    assert_eq!(p["error"], serde_json::Value::Null, "{p:#}");
    p
}

#[test]
fn key_prefix_suffix_and_regex_rules_on_full_copy_and_stream() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        run(
            &mut c,
            &[
                &["SET", "user:1", "a"],
                &["SET", "user:tmp:1", "blocked by prefix"],
                &["SET", "user:2:secret", "blocked by suffix"],
                &["SET", "user:3:private", "blocked by regex"],
                &["HSET", "user:h", "f", "v"],
                &["SET", "order:17", "allowed by regex"],
                &["SET", "order:x", "not allowed"],
                &["SET", "other", "not allowed"],
                &["RPUSH", "order:9", "x", "y"],
            ],
        )
        .await;
    });
    let filter = "allow_key_prefix = [\"user:\"]\nallow_key_regex = [\"^order:[0-9]+$\"]\n\
                  block_key_prefix = [\"user:tmp:\"]\nblock_key_suffix = [\":secret\"]\nblock_key_regex = [\"^user:[0-9]+:priv\"]\n";
    let (cfg, status) = config(&src, &tgt, filter);
    let ferry = Ferry::start(&cfg, &status);
    caught_up(&rt, &src, &ferry);
    let expected_full = set(&["user:1", "user:h", "order:17", "order:9"]);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert_eq!(keys(&mut t).await, BTreeMap::from([(0, expected_full.clone())]), "{}", ferry.logs());
        assert_eq!(get(&mut t, "user:1").await.as_deref(), Some("a"));
        let mut c = src.connect().await.unwrap();
        run(
            &mut c,
            &[
                &["SET", "user:4", "new"],
                &["SET", "user:tmp:2", "x"],
                &["SET", "user:5:secret", "x"],
                &["SET", "user:6:private", "x"],
                &["SET", "order:18", "x"],
                &["SET", "order:y", "x"],
                &["SET", "nope", "x"],
                &["APPEND", "user:1", "b"],
                &["APPEND", "other", "b"],
                &["INCR", "order:17x"],
                &["RPUSH", "order:9", "z"],
                &["HSET", "user:h", "g", "w"],
            ],
        )
        .await;
    });
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        let mut expected = expected_full.clone();
        expected.extend(set(&["user:4", "order:18"]));
        assert_eq!(keys(&mut t).await, BTreeMap::from([(0, expected)]), "{}", ferry.logs());
        assert_eq!(get(&mut t, "user:1").await.as_deref(), Some("ab"));
        let l = t.call(&["LRANGE", "order:9", "0", "-1"]).await.unwrap();
        assert_eq!(format!("{l:?}").matches('z').count(), 1, "{l:?}");
        let h = t.call(&["HGET", "user:h", "g"]).await.unwrap();
        assert_eq!(h.as_bytes().map(|b| b.to_vec()), Some(b"w".to_vec()));
    });
    assert!(ferry.logs().contains("filter summary"), "{}", ferry.logs());
}

#[test]
fn block_db_and_many_dbs_into_one_with_a_collision() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        run(
            &mut c,
            &[
                &["SET", "a0", "db0"],
                &["SELECT", "1"],
                &["SET", "a1", "db1"],
                &["SET", "shared", "from db1"],
                &["SELECT", "2"],
                &["SET", "a2", "db2"],
                &["SET", "shared", "from db2"],
                &["SELECT", "3"],
                &["SET", "a3", "db3"],
                &["SELECT", "4"],
                &["SET", "a4", "db4"],
            ],
        )
        .await;
    });
    let (cfg, status) = config(&src, &tgt, "block_db = [3]\ndb_map = { 1 = 0, 2 = 0 }\n");
    let ferry = Ferry::start(&cfg, &status);
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        let expected = BTreeMap::from([(0, set(&["a0", "a1", "a2", "shared"])), (4, set(&["a4"]))]);
        assert_eq!(keys(&mut t).await, expected, "{}", ferry.logs());
        // existing_key = rewrite: the last source db in RDB order wins.
        assert_eq!(get(&mut t, "shared").await.as_deref(), Some("from db2"));
    });
    let logs = strip_ansi(&ferry.logs());
    let collision = logs.lines().find(|l| l.contains("db_map collision") && l.contains("shared"));
    assert!(
        collision
            .is_some_and(|l| l.contains("source_db=2") && l.contains("other_source_db=1") && l.contains("target_db=0")),
        "{logs}"
    );
    assert!(logs.contains("db_map_collisions=1"), "{logs}");
    let p = ferry.wait_for("the collision in /status", Duration::from_secs(10), |p| p["db_map_collisions"] == 1);
    assert!(p["keys_filtered"].as_u64().unwrap() >= 1, "{p:#}");

    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        run(
            &mut c,
            &[
                &["SELECT", "1"],
                &["SET", "b1", "db1"],
                &["INCR", "n"],
                &["SELECT", "3"],
                &["SET", "b3", "db3"],
                &["SELECT", "2"],
                &["SET", "b2", "db2"],
                &["INCR", "n"],
                &["SELECT", "4"],
                &["SET", "b4", "db4"],
                &["SELECT", "0"],
                &["SET", "b0", "db0"],
            ],
        )
        .await;
        // A transaction across dbs stays whole, remapped.
        run(&mut c, &[&["MULTI"]]).await;
        for args in [&["SELECT", "1"][..], &["SET", "m1", "x"], &["SELECT", "3"], &["SET", "m3", "x"]] {
            c.call(args).await.unwrap();
        }
        let exec = c.call(&["EXEC"]).await.unwrap();
        assert!(exec.first_error().is_none(), "{exec:?}");
    });
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        let expected = BTreeMap::from([
            (0, set(&["a0", "a1", "a2", "shared", "b0", "b1", "b2", "n", "m1"])),
            (4, set(&["a4", "b4"])),
        ]);
        assert_eq!(keys(&mut t).await, expected, "{}", ferry.logs());
        assert_eq!(get(&mut t, "n").await.as_deref(), Some("2"));
    });
}

#[test]
fn blocked_flushall_and_scripting_group() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let rt = rt();
    let lib = |name: &str| {
        format!(
            "#!lua name={name}\nredis.register_function('{name}_f', function(keys, args) return redis.call('SET', keys[1], args[1]) end)"
        )
    };
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        run(&mut c, &[&["SET", "k1", "v1"], &["FUNCTION", "LOAD", &lib("before")]]).await;
    });
    let (cfg, status) = config(&src, &tgt, "block_command = [\"FLUSHALL\"]\nblock_command_group = [\"scripting\"]\n");
    let ferry = Ferry::start(&cfg, &status);
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert_eq!(keys(&mut t).await, BTreeMap::from([(0, set(&["k1"]))]), "{}", ferry.logs());
        let fl = t.call(&["FUNCTION", "LIST"]).await.unwrap();
        assert!(matches!(&fl, Reply::Array(Some(v)) if v.is_empty()), "the function was not filtered: {fl:?}");
        let mut c = src.connect().await.unwrap();
        run(
            &mut c,
            &[
                &["FUNCTION", "LOAD", &lib("after")],
                // Its effect (a SET) is data and replicated as such; the FCALL itself is not.
                &["FCALL", "before_f", "1", "by-function", "x"],
                &["FLUSHALL"],
                &["SET", "k2", "v2"],
            ],
        )
        .await;
    });
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        // FLUSHALL did not reach the target: k1 and by-function are still there.
        assert_eq!(keys(&mut t).await, BTreeMap::from([(0, set(&["k1", "k2", "by-function"]))]), "{}", ferry.logs());
        let fl = t.call(&["FUNCTION", "LIST"]).await.unwrap();
        assert!(matches!(&fl, Reply::Array(Some(v)) if v.is_empty()), "FUNCTION LOAD was not filtered: {fl:?}");
        let mut s = src.connect().await.unwrap();
        assert_eq!(keys(&mut s).await, BTreeMap::from([(0, set(&["k2"]))]));
    });
}

#[test]
fn mixed_verdict_del_is_rewritten_and_rename_is_dropped() {
    let (src, tgt) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let rt = rt();
    rt.block_on(async {
        let mut c = src.connect().await.unwrap();
        run(&mut c, &[&["SET", "a", "1"], &["SET", "b", "2"], &["SET", "local:c", "source"], &["SET", "x", "3"]]).await;
        // A key of the target's own, which the filter keeps ferry away from.
        let mut t = tgt.connect().await.unwrap();
        run(&mut t, &[&["SET", "local:c", "target-own"]]).await;
    });
    let (cfg, status) = config(&src, &tgt, "block_key_prefix = [\"local:\"]\n");
    let ferry = Ferry::start(&cfg, &status);
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        assert_eq!(keys(&mut t).await, BTreeMap::from([(0, set(&["a", "b", "local:c", "x"]))]));
        assert_eq!(get(&mut t, "local:c").await.as_deref(), Some("target-own"));
        let mut c = src.connect().await.unwrap();
        let n = c.call(&["DEL", "a", "local:c", "b"]).await.unwrap();
        assert!(matches!(n, Reply::Integer(3)), "{n:?}");
        run(
            &mut c,
            &[&["MSET", "m1", "1", "local:m", "2", "m2", "3"], &["RENAME", "x", "local:x"], &["SET", "after", "1"]],
        )
        .await;
    });
    caught_up(&rt, &src, &ferry);
    rt.block_on(async {
        let mut t = tgt.connect().await.unwrap();
        // DEL became DEL a b; MSET lost its blocked pair; RENAME into a blocked key was dropped
        // (documented: x stays on the target).
        assert_eq!(
            keys(&mut t).await,
            BTreeMap::from([(0, set(&["local:c", "m1", "m2", "x", "after"]))]),
            "{}",
            ferry.logs()
        );
        assert_eq!(get(&mut t, "local:c").await.as_deref(), Some("target-own"));
    });
    let logs = strip_ansi(&ferry.logs());
    assert!(logs.lines().any(|l| l.contains("mixed verdicts") && l.contains("command=RENAME")), "{logs}");
}
