//! The detectors on the telemetry thread: each decision becomes an observation (`detect`), and
//! each signal goes to the audit log (`"egress.signal"` records), OTLP (a span in the raising
//! decision's trace), `/metrics` and `GET /signals` (the most recent, bounded).
//!
//! Nothing here runs on the Check path: a decision reaches the detectors through the telemetry
//! queue, whose bound already protects Checks (a full queue drops and counts).

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, UNIX_EPOCH};

use super::record::{CheckEvent, Fact};
use crate::detect::{Admission, Detector, Event, Observation, Signal, history};

/// How often a changed first-seen history is written to the state file.
const SAVE_INTERVAL: Duration = Duration::from_secs(60);

/// The most recent signals, for `GET /signals`.
#[derive(Debug)]
pub struct RecentSignals {
    inner: Mutex<Recent>,
}

#[derive(Debug, Default)]
struct Recent {
    signals: VecDeque<Signal>,
    capacity: usize,
    total: u64,
    stats: crate::detect::DetectorStats,
    identities: usize,
}

/// What `GET /signals` shows.
#[derive(Debug, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalsView {
    /// Signals raised since start (the list keeps the most recent `capacity`).
    pub total: u64,
    pub capacity: usize,
    pub identities_tracked: usize,
    pub detector: crate::detect::DetectorStats,
    pub signals: Vec<serde_json::Value>,
}

pub type SharedSignals = Arc<RecentSignals>;

impl Default for RecentSignals {
    fn default() -> Self {
        RecentSignals::new(1000)
    }
}

