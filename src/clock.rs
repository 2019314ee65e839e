//! Time, read in one place: the wall clock in unix seconds, and a coarse copy of it for the Check
//! hot path. Code that decides on time takes `now` as a parameter, so tests pass their own.

/// The wall clock (timestamps of spans and records). The only read of it: clippy.toml forbids
/// `SystemTime::now` elsewhere, so time-dependent logic takes `now` from its caller.
#[allow(clippy::disallowed_methods)]
pub fn wall_now() -> std::time::SystemTime {
    std::time::SystemTime::now()
}

/// Current time in unix seconds (the clock `expires` is compared against).
pub fn unix_now() -> i64 {
    wall_now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix seconds, at most ~250 ms old, read from an atomic a background thread refreshes. `expires`
/// has day granularity, so the Check hot path need not ask the kernel for the time on every request.
pub fn coarse_unix_now() -> i64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, Ordering};
    static NOW: AtomicI64 = AtomicI64::new(0);
    static TICKER: OnceLock<()> = OnceLock::new();
    TICKER.get_or_init(|| {
        NOW.store(unix_now(), Ordering::Relaxed);
        std::thread::Builder::new()
            .name("egressd-clock".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    NOW.store(unix_now(), Ordering::Relaxed);
                }
            })
            .expect("spawn clock thread");
    });
    NOW.load(Ordering::Relaxed)
}
