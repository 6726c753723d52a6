//! The ferry processes of one `cargo xtask up`, supervised: a process that dies (a crash, a
//! SIGKILL, an OOM kill) is started again, as systemd or Kubernetes would, with a backoff
//! when it keeps dying; one that exits with code 2 (a bad configuration: starting it again
//! cannot help) stops the run.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

/// The exit code of a ferry binary given a bad configuration or argument.
const EXIT_BAD_CONFIG: i32 = 2;
/// A process that ran this long before it died is started again at once.
const HEALTHY_RUN: Duration = Duration::from_secs(10);
const MAX_RESTART_DELAY: Duration = Duration::from_secs(5);

/// One supervised process.
pub(crate) struct Proc {
    pub(crate) name: String,
    program: PathBuf,
    args: Vec<String>,
    log: PathBuf,
    pub(crate) child: Option<Child>,
    started: Instant,
    /// Restarts in a row of a process that died soon after it started.
    quick_deaths: u32,
    /// When to start it again (after it died).
    restart_at: Option<Instant>,
    pub(crate) restarts: u32,
}

/// What happened to the processes since the last look.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Event {
    Died { name: String, status: String, restart_in: Duration },
    Restarted { name: String, pid: u32 },
}

/// The ferry processes of one run, with their logs in the run directory.
pub(crate) struct Processes {
    pub(crate) procs: Vec<Proc>,
    run_dir: PathBuf,
}

impl Proc {
    fn spawn(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.program)
            // Own process group: Ctrl-C reaches xtask, which stops the children in order.
            .process_group(0)
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", self.name))?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }
}

fn describe(st: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exit code {c}"),
        (None, Some(9)) => "killed (SIGKILL)".into(),
        (None, Some(s)) => format!("killed by signal {s}"),
        _ => st.to_string(),
    }
}

impl Processes {
    /// Starts `(name, program, args)` each, logging to `<run_dir>/<name>.log`.
    pub(crate) fn start_commands(
        commands: Vec<(String, PathBuf, Vec<String>)>,
        run_dir: &Path,
    ) -> anyhow::Result<Processes> {
        let mut procs = Processes { procs: Vec::new(), run_dir: run_dir.to_path_buf() };
        for (name, program, args) in commands {
            let mut p = Proc {
                log: run_dir.join(format!("{name}.log")),
                name,
                program,
                args,
                child: None,
                started: Instant::now(),
                quick_deaths: 0,
                restart_at: None,
                restarts: 0,
            };
            p.spawn()?;
            procs.procs.push(p);
        }
        procs.write_pids()?;
        Ok(procs)
    }

    /// The ferry binaries in `bins`, each with `--config config`.
    pub(crate) fn start(bins: &Path, config: &Path, run_dir: &Path) -> anyhow::Result<Processes> {
        let commands = crate::BINS
            .iter()
            .map(|b| (b.to_string(), bins.join(b), vec!["--config".to_string(), config.display().to_string()]))
            .collect();
        Self::start_commands(commands, run_dir)
    }

    /// `cargo xtask down` reads these if this xtask is gone.
    fn write_pids(&self) -> anyhow::Result<()> {
        let pids: String =
            self.procs.iter().filter_map(|p| p.child.as_ref().map(|c| format!("{} {}\n", p.name, c.id()))).collect();
        std::fs::write(self.run_dir.join("children.pid"), pids)?;
        Ok(())
    }

    /// A process that exited (name, how), without starting it again (the bench stops then).
    pub(crate) fn exited(&mut self) -> Option<(String, String)> {
        for p in &mut self.procs {
            if let Some(Ok(Some(st))) = p.child.as_mut().map(|c| c.try_wait()) {
                return Some((p.name.clone(), describe(&st)));
            }
        }
        None
    }