impl RecentSignals {
    pub fn new(capacity: usize) -> Self {
        RecentSignals { inner: Mutex::new(Recent { capacity: capacity.max(1), ..Default::default() }) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Recent> {
        // A panic while holding this lock cannot leave the list inconsistent: take it anyway.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn push(&self, signal: &Signal, capacity: usize) {
        let mut r = self.lock();
        r.capacity = capacity.max(1);
        r.total += 1;
        r.signals.push_back(signal.clone());
        while r.signals.len() > r.capacity {
            r.signals.pop_front();
        }
    }

    fn set_stats(&self, stats: crate::detect::DetectorStats, identities: usize) {
        let mut r = self.lock();
        r.stats = stats;
        r.identities = identities;
    }

    /// Newest first, filtered, at most `limit`.
    pub fn view(&self, kind: Option<crate::detect::SignalKind>, service: Option<&str>, limit: usize) -> SignalsView {
        let r = self.lock();
        let signals = r
            .signals
            .iter()
            .rev()
            .filter(|s| kind.is_none_or(|k| s.kind == k) && service.is_none_or(|svc| s.service.as_deref() == Some(svc)))
            .take(limit)
            .map(Signal::to_json)
            .collect();
        SignalsView {
            total: r.total,
            capacity: r.capacity,
            identities_tracked: r.identities,
            detector: r.stats,
            signals,
        }
    }
}

/// Where detection keeps its state.
#[derive(Debug, Clone, Default)]
pub struct DetectSetup {
    /// The first-seen history, loaded at start and saved every minute when changed (and at exit).
    pub state_path: Option<PathBuf>,
    pub signals: SharedSignals,
    /// The live policy, for its thresholds when the detectors read the flow table's timelines
    /// (no decision, hence no policy, comes with them). Without it, decisions are queued.
    pub policy: Option<crate::policy::SharedPolicy>,
}

/// The detector as the telemetry worker runs it.
pub(super) struct DetectSink {
    detector: Detector,
    setup: DetectSetup,
    policy_version: String,
    last_save: Instant,
    evictions_reported: u64,
    /// Bytes of open tunnels already counted from their progress reports, by request id.
    tunnel_bytes: hashlink::LruCache<Box<str>, u64>,
    pub(super) raised: Vec<Signal>,
}

impl DetectSink {
    pub(super) fn new(setup: DetectSetup) -> Self {
        let mut detector = Detector::new(Default::default());
        if let Some(path) = &setup.state_path {
            match history::load(path) {
                Ok(Some(h)) => {
                    tracing::info!(path = %path.display(), subjects = h.subjects.len(), "detection state loaded");
                    detector.restore_history(h);
                }
                Ok(None) => {}
                // A bad state file costs the history, not the server: start learning again.
                Err(e) => tracing::error!(error = %e, "detection state not loaded; first-seen starts learning again"),
            }
        }
        DetectSink {
            detector,
            setup,
            policy_version: String::new(),
            last_save: Instant::now(),
            evictions_reported: 0,
            tunnel_bytes: hashlink::LruCache::new(65_536),
            raised: Vec::new(),
        }
    }

    /// Feeds one decision; the signals it raised are left in `raised`.
    pub(super) fn observe(&mut self, event: &CheckEvent, metrics: &super::metrics::Metrics) {
        self.raised.clear();
        let policy = &event.policy;
        if policy.version != self.policy_version {
            self.detector.set_config(policy.detection.clone());
            self.policy_version.clone_from(&policy.version);
        }
        // A tunnel's check repeats its CONNECT's destination: the CONNECT is the observation.
        if event.facts.tunnel_start.is_some() {
            return;
        }
        let facts = &event.facts;
        let Some(host) = facts.get(Fact::Host) else { return };
        let verdict = &event.verdict;
        let observation = Observation {
            time_ms: event.start.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            service: verdict.service.map(|s| policy.services[s.get()].name.as_str()),
            spiffe_id: facts.get(Fact::Principal),
            source: None,
            host,
            port: facts.port.unwrap_or(0),
            event: Event::Request { admission: Admission::of(verdict, policy), body_bytes: facts.body_size },
        };
        self.detector.observe(&observation, &mut self.raised);
        self.after_observe(metrics, policy.detection.recent_signals);
    }

    /// Whether this sink reads the flow table's timelines (it knows the live policy).
    pub(super) fn reads_timelines(&self) -> bool {
        self.setup.policy.is_some()
    }

    /// Takes the live policy's thresholds, if it changed (before reading timelines).
    pub(super) fn refresh_config(&mut self) {
        let Some(shared) = &self.setup.policy else { return };
        let policy = shared.load();
        if policy.version != self.policy_version {
            self.detector.set_config(policy.detection.clone());
            self.policy_version.clone_from(&policy.version);
        }
    }

    /// Feeds one flow's requests as the Check path noted them between two drains: an
    /// observation per second, standing for that second's requests and bodies.
    pub(super) fn observe_timeline(
        &mut self,
        obs: &crate::flows::Observation<'_>,
        timeline: &crate::flows::pending::Timeline,
        metrics: &super::metrics::Metrics,
    ) {
        self.raised.clear();
        let service = match obs.subject {
            crate::flows::SubjectRef::Service(s) => Some(s),
            crate::flows::SubjectRef::Unclaimed(_) => None,
        };
        let break_glass = obs.reason == crate::policy::Reason::BREAK_GLASS;
        let admission = Admission::from_parts(obs.decision, break_glass, || timeline.exact_host);
        for second in timeline.seconds() {
            let body_bytes = (second.body_bytes > 0).then_some(second.body_bytes);
            let observation = Observation {
                time_ms: second.unix.saturating_mul(1000),
                service,
                spiffe_id: obs.workload.or(match obs.subject {
                    crate::flows::SubjectRef::Unclaimed(id) => Some(id),
                    crate::flows::SubjectRef::Service(_) => None,
                }),
                source: None,
                host: obs.host,
                port: obs.port,
                event: Event::Request { admission, body_bytes },
            };
            self.detector.observe_requests(&observation, second.hits, &mut self.raised);
        }
        let capacity = self.detector.config().recent_signals;
        self.after_observe(metrics, capacity);
    }

    /// Feeds a CONNECT tunnel's bytes from the gateway's access log: the bytes sent since its last
    /// report (progress reports carry running totals). Plain requests' bodies are counted from
    /// their `content-length` at Check time instead, never twice.
    pub(super) fn observe_totals(
        &mut self,
        t: &super::totals::StreamTotals,
        service: Option<&str>,
        metrics: &super::metrics::Metrics,
    ) {
        self.raised.clear();
        let (Some(host), true) = (t.host.as_deref(), t.is_connect()) else { return };
        let key = t.request_id.as_deref().unwrap_or_default();
        let counted = match t.phase {
            super::totals::StreamPhase::End => self.tunnel_bytes.remove(key),
            super::totals::StreamPhase::Progress => self.tunnel_bytes.get(key).copied(),
        }
        .unwrap_or(0);
        let delta = t.bytes_sent.saturating_sub(counted);
        if t.phase == super::totals::StreamPhase::Progress && !key.is_empty() {
            self.tunnel_bytes.insert(key.into(), t.bytes_sent);
        }
        let end = t.start + t.duration.unwrap_or_default();
        let observation = Observation {
            time_ms: end.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            service,
            spiffe_id: t.spiffe_id.as_deref(),
            source: None,
            host,
            port: t.port.unwrap_or(0),
            event: Event::StreamTotals { bytes_sent: delta },
        };
        self.detector.observe(&observation, &mut self.raised);
        let capacity = self.detector.config().recent_signals;
        self.after_observe(metrics, capacity);
    }

    /// Feeds a DNS firewall query: where tunnels really live. The querier is its mapped service,
    /// else its address.
    pub(super) fn observe_dns(&mut self, e: &super::dns::DnsEvent, metrics: &super::metrics::Metrics) {
        self.raised.clear();
        let source = e.client.ip().to_string();
        let admission = match e.decision {
            crate::policy::Outcome::Allow => Admission::Pattern,
            crate::policy::Outcome::WouldDeny => Admission::WouldDeny,
            crate::policy::Outcome::Deny => Admission::Denied,
        };
        let observation = Observation {
            time_ms: e.time.duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
            service: e.service.as_deref(),
            spiffe_id: None,
            source: Some(&source),
            host: &e.qname,
            port: 53,
            event: Event::DnsQuery {
                admission,
                facts: crate::detect::DnsFacts {
                    txt_null: crate::detect::is_txt_null(&e.qtype),
                    answer_bytes: e.answer_bytes as u64,
                },
            },
        };
        self.detector.observe(&observation, &mut self.raised);
        let capacity = self.detector.config().recent_signals;
        self.after_observe(metrics, capacity);
    }

    fn after_observe(&mut self, metrics: &super::metrics::Metrics, capacity: usize) {
        let stats = self.detector.stats();
        let evictions = stats.evicted_identities + stats.evicted_destinations;
        metrics.detector_evictions.inc_by(evictions - self.evictions_reported);
        self.evictions_reported = evictions;
        for s in &self.raised {
            let labels =
                super::metrics::SignalLabels { kind: s.kind.as_str(), service: s.service.clone().unwrap_or_default() };
            metrics.signals.get_or_create(&labels).inc();
            self.setup.signals.push(s, capacity);
        }
        if !self.raised.is_empty() {
            self.setup.signals.set_stats(stats, self.detector.identities());
        }
    }

    /// Saves the history when it changed and a save interval passed (or `now`).
    pub(super) fn save(&mut self, force: bool) {
        self.setup.signals.set_stats(self.detector.stats(), self.detector.identities());
        let Some(path) = &self.setup.state_path else { return };
        if !self.detector.history_dirty() || (!force && self.last_save.elapsed() < SAVE_INTERVAL) {
            return;
        }
        self.last_save = Instant::now();
        match history::save(path, &self.detector.history()) {
            Ok(()) => self.detector.mark_saved(),
            Err(e) => tracing::error!(error = %e, "detection state not saved"),
        }
    }
}

/// Where a signal's span goes: the trace of what raised it (a decision, a tunnel's CONNECT), as a
/// child of that span.
#[derive(Debug, Clone, Copy)]
pub struct SignalIds {
    pub trace_id: opentelemetry::trace::TraceId,
    pub parent_span_id: opentelemetry::trace::SpanId,
    pub span_id: opentelemetry::trace::SpanId,
}

impl SignalIds {
    pub(super) fn child_of(
        trace_id: opentelemetry::trace::TraceId,
        parent_span_id: opentelemetry::trace::SpanId,
    ) -> Self {
        use opentelemetry_sdk::trace::IdGenerator;
        let span_id = opentelemetry_sdk::trace::RandomIdGenerator::default().new_span_id();
        SignalIds { trace_id, parent_span_id, span_id }
    }
}

/// A signal as an audit record: `time` (its last observation), the ids of the decision that
/// raised it (and of its own span), and the signal under `egress.signal`.
pub(super) fn audit_record(signal: &Signal, ids: Option<&SignalIds>) -> serde_json::Value {
    let mut record = serde_json::Map::new();
    record.insert("time".into(), crate::detect::signal::format_time(signal.last).into());
    if let Some(ids) = ids {
        record.insert("trace_id".into(), ids.trace_id.to_string().into());
        record.insert("span_id".into(), ids.span_id.to_string().into());
        record.insert("parent_span_id".into(), ids.parent_span_id.to_string().into());
    }
    record.insert("egress.signal".into(), signal.to_json());
    serde_json::Value::Object(record)
}
