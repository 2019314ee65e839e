//! Rollout tracking: per-service decision counts over a sliding window (for `rollout status`), and
//! the rollback guard that puts a canary service back in dry-run when its deny rate spikes.
//!
//! A task samples the decision counters once a second into a ring covering the longest window in
//! use. The guard's deny rate is (denies + would-denies) / checks over its window: the share of the
//! service's traffic its policy rejects, whatever share the canary enforces. A tripped service stays
//! in dry-run until an operator resets it (admin API); the Check path sees the tripped set through
//! `arc-swap` and only looks when it is not empty.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use crate::admin_api::pb;
use crate::policy::{CompiledPolicy, Decision, Mode, Outcome, Reason, SharedPolicy};
use crate::telemetry::metrics::{DecisionLabels, Metrics};

/// Why a service is in dry-run against its configured mode.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Tripped {
    pub at_unix: i64,
    pub deny_rate: f64,
    pub checks: u64,
    pub window_seconds: u64,
}

/// Cumulative (checks, denies, would-denies) of one service at one instant.
type Counts = [u64; 3];

struct Sample {
    at: i64,
    by_service: HashMap<String, Counts>,
}

pub struct RolloutTracker {
    metrics: Metrics,
    /// Readiness window: how long a service must run without would-denies.
    window_seconds: u64,
    tripped: ArcSwap<HashMap<String, Tripped>>,
    history: Mutex<VecDeque<Sample>>,
    /// Per service: when it was last reset (samples before it do not count for the guard).
    resets: Mutex<HashMap<String, i64>>,
}

impl RolloutTracker {
    pub fn new(metrics: Metrics, window_seconds: u64) -> Self {
        RolloutTracker {
            metrics,
            window_seconds: window_seconds.max(1),
            tripped: ArcSwap::from_pointee(HashMap::new()),
            history: Mutex::new(VecDeque::new()),
            resets: Mutex::new(HashMap::new()),
        }
    }

