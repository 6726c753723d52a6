//! Micro-benchmark of RESP command framing: splits a file of RESP commands (what a replica
//! receives) into commands with `scan_command`, the reader's hot path, then parses every
//! command into arguments with `parse_command`, the decoder's. Prints one JSON line.
//! Run by `cargo xtask bench`.
//!
//! `cargo run --release -p ferry-resp --example frame_throughput -- FILE [ROUNDS]`

use std::time::Instant;

use bytes::Bytes;
use ferry_resp::{parse_command, scan_command};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: frame_throughput FILE [ROUNDS]")?;
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let data = Bytes::from(std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?);
    let (mut scan_best, mut parse_best, mut commands) = (f64::MAX, f64::MAX, 0u64);
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let (mut pos, mut n) = (0, 0u64);
        while let Some(len) = scan_command(&data[pos..], 512 << 20)? {
            pos += len;
            n += 1;
        }
        if pos != data.len() {
            return Err(format!("{path}: {} trailing bytes are not a whole command", data.len() - pos).into());
        }
        scan_best = scan_best.min(t0.elapsed().as_secs_f64());
        commands = n;
        let t0 = Instant::now();
        let mut pos = 0;
        while let Some(len) = scan_command(&data[pos..], 512 << 20)? {
            std::hint::black_box(parse_command(&data.slice(pos..pos + len))?);
            pos += len;
        }
        parse_best = parse_best.min(t0.elapsed().as_secs_f64());
    }
    println!(
        "{{\"bytes\":{},\"commands\":{commands},\"scan_commands_per_s\":{:.0},\"scan_mb_per_s\":{:.1},\"parse_commands_per_s\":{:.0}}}",
        data.len(),
        commands as f64 / scan_best,
        data.len() as f64 / scan_best / 1e6,
        commands as f64 / parse_best
    );
    Ok(())
}
