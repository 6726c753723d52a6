//! `cargo xtask bench`: ferry against Redis's own replication, measured in one run on
//! the same machine, reported as ratios (the machines are shared and noisy: absolute
//! numbers mean little, ratios against a baseline of the same run mean more).

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use ferry_resp::Connection;
use integration_tests::{RedisServer, config_with_ports, http_get};
use serde_json::json;

/// Options of a bench run.
pub struct BenchOpts {
    pub keys: u64,
    pub value_size: usize,
}

/// Fills `c` with `keys` keys, deterministically: 70 % strings of `value_size` bytes,
/// 10 % hashes, 10 % lists, 5 % sets, 5 % sorted sets (10 small elements each).
pub async fn fill(c: &mut Connection, keys: u64, value_size: usize) -> anyhow::Result<()> {
    let mut buf = bytes::BytesMut::with_capacity(4 << 20);
    let mut pending = 0u64;
    let value: Vec<u8> = (0..value_size).map(|i| b'a' + (i % 26) as u8).collect();
    for i in 0..keys {
        let key = format!("bench:{i:010}");
        let kind = i % 20;
        let mut args: Vec<Vec<u8>> = match kind {
            0..=13 => vec![b"SET".to_vec(), key.into_bytes(), value.clone()],
            14 | 15 => {
                let mut a = vec![b"HSET".to_vec(), key.into_bytes()];
                for f in 0..10 {
                    a.push(format!("field{f}").into_bytes());
                    a.push(value[..value_size.min(32)].to_vec());
                }
                a
            }
            16 | 17 => {
                let mut a = vec![b"RPUSH".to_vec(), key.into_bytes()];
                a.extend((0..10).map(|e| format!("element-{e}-{i}").into_bytes()));
                a
            }
            18 => {
                let mut a = vec![b"SADD".to_vec(), key.into_bytes()];
                a.extend((0..10).map(|e| format!("member-{e}").into_bytes()));
                a
            }
            _ => {
                let mut a = vec![b"ZADD".to_vec(), key.into_bytes()];
                for e in 0..10 {
                    a.push(format!("{}.5", e * 3).into_bytes());
                    a.push(format!("m{e}").into_bytes());
                }
                a
            }
        };
        if i % 1000 == 0 {
            // Some TTLs too.
            args = vec![
                b"SET".to_vec(),
                format!("bench:{i:010}").into_bytes(),
                value.clone(),
                b"EX".to_vec(),
                b"86400".to_vec(),
            ];
        }
        ferry_resp::encode_command_into(&mut buf, &args);
        pending += 1;
        if pending == 2000 {
            flush(c, &mut buf, pending).await?;
            pending = 0;
        }
    }
    flush(c, &mut buf, pending).await
}

async fn flush(c: &mut Connection, buf: &mut bytes::BytesMut, n: u64) -> anyhow::Result<()> {
    c.send_raw(buf).await?;
    buf.clear();
    for _ in 0..n {
        if let ferry_resp::Reply::Error(e) = c.read_reply().await? {
            bail!("fill: {}", String::from_utf8_lossy(&e));
        }
    }
    Ok(())
}

async fn info(c: &mut Connection, field: &str) -> anyhow::Result<String> {
    let r = c.call(&["INFO", "all"]).await?;
    Ok(ferry_resp::replication::info_field(&r, field).unwrap_or("").to_string())
}

/// A native replica's full sync of `src`: seconds until it is online and caught up.
async fn native_replica(src: &RedisServer) -> anyhow::Result<f64> {
    let replica = RedisServer::start(&["--repl-diskless-load", "disabled"]);
    let mut c = replica.connect().await?;
    let mut s = src.connect().await?;
    let t0 = Instant::now();
    c.call(&["REPLICAOF", "127.0.0.1", &src.port.to_string()]).await?;
    loop {
        if info(&mut c, "master_link_status").await? == "up" && info(&mut c, "master_sync_in_progress").await? == "0" {
            let want = info(&mut s, "master_repl_offset").await?;
            if info(&mut c, "slave_repl_offset").await? == want {
                break;
            }
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("native replica did not finish");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(t0.elapsed().as_secs_f64())
}

/// Peak RSS (VmHWM) of a process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).map(|l| l.to_string()))
        .and_then(|l| l.split_whitespace().nth(1).and_then(|v| v.parse().ok()))
        .unwrap_or(0)
}

/// ferry's full copy of `src` into a new target: seconds until incremental with lag 0.
fn ferry_full_copy(bins: &Path, src: &RedisServer, dir: &Path) -> anyhow::Result<(f64, serde_json::Value)> {
    let tgt = RedisServer::start(&[]);
    let (text, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n", src.addr(), tgt.addr()));
    let config = dir.join("bench-ferry.toml");
    std::fs::write(&config, text)?;
    let t0 = Instant::now();
    let mut procs = crate::Processes::start(bins, &config, dir)?;
    let mut last = serde_json::Value::Null;
    loop {
        if let Some((name, st)) = procs.exited() {
            bail!("{name} exited ({st}) during the bench");
        }
        if let Ok(body) = http_get(&status, "/status") {
            let v: serde_json::Value = serde_json::from_str(&body)?;
            let p = v["pipelines"][0].clone();
            if p["phase"] == "incremental" && p["lag_bytes"] == 0 && p["keys_applied"].as_u64().unwrap_or(0) > 0 {
                last = p;
                break;
            }
            if p["phase"] == "failed" {
                bail!("ferry failed: {}", p["error"]);
            }
            last = p;
        }
        if t0.elapsed() > Duration::from_secs(1800) {
            bail!("ferry did not finish: {last}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let rss: serde_json::Map<String, serde_json::Value> =
        procs.children.iter().map(|(n, c)| (n.clone(), json!(peak_rss_kib(c.id()) / 1024))).collect();
    procs.stop();
    Ok((secs, json!({"status": last, "peak_rss_mib": rss})))
}

pub fn run(bins: &Path, dir: &Path, opts: &BenchOpts) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let src = RedisServer::start(&["--repl-diskless-sync", "yes", "--repl-diskless-sync-delay", "0"]);
    eprintln!("filling the source with {} keys...", opts.keys);
    rt.block_on(async {
        let mut c = src.connect().await?;
        fill(&mut c, opts.keys, opts.value_size).await
    })
    .context("fill")?;
    let used = rt.block_on(async {
        let mut c = src.connect().await?;
        info(&mut c, "used_memory_human").await
    })?;
    eprintln!("source holds {used}; native replica...");
    let native = rt.block_on(native_replica(&src))?;
    eprintln!("native replica: {native:.2}s; ferry full copy...");
    let (ferry, details) = ferry_full_copy(bins, &src, dir)?;
    eprintln!("ferry: {ferry:.2}s");
    let result = json!({
        "keys": opts.keys,
        "value_size": opts.value_size,
        "source_used_memory": used,
        "native_replica_full_sync_s": native,
        "ferry_full_copy_s": ferry,
        "ratio_ferry_over_native": ferry / native,
        "ferry": details,
    });
    println!("| measure | native replica | ferry | ferry / native |");
    println!("|---|---|---|---|");
    println!("| full copy of {} keys ({used}) | {native:.2} s | {ferry:.2} s | {:.2} |", opts.keys, ferry / native);
    println!("peak RSS (MiB): {}", result["ferry"]["peak_rss_mib"]);
    let out = dir.join("bench.json");
    std::fs::write(&out, serde_json::to_string_pretty(&result)?)?;
    eprintln!("results written to {}", out.display());
    Ok(())
}
