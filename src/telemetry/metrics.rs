//! Metrics, exposed as Prometheus/OpenMetrics text on the admin port's `/metrics`.
//!
//! The Check path only touches atomics: decision counters are resolved per policy version into
//! plain handles (`DecisionCounters`), so counting a decision is one `fetch_add`, and the latency
//! histogram is a fixed array of atomic buckets (prometheus-client's own histogram takes a mutex).
//! Counters that other parts already keep (reloads, xDS pushes and NACKs) are read at scrape time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::{MetricType, TypedMetric};
use prometheus_client::registry::Registry;

use crate::policy::{CompiledPolicy, Outcome, Verdict};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub service: String,
    pub decision: &'static str,
    pub mode: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ServiceLabel {
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabels {
    pub kind: &'static str,
    pub service: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: &'static str,
}

/// Every metric egressd keeps itself. Cloning shares the underlying values.
#[derive(Clone, Debug, Default)]
pub struct Metrics {
    pub decisions: Family<DecisionLabels, Counter>,
    pub check_duration: LatencyHistogram,
    pub spans_exported: Counter,
    pub spans_dropped: Family<ReasonLabel, Counter>,
    pub audit_written: Counter,
    pub audit_dropped: Family<ReasonLabel, Counter>,
    pub rollback_guard_trips: Counter,
    pub break_glass_decisions: Family<ServiceLabel, Counter>,
    /// Detector signals by kind and service.
    pub signals: Family<SignalLabels, Counter>,
    /// Identities and destinations the detectors dropped to stay within their limits.
    pub detector_evictions: Counter,
    /// The gateway's access log (ALS): entries that became stream totals, entries skipped by
    /// reason, and CONNECT decisions forgotten before their tunnel's totals arrived.
    pub stream_totals: Counter,
    pub access_log_skipped: Family<ReasonLabel, Counter>,
    pub stream_ids_evicted: Counter,
    pub dns_queries: Family<super::dns::DnsQueryLabels, Counter>,
    pub dns_dropped: Counter,
    /// DNS queries refused by the per-client rate limit (also in `dns_queries` as denies).
    pub dns_rate_limited: Counter,
    /// Admin API calls refused for their credentials, by reason (`admin::auth`).
    pub admin_auth_failures: Family<ReasonLabel, Counter>,
}

/// Reasons a span or an audit record is lost (label values of the `*_dropped_total` metrics).
pub const DROP_QUEUE_FULL: ReasonLabel = ReasonLabel { reason: "queue-full" };
pub const DROP_EXPORT_FAILED: ReasonLabel = ReasonLabel { reason: "export-failed" };
pub const DROP_WRITE_FAILED: ReasonLabel = ReasonLabel { reason: "write-failed" };

const OUTCOMES: [Outcome; 3] = [Outcome::Allow, Outcome::Deny, Outcome::WouldDeny];

fn outcome_slot(o: Outcome) -> usize {
    match o {
        Outcome::Allow => 0,
        Outcome::Deny => 1,
        Outcome::WouldDeny => 2,
    }
}

/// Counter handles for one policy version: per service (by index) and for unidentified callers.
pub struct DecisionCounters {
    by_service: Vec<([Counter; 3], Counter)>,
    unidentified: [Counter; 3],
}

impl DecisionCounters {
    /// Counts one decision: an array index and one atomic add (two for a break-glass allow).
    pub fn count(&self, verdict: &Verdict) {
        let row = match verdict.service {
            Some(i) => {
                let (outcomes, break_glass) = &self.by_service[i.get()];
                if matches!(verdict.reason, crate::policy::Reason::BreakGlass(_)) {
                    break_glass.inc();
                }
                outcomes
            }
            None => &self.unidentified,
        };
        row[outcome_slot(verdict.outcome)].inc();
    }
}

impl Metrics {
    /// Resolves the counters of every service of `policy` (creating label sets on first sight; a
    /// reload keeps the counts of services that stay).
    pub fn decision_counters(&self, policy: &CompiledPolicy) -> DecisionCounters {
        let row = |service: &str, mode: &'static str| {
            OUTCOMES.map(|o| {
                let labels = DecisionLabels { service: service.to_string(), decision: o.as_str(), mode };
                self.decisions.get_or_create(&labels).clone()
            })
        };
        let break_glass = |service: &str| {
            self.break_glass_decisions.get_or_create(&ServiceLabel { service: service.to_string() }).clone()
        };
        DecisionCounters {
            by_service: policy.services.iter().map(|s| (row(&s.name, s.mode.as_str()), break_glass(&s.name))).collect(),
            unidentified: row("", "none"),
        }
    }

    /// A scrape registry with these metrics and `extra` collectors (xDS and reload state).
    pub fn registry(&self, extra: Vec<Box<dyn prometheus_client::collector::Collector>>) -> Registry {
        let mut r = Registry::default();
        r.register("egressd_decisions", "Check decisions by service, decision and mode", self.decisions.clone());
        r.register(
            "egressd_check_duration_seconds",
            "Time from a decoded CheckRequest to its encoded answer",
            self.check_duration.clone(),
        );
        r.register(
            "egressd_spans_exported",
            "Decision spans accepted by the OTLP collector",
            self.spans_exported.clone(),
        );
        r.register(
            "egressd_spans_dropped",
            "Decision spans lost: queue-full (a check's record found the telemetry queue full, counted whether or not it would have been sampled) or export-failed",
            self.spans_dropped.clone(),
        );
        r.register(
            "egressd_audit_records_written",
            "Decision records written to the audit log",
            self.audit_written.clone(),
        );
        r.register(
            "egressd_audit_records_dropped",
            "Decision records that never reached the audit log: queue-full or write-failed",
            self.audit_dropped.clone(),
        );
        r.register(
            "egressd_break_glass_decisions",
            "Requests let through by a break-glass grant, by service",
            self.break_glass_decisions.clone(),
        );
        r.register(
            "egressd_rollback_guard_trips",
            "Canary services put back in dry-run by their rollback guard",
            self.rollback_guard_trips.clone(),
        );
        r.register(
            "egressd_signals",
            "Exfiltration and C2 signals raised by the detectors, by kind and service",
            self.signals.clone(),
        );
        r.register(
            "egressd_detector_evictions",
            "Identities and destinations the detectors dropped (least recently seen) to stay within their limits",
            self.detector_evictions.clone(),
        );
        r.register(
            "egressd_stream_totals",
            "Gateway access log entries (ALS) that became stream totals: a closed request or tunnel, or a long one's progress",
            self.stream_totals.clone(),
        );
        r.register(
            "egressd_access_log_entries_skipped",
            "Gateway access log entries not turned into totals: malformed, not-final, tcp, over-limit, undecodable",
            self.access_log_skipped.clone(),
        );
        r.register(
            "egressd_stream_ids_evicted",
            "CONNECT decisions forgotten (bounded map) before their tunnel's totals arrived: those totals name no trace",
            self.stream_ids_evicted.clone(),
        );
        r.register(
            "egressd_dns_queries",
            "DNS firewall queries by decision (allow, deny, would-deny) and query type",
            self.dns_queries.clone(),
        );
        r.register(
            "egressd_dns_packets_dropped",
            "DNS packets dropped unanswered: malformed, not a query, or over the in-flight limit",
            self.dns_dropped.clone(),
        );
        r.register(
            "egressd_dns_rate_limited",
            "DNS queries answered REFUSED because their client address was over its rate limit",
            self.dns_rate_limited.clone(),
        );
        r.register(
            "egressd_admin_auth_failures",
            "Admin API calls refused for their credentials, by reason (missing-credentials, unknown-token, unknown-identity, disabled)",
            self.admin_auth_failures.clone(),
        );
        for c in extra {
            r.register_collector(c);
        }
        r
    }
}

