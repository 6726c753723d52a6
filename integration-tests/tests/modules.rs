//! Module values (RDB type 7) through the whole pipeline, with a real module
//! (`modules/ferrytype.c`) loaded into real servers: a target that has the module gets them
//! as RESTORE payloads; a target without it skips them, says so in the log and counts them in
//! `/status`, and still gets every other key.

use std::time::Duration;

use ferry_resp::{Connection, Reply};
use integration_tests::module::ferrytype_module;
use integration_tests::*;

const MODULE_KEYS: usize = 20;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn config(src: &RedisServer, tgt: &RedisServer) -> (String, String) {
    config_with_ports(&format!(
        "[source]\ntype = \"standalone\"\naddress = \"{}\"\n[target]\ntype = \"standalone\"\naddress = \"{}\"\n",
        src.addr(),
        tgt.addr()
    ))
}

async fn module_value(c: &mut Connection, key: &str) -> anyhow::Result<Reply> {
    Ok(c.call(&["FERRYTYPE.GET", key]).await?)
}

/// A source with the module: module keys (each SET a few times, so the counter is not 1) and
/// plain strings.
fn source() -> (RedisServer, String) {
    let module = ferrytype_module().display().to_string();
    let src = RedisServer::start(&["--loadmodule", &module]);
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        for i in 0..MODULE_KEYS {
            for round in 0..=(i % 3) {
                let r = c.call(&["FERRYTYPE.SET", &format!("mod:{i}"), &format!("value {i}.{round}")]).await.unwrap();
                assert!(r.first_error().is_none(), "{r:?}");
            }
            c.call(&["SET", &format!("plain:{i}"), &format!("p{i}")]).await.unwrap();
        }
        c.call(&["EXPIRE", "mod:0", "3600"]).await.unwrap();
    });
    (src, module)
}

#[test]
fn module_values_reach_a_target_that_has_the_module() {
    let (src, module) = source();
    let tgt = RedisServer::start(&["--loadmodule", &module]);
    let (cfg, status) = config(&src, &tgt);
    let ferry = Ferry::start(&cfg, &status);
    let rt = rt();
    let offset = rt.block_on(src.repl_offset()).unwrap();
    let p = ferry.wait_caught_up(offset, Duration::from_secs(60));
    assert_eq!(p["modules_skipped"], 0, "{p:#}");
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        for i in 0..MODULE_KEYS {
            let key = format!("mod:{i}");
            let (va, vb) = (module_value(&mut a, &key).await.unwrap(), module_value(&mut b, &key).await.unwrap());
            assert_eq!(va, vb, "{key}\n{}", ferry.logs());
            assert!(matches!(vb, Reply::Array(Some(_))), "{key}: {vb:?}");
        }
        let ttl = b.call(&["PTTL", "mod:0"]).await.unwrap();
        assert!(matches!(ttl, Reply::Integer(t) if t > 3_000_000), "mod:0 lost its TTL: {ttl:?}");
        // Module commands of the replication stream pass through as they are.
        a.call(&["FERRYTYPE.SET", "mod:1", "after the full copy"]).await.unwrap();
        a.call(&["FERRYTYPE.SET", "mod:new", "created later"]).await.unwrap();
    });
    let offset = rt.block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(30));
    rt.block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        for key in ["mod:1", "mod:new"] {
            assert_eq!(module_value(&mut a, key).await.unwrap(), module_value(&mut b, key).await.unwrap(), "{key}");
        }
    });
}

#[test]
fn module_values_are_skipped_and_counted_when_the_target_lacks_the_module() {
    let (src, _) = source();
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config(&src, &tgt);
    let ferry = Ferry::start(&cfg, &status);
    let offset = rt().block_on(src.repl_offset()).unwrap();
    ferry.wait_caught_up(offset, Duration::from_secs(60));
    let p = ferry.wait_for("modules_skipped in /status", Duration::from_secs(10), |p| {
        p["modules_skipped"].as_u64() == Some(MODULE_KEYS as u64)
    });
    assert!(p["error"].as_str().unwrap_or("").is_empty(), "{p:#}");
    rt().block_on(async {
        let mut b = tgt.connect().await.unwrap();
        for i in 0..MODULE_KEYS {
            let plain = b.call(&["GET", &format!("plain:{i}")]).await.unwrap();
            assert_eq!(plain, Reply::Bulk(Some(format!("p{i}").into())));
            let exists = b.call(&["EXISTS", &format!("mod:{i}")]).await.unwrap();
            assert_eq!(exists, Reply::Integer(0));
        }
    });
    let logs = ferry.logs();
    let warned = logs.lines().filter(|l| l.contains("skipping a module value") && l.contains("ferrytyp1")).count();
    assert_eq!(warned, MODULE_KEYS, "one warning per skipped key, naming the module:\n{logs}");
    assert!(logs.contains("mod:7"), "the warning names the key:\n{logs}");
}
