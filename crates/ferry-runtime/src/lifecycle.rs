//! Process lifecycle: shutdown on signals, cancellable sleeps, backoff, the instance name.

use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::info;

/// Cancels `token` on SIGINT or SIGTERM.
pub fn cancel_on_signal(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            _ = token.cancelled() => return,
        }
        info!("shutdown requested");
        token.cancel();
    });
}

/// Sleeps for `d` unless cancelled first; returns false when cancelled.
pub async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// Exponential backoff from 100 ms to 5 s.
pub struct Backoff(u32);

impl Backoff {
    pub fn new() -> Self {
        Backoff(0)
    }
    pub fn reset(&mut self) {
        self.0 = 0;
    }
    pub fn next_delay(&mut self) -> Duration {
        let ms = (100u64 << self.0.min(6)).min(5000);
        self.0 += 1;
        Duration::from_millis(ms)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// A name for this process in reports: `host-pid-start`.
/// With the time the process started (ms, base 36): a container started again in the same
/// pod has the same host name and often the same pid (1), and must still count as another
/// instance.
pub fn instance_name() -> String {
    static NAME: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    NAME.get_or_init(|| {
        let mut t =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis()).unwrap_or(0);
        let mut stamp = Vec::new();
        while t > 0 {
            stamp.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(t % 36) as usize]);
            t /= 36;
        }
        stamp.reverse();
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        format!("{}-{}-{}", host.trim(), std::process::id(), String::from_utf8_lossy(&stamp))
    })
    .clone()
}