    /// Samples and evaluates once a second until the returned task is dropped/aborted.
    pub fn spawn(self: &Arc<Self>, policy: SharedPolicy) -> tokio::task::JoinHandle<()> {
        let tracker = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                let p = policy.load_full();
                tracker.sample(&p, crate::policy::unix_now());
            }
        })
    }

    fn counts(&self, policy: &CompiledPolicy) -> HashMap<String, Counts> {
        let get = |service: &str, decision: Outcome, mode: Mode| {
            let labels =
                DecisionLabels { service: service.to_string(), decision: decision.as_str(), mode: mode.as_str() };
            self.metrics.decisions.get_or_create(&labels).get()
        };
        policy
            .services
            .iter()
            .map(|s| {
                let (a, d, w) = (
                    get(&s.name, Outcome::Allow, s.mode),
                    get(&s.name, Outcome::Deny, s.mode),
                    get(&s.name, Outcome::WouldDeny, s.mode),
                );
                (s.name.clone(), [a + d + w, d, w])
            })
            .collect()
    }

    /// Records the counters at `now` and trips guards whose deny rate passed their threshold.
    pub fn sample(&self, policy: &CompiledPolicy, now: i64) {
        let current = self.counts(policy);
        let longest = policy
            .services
            .iter()
            .filter_map(|s| s.rollback_guard.as_ref().map(|g| g.window_seconds))
            .chain([self.window_seconds])
            .max()
            .unwrap_or(self.window_seconds) as i64;
        let mut history = self.history.lock().expect("history lock");
        history.push_back(Sample { at: now, by_service: current });
        // Keep one sample at or before the start of the longest window: it is the baseline.
        while history.get(1).is_some_and(|s| s.at <= now - longest) {
            history.pop_front();
        }
        let resets = self.resets.lock().expect("resets lock");
        let mut trips = Vec::new();
        for svc in policy.services.iter().filter(|s| s.mode == Mode::Canary) {
            let Some(guard) = &svc.rollback_guard else { continue };
            if self.tripped.load().contains_key(&svc.name) {
                continue;
            }
            let window_start = now - guard.window_seconds as i64;
            let counted = match resets.get(&svc.name) {
                // Reset within the window: count only what happened after it (not the would-denies
                // of the time it was tripped).
                Some(&reset) if reset > window_start => {
                    history.iter().find(|s| s.at >= reset).and_then(|base| delta_from(base, history.back()?, &svc.name))
                }
                _ => delta(&history, &svc.name, window_start),
            };
            let Some((delta, _)) = counted else { continue };
            let [checks, denies, would] = delta;
            if checks < guard.min_checks {
                continue;
            }
            let rate = (denies + would) as f64 / checks as f64;
            if rate > guard.max_deny_rate {
                trips.push((
                    svc.name.clone(),
                    Tripped { at_unix: now, deny_rate: rate, checks, window_seconds: guard.window_seconds },
                ));
            }
        }
        drop(resets);
        drop(history);
        if !trips.is_empty() {
            let mut next = (**self.tripped.load()).clone();
            for (name, t) in trips {
                tracing::error!(
                    service = %name, deny_rate = t.deny_rate, checks = t.checks, window_seconds = t.window_seconds,
                    "ROLLBACK GUARD TRIPPED: service falls back to dry-run until an operator resets it"
                );
                self.metrics.rollback_guard_trips.inc();
                next.insert(name, t);
            }
            self.tripped.store(Arc::new(next));
        }
    }

    /// Services whose guard tripped.
    pub fn tripped(&self) -> Arc<HashMap<String, Tripped>> {
        self.tripped.load_full()
    }

    /// A deny of a tripped service's own rules becomes a would-deny (the service runs dry).
    pub fn apply<'p>(&self, decision: Decision<'p>) -> Decision<'p> {
        if decision.outcome != Outcome::Deny
            || !matches!(decision.reason, Reason::ServiceDeny | Reason::NoMatchingAllow)
        {
            return decision;
        }
        let tripped = self.tripped.load();
        match decision.service {
            Some(s) if !tripped.is_empty() && tripped.contains_key(&s.name) => {
                Decision { outcome: Outcome::WouldDeny, enforced: false, rolled_back: true, ..decision }
            }
            _ => decision,
        }
    }

    /// Re-arms `service`'s guard; its window restarts now. Returns whether it had tripped.
    pub fn reset(&self, service: &str, by: &str) -> bool {
        let now = crate::policy::unix_now();
        self.resets.lock().expect("resets lock").insert(service.to_string(), now);
        let current = self.tripped.load();
        if !current.contains_key(service) {
            return false;
        }
        let mut next = (**current).clone();
        next.remove(service);
        self.tripped.store(Arc::new(next));
        tracing::warn!(service, by, "rollback guard reset: the service is back in its configured mode");
        true
    }

    /// Per service: mode, counts over the readiness window, and whether it can take the next step.
    pub fn status(&self, policy: &CompiledPolicy, now: i64) -> pb::RolloutStatusResponse {
        // A fresh sample, so the counts run up to now.
        self.sample(policy, now);
        let history = self.history.lock().expect("history lock");
        let tripped = self.tripped.load();
        let since = now - self.window_seconds as i64;
        let services = policy
            .services
            .iter()
            .map(|svc| {
                let (counts, covered) = delta(&history, &svc.name, since).unwrap_or(([0; 3], 0));
                let [checks, denies, would_denies] = counts;
                let guard_tripped = tripped.contains_key(&svc.name);
                let next_step = match svc.mode {
                    Mode::DryRun => "canary",
                    Mode::Canary => "enforce",
                    Mode::Enforce => "",
                };
                let full = covered >= self.window_seconds;
                let (ready, detail) = if svc.mode == Mode::Enforce {
                    (false, "enforcing: nothing further".to_string())
                } else if guard_tripped {
                    (false, "rollback guard tripped: reset it once the policy is fixed".to_string())
                } else if denies + would_denies > 0 {
                    (false, format!("{} denied or would-denied checks in the last {covered}s", denies + would_denies))
                } else if checks == 0 {
                    (false, format!("no traffic in the last {covered}s"))
                } else if !full {
                    (
                        false,
                        format!("clean so far, but only {covered}s of the {}s window observed", self.window_seconds),
                    )
                } else {
                    (true, format!("no would-deny in {checks} checks over {}s", self.window_seconds))
                };
                pb::ServiceRollout {
                    service: svc.name.clone(),
                    mode: svc.mode.as_str().to_string(),
                    effective_mode: if guard_tripped { "dry-run" } else { svc.mode.as_str() }.to_string(),
                    checks,
                    denies,
                    would_denies,
                    window_seconds: covered,
                    next_step: next_step.to_string(),
                    ready,
                    detail,
                    guard_tripped,
                }
            })
            .collect();
        pb::RolloutStatusResponse { services, policy_version: policy.version.clone() }
    }
}

/// Counts of `service` between a baseline and the newest sample, and the seconds between them. The
/// baseline is the newest sample at or before `since` (so the whole window is covered), else the
/// oldest one (history shorter than the window).
fn delta(history: &VecDeque<Sample>, service: &str, since: i64) -> Option<(Counts, u64)> {
    let newest = history.back()?;
    let oldest = history.iter().rev().find(|s| s.at <= since).or(history.front())?;
    delta_from(oldest, newest, service)
}

fn delta_from(oldest: &Sample, newest: &Sample, service: &str) -> Option<(Counts, u64)> {
    let (a, b) = (oldest.by_service.get(service).copied().unwrap_or([0; 3]), newest.by_service.get(service)?);
    Some((
        [b[0].saturating_sub(a[0]), b[1].saturating_sub(a[1]), b[2].saturating_sub(a[2])],
        (newest.at - oldest.at) as u64,
    ))
}
