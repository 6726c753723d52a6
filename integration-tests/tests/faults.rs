//! Fault injection in rounds, during writes: the network between the stages cut, stalled
//! or refused (a TCP proxy between reader and decoder and between decoder and writer), a
//! stage SIGKILLed, the target SIGKILLed and restarted from its AOF, several at once.
//! After every round `ferry-verify` must find the source and the target equal, witnesses
//! (INCR and RPUSH) included: nothing lost, nothing applied twice.
//!
//! `FERRY_TEST_SEED` replays a run (the seed is printed); `FERRY_FAULT_ROUNDS` sets the
//! number of rounds (`cargo xtask soak` runs many).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use integration_tests::proxy::Proxy;
use integration_tests::*;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

/// The `listen` address of `[section]` in a config made by [`config_with_ports`].
fn listen_of(cfg: &str, section: &str) -> String {
    let rest = &cfg[cfg.find(&format!("[{section}]\nlisten = \"")).expect("section") + section.len() + 13..];
    rest[..rest.find('"').unwrap()].to_string()
}

/// Deliberate: a seeded random pause between `from` and `to` ms. The rounds place their
/// faults at random moments of the write load (before a fault, how long it lasts, how long
/// the writes go on after it): the time itself is what varies.
fn sleep_ms(rng: &mut Rng, from: u64, to: u64) {
    std::thread::sleep(Duration::from_millis(from + rng.below(to - from)));
}

fn verify(src: &RedisServer, tgt: &RedisServer, ferry: &Ferry, what: &str) {
    let out = std::process::Command::new(bin_dir().join("ferry-verify"))
        .args(["--source", &src.addr(), "--target", &tgt.addr(), "--passes", "5", "--pass-delay-ms", "500"])
        .output()
        .expect("run ferry-verify");
    assert!(
        out.status.success(),
        "after {what}, ferry-verify found differences:\n{}{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        ferry.logs()
    );
}

