//! Decisions per service, counted for the run-time layer's own use (rollout status, the rollback
//! guard). Cumulative since start and keyed by service name, so a reload that keeps a service
//! keeps its counts; resolved once per policy version into handles by service index, so counting
//! a decision on the Check path is an index and one atomic add.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use crate::policy::{CompiledPolicy, Outcome, Verdict};

/// Cumulative (checks, denies, would-denies) of one service.
pub type Counts = [u64; 3];

/// One service's decisions: allows, denies, would-denies.
#[derive(Debug, Default)]
struct ServiceCounts([AtomicU64; 3]);

impl ServiceCounts {
    fn load(&self) -> Counts {
        let [a, d, w] = [0, 1, 2].map(|i| self.0[i].load(Relaxed));
        [a + d + w, d, w]
    }
}

/// Every service's counts, by name.
#[derive(Debug, Default)]
pub struct Tally {
    by_name: Mutex<HashMap<String, Arc<ServiceCounts>>>,
}

/// A policy version's handles into the tally, by service index.
#[derive(Debug)]
pub struct VersionTally {
    by_service: Vec<Arc<ServiceCounts>>,
}

impl Tally {
    /// Handles for every service of `policy` (a service seen before keeps its counts).
    pub fn for_version(&self, policy: &CompiledPolicy) -> VersionTally {
        let mut by_name = self.by_name.lock().expect("tally lock");
        let by_service = policy.services.iter().map(|s| by_name.entry(s.name.clone()).or_default().clone()).collect();
        VersionTally { by_service }
    }

    /// Every service's cumulative counts now.
    pub fn snapshot(&self) -> HashMap<String, Counts> {
        self.by_name.lock().expect("tally lock").iter().map(|(name, c)| (name.clone(), c.load())).collect()
    }
}

impl VersionTally {
    /// Counts one decision of an identified service (unidentified callers have no service).
    pub fn count(&self, verdict: &Verdict) {
        let Some(service) = verdict.service else { return };
        let slot = match verdict.outcome {
            Outcome::Allow => 0,
            Outcome::Deny => 1,
            Outcome::WouldDeny => 2,
        };
        if let Some(counts) = self.by_service.get(service.get()) {
            counts.0[slot].fetch_add(1, Relaxed);
        }
    }
}
