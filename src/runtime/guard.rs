//! The rollback guard: a canary service whose deny rate spikes falls back to dry-run by itself.
//!
//! The deny rate is (denies + would-denies) / checks over the guard's window: the share of the
//! service's traffic its policy rejects, whatever share the canary enforces. A tripped service
//! stays in dry-run until an operator resets it; after a reset only later traffic counts (not the
//! would-denies of the time it was tripped). The Check path sees the tripped set through
//! `arc-swap` and only looks when it is not empty.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};

use super::history::History;
use super::tally::Counts;
use crate::policy::{CompiledPolicy, Decision, Mode, Outcome, Reason, RollbackGuard};

/// Why a service is in dry-run against its configured mode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Tripped {
    pub at_unix: i64,
    pub deny_rate: f64,
    pub checks: u64,
    pub window_seconds: u64,
}

/// The guard's verdict on a window's counts: the deny rate that trips it, or `None` (too few
/// checks to judge, or under the threshold).
pub fn evaluate(guard: &RollbackGuard, [checks, denies, would_denies]: Counts) -> Option<f64> {
    if checks == 0 || checks < guard.min_checks {
        return None;
    }
    let rate = (denies + would_denies) as f64 / checks as f64;
    (rate > guard.max_deny_rate).then_some(rate)
}

/// Every service's guard state.
#[derive(Debug, Default)]
pub struct Guards {
    tripped: ArcSwap<HashMap<String, Tripped>>,
    /// Per service: when it was last reset (what came before does not count).
    resets: Mutex<HashMap<String, i64>>,
}

impl Guards {
    /// Evaluates every canary guard of `policy` on `history` at `now`; returns the newly tripped.
    pub fn check(&self, policy: &CompiledPolicy, history: &History, now: i64) -> Vec<(String, Tripped)> {
        let resets = self.resets.lock().expect("resets lock");
        let tripped = self.tripped.load();
        let mut trips = Vec::new();
        for svc in policy.services.iter().filter(|s| s.mode == Mode::Canary) {
            let Some(guard) = &svc.rollback_guard else { continue };
            if tripped.contains_key(&svc.name) {
                continue;
            }
            let window_start = now - guard.window_seconds as i64;
            let counted = match resets.get(&svc.name) {
                Some(&reset) if reset > window_start => history.after(&svc.name, reset),
                _ => history.since(&svc.name, window_start),
            };
            let Some((counts, _)) = counted else { continue };
            if let Some(deny_rate) = evaluate(guard, counts) {
                let t = Tripped { at_unix: now, deny_rate, checks: counts[0], window_seconds: guard.window_seconds };
                trips.push((svc.name.clone(), t));
            }
        }
        if !trips.is_empty() {
            let mut next = (**tripped).clone();
            next.extend(trips.iter().cloned());
            self.tripped.store(Arc::new(next));
        }
        trips
    }

    pub fn tripped(&self) -> Arc<HashMap<String, Tripped>> {
        self.tripped.load_full()
    }

    pub fn is_tripped(&self, service: &str) -> bool {
        let tripped = self.tripped.load();
        !tripped.is_empty() && tripped.contains_key(service)
    }

