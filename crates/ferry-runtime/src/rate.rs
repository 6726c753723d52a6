//! A token bucket shared by every worker: at most `rate` keys per second across the check.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct RateLimiter {
    /// Keys per second; 0 = no limit.
    rate: f64,
    /// Tokens the bucket holds at most (a tenth of a second of work).
    burst: f64,
    /// Tokens now (negative: borrowed by waiting callers) and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    pub fn new(rate: u64) -> RateLimiter {
        let rate = rate as f64;
        let burst = (rate / 10.0).max(1.0);
        RateLimiter { rate, burst, state: Mutex::new((burst, Instant::now())) }
    }

    /// Takes `n` tokens, waiting as long as they take to arrive.
    pub async fn acquire(&self, n: u64) {
        if self.rate <= 0.0 || n == 0 {
            return;
        }
        let wait = {
            let mut st = self.state.lock().expect("rate limiter lock");
            let now = Instant::now();
            let (tokens, at) = *st;
            let tokens = (tokens + now.duration_since(at).as_secs_f64() * self.rate).min(self.burst) - n as f64;
            *st = (tokens, now);
            if tokens < 0.0 { Duration::from_secs_f64(-tokens / self.rate) } else { Duration::ZERO }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn limits_the_rate() {
        let r = RateLimiter::new(1000);
        let start = Instant::now();
        for _ in 0..10 {
            r.acquire(50).await;
        }
        // 500 keys at 1000/s with a burst of 100: at least 0.4 s.
        let took = start.elapsed();
        assert!(took >= Duration::from_millis(380), "{took:?}");
        assert!(took < Duration::from_millis(1500), "{took:?}");
        let unlimited = RateLimiter::new(0);
        let start = Instant::now();
        unlimited.acquire(1_000_000).await;
        assert!(start.elapsed() < Duration::from_millis(50));
    }
}
