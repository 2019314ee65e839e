#![allow(dead_code)] // each test binary uses a subset of these helpers
//! Waiting for something that happens asynchronously (an ACK, a reload, a log line, a span).

use std::future::Future;
use std::time::Duration;

/// How often `eventually` probes.
const POLL: Duration = Duration::from_millis(25);

/// Calls `probe` every ~25 ms until it returns `Some`, and returns that value; panics naming
/// `what` if `within` passes first. The probe runs at least once, and once more at the deadline.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let expired = tokio::time::Instant::now() >= deadline;
        if let Some(value) = probe().await {
            return value;
        }
        assert!(!expired, "timed out after {within:?} waiting for {what}");
        tokio::time::sleep_until(deadline.min(tokio::time::Instant::now() + POLL)).await;
    }
}
