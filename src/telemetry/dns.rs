//! DNS queries as telemetry: the `DnsEvent` every query produces (an audit record, a metric, a
//! span when spans are on; the event is also what a detector of tunnel-like names reads), and its
//! fields (`visit`), which the audit line and the span (`wire::SpanWriter::append_dns`) share.
//!
//! The line shares the Check records' keys where they mean the same (`egress.decision`,
//! `egress.reason`, `egress.service`, `egress.rule.id`, `egress.policy.version`) and marks itself
//! `egress.check: "dns"`. It names no `server.address`, so readers of flows (`learn`, `discover`)
//! count it as unattributed, never as a connection.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use serde::ser::{SerializeMap, Serializer};

use super::record::Value;
use crate::policy::Outcome;

/// One DNS query, decided and answered (or dropped by the rate limit).
#[derive(Debug, Clone)]
pub struct DnsEvent {
    pub time: SystemTime,
    /// From the packet's arrival to its answer being ready.
    pub duration: Duration,
    pub client: SocketAddr,
    /// `udp` or `tcp`.
    pub transport: &'static str,
    /// Lowercase, without the trailing dot (`` for the root).
    pub qname: String,
    /// `A`, `AAAA`, `TXT`, ... (the number for types without a name).
    pub qtype: String,
    /// `NOERROR`, `NXDOMAIN`, `REFUSED`, `SERVFAIL`, ...
    pub rcode: &'static str,
    pub service: Option<String>,
    pub rule: Option<String>,
    pub decision: Outcome,
    /// `allowed`, `mesh-deny`, `no-matching-allow`, `rate-limited`, ...
    pub reason: &'static str,
    pub policy_version: String,
    /// Bytes of the answer sent (after truncation).
    pub answer_bytes: usize,
    /// Records in the answer section.
    pub answers: u16,
    /// Answered from the cache (no upstream query).
    pub cached: bool,
    /// The UDP answer was cut (TC bit) for the client to retry over TCP.
    pub truncated: bool,
}

/// The reason of a query refused by the per-client rate limit.
pub const RATE_LIMITED: &str = "rate-limited";

/// Labels of `egressd_dns_queries_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DnsQueryLabels {
    pub decision: &'static str,
    pub qtype: &'static str,
}

/// Query types with a label value of their own; others count as `other` (bounded cardinality).
const QTYPE_LABELS: [&str; 16] = [
    "A", "AAAA", "CNAME", "MX", "TXT", "SRV", "PTR", "SOA", "NS", "HTTPS", "SVCB", "ANY", "CAA", "DS", "DNSKEY", "NULL",
];

impl DnsEvent {
    pub fn labels(&self) -> DnsQueryLabels {
        let qtype = QTYPE_LABELS.iter().find(|t| **t == self.qtype).copied().unwrap_or("other");
        DnsQueryLabels { decision: self.decision.as_str(), qtype }
    }
}

impl super::Telemetry {
    /// Counts one DNS query and queues it (for the audit log, its span and the tunnel-like-name
    /// detector) without waiting (a full queue drops it, counted).
    pub fn submit_dns(&self, event: DnsEvent) {
        self.metrics.dns_queries.get_or_create(&event.labels()).inc();
        if event.reason == RATE_LIMITED {
            self.metrics.dns_rate_limited.inc();
        }
        let Some(queue) = &self.queue else { return };
        if (self.audit_on || self.spans_on || self.detect_on)
            && queue.try_send(super::Msg::Dns(Box::new(event))).is_err()
        {
            self.count_queue_full();
        }
    }
}

/// Counts an audit write of a DNS record as the Check records' are counted.
pub(super) fn count_written(metrics: &super::metrics::Metrics, written: std::io::Result<()>) {
    match written {
        Ok(()) => {
            metrics.audit_written.inc();
        }
        Err(e) => {
            metrics.audit_dropped.get_or_create(&super::metrics::DROP_WRITE_FAILED).inc();
            tracing::debug!(error = %e, "DNS audit record could not be written");
        }
    }
}

