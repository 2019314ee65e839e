//! Recent CONNECT decisions, by request id: when a tunnel's totals arrive (minutes or hours
//! later, from the gateway's access log), its record names the trace and span of the decision
//! that let it open. Bounded: past `CAPACITY` open entries the oldest is forgotten, counted
//! (`egressd_stream_ids_evicted_total`), and its totals are written without trace ids.
//!
//! Keys are the xxh3 hash of the request id, not the id itself: the gateway generates every
//! request id (a client cannot pick one to collide), and a `u64` key keeps an entry small.

use std::collections::VecDeque;
use std::sync::Arc;

use opentelemetry::trace::{SpanId, TraceId};
use prometheus_client::metrics::counter::Counter;
use xxhash_rust::xxh3::xxh3_64;

use super::record::{CheckEvent, Fact};
use super::spans::SpanIds;

/// CONNECT decisions remembered at most (about 80 bytes each with their order entry).
pub const CAPACITY: usize = 65_536;

/// What a tunnel's totals take from its CONNECT decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectIds {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    /// Whether the CONNECT's span was exported (its tunnel decision's span samples as it did).
    pub sampled: bool,
    pub service: Option<Arc<str>>,
}

impl ConnectIds {
    /// The CONNECT decision's span, as the parent of its tunnel decision's.
    pub fn span_context(&self) -> opentelemetry::trace::SpanContext {
        use opentelemetry::trace::{SpanContext, TraceFlags, TraceState};
        let flags = if self.sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
        SpanContext::new(self.trace_id, self.span_id, flags, true, TraceState::default())
    }
}

struct Slot {
    seq: u64,
    ids: ConnectIds,
}

pub struct RecentConnects {
    /// Keyed by a hash already (xxh3 of the request id): no second hashing.
    map: nohash_hasher::IntMap<u64, Slot>,
    /// Insertion order as (key, seq); entries whose key was taken or replaced are stale and
    /// dropped when the queue is compacted.
    order: VecDeque<(u64, u64)>,
    seq: u64,
    capacity: usize,
    evicted: Counter,
    /// Service names shared by every entry of the service, by index in the policy whose
    /// version `names_of` is: one allocation per service rather than per CONNECT.
    names: Vec<Option<Arc<str>>>,
    names_of: String,
}

impl RecentConnects {
    pub fn new(capacity: usize, evicted: Counter) -> Self {
        RecentConnects {
            map: Default::default(),
            order: VecDeque::new(),
            seq: 0,
            capacity: capacity.max(1),
            evicted,
            names: Vec::new(),
            names_of: String::new(),
        }
    }

    /// Remembers `event` if it is a CONNECT with a request id (the gateway's HTTP check of a
    /// tunnel); other decisions have no totals to join later.
    pub fn remember(&mut self, event: &CheckEvent, ids: &SpanIds) {
        let facts = &event.facts;
        if !facts.is_http || facts.get(Fact::Method) != Some("CONNECT") {
            return;
        }
        let Some(request_id) = facts.get(Fact::RequestId) else { return };
        let service = event.verdict.service.map(|s| self.service_name(&event.policy, s.get()));
        self.insert(
            request_id,
            ConnectIds { trace_id: ids.trace_id, span_id: ids.span_id, sampled: ids.sampled, service },
        );
    }

    /// The shared name of service `index` of `policy`. Policies of one version have the same
    /// services in the same order; a new version starts the names over.
    fn service_name(&mut self, policy: &crate::policy::CompiledPolicy, index: usize) -> Arc<str> {
        if self.names_of != policy.version {
            self.names.clear();
            self.names_of.clone_from(&policy.version);
        }
        if self.names.len() <= index {
            self.names.resize(index + 1, None);
        }
        self.names[index].get_or_insert_with(|| Arc::from(policy.services[index].name.as_str())).clone()
    }

    pub fn insert(&mut self, request_id: &str, ids: ConnectIds) {
        let key = xxh3_64(request_id.as_bytes());
        self.seq += 1;
        self.map.insert(key, Slot { seq: self.seq, ids });
        self.order.push_back((key, self.seq));
        while self.map.len() > self.capacity {
            let Some((key, seq)) = self.order.pop_front() else { break };
            if self.map.get(&key).is_some_and(|s| s.seq == seq) {
                self.map.remove(&key);
                self.evicted.inc();
            }
        }
        if self.order.len() > 2 * self.capacity {
            let map = &self.map;
            self.order.retain(|(key, seq)| map.get(key).is_some_and(|s| s.seq == *seq));
        }
    }

    /// The ids of a stream that ended: forgotten after this.
    pub fn take(&mut self, request_id: &str) -> Option<ConnectIds> {
        self.map.remove(&xxh3_64(request_id.as_bytes())).map(|s| s.ids)
    }

    /// The ids of a stream still open (a progress report).
    pub fn get(&self, request_id: &str) -> Option<&ConnectIds> {
        self.map.get(&xxh3_64(request_id.as_bytes())).map(|s| &s.ids)
    }

    #[cfg(test)]
    fn queued(&self) -> usize {
        self.order.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: u64) -> ConnectIds {
        ConnectIds {
            trace_id: TraceId::from(u128::from(n)),
            span_id: SpanId::from(n),
            sampled: true,
            service: Some("pay".into()),
        }
    }

    #[test]
    fn a_taken_entry_is_gone_and_a_progress_look_keeps_it() {
        let mut r = RecentConnects::new(4, Counter::default());
        r.insert("a", ids(1));
        assert_eq!(r.get("a"), Some(&ids(1)));
        assert_eq!(r.take("a"), Some(ids(1)));
        assert_eq!(r.take("a"), None);
        assert_eq!(r.get("b"), None);
    }

    #[test]
    fn past_capacity_the_oldest_open_entry_is_evicted_and_counted() {
        let evicted = Counter::default();
        let mut r = RecentConnects::new(3, evicted.clone());
        for (i, id) in ["a", "b", "c", "d"].into_iter().enumerate() {
            r.insert(id, ids(i as u64));
        }
        assert_eq!((r.get("a"), evicted.get()), (None, 1));
        assert!(r.take("d").is_some());
        // Taken entries free their room: no eviction for them, however many come and go.
        for i in 0..100 {
            let id = format!("t{i}");
            r.insert(&id, ids(i));
            assert!(r.take(&id).is_some());
        }
        assert_eq!(evicted.get(), 1);
        assert!(r.get("b").is_some() && r.get("c").is_some(), "long-open tunnels stay while others close");
        assert!(r.queued() <= 2 * 3 + 1, "the order queue is compacted: {}", r.queued());
    }

    #[test]
    fn a_repeated_request_id_keeps_the_latest_decision() {
        let evicted = Counter::default();
        let mut r = RecentConnects::new(2, evicted.clone());
        r.insert("a", ids(1));
        r.insert("a", ids(2));
        r.insert("b", ids(3));
        assert_eq!(r.get("a"), Some(&ids(2)));
        assert_eq!(evicted.get(), 0, "the replaced entry was not an eviction");
    }
}
