//! Project conventions that `cargo test` checks (as rust-analyzer's `tidy.rs` does), so the
//! layout stays the architecture:
//!
//! - no process crate (reader, decoder, writer, coordinator, watcher) depends on another:
//!   they meet only in `ferry-proto` and the shared crates;
//! - the binaries' `main.rs` stay thin: arguments in, a library call out;
//! - every channel is bounded: no `unbounded_channel`;
//! - no detached task: a `tokio::spawn` is owned and awaited, and the few that are appear in
//!   [`SPAWNS`] with why;
//! - the format of ferry's own keys is spelt only in `ferry-checkpoint`.

use std::path::{Path, PathBuf};

/// The crates of ferry's processes.
const PROCESS_CRATES: [&str; 5] =
    ["ferry-reader", "ferry-decoder", "ferry-writer", "ferry-coordinator", "ferry-watcher"];

/// Where `tokio::spawn` may be called, how often, and why the task is owned.
const SPAWNS: &[(&str, usize, &str)] = &[
    ("crates/ferry-runtime/src/lifecycle.rs", 1, "the signal watcher ends with the token it cancels"),
    ("crates/ferry-reader/src/lib.rs", 2, "the ACK task and the ACK tracker of a session, awaited when it ends"),
    ("crates/ferry-decoder/src/lib.rs", 1, "the ACK forwarder of a session, awaited when it ends"),
    (
        "crates/ferry-coordinator/src/lib.rs",
        3,
        "the lease keeper, the planner and the counter saver, awaited on shutdown",
    ),
    ("xtask/src/bench.rs", 2, "the bench's load and poller, joined before it reports"),
];

/// Longest a binary's `main.rs` may be (argument definitions included).
const MAIN_MAX_LINES: usize = 160;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Every `.rs` file under `dir`, relative to the root.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                if !p.ends_with("target") {
                    stack.push(p);
                }
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p.strip_prefix(root()).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

/// The code lines of a file (comment lines left out).
fn code_lines(path: &Path) -> Vec<(usize, String)> {
    let text = std::fs::read_to_string(root().join(path)).unwrap();
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim_start().starts_with("//"))
        .map(|(i, l)| (i + 1, l.to_string()))
        .collect()
}

fn source_files() -> Vec<PathBuf> {
    // The tests of integration-tests/tests may spell what they check; its harness may not.
    let mut files = rust_files(&root().join("crates"));
    files.extend(rust_files(&root().join("xtask")));
    files.extend(rust_files(&root().join("integration-tests/src")));
    files.retain(|f| !f.ends_with("tidy.rs"));
    files
}

#[test]
fn no_process_crate_depends_on_another() {
    let mut bad = Vec::new();
    for krate in PROCESS_CRATES {
        let manifest = std::fs::read_to_string(root().join("crates").join(krate).join("Cargo.toml")).unwrap();
        let src = rust_files(&root().join("crates").join(krate).join("src"));
        for other in PROCESS_CRATES.iter().filter(|o| **o != krate) {
            if manifest.lines().any(|l| l.trim_start().starts_with(&format!("{other}."))) {
                bad.push(format!("crates/{krate}/Cargo.toml depends on {other}"));
            }
            let module = other.replace('-', "_");
            for f in &src {
                for (n, l) in code_lines(f) {
                    if l.contains(&format!("{module}::")) {
                        bad.push(format!("{}:{n} uses {module}", f.display()));
                    }
                }
            }
        }
    }
    assert!(bad.is_empty(), "process crates meet only in ferry-proto and the shared crates:\n{}", bad.join("\n"));
}

#[test]
fn binaries_stay_thin() {
    for f in rust_files(&root().join("crates")).iter().filter(|f| f.ends_with("main.rs")) {
        let lines = code_lines(f);
        assert!(
            lines.len() <= MAIN_MAX_LINES,
            "{} has {} lines: move its logic into the crate's library",
            f.display(),
            lines.len()
        );
        for (n, l) in &lines {
            assert!(
                !l.contains("tokio::spawn") && !l.trim_start().starts_with("loop "),
                "{}:{n}: a binary's main.rs runs no loop or task of its own: {l}",
                f.display()
            );
        }
    }
}

#[test]
fn every_channel_is_bounded() {
    for f in source_files() {
        for (n, l) in code_lines(&f) {
            assert!(!l.contains("unbounded_channel"), "{}:{n}: use a bounded channel: {l}", f.display());
        }
    }
}

#[test]
fn every_spawned_task_is_owned() {
    let mut bad = Vec::new();
    for f in source_files() {
        let count = code_lines(&f).iter().filter(|(_, l)| l.contains("tokio::spawn(")).count();
        let allowed = SPAWNS.iter().find(|(p, _, _)| Path::new(p) == f).map(|(_, n, _)| *n).unwrap_or(0);
        if count != allowed {
            bad.push(format!(
                "{}: {count} tokio::spawn, {allowed} in tidy::SPAWNS (own the task: a JoinSet, a TaskTracker, \
                 or a handle awaited on shutdown; then list it with why)",
                f.display()
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn ferrys_own_key_format_lives_in_ferry_checkpoint() {
    let mut bad = Vec::new();
    for f in source_files().iter().filter(|f| !f.starts_with("crates/ferry-checkpoint")) {
        for (n, l) in code_lines(f) {
            if l.contains("ferry:checkpoint:") {
                bad.push(format!("{}:{n}: {}", f.display(), l.trim()));
            }
        }
    }
    assert!(bad.is_empty(), "spell ferry's own keys with ferry_checkpoint:\n{}", bad.join("\n"));
}