impl DnsEvent {
    /// Every field but the times, in a stable order, under its audit key and span attribute name
    /// (the audit line and the span list the same fields). The service and rule are skipped when
    /// absent.
    pub fn visit(&self, f: &mut dyn FnMut(&'static str, Value<'_>)) {
        let int = |n: usize| Value::Int(i64::try_from(n).unwrap_or(i64::MAX));
        f("egress.check", Value::Str("dns"));
        f("dns.question.name", Value::Str(&self.qname));
        f("dns.question.type", Value::Str(&self.qtype));
        f("dns.response_code", Value::Str(self.rcode));
        f("dns.answers", int(self.answers.into()));
        f("dns.answer_bytes", int(self.answer_bytes));
        f("dns.cached", Value::Bool(self.cached));
        f("dns.truncated", Value::Bool(self.truncated));
        f("network.transport", Value::Str(self.transport));
        f("client.address", Value::Str(&self.client.ip().to_string()));
        f("client.port", int(self.client.port().into()));
        if let Some(service) = &self.service {
            f("egress.service", Value::Str(service));
        }
        if let Some(rule) = &self.rule {
            f("egress.rule.id", Value::Str(rule));
        }
        f("egress.decision", Value::Str(self.decision.as_str()));
        f("egress.reason", Value::Str(self.reason));
        f("egress.policy.version", Value::Str(&self.policy_version));
    }
}

/// One audit line (without the newline) for a DNS query.
/// With the ids of the query's span (`trace_id`, `span_id`, `sampled`), as a Check record has.
pub fn encode(out: &mut Vec<u8>, e: &DnsEvent, ids: &super::spans::SpanIds) -> std::io::Result<()> {
    let mut ser = serde_json::Serializer::new(out);
    let mut map = ser.serialize_map(None)?;
    let time = jiff::Timestamp::try_from(e.time).map(|t| t.to_string()).unwrap_or_default();
    map.serialize_entry("time", &time)?;
    map.serialize_entry("trace_id", &ids.trace_id.to_string())?;
    map.serialize_entry("span_id", &ids.span_id.to_string())?;
    map.serialize_entry("sampled", &ids.sampled)?;
    map.serialize_entry("duration_us", &(e.duration.as_nanos() as f64 / 1e3))?;
    super::audit::serialize_fields(&mut map, |f| e.visit(f))?;
    map.end()?;
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A denied TXT query of ci-runners (tests of the line and of the span share it).
    pub(crate) fn denied_query() -> DnsEvent {
        DnsEvent {
            time: SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000),
            duration: Duration::from_micros(12),
            client: "127.0.0.5:5353".parse().unwrap(),
            transport: "udp",
            qname: "exfil.example.com".into(),
            qtype: "TXT".into(),
            rcode: "NXDOMAIN",
            service: Some("ci-runners".into()),
            rule: None,
            decision: Outcome::Deny,
            reason: "no-matching-allow",
            policy_version: "v1".into(),
            answer_bytes: 40,
            answers: 0,
            cached: false,
            truncated: false,
        }
    }

    #[test]
    fn the_audit_line_names_the_query_and_the_decision() {
        let event = denied_query();
        let mut line = Vec::new();
        let ids = crate::telemetry::spans::DecisionSampler::new(opentelemetry_sdk::trace::Sampler::AlwaysOn, false)
            .sample(None, event.decision);
        encode(&mut line, &event, &ids).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "2027-01-15T08:00:00Z");
        assert_eq!(v["trace_id"], ids.trace_id.to_string(), "the line names its span");
        assert_eq!(v["span_id"], ids.span_id.to_string());
        assert_eq!(v["sampled"], true);
        assert_eq!(v["egress.check"], "dns");
        assert_eq!(v["dns.question.name"], "exfil.example.com");
        assert_eq!(v["dns.question.type"], "TXT");
        assert_eq!(v["dns.response_code"], "NXDOMAIN");
        assert_eq!(v["client.address"], "127.0.0.5");
        assert_eq!(v["egress.service"], "ci-runners");
        assert_eq!(v["egress.decision"], "deny");
        assert_eq!(v["egress.policy.version"], "v1");
        assert!(v.get("server.address").is_none(), "not a connection: flow readers skip it");
        assert_eq!(event.labels(), DnsQueryLabels { decision: "deny", qtype: "TXT" });
    }
}
