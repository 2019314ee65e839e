//! Old policy versions are freed on a thread of their own, never on the Check path.
//!
//! A compiled policy of 100,000 rules takes milliseconds to free (tens in a debug build), and
//! whoever drops its last reference pays for it: after a reload that was the first Check of the
//! new version, replacing the old version's answer cache. Measured behind the real gateway
//! (integration/faults.rs), that Check missed Envoy's 500 ms ext_authz timeout and failed closed.
//! So the reload and the Check path hand what they replace to `retire`, and the reaper thread
//! drops each once nobody else holds it (checked every 50 ms: a Check in flight may still).

use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

/// Something shared whose last owner the reaper waits to be.
trait Retiree: Send {
    fn only_owner(&self) -> bool;
}

impl<T: Send + Sync> Retiree for Arc<T> {
    fn only_owner(&self) -> bool {
        Arc::strong_count(self) == 1 && Arc::weak_count(self) == 0
    }
}

const POLL: Duration = Duration::from_millis(50);

static REAPER: OnceLock<Mutex<Sender<Box<dyn Retiree>>>> = OnceLock::new();

fn reaper() -> &'static Mutex<Sender<Box<dyn Retiree>>> {
    REAPER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Box<dyn Retiree>>();
        let spawned = std::thread::Builder::new().name("egressd-retire".into()).spawn(move || {
            let mut held: Vec<Box<dyn Retiree>> = Vec::new();
            loop {
                match rx.recv_timeout(POLL) {
                    Ok(item) => held.push(item),
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => return,
                }
                held.retain(|item| !item.only_owner()); // dropped here, on this thread
            }
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start the thread that frees old policy versions; they are freed where they are dropped");
        }
        Mutex::new(tx)
    })
}

/// Hands `old` to the reaper thread, which drops it once it is the only owner. Called once per
/// reload, never per check. Without the thread, `old` is dropped here.
pub fn retire<T: Send + Sync + 'static>(old: Arc<T>) {
    let sender = reaper().lock().unwrap_or_else(|e| e.into_inner()).clone();
    let _ = sender.send(Box::new(old));
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Noted(Arc<std::sync::atomic::AtomicBool>);
    impl Drop for Noted {
        fn drop(&mut self) {
            assert_eq!(std::thread::current().name(), Some("egressd-retire"), "freed on the reaper thread");
            self.0.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    #[test]
    fn a_retired_value_is_freed_on_the_reaper_once_nobody_holds_it() {
        let dropped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let value = Arc::new(Noted(dropped.clone()));
        let still_held = value.clone();
        retire(value);
        std::thread::sleep(POLL * 4);
        assert!(!dropped.load(std::sync::atomic::Ordering::SeqCst), "a holder remains: not freed");
        drop(still_held); // not the last owner's drop: the reaper has one
        for _ in 0..100 {
            if dropped.load(std::sync::atomic::Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(POLL);
        }
        panic!("never freed");
    }
}
