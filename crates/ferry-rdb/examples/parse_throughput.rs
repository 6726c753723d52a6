//! Micro-benchmark of the streaming RDB parser: parses a file from memory, in the decoder's
//! configuration (raw RESTORE payloads kept, big values in chunks, the values a target of
//! the file's version loads not decoded but delimited: `Parser::set_opaque_types`), and
//! prints one JSON line: bytes, seconds, MB/s, events and entries, and `decoded_mb_per_s`,
//! the same with every value decoded (a target older than the file, `inspect`). Run by
//! `cargo xtask bench`.
//!
//! `cargo run --release -p ferry-rdb --example parse_throughput -- FILE [ROUNDS]`

use std::time::Instant;

use ferry_rdb::{Event, Parser, ParserOptions};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let path = args.next().ok_or("usage: parse_throughput FILE [ROUNDS]")?;
    let rounds: u32 = args.next().map(|r| r.parse()).transpose()?.unwrap_or(3);
    let data = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let (best, events, entries) = run(&data, rounds, true)?;
    let (decoded, _, _) = run(&data, rounds, false)?;
    let mb_per_s = data.len() as f64 / best / 1e6;
    println!(
        "{{\"bytes\":{},\"seconds\":{best:.6},\"mb_per_s\":{mb_per_s:.1},\"events\":{events},\"entries\":{entries},\"entries_per_s\":{:.0},\"decoded_mb_per_s\":{:.1}}}",
        data.len(),
        entries as f64 / best,
        data.len() as f64 / decoded / 1e6
    );
    Ok(())
}

/// The best time of a few rounds (the machine is shared: the fastest round is the least
/// disturbed), with the events and entries; `opaque`: as the decoder for a target of the
/// file's version.
fn run(data: &[u8], rounds: u32, opaque: bool) -> Result<(f64, u64, u64), Box<dyn std::error::Error>> {
    let mut best = f64::MAX;
    let (mut events, mut entries) = (0u64, 0u64);
    for _ in 0..rounds.max(1) {
        let t0 = Instant::now();
        let mut parser = Parser::new(data, ParserOptions::default());
        (events, entries) = (0, 0);
        while let Some(ev) = parser.next_event()? {
            events += 1;
            match ev {
                Event::Header { .. } if opaque => parser.set_opaque_types(|_| true),
                Event::Entry(e) => {
                    entries += 1;
                    std::hint::black_box(&e);
                }
                _ => {}
            }
        }
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok((best, events, entries))
}
