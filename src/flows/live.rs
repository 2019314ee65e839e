//! The server's live flow table: bounded, least recently seen flows evicted first (and counted).
//!
//! Fed by the telemetry thread, a batch of decisions per lock, never by the Check path itself;
//! read by `GET /flows`. A server without an audit log can still be learned from.

use std::sync::{Arc, Mutex};

use hashlink::LruCache;

use super::json::{FlowJson, FlowsDocument};
use super::table::fill_scratch;
use super::{Flow, FlowKey, FlowStats, Observation};

/// Flows kept by default. A flow with a few workloads and decisions takes about 1 KiB (its
/// strings, the workload set and the LRU links), so about 100 MiB at the bound.
pub const DEFAULT_CAPACITY: usize = 100_000;

pub struct LiveFlows {
    flows: LruCache<FlowKey, FlowStats>,
    capacity: usize,
    evicted: u64,
    scratch: Option<FlowKey>,
}

impl std::fmt::Debug for LiveFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFlows").field("flows", &self.flows.len()).field("evicted", &self.evicted).finish()
    }
}

/// The table as the telemetry thread and the admin port share it.
pub type SharedFlows = Arc<Mutex<LiveFlows>>;

impl LiveFlows {
    /// A table of at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        LiveFlows { flows: LruCache::new_unbounded(), capacity: capacity.max(1), evicted: 0, scratch: None }
    }

    pub fn shared(capacity: usize) -> SharedFlows {
        Arc::new(Mutex::new(LiveFlows::new(capacity)))
    }

    pub fn record(&mut self, obs: &Observation<'_>) {
        let key = fill_scratch(&mut self.scratch, obs);
        if let Some(stats) = self.flows.get_mut(key) {
            stats.record(obs);
            return;
        }
        if self.flows.len() >= self.capacity {
            self.flows.remove_lru();
            self.evicted += 1;
        }
        let mut stats = FlowStats::new(obs.time_ms);
        stats.record(obs);
        self.flows.insert(key.clone(), stats);
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// The flows seen since `since_ms` (all when `None`), sorted, as `GET /flows` serves them.
    pub fn document(&self, since_ms: Option<i64>) -> FlowsDocument {
        let mut flows: Vec<Flow> = self
            .flows
            .iter()
            .filter(|(_, s)| since_ms.is_none_or(|since| s.last_seen_ms >= since))
            .map(|(k, s)| Flow { key: k.clone(), stats: s.clone() })
            .collect();
        flows.sort_by(|a, b| a.key.cmp(&b.key));
        FlowsDocument {
            capacity: self.capacity,
            evicted: self.evicted,
            flows: flows.iter().map(FlowJson::from).collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::SubjectRef;
    use crate::policy::{Outcome, Protocol};

    fn obs(host: &str, t: i64) -> Observation<'_> {
        Observation {
            time_ms: t,
            subject: SubjectRef::Service("payments"),
            workload: None,
            host,
            port: 443,
            protocol: Protocol::Https,
            decision: Outcome::Allow,
            reason: "allowed",
            rule: None,
        }
    }

    #[test]
    fn the_least_recently_seen_flow_is_evicted_and_counted() {
        let mut live = LiveFlows::new(2);
        live.record(&obs("a.test", 1));
        live.record(&obs("b.test", 2));
        live.record(&obs("a.test", 3)); // a is now the most recent
        live.record(&obs("c.test", 4)); // evicts b
        assert_eq!(live.len(), 2);
        assert_eq!(live.evicted(), 1);
        let doc = live.document(None);
        let hosts: Vec<_> = doc.flows.iter().map(|f| (f.host.as_str(), f.hits)).collect();
        assert_eq!(hosts, [("a.test", 2), ("c.test", 1)]);
        assert_eq!(doc.evicted, 1);
        assert_eq!(live.document(Some(4)).flows.len(), 1);
    }
}
