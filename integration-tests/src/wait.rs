//! Waiting for a condition instead of sleeping for a guessed time: the condition is checked
//! again and again until it holds or a generous timeout runs out.

use std::time::{Duration, Instant};

/// How long to wait between two checks of a condition.
const POLL: Duration = Duration::from_millis(50);

/// Checks `cond` every 50 ms until it holds (true) or `timeout` has passed (false). For
/// callers that fail with more context than [`wait_until`] gives (logs, the last status).
pub fn poll_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until `cond` holds; panics naming `what` when it does not within `timeout`.
pub fn wait_until(what: &str, timeout: Duration, cond: impl FnMut() -> bool) {
    assert!(poll_until(timeout, cond), "timed out after {timeout:?} waiting for {what}");
}

/// [`wait_until`] for an async condition, inside a tokio runtime (it sleeps with tokio
/// between two checks, so the runtime's other tasks go on).
pub async fn wait_until_async<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !cond().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}
