//! Micro-benchmark of the streaming RDB parser: parses a file from memory, in the decoder's
//! configuration (raw RESTORE payloads kept up to 64 MiB, big values in chunks), and prints
//! one JSON line: bytes, seconds, MB/s, events and entries. Run by `cargo xtask bench`.
//!
//! `cargo run --release -p ferry-rdb --example parse_throughput -- FILE [ROUNDS]`

use std::time::Instant;

use ferry_rdb::{Event, Parser, ParserOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: parse_throughput FILE [ROUNDS]")?;
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    // The best of a few rounds: the machine is shared, the fastest round is the least disturbed.
    let mut best = f64::MAX;
    let (mut events, mut entries) = (0u64, 0u64);
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let mut parser = Parser::new(&data[..], ParserOptions::default());
        (events, entries) = (0, 0);
        while let Some(ev) = parser.next_event()? {
            events += 1;
            if let Event::Entry(e) = ev {
                entries += 1;
                std::hint::black_box(&e);
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    let mb_per_s = data.len() as f64 / best / 1e6;
    println!(
        "{{\"bytes\":{},\"seconds\":{best:.6},\"mb_per_s\":{mb_per_s:.1},\"events\":{events},\"entries\":{entries},\"entries_per_s\":{:.0}}}",
        data.len(),
        entries as f64 / best
    );
    Ok(())
}
