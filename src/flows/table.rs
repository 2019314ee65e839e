//! An unbounded set of flows, built from observations (audit logs) or merged from other sets.

use std::collections::HashMap;

use super::{Flow, FlowKey, FlowStats, Observation, Subject, SubjectRef};
use crate::policy::Protocol;

/// Flows by key. Recording an observation of a known flow allocates nothing: the key is built in
/// a reused scratch key and only cloned when the flow is new.
#[derive(Debug, Default)]
pub struct FlowTable {
    flows: HashMap<FlowKey, FlowStats, rustc_hash::FxBuildHasher>,
    scratch: Option<FlowKey>,
}

impl FlowTable {
    pub fn record(&mut self, obs: &Observation<'_>) {
        let key = fill_scratch(&mut self.scratch, obs);
        match self.flows.get_mut(key) {
            Some(stats) => stats.record(obs),
            None => {
                let mut stats = FlowStats::new(obs.time_ms);
                stats.record(obs);
                self.flows.insert(key.clone(), stats);
            }
        }
    }

    /// Adds a flow seen elsewhere (another file, a server).
    pub fn merge(&mut self, flow: Flow) {
        match self.flows.get_mut(&flow.key) {
            Some(stats) => stats.merge(&flow.stats),
            None => {
                self.flows.insert(flow.key, flow.stats);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.flows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.flows.is_empty()
    }

    /// Every flow, sorted by subject, host, port and protocol.
    pub fn into_sorted(self) -> Vec<Flow> {
        let mut flows: Vec<Flow> = self.flows.into_iter().map(|(key, stats)| Flow { key, stats }).collect();
        flows.sort_by(|a, b| a.key.cmp(&b.key));
        flows
    }
}

/// Writes `obs`'s key into `scratch` (reusing its strings' capacity) and returns it.
pub(super) fn fill_scratch<'s>(scratch: &'s mut Option<FlowKey>, obs: &Observation<'_>) -> &'s FlowKey {
    let key = scratch.get_or_insert_with(|| FlowKey {
        subject: Subject::Service(String::new()),
        host: String::new(),
        port: 0,
        protocol: Protocol::Tcp,
    });
    let (name, unclaimed) = match obs.subject {
        SubjectRef::Service(s) => (s, false),
        SubjectRef::Unclaimed(s) => (s, true),
    };
    let mut text = match std::mem::replace(&mut key.subject, Subject::Service(String::new())) {
        Subject::Service(t) | Subject::Unclaimed(t) => t,
    };
    text.clear();
    text.push_str(name);
    key.subject = if unclaimed { Subject::Unclaimed(text) } else { Subject::Service(text) };
    key.host.clear();
    key.host.push_str(obs.host);
    key.port = obs.port;
    key.protocol = obs.protocol;
    key
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Outcome;

    fn obs(subject: SubjectRef<'static>, host: &'static str, t: i64) -> Observation<'static> {
        Observation {
            time_ms: t,
            subject,
            workload: Some("spiffe://corp.example/ns/a/sa/b"),
            host,
            port: 443,
            protocol: Protocol::Https,
            decision: Outcome::WouldDeny,
            reason: "no-matching-allow",
            rule: None,
        }
    }

    #[test]
    fn same_key_is_one_flow_and_subjects_stay_apart() {
        let mut t = FlowTable::default();
        t.record(&obs(SubjectRef::Service("payments"), "a.test", 1));
        t.record(&obs(SubjectRef::Service("payments"), "a.test", 2));
        t.record(&obs(SubjectRef::Unclaimed("payments"), "a.test", 3));
        t.record(&obs(SubjectRef::Service("payments"), "b.test", 4));
        let flows = t.into_sorted();
        assert_eq!(flows.len(), 3);
        assert_eq!(flows[0].key.subject, Subject::Service("payments".into()));
        assert_eq!(flows[0].stats.hits, 2);
        assert_eq!(flows[2].key.subject, Subject::Unclaimed("payments".into()));
    }

    #[test]
    fn merging_adds_hits_and_widens_times() {
        let mut a = FlowTable::default();
        a.record(&obs(SubjectRef::Service("s"), "a.test", 10));
        let mut b = FlowTable::default();
        b.record(&obs(SubjectRef::Service("s"), "a.test", 5));
        b.record(&obs(SubjectRef::Service("s"), "a.test", 20));
        for f in b.into_sorted() {
            a.merge(f);
        }
        let flows = a.into_sorted();
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].stats.hits, flows[0].stats.first_seen_ms, flows[0].stats.last_seen_ms), (3, 5, 20));
        assert_eq!(flows[0].stats.decisions[0].count, 3);
    }
}