    /// A deny of a tripped service's own rules becomes a would-deny (the service runs dry).
    pub fn apply<'p>(&self, decision: Decision<'p>) -> Decision<'p> {
        if decision.outcome != Outcome::Deny
            || !matches!(decision.reason, Reason::ServiceDeny | Reason::NoMatchingAllow)
        {
            return decision;
        }
        match decision.service {
            Some(s) if self.is_tripped(&s.name) => {
                Decision { outcome: Outcome::WouldDeny, enforced: false, rolled_back: true, ..decision }
            }
            _ => decision,
        }
    }

    /// Trips `service` because another replica's guard did (its window was judged there).
    /// Returns whether it was newly tripped here.
    pub fn adopt(&self, service: &str, trip: Tripped) -> bool {
        // Held as `check` holds it, so a local trip and an adopted one do not overwrite each other.
        let _resets = self.resets.lock().expect("resets lock");
        let current = self.tripped.load();
        if current.contains_key(service) {
            return false;
        }
        let mut next = (**current).clone();
        next.insert(service.to_string(), trip);
        self.tripped.store(Arc::new(next));
        true
    }

    /// Re-arms `service`'s guard: its window restarts at `now`. Returns whether it had tripped.
    pub fn reset(&self, service: &str, now: i64) -> bool {
        self.resets.lock().expect("resets lock").insert(service.to_string(), now);
        let current = self.tripped.load();
        if !current.contains_key(service) {
            return false;
        }
        let mut next = (**current).clone();
        next.remove(service);
        self.tripped.store(Arc::new(next));
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};

    fn guard(max_deny_rate: f64, min_checks: u64) -> RollbackGuard {
        RollbackGuard { max_deny_rate, window_seconds: 60, min_checks }
    }

    #[test]
    fn the_verdict_on_a_window() {
        let g = guard(0.05, 20);
        // (checks, denies, would-denies) -> trips at this rate?
        let table: [(Counts, Option<f64>); 6] = [
            ([0, 0, 0], None),
            ([19, 19, 0], None),     // too few checks to judge
            ([20, 1, 0], None),      // 5%: at the threshold is not over it
            ([20, 0, 2], Some(0.1)), // would-denies count: the canary's dry share too
            ([100, 3, 3], Some(0.06)),
            ([1000, 10, 39], None), // 4.9%
        ];
        for (counts, expected) in table {
            assert_eq!(evaluate(&g, counts), expected, "{counts:?}");
        }
    }

    fn canary_policy() -> CompiledPolicy {
        let text = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: c\nidentities: [spiffe://corp.example/ns/c/sa/x]\nmode: canary\ncanaryPercent: 10\nrollbackGuard:\n  maxDenyRate: 0.1\n  windowSeconds: 10\n  minChecks: 5\n";
        compile(&PolicySource::from_text("c.yaml", text), 0).unwrap()
    }

    fn at(checks: u64, denies: u64) -> HashMap<String, Counts> {
        [("c".to_string(), [checks, denies, 0])].into_iter().collect()
    }

    /// Trip, stay tripped, reset, and after the reset count only what follows it.
    #[test]
    fn trips_once_and_a_reset_counts_only_later_traffic() {
        let (policy, guards, mut history) = (canary_policy(), Guards::default(), History::default());
        history.push(0, at(0, 0), 60);
        history.push(5, at(50, 2), 60);
        assert!(guards.check(&policy, &history, 5).is_empty(), "4% is under 10%");
        history.push(6, at(60, 12), 60);
        let trips = guards.check(&policy, &history, 6);
        assert_eq!(trips.len(), 1);
        assert_eq!((trips[0].1.checks, trips[0].1.deny_rate), (60, 0.2));
        assert!(guards.is_tripped("c"));
        assert!(guards.check(&policy, &history, 7).is_empty(), "a tripped guard does not trip again");

        assert!(guards.reset("c", 8));
        assert!(!guards.reset("c", 8), "resetting an armed guard says so");
        // Right after the reset the window still holds the bad traffic, but it does not count.
        history.push(8, at(60, 12), 60);
        history.push(9, at(70, 12), 60);
        assert!(guards.check(&policy, &history, 9).is_empty(), "10 clean checks after the reset");
        history.push(10, at(80, 14), 60);
        assert!(guards.check(&policy, &history, 10).is_empty(), "2 of 20 after the reset: 10% is not over 10%");
        history.push(11, at(90, 17), 60);
        assert_eq!(guards.check(&policy, &history, 11).len(), 1, "5 of 30 after the reset trips it again");
    }

    #[test]
    fn a_trip_adopted_from_another_replica_applies_once_and_a_reset_ends_it() {
        let guards = Guards::default();
        let t = Tripped { at_unix: 5, deny_rate: 0.5, checks: 40, window_seconds: 60 };
        assert!(guards.adopt("c", t.clone()));
        assert!(!guards.adopt("c", t), "already tripped");
        assert!(guards.is_tripped("c"));
        assert!(guards.reset("c", 6));
        assert!(!guards.is_tripped("c"));
    }
}