/// Upper bounds of the latency buckets, in nanoseconds (1 us .. 1 s).
const BOUNDS_NS: [u64; 16] = [
    1_000,
    2_500,
    5_000,
    10_000,
    25_000,
    50_000,
    100_000,
    250_000,
    500_000,
    1_000_000,
    2_500_000,
    5_000_000,
    10_000_000,
    50_000_000,
    250_000_000,
    1_000_000_000,
];

/// A lock-free histogram with fixed buckets (one more for +Inf). Clones share the counts.
#[derive(Debug, Default, Clone)]
pub struct LatencyHistogram(Arc<HistogramCounts>);

#[derive(Debug, Default)]
struct HistogramCounts {
    buckets: [AtomicU64; BOUNDS_NS.len() + 1],
    sum_ns: AtomicU64,
}

impl LatencyHistogram {
    pub fn observe(&self, d: Duration) {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let slot = BOUNDS_NS.iter().position(|b| ns <= *b).unwrap_or(BOUNDS_NS.len());
        self.0.buckets[slot].fetch_add(1, Relaxed);
        self.0.sum_ns.fetch_add(ns, Relaxed);
    }
}

impl TypedMetric for LatencyHistogram {
    const TYPE: MetricType = MetricType::Histogram;
}

impl EncodeMetric for LatencyHistogram {
    fn encode(&self, mut encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        // Per-bucket counts: the encoder makes them cumulative.
        let mut count = 0;
        let mut buckets = Vec::with_capacity(BOUNDS_NS.len() + 1);
        for (i, b) in self.0.buckets.iter().enumerate() {
            let n = b.load(Relaxed);
            count += n;
            buckets.push((BOUNDS_NS.get(i).map(|ns| *ns as f64 / 1e9).unwrap_or(f64::INFINITY), n));
        }
        let sum = self.0.sum_ns.load(Relaxed) as f64 / 1e9;
        encoder.encode_histogram::<NoLabelSet>(sum, count, &buckets, None)
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

/// OpenMetrics text of `registry` (what `/metrics` serves).
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, registry).expect("writing to a String cannot fail");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_sum_in_seconds() {
        let h = LatencyHistogram::default();
        h.observe(Duration::from_nanos(800));
        h.observe(Duration::from_micros(30));
        h.observe(Duration::from_secs(5));
        let m = Metrics { check_duration: h, ..Default::default() };
        let text = render(&m.registry(vec![]));
        assert!(text.contains("egressd_check_duration_seconds_bucket{le=\"0.000001\"} 1"), "{text}");
        assert!(text.contains("egressd_check_duration_seconds_bucket{le=\"0.00005\"} 2"), "{text}");
        assert!(text.contains("egressd_check_duration_seconds_bucket{le=\"1.0\"} 2"), "{text}");
        assert!(text.contains("egressd_check_duration_seconds_bucket{le=\"+Inf\"} 3"), "{text}");
        assert!(text.contains("egressd_check_duration_seconds_count 3"), "{text}");
        assert!(text.contains("egressd_check_duration_seconds_sum 5.0000308"), "{text}");
    }
}
