//! `ferry-verify` against real servers: equal data, every kind of difference, a key that
//! settles between passes, a cluster on either side, and the binary's exit codes.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ferry_config::{DeploymentType, RedisConfig};
use ferry_resp::cluster::{SlotMap, key_slot};
use ferry_resp::{Auth, Connection, Reply};
use ferry_verify::{DiffKind, Options, PassResult, Report, verify};
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The `ferry-verify` binary (built with the others, see [`bin_dir`]).
fn verify_bin() -> PathBuf {
    bin_dir().join("ferry-verify")
}

fn run_bin(args: &[&str]) -> Output {
    Command::new(verify_bin()).args(args).output().expect("run ferry-verify")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

fn config_of(s: &RedisServer) -> RedisConfig {
    let mut c = ferry_verify::standalone(&s.addr());
    c.password = s.password.clone().unwrap_or_default();
    c
}

fn fast(mut o: Options) -> Options {
    o.pass_delay = Duration::from_millis(100);
    o.examples = 100;
    o
}

fn kinds(r: &Report) -> BTreeMap<(u32, String), DiffKind> {
    r.examples.iter().map(|d| ((d.db, text(&d.key)), d.kind.clone())).collect()
}

async fn run_all(c: &mut Connection, cmds: &[&[&str]]) {
    for cmd in cmds {
        c.call(cmd).await.unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    }
}

#[test]
fn equal_servers_are_equal() {
    let (a, b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    let n = rt().block_on(async {
        populate(&mut a.connect().await.unwrap()).await.unwrap();
        populate(&mut b.connect().await.unwrap()).await.unwrap();
        // ferry's own keys are never compared.
        let mut c = b.connect().await.unwrap();
        run_all(&mut c, &[&["SET", "ferry:checkpoint:x", "1"], &["SET", "ferry:tmp:y", "2"]]).await;
        let mut c = a.connect().await.unwrap();
        run_all(&mut c, &[&["SET", "ferry:tmp:z", "3"]]).await;
        let mut total = 0;
        for db in 0..16 {
            c.call(&["SELECT", &db.to_string()]).await.unwrap();
            if let Reply::Integer(k) = c.call(&["DBSIZE"]).await.unwrap() {
                total += k as u64;
            }
        }
        total - 1
    });
    let report = rt().block_on(verify(&fast(Options::standalone(&a.addr(), &b.addr())))).unwrap();
    assert!(report.equal(), "{}", report.render_text());
    assert_eq!(report.keys_compared, n, "{report:?}");
    assert_eq!(report.passes, 1);
    assert_eq!(report.dbs, vec![0, 1, 7, 15]);
    assert_eq!(report.exit_code(), 0);

    // The binary: text and JSON.
    let out = run_bin(&["--source", &a.addr(), "--target", &b.addr(), "--quiet"]);
    assert_eq!(out.status.code(), Some(0), "{}{}", text(&out.stdout), text(&out.stderr));
    assert_eq!(text(&out.stdout), format!("ferry-verify: {n} keys compared, 0 differ (1 pass)\n"));
    let out = run_bin(&["--source", &a.addr(), "--target", &b.addr(), "--json", "--dbs", "0-15", "--max-rate", "0"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    assert_eq!(j["equal"], true);
    assert_eq!(j["keys_compared"], n);
    assert_eq!(j["dbs"].as_array().unwrap().len(), 16);
}

#[test]
fn every_kind_of_difference_is_reported() {
    let a = RedisServer::start(&[]);
    let secret = "verify-secret-pw";
    let b = RedisServer::start(&["--requirepass", secret]);
    rt().block_on(async {
        populate(&mut a.connect().await.unwrap()).await.unwrap();
        let mut c = b.connect().await.unwrap();
        populate(&mut c).await.unwrap();
        run_all(
            &mut c,
            &[
                &["SET", "str:utf8", "another value"],
                &["LSET", "list:big", "2500", "changed"],
                &["SREM", "set:big", "member-7"],
                &["SADD", "set:big", "member-x"],
                &["SADD", "set:small", "d"],
                &["ZADD", "zset:small", "0.10000000000000002", "tenth"],
                &["HSET", "hash:big", "field-599", "other"],
                &["HSET", "hash:small", "n", "43"],
                &["XACK", "stream:1", "grp", "1-1"],
                &["DEL", "str:int"],
                &["RPUSH", "str:int", "x"],
                &["DEL", "str:notint"],
                &["SET", "extra:only-target", "1"],
                &["PEXPIRE", "ttl:ms", "7200000"],
                &["PERSIST", "ttl:s"],
                &["SET", "ferry:checkpoint:abc", "x"],
                &["SELECT", "7"],
                &["SET", "str:ascii", "changed in db 7"],
            ],
        )
        .await;
    });
    let mut opts = fast(Options::new(config_of(&a), config_of(&b)));
    let passes = Arc::new(Mutex::new(Vec::new()));
    let seen = passes.clone();
    opts.on_pass = Some(Arc::new(move |p: &PassResult| seen.lock().unwrap().push(p.clone())));
    let report = rt().block_on(verify(&opts)).unwrap();
    let got = kinds(&report);
    let value = |ty: &str| DiffKind::ValueDiffers { ty: ty.into(), detail: String::new() };
    let expected: Vec<((u32, &str), DiffKind)> = vec![
        ((0, "str:utf8"), value("string")),
        ((0, "list:big"), value("list")),
        ((0, "set:big"), value("set")),
        ((0, "set:small"), value("set")),
        ((0, "zset:small"), value("zset")),
        ((0, "hash:big"), value("hash")),
        ((0, "hash:small"), value("hash")),
        ((0, "stream:1"), value("stream")),
        ((0, "str:int"), DiffKind::TypeDiffers { source: "string".into(), target: "list".into() }),
        ((0, "str:notint"), DiffKind::MissingOnTarget),
        ((0, "extra:only-target"), DiffKind::OnlyOnTarget),
        ((0, "ttl:ms"), DiffKind::TtlDiffers { by_ms: Some(0), source_expires: true }),
        ((0, "ttl:s"), DiffKind::TtlDiffers { by_ms: None, source_expires: true }),
        ((7, "str:ascii"), value("string")),
    ];
    for ((db, key), want) in &expected {
        let Some(kind) = got.get(&(*db, key.to_string())) else {
            panic!("db {db} key {key} not reported:\n{}", report.render_text())
        };
        let same = match (kind, want) {
            (DiffKind::ValueDiffers { ty, .. }, DiffKind::ValueDiffers { ty: t2, .. }) => ty == t2,
            (DiffKind::TtlDiffers { by_ms: Some(ms), .. }, DiffKind::TtlDiffers { by_ms: Some(_), .. }) => {
                (3_590_000..=3_610_000).contains(ms)
            }
            (k, w) => k == w,
        };
        assert!(same, "db {db} key {key}: got {kind}, want {want}");
    }
    assert_eq!(report.differing, expected.len() as u64, "{}", report.render_text());
    assert_eq!(report.passes, 3);
    let passes = passes.lock().unwrap().clone();
    assert_eq!(passes.len(), 3);
    assert!(passes.iter().all(|p| p.differing == expected.len() as u64), "{passes:?}");
    assert_eq!(passes[1].keys, expected.len() as u64, "later passes re-check only the differences");
    let text_report = report.render_text();
    assert!(text_report.contains("db 0 key \"str:notint\": missing on the target"), "{text_report}");
    assert!(text_report.contains("db 0 key \"extra:only-target\": only on the target"), "{text_report}");
    assert!(text_report.contains("db 0 key \"str:utf8\": string value differs"), "{text_report}");
    assert!(text_report.contains("db 0 key \"ttl:ms\": ttl differs by"), "{text_report}");
    assert!(!text_report.contains("another value"), "values are not printed: {text_report}");

    // The binary, from a ferry.toml with a password: exit 1, N examples, no secret printed.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ferry.toml");
    std::fs::write(
        &path,
        format!(
            "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\npassword = \"{secret}\"\n",
            a.addr(),
            b.addr()
        ),
    )
    .unwrap();
    let out = run_bin(&["--config", path.to_str().unwrap(), "--pass-delay-ms", "50", "--examples", "3"]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(1), "{stdout}{stderr}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 4, "{stdout}");
    assert!(
        lines[0].starts_with("ferry-verify: ")
            && lines[0].ends_with(&format!(", {} differ (3 passes)", expected.len()))
    );
    assert!(stderr.contains("pass 3:"), "{stderr}");
    assert!(!stdout.contains(secret) && !stderr.contains(secret));
}

#[test]
fn a_key_changing_between_passes_settles() {
    let (a, b) = (RedisServer::start(&[]), RedisServer::start(&[]));
    rt().block_on(async {
        populate(&mut a.connect().await.unwrap()).await.unwrap();
        let mut c = b.connect().await.unwrap();
        populate(&mut c).await.unwrap();
        // In flight: the target does not have the last write yet.
        run_all(&mut c, &[&["SET", "str:int", "99999"], &["RPUSH", "list:small", "more"]]).await;
    });
    let (tx, rx) = std::sync::mpsc::channel::<u32>();
    let tx = Mutex::new(tx);
    let mut opts = Options::standalone(&a.addr(), &b.addr());
    opts.pass_delay = Duration::from_millis(1500);
    opts.on_pass = Some(Arc::new(move |p: &PassResult| {
        let _ = tx.lock().unwrap().send(p.pass);
    }));
    // During the delay after pass 1, the writes "arrive".
    let addr = b.addr();
    let fixer = std::thread::spawn(move || {
        assert_eq!(rx.recv().unwrap(), 1);
        rt().block_on(async {
            let mut c = Connection::connect(&addr, &Auth::default(), Duration::from_secs(2)).await.unwrap();
            run_all(&mut c, &[&["SET", "str:int", "12345"], &["RPOP", "list:small"]]).await;
        });
    });
    let report = rt().block_on(verify(&opts)).unwrap();
    fixer.join().unwrap();
    assert_eq!(report.per_pass[0].differing, 2, "{report:?}");
    assert!(report.equal(), "{}", report.render_text());
    assert_eq!(report.passes, 2);
    assert_eq!(
        report.summary_line(),
        format!("ferry-verify: {} keys compared, 0 differ (2 passes)", report.keys_compared)
    );
}

fn cluster_config(c: &Cluster) -> RedisConfig {
    RedisConfig { kind: DeploymentType::Cluster, address: c.seed(), ..Default::default() }
}

/// Copies every key of db 0 of `src` to the cluster master serving it (DUMP/RESTORE, exact expiry).
async fn copy_to_cluster(src: &mut Connection, map: &SlotMap) -> u64 {
    let mut masters = Vec::new();
    for m in &map.masters {
        masters.push(Connection::connect(m, &Auth::default(), Duration::from_secs(5)).await.unwrap());
    }
    let mut cursor = b"0".to_vec();
    let mut n = 0;
    loop {
        let Reply::Array(Some(mut parts)) = src.call(&[&b"SCAN"[..], &cursor, b"COUNT", b"100"]).await.unwrap() else {
            panic!("SCAN")
        };
        let keys = parts.pop().unwrap();
        cursor = parts.pop().unwrap().as_bytes().unwrap().to_vec();
        let Reply::Array(Some(keys)) = keys else { panic!("SCAN keys") };
        for k in keys {
            let k = k.as_bytes().unwrap().clone();
            let dump = src.call(&[&b"DUMP"[..], &k]).await.unwrap();
            let payload = dump.as_bytes().unwrap().clone();
            let Reply::Integer(at) = src.call(&[&b"PEXPIRETIME"[..], &k]).await.unwrap() else { panic!("PEXPIRETIME") };
            let at = at.max(0).to_string();
            let m = &mut masters[map.node_of(key_slot(&k)).unwrap()];
            m.call(&[&b"RESTORE"[..], &k, at.as_bytes(), &payload, b"REPLACE", b"ABSTTL"]).await.unwrap();
            n += 1;
        }
        if cursor == b"0" {
            return n;
        }
    }
}

#[test]
fn standalone_and_cluster_holding_the_same_data_are_equal() {
    let src = RedisServer::start(&[]);
    let cluster = Cluster::start(3, 0);
    let map = cluster.slot_map().expect("slot map");
    let n = rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        populate_with(&mut c, false).await.unwrap();
        copy_to_cluster(&mut c, &map).await
    });
    let to_cluster = fast(Options::new(config_of(&src), cluster_config(&cluster)));
    let report = rt().block_on(verify(&to_cluster)).unwrap();
    assert!(report.equal(), "{}", report.render_text());
    assert_eq!(report.keys_compared, n);
    assert_eq!(report.dbs, vec![0]);

    // The other way round: a cluster source, every master scanned.
    let from_cluster = fast(Options::new(cluster_config(&cluster), config_of(&src)));
    let report = rt().block_on(verify(&from_cluster)).unwrap();
    assert!(report.equal(), "{}", report.render_text());
    assert_eq!(report.keys_compared, n);

    // A key only on one master of the cluster, and one changed value on another.
    rt().block_on(async {
        for key in ["extra:{a}", "str:utf8"] {
            let addr = &map.masters[map.node_of(key_slot(key.as_bytes())).unwrap()];
            let mut c = Connection::connect(addr, &Auth::default(), Duration::from_secs(5)).await.unwrap();
            c.call(&["SET", key, "on the cluster"]).await.unwrap();
        }
    });
    let report = rt().block_on(verify(&to_cluster)).unwrap();
    let got = kinds(&report);
    assert_eq!(report.differing, 2, "{}", report.render_text());
    assert_eq!(got.get(&(0, "extra:{a}".into())), Some(&DiffKind::OnlyOnTarget));
    assert!(matches!(got.get(&(0, "str:utf8".into())), Some(DiffKind::ValueDiffers { .. })), "{got:?}");
    let report = rt().block_on(verify(&from_cluster)).unwrap();
    assert_eq!(kinds(&report).get(&(0, "extra:{a}".into())), Some(&DiffKind::MissingOnTarget));
}

#[test]
fn the_binary_exits_2_with_one_line_on_errors() {
    let bad = format!("127.0.0.1:{}", free_port());
    let out = run_bin(&["--source", &bad, "--target", &bad]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.starts_with("ferry-verify: error: ") && stderr.contains(&bad), "{stderr}");
    assert!(out.stdout.is_empty());

    let out = run_bin(&["--config", "/nonexistent/ferry.toml"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(text(&out.stderr).lines().count(), 1, "{}", text(&out.stderr));

    // Usage errors: no deployment, both forms, a bad db list.
    for args in [
        &[][..],
        &["--config", "x.toml", "--source", "a:1", "--target", "b:2"][..],
        &["--source", "a:1", "--target", "b:2", "--dbs", "3-1"][..],
    ] {
        let out = run_bin(args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", text(&out.stderr));
    }
}

#[test]
fn a_sentinel_managed_source_is_resolved() {
    let group = SentinelGroup::start(0, 1);
    let target = RedisServer::start(&[]);
    let master = group.master();
    rt().block_on(async {
        populate(&mut master.connect().await.unwrap()).await.unwrap();
        populate(&mut target.connect().await.unwrap()).await.unwrap();
    });
    let source = RedisConfig {
        kind: DeploymentType::Sentinel,
        sentinels: group.sentinel_addrs(),
        master_name: group.name.clone(),
        ..Default::default()
    };
    let report = rt().block_on(verify(&fast(Options::new(source, config_of(&target))))).unwrap();
    assert!(report.equal(), "{}", report.render_text());
    assert!(report.keys_compared > 20, "{report:?}");
}
