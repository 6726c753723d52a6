//! Live progress of `cargo xtask up`: one bar per pipeline from `/status`. During a full
//! copy: the RDB bytes received out of its size (when the source says it; a diskless
//! transfer does not), the rate and the time left; then keys and commands applied, the
//! command rate and the lag. Off a terminal, the same as a line every few seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What one pipeline showed last, to compute rates.
struct Seen {
    bar: ProgressBar,
    at: Instant,
    rdb: u64,
    commands: u64,
    /// Smoothed rates: RDB bytes and commands per second.
    rdb_rate: f64,
    cmd_rate: f64,
}

pub struct Progress {
    multi: MultiProgress,
    tty: bool,
    pipelines: HashMap<String, Seen>,
    started: Instant,
    last_print: Option<Instant>,
    waiting: ProgressBar,
}

fn human(b: f64) -> String {
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.2} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b => format!("{:.1} KiB", b / 1024.0),
    }
}

fn eta(left: f64, rate: f64) -> String {
    if rate <= 0.0 || left <= 0.0 {
        return "-".into();
    }
    let s = (left / rate).round() as u64;
    if s >= 3600 { format!("{}h{:02}m", s / 3600, s / 60 % 60) } else { format!("{}m{:02}s", s / 60, s % 60) }
}

impl Progress {
    pub fn new() -> Progress {
        let tty = std::io::IsTerminal::is_terminal(&std::io::stderr());
        let multi = MultiProgress::with_draw_target(if tty {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        });
        let waiting = multi.add(ProgressBar::new_spinner());
        waiting.set_style(ProgressStyle::with_template("{spinner} {msg}").unwrap());
        waiting.set_message("waiting for the coordinator...");
        Progress { multi, tty, pipelines: HashMap::new(), started: Instant::now(), last_print: None, waiting }
    }

    /// Shows a `/status` document (`None`: the coordinator does not answer).
    pub fn update(&mut self, status: Option<&serde_json::Value>) {
        let Some(ps) = status.and_then(|s| s["pipelines"].as_array()) else {
            self.waiting.tick();
            return self.print(&["waiting for the coordinator...".to_string()]);
        };
        self.waiting.finish_and_clear();
        let now = Instant::now();
        let mut lines = Vec::new();
        for p in ps {
            let id = p["id"].as_str().unwrap_or("?").to_string();
            let u = |f: &str| p[f].as_u64().unwrap_or(0);
            let (rdb, size, commands) = (u("rdb_bytes_received"), u("rdb_size"), u("commands_applied"));
            let multi = &self.multi;
            let seen = self.pipelines.entry(id.clone()).or_insert_with(|| {
                let bar = multi.add(ProgressBar::new(0));
                bar.set_prefix(id.clone());
                Seen { bar, at: now, rdb, commands, rdb_rate: 0.0, cmd_rate: 0.0 }
            });
            let dt = now.duration_since(seen.at).as_secs_f64();
            if dt >= 0.5 {
                let smooth = |old: f64, new: f64| if old == 0.0 { new } else { 0.7 * old + 0.3 * new };
                seen.rdb_rate = smooth(seen.rdb_rate, rdb.saturating_sub(seen.rdb) as f64 / dt);
                seen.cmd_rate = smooth(seen.cmd_rate, commands.saturating_sub(seen.commands) as f64 / dt);
                (seen.at, seen.rdb, seen.commands) = (now, rdb, commands);
            }
            let phase = p["phase"].as_str().unwrap_or("?");
            let mut msg = match phase {
                "full_sync" if size > 0 => format!(
                    "full copy {} / {} ({:.0}%) {}/s eta {} keys {}",
                    human(rdb as f64),
                    human(size as f64),
                    100.0 * rdb as f64 / size as f64,
                    human(seen.rdb_rate),
                    eta(size.saturating_sub(rdb) as f64, seen.rdb_rate),
                    u("keys_applied")
                ),
                "full_sync" => format!(
                    "full copy {} (diskless: size unknown) {}/s keys {}",
                    human(rdb as f64),
                    human(seen.rdb_rate),
                    u("keys_applied")
                ),
                _ => format!(
                    "{phase} keys {} commands {} ({:.0}/s) lag {} B",
                    u("keys_applied"),
                    commands,
                    seen.cmd_rate,
                    u("lag_bytes")
                ),
            };
            if let Some(e) = p["error"].as_str() {
                msg += &format!(" error: {e}");
            }
            if phase == "full_sync" && size > 0 {
                seen.bar.set_style(ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {msg}").unwrap());
                seen.bar.set_length(size);
                seen.bar.set_position(rdb.min(size));
            } else {
                seen.bar.set_style(ProgressStyle::with_template("{prefix:.bold} {msg}").unwrap());
            }
            seen.bar.set_message(msg.clone());
            lines.push(format!("{id} {msg}"));
        }
        // Pipelines that left the plan (a role swap, a topology change).
        self.pipelines.retain(|id, seen| {
            let keep = ps.iter().any(|p| p["id"].as_str() == Some(id.as_str()));
            if !keep {
                seen.bar.finish_and_clear();
            }
            keep
        });
        self.print(&lines);
    }

    /// Off a terminal: a line every 5 s.
    fn print(&mut self, lines: &[String]) {
        if self.tty || self.last_print.is_some_and(|t| t.elapsed() < Duration::from_secs(5)) {
            return;
        }
        self.last_print = Some(Instant::now());
        eprintln!("[{:>5}s] {}", self.started.elapsed().as_secs(), lines.join(" | "));
    }

    /// A line of its own (above the bars on a terminal).
    pub fn note(&self, line: &str) {
        if self.tty {
            let _ = self.multi.println(line);
        } else {
            eprintln!("[{:>5}s] {line}", self.started.elapsed().as_secs());
        }
    }

    pub fn finish(&self) {
        for s in self.pipelines.values() {
            s.bar.finish_and_clear();
        }
        self.waiting.finish_and_clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_left_and_sizes_read_well() {
        assert_eq!(eta(1000.0, 10.0), "1m40s");
        assert_eq!(eta(7200.0 * 5.0, 5.0), "2h00m");
        assert_eq!(eta(10.0, 0.0), "-");
        assert_eq!(human(1536.0), "1.5 KiB");
        assert_eq!(human(3.0 * (1u64 << 30) as f64), "3.00 GiB");
    }
}
