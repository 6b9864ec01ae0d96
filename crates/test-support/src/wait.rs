//! Polling until a condition holds, bounded in time.

use std::time::{Duration, Instant};

/// Polls `condition` every 25 ms until it holds; fails with `what` after `within`.
pub fn eventually(within: Duration, what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// The same inside a tokio runtime: polls every `every` without blocking it.
pub async fn eventually_async(
    within: Duration,
    every: Duration,
    what: &str,
    mut condition: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + within;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(every).await;
    }
}