    /// Notices processes that died and starts them again when their delay is over. An
    /// error: a process exited because of its configuration.
    pub(crate) fn supervise(&mut self) -> anyhow::Result<Vec<Event>> {
        let mut events = Vec::new();
        let mut respawned = false;
        for p in &mut self.procs {
            if let Some(c) = &mut p.child
                && let Ok(Some(st)) = c.try_wait()
            {
                p.child = None;
                if st.code() == Some(EXIT_BAD_CONFIG) {
                    bail!("{} exited with code 2 (a bad configuration); see {}", p.name, p.log.display());
                }
                p.quick_deaths = if p.started.elapsed() >= HEALTHY_RUN { 0 } else { p.quick_deaths + 1 };
                // 100 ms after a healthy run, then doubling.
                let delay = (Duration::from_millis(100) * 2u32.pow(p.quick_deaths.min(6))).min(MAX_RESTART_DELAY);
                p.restart_at = Some(Instant::now() + delay);
                events.push(Event::Died { name: p.name.clone(), status: describe(&st), restart_in: delay });
            }
            if p.child.is_none() && p.restart_at.is_some_and(|t| Instant::now() >= t) {
                p.restart_at = None;
                p.spawn()?;
                p.restarts += 1;
                respawned = true;
                let pid = p.child.as_ref().map(|c| c.id()).unwrap_or(0);
                events.push(Event::Restarted { name: p.name.clone(), pid });
            }
        }
        if respawned {
            self.write_pids()?;
        }
        Ok(events)
    }

    /// SIGTERM to every process, then SIGKILL to any still running after 10 s.
    pub(crate) fn stop(&mut self) {
        for c in self.procs.iter_mut().filter_map(|p| p.child.as_mut()) {
            if let Ok(None) = c.try_wait() {
                let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).stderr(Stdio::null()).status();
            }
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for p in &mut self.procs {
            let Some(c) = p.child.as_mut() else { continue };
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    eprintln!("{} did not stop in time: killing it", p.name);
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            p.child = None;
        }
        self.procs.clear();
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sh(name: &str, script: &str) -> (String, PathBuf, Vec<String>) {
        (name.to_string(), PathBuf::from("/bin/sh"), vec!["-c".to_string(), script.to_string()])
    }

    fn until(procs: &mut Processes, what: impl Fn(&Event) -> bool) -> anyhow::Result<Vec<Event>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut seen = Vec::new();
        while Instant::now() < deadline {
            let events = procs.supervise()?;
            let done = events.iter().any(&what);
            seen.extend(events);
            if done {
                return Ok(seen);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("timed out; events so far: {seen:?}");
    }

    #[test]
    fn a_killed_process_is_started_again_and_a_bad_config_stops_the_run() {
        let dir = std::env::temp_dir().join(format!("ferry-xtask-procs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut procs = Processes::start_commands(
            vec![sh("sleeper", "echo started; exec sleep 30"), sh("quitter", "sleep 0.2; exit 1")],
            &dir,
        )
        .unwrap();
        // SIGKILL, as an operator or the OOM killer would (once it has started).
        let started = Instant::now();
        while !std::fs::read_to_string(dir.join("sleeper.log")).unwrap_or_default().contains("started") {
            assert!(started.elapsed() < Duration::from_secs(10), "the sleeper never started");
            std::thread::sleep(Duration::from_millis(10));
        }
        let pid = procs.procs[0].child.as_ref().unwrap().id();
        Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap();
        let events = until(&mut procs, |e| matches!(e, Event::Restarted { name, .. } if name == "sleeper")).unwrap();
        assert!(
            events.iter().any(
                |e| matches!(e, Event::Died { name, status, .. } if name == "sleeper" && status == "killed (SIGKILL)")
            ),
            "{events:?}"
        );
        assert_ne!(procs.procs[0].child.as_ref().unwrap().id(), pid);
        let pids = std::fs::read_to_string(dir.join("children.pid")).unwrap();
        assert!(pids.contains(&procs.procs[0].child.as_ref().unwrap().id().to_string()), "{pids}");
        // One that keeps dying soon after it starts waits longer each time.
        let mut delays = Vec::new();
        while delays.len() < 3 {
            for e in until(&mut procs, |e| matches!(e, Event::Died { name, .. } if name == "quitter")).unwrap() {
                if let Event::Died { name, restart_in, .. } = e
                    && name == "quitter"
                {
                    delays.push(restart_in);
                }
            }
        }
        assert!(delays[0] < delays[1] && delays[1] < delays[2], "{delays:?}");
        let started = Instant::now();
        let log = loop {
            let log = std::fs::read_to_string(dir.join("sleeper.log")).unwrap();
            if log.matches("started").count() == 2 || started.elapsed() > Duration::from_secs(10) {
                break log;
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        assert_eq!(log.matches("started").count(), 2, "the log is appended to: {log}");
        drop(procs);

        let mut procs = Processes::start_commands(vec![sh("bad", "exit 2")], &dir).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let err = loop {
            match procs.supervise() {
                Err(e) => break e,
                Ok(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Ok(events) => panic!("no error: {events:?}"),
            }
        };
        assert!(err.to_string().contains("bad exited with code 2"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
