//! What changes a policy decision at run time, in one layer: the rollback guard (a tripped
//! canary's deny becomes a would-deny) and break-glass grants (a service's deny becomes an allow
//! that names the grant). `RuntimeOverrides::apply` is the one place that knows the order, guard
//! then grant; the Check path and Explain both call it. The layer keeps its own per-service
//! decision counts (`tally`), sampled once a second into `history` for the guard and for rollout
//! status, and takes the time as a parameter everywhere, so its logic is tested with a clock of
//! the test's choosing. Where the grants and trips are kept, and whether other replicas share
//! them, is the `store`'s business.

pub mod breakglass;
pub mod guard;
pub mod history;
pub mod status;
pub mod store;
pub mod tally;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use prometheus_client::metrics::counter::Counter;

use crate::policy::{CompiledPolicy, Decision, Destination, SharedPolicy};
use breakglass::GrantStore;
use guard::{Guards, Tripped};
use history::History;
use status::RolloutStatus;
use tally::{Tally, VersionTally};

pub struct RuntimeOverrides {
    pub grants: Arc<GrantStore>,
    guards: Guards,
    tally: Tally,
    history: Mutex<History>,
    /// Readiness window: how long a service must run without would-denies.
    window_seconds: u64,
    /// Counted on every trip (`egressd_rollback_guard_trips_total`).
    trips: Counter,
}

impl RuntimeOverrides {
    pub fn new(grants: Arc<GrantStore>, window_seconds: u64, trips: Counter) -> Self {
        RuntimeOverrides {
            grants,
            guards: Guards::default(),
            tally: Tally::default(),
            history: Mutex::new(History::default()),
            window_seconds: window_seconds.max(1),
            trips,
        }
    }

    /// The overrides in their one order: a tripped guard, then a grant.
    pub fn apply<'p>(&self, decision: Decision<'p>, dest: Option<&Destination<'_>>, now: i64) -> Decision<'p> {
        self.grants.apply(self.guards.apply(decision), dest, now)
    }

    /// Whether `service`'s rollback guard has it in dry-run.
    pub fn is_tripped(&self, service: &str) -> bool {
        self.guards.is_tripped(service)
    }

    pub fn tripped(&self) -> Arc<HashMap<String, Tripped>> {
        self.guards.tripped()
    }

    /// Counting handles for one policy version (the Check path counts every decision).
    pub fn version_tally(&self, policy: &CompiledPolicy) -> VersionTally {
        self.tally.for_version(policy)
    }

    /// Records the counts at `now` and trips guards whose deny rate passed their threshold.
    pub fn sample(&self, policy: &CompiledPolicy, now: i64) {
        let longest = policy
            .services
            .iter()
            .filter_map(|s| s.rollback_guard.as_ref().map(|g| g.window_seconds))
            .chain([self.window_seconds])
            .max()
            .unwrap_or(self.window_seconds);
        let mut history = self.history.lock().expect("history lock");
        history.push(now, self.tally.snapshot(), longest as i64);
        for (name, t) in self.guards.check(policy, &history, now) {
            tracing::error!(
                service = %name, deny_rate = t.deny_rate, checks = t.checks, window_seconds = t.window_seconds,
                "ROLLBACK GUARD TRIPPED: service falls back to dry-run until an operator resets it"
            );
            self.trips.inc();
            self.grants.store().share_trip(&name, &t);
        }
    }

    /// Samples once a second until the returned task is dropped or aborted.
    pub fn spawn_sampler(self: &Arc<Self>, policy: SharedPolicy) -> tokio::task::JoinHandle<()> {
        let overrides = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            loop {
                tick.tick().await;
                overrides.sample(&policy.load_full(), crate::clock::unix_now());
            }
        })
    }

    /// Every service's rollout status at `now` (counts up to `now`: a fresh sample first).
    pub fn status(&self, policy: &CompiledPolicy, now: i64) -> RolloutStatus {
        self.sample(policy, now);
        let history = self.history.lock().expect("history lock");
        status::status(policy, &history, &self.guards, self.window_seconds, now)
    }

    /// Re-arms `service`'s rollback guard at `now` on behalf of `by`. Returns whether it had tripped.
    pub fn reset_guard(&self, service: &str, by: &str, now: i64) -> bool {
        let was = self.guards.reset(service, now);
        if was {
            tracing::warn!(service, by, "rollback guard reset: the service is back in its configured mode");
        }
        self.grants.store().share_reset(service);
        was
    }

    /// Trips `service` because another replica's guard tripped it.
    pub fn adopt_trip(&self, service: &str, trip: Tripped) {
        if self.guards.adopt(service, trip) {
            tracing::error!(
                service,
                "ROLLBACK GUARD TRIPPED on another replica: service falls back to dry-run here too"
            );
        }
    }

    /// Re-arms `service` because another replica reset it (only later traffic counts here too).
    pub fn adopt_reset(&self, service: &str, now: i64) {
        if self.guards.reset(service, now) {
            tracing::warn!(
                service,
                "rollback guard reset on another replica: the service is back in its configured mode"
            );
        }
    }

    /// Starts applying other replicas' grants and trips, when the store is shared.
    pub fn spawn_replication(self: &Arc<Self>) -> Option<tokio::task::JoinHandle<()>> {
        self.grants.store().clone().spawn_replication(self.clone())
    }
}
