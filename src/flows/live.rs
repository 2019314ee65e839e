//! The server's live flow table: bounded, least recently seen flows evicted first (and counted).
//!
//! Fed two ways: when decisions are recorded anyway (spans, audit log), the telemetry thread
//! records them from its queue; when the table is all that records them, the Check path counts
//! them per thread (`pending`), and those counts are taken in whenever the table is read or the
//! telemetry thread flushes. Read by `GET /flows`: a server without an audit log can still be
//! learned from.

use std::sync::{Arc, Mutex, MutexGuard};

use hashlink::LruCache;

use super::json::{FlowJson, FlowsDocument};
use super::pending::{Pending, Timeline};
use super::table::fill_scratch;
use super::{Flow, FlowKey, FlowStats, Observation};

/// Flows kept by default. A flow with a few workloads and decisions takes about 1 KiB (its
/// strings, the workload set and the LRU links), so about 100 MiB at the bound.
pub const DEFAULT_CAPACITY: usize = 100_000;

pub struct LiveFlows {
    flows: LruCache<FlowKey, FlowStats>,
    capacity: usize,
    evicted: u64,
    /// Observations the Check path could not hold between two drains (`pending`).
    dropped: u64,
    scratch: Option<FlowKey>,
}

impl std::fmt::Debug for LiveFlows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LiveFlows").field("flows", &self.flows.len()).field("evicted", &self.evicted).finish()
    }
}

/// The table as the Check path, the telemetry thread and the admin port share it.
pub type SharedFlows = Arc<LiveFlowTable>;

/// The table and the observations pending in the Check path's threads.
#[derive(Debug)]
pub struct LiveFlowTable {
    table: Mutex<LiveFlows>,
    pending: Pending,
}

impl LiveFlowTable {
    /// Counts one observation where it was made (the Check path): no lock but this thread's own.
    pub fn note(&self, obs: &Observation<'_>, timeline: Option<super::pending::TimelineNote>) {
        self.pending.note(obs, timeline);
    }

    /// Records one observation straight into the table (the telemetry thread, for decisions it
    /// dequeued anyway).
    pub fn record(&self, obs: &Observation<'_>) {
        self.table.lock().unwrap_or_else(|e| e.into_inner()).record(obs);
    }

    /// The table, with every pending observation taken in first (their timelines are held for
    /// `take_in_with_timelines`).
    pub fn lock(&self) -> MutexGuard<'_, LiveFlows> {
        // A poisoned table (a panic while recording) is still a table of counts.
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self.pending.drain(|obs, c| table.record_counted(obs, c.hits, c.first_ms, c.last_ms));
        table.dropped += dropped;
        table
    }

    /// Takes every pending observation in, and hands each flow's timeline (its hits by second,
    /// noted for the detectors) to `timeline`: the telemetry thread's drain.
    pub fn take_in_with_timelines(&self, timeline: impl FnMut(&Observation<'_>, &Timeline)) {
        let mut table = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let dropped = self
            .pending
            .drain_with_timelines(|obs, c| table.record_counted(obs, c.hits, c.first_ms, c.last_ms), timeline);
        table.dropped += dropped;
    }
}

impl LiveFlows {
    /// A table of at most `capacity` flows (at least one).
    pub fn new(capacity: usize) -> Self {
        LiveFlows { flows: LruCache::new_unbounded(), capacity: capacity.max(1), evicted: 0, dropped: 0, scratch: None }
    }

    pub fn shared(capacity: usize) -> SharedFlows {
        Arc::new(LiveFlowTable { table: Mutex::new(LiveFlows::new(capacity)), pending: Pending::default() })
    }

    pub fn record(&mut self, obs: &Observation<'_>) {
        self.record_counted(obs, 1, obs.time_ms, obs.time_ms);
    }

    /// Records `hits` observations like `obs`, made between `first_ms` and `last_ms`.
    pub fn record_counted(&mut self, obs: &Observation<'_>, hits: u64, first_ms: i64, last_ms: i64) {
        let key = fill_scratch(&mut self.scratch, obs);
        if let Some(stats) = self.flows.get_mut(key) {
            stats.record_counted(obs, hits, first_ms, last_ms);
            return;
        }
        if self.flows.len() >= self.capacity {
            self.flows.remove_lru();
            self.evicted += 1;
        }
        let mut stats = FlowStats::new(first_ms);
        stats.record_counted(obs, hits, first_ms, last_ms);
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
            dropped: self.dropped,
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