#[test]
fn rounds_of_network_process_and_target_faults_lose_nothing() {
    let rounds: usize = std::env::var("FERRY_FAULT_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(6);
    let mut rng = Rng::new("faults");
    let src = RedisServer::start(&["--repl-backlog-size", "64mb"]);
    // The target keeps every write on disk: a restart loses nothing, checkpoints included.
    let mut tgt = RedisServer::start(&["--appendonly", "yes", "--appendfsync", "always"]);
    rt().block_on(async { populate(&mut src.connect().await.unwrap()).await.unwrap() });
    let (cfg, status) =
        config_with_ports(&format!("[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n", src.addr(), tgt.addr()));
    // The stages reach each other through the proxies (`advertise`).
    let to_decoder = Proxy::start(&listen_of(&cfg, "decoder"));
    let to_writer = Proxy::start(&listen_of(&cfg, "writer"));
    let cfg = cfg
        .replace("[decoder]\n", &format!("[decoder]\nadvertise = \"{}\"\n", to_decoder.addr))
        .replace("[writer]\n", &format!("[writer]\nadvertise = \"{}\"\n", to_writer.addr));
    let mut ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    let proxies = [&to_decoder, &to_writer];
    for round in 0..rounds {
        let stop = Arc::new(AtomicBool::new(false));
        let writer = source_witnesses(src.addr(), 5, stop.clone());
        sleep_ms(&mut rng, 200, 700);
        let what = match rng.below(7) {
            0 => {
                to_decoder.cut();
                "the reader-decoder connection cut".to_string()
            }
            1 => {
                to_writer.cut();
                "the decoder-writer connection cut".to_string()
            }
            2 => {
                let p = proxies[rng.below(2) as usize];
                p.stall(true);
                sleep_ms(&mut rng, 500, 2500);
                p.stall(false);
                format!("a stall of {}", p.addr)
            }
            3 => {
                let p = proxies[rng.below(2) as usize];
                p.refuse(true);
                p.cut();
                sleep_ms(&mut rng, 500, 1500);
                p.refuse(false);
                format!("{} cut and refusing for a while", p.addr)
            }
            4 => {
                let stage = STAGES[rng.below(4) as usize];
                ferry.kill(stage);
                sleep_ms(&mut rng, 1, 500);
                ferry.spawn(stage);
                format!("SIGKILL of {stage}")
            }
            5 => {
                tgt.kill();
                sleep_ms(&mut rng, 100, 1000);
                tgt.restart();
                "the target SIGKILLed and restarted".to_string()
            }
            _ => {
                to_decoder.cut();
                to_writer.cut();
                ferry.kill("ferry-decoder");
                ferry.spawn("ferry-decoder");
                "both connections cut and the decoder SIGKILLed".to_string()
            }
        };
        eprintln!("round {round}: {what}");
        sleep_ms(&mut rng, 300, 800);
        stop.store(true, Ordering::SeqCst);
        let writes = writer.join().unwrap();
        assert!(writes > 10, "round {round}: only {writes} witness writes");
        let offset = rt().block_on(src.repl_offset()).unwrap();
        ferry.wait_caught_up(offset, Duration::from_secs(120));
        verify(&src, &tgt, &ferry, &format!("round {round} ({what})"));
    }
    let s = ferry.status().unwrap();
    eprintln!("after {rounds} rounds: {}", s["pipelines"][0]);
}

/// A burst of writes bigger than the reader's spool while the target is slow: the session
/// stops with an error naming the spool (in the status and the log), then resumes from the
/// checkpoint until the target has it all; nothing lost, no second full copy.
fn spool_fills_up(spool_dir: &std::path::Path, max_bytes: u64, expect: &str) {
    let src = RedisServer::start(&["--repl-backlog-size", "256mb"]);
    let tgt = RedisServer::start(&[]);
    let (cfg, status) = config_with_ports(&format!(
        "[source]\naddress = \"{}\"\n[target]\naddress = \"{}\"\n[reader]\nbuffer_bytes = 65536\nspool_dir = \"{}\"\nspool_max_bytes = {max_bytes}\n",
        src.addr(),
        tgt.addr(),
        spool_dir.display()
    ));
    // A target at 4 MB/s and a burst of 40 MB: more than the stages between the reader and
    // the target hold (two gRPC streams of up to 8 MiB unread each, and the decoder's
    // batches), so the rest waits in the spool.
    let cfg = cfg.replace("[writer]\n", "[writer]\nmax_bytes_per_sec = 4000000\n");
    let ferry = Ferry::start(&cfg, &status);
    ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(60));
    rt().block_on(async {
        let mut c = src.connect().await.unwrap();
        let mut rng = Rng::seeded(3);
        let mut buf = bytes::BytesMut::new();
        for i in 0..4000 {
            ferry_resp::encode_command_into(
                &mut buf,
                &[&b"SET"[..], format!("burst:{i}").as_bytes(), &rng.bytes(10_000)],
            );
        }
        c.send_raw(&buf).await.unwrap();
        for _ in 0..4000 {
            c.read_reply().await.unwrap();
        }
    });
    let p = ferry.wait_for("the spool error", Duration::from_secs(60), |p| {
        p["error"].as_str().is_some_and(|e| e.contains(expect))
    });
    let err = p["error"].as_str().unwrap();
    assert!(!err.contains('\n') && err.contains("spool"), "{err}");
    let p = ferry.wait_caught_up(rt().block_on(src.repl_offset()).unwrap(), Duration::from_secs(120));
    assert_eq!(p["full_syncs"], 1, "{p:#}\n{}", ferry.logs());
    assert!(ferry.logs().contains(expect));
    rt().block_on(async {
        let (mut a, mut b) = (src.connect().await.unwrap(), tgt.connect().await.unwrap());
        compare(&mut a, &mut b, 2000).await.unwrap_or_else(|e| panic!("{e}\n{}", ferry.logs()));
    });
}

#[test]
fn a_full_spool_stops_the_session_clearly_and_the_sync_resumes() {
    let dir = tempfile::tempdir().unwrap();
    spool_fills_up(dir.path(), 1 << 20, "the spool is full");
}

#[test]
fn a_spool_disk_without_space_stops_the_session_clearly_and_the_sync_resumes() {
    // A 1 MiB filesystem for the spool (mounting needs root, as CI runs; elsewhere the
    // test says so and checks nothing).
    let dir = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
        .arg(dir.path())
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        let uid = std::process::Command::new("id").arg("-u").output().map(|o| o.stdout).unwrap_or_default();
        assert_ne!(String::from_utf8_lossy(&uid).trim(), "0", "root, and no tmpfs could be mounted");
        eprintln!("cannot mount a tmpfs here (not root): skipped");
        return;
    }
    struct Unmount<'a>(&'a std::path::Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(dir.path());
    spool_fills_up(dir.path(), 1 << 30, "No space left on device");
}
