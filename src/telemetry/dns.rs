//! DNS queries as telemetry: the `DnsEvent` every query produces (an audit record, a metric; the
//! event is also what a detector of tunnel-like names reads), and its audit-log line.
//!
//! The line shares the Check records' keys where they mean the same (`egress.decision`,
//! `egress.reason`, `egress.service`, `egress.rule.id`, `egress.policy_version`) and marks itself
//! `egress.check: "dns"`. It names no `server.address`, so readers of flows (`learn`, `discover`)
//! count it as unattributed, never as a connection.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use prometheus_client::encoding::EncodeLabelSet;
use serde::ser::{SerializeMap, Serializer};

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
    /// Counts one DNS query and queues it (for the audit log and the tunnel-like-name detector)
    /// without waiting (a full queue drops it, counted).
    pub fn submit_dns(&self, event: DnsEvent) {
        self.metrics.dns_queries.get_or_create(&event.labels()).inc();
        let Some(queue) = &self.queue else { return };
        if (self.audit_on || self.detect_on) && queue.try_send(super::Msg::Dns(Box::new(event))).is_err() {
            self.metrics.audit_dropped.get_or_create(&super::metrics::DROP_QUEUE_FULL).inc();
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

/// One audit line (without the newline) for a DNS query.
pub fn encode(out: &mut Vec<u8>, e: &DnsEvent) -> std::io::Result<()> {
    let mut ser = serde_json::Serializer::new(out);
    let mut map = ser.serialize_map(None)?;
    let time = jiff::Timestamp::try_from(e.time).map(|t| t.to_string()).unwrap_or_default();
    map.serialize_entry("time", &time)?;
    map.serialize_entry("duration_us", &(e.duration.as_nanos() as f64 / 1e3))?;
    map.serialize_entry("egress.check", "dns")?;
    map.serialize_entry("dns.question.name", &e.qname)?;
    map.serialize_entry("dns.question.type", &e.qtype)?;
    map.serialize_entry("dns.response_code", e.rcode)?;
    map.serialize_entry("dns.answers", &e.answers)?;
    map.serialize_entry("dns.answer_bytes", &e.answer_bytes)?;
    map.serialize_entry("dns.cached", &e.cached)?;
    map.serialize_entry("dns.truncated", &e.truncated)?;
    map.serialize_entry("network.transport", e.transport)?;
    map.serialize_entry("client.address", &e.client.ip().to_string())?;
    map.serialize_entry("client.port", &e.client.port())?;
    if let Some(service) = &e.service {
        map.serialize_entry("egress.service", service)?;
    }
    if let Some(rule) = &e.rule {
        map.serialize_entry("egress.rule.id", rule)?;
    }
    map.serialize_entry("egress.decision", e.decision.as_str())?;
    map.serialize_entry("egress.reason", e.reason)?;
    map.serialize_entry("egress.policy_version", &e.policy_version)?;
    map.end()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_audit_line_names_the_query_and_the_decision() {
        let event = DnsEvent {
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
        };
        let mut line = Vec::new();
        encode(&mut line, &event).unwrap();
        let v: serde_json::Value = serde_json::from_slice(&line).unwrap();
        assert_eq!(v["time"], "2027-01-15T08:00:00Z");
        assert_eq!(v["egress.check"], "dns");
        assert_eq!(v["dns.question.name"], "exfil.example.com");
        assert_eq!(v["dns.question.type"], "TXT");
        assert_eq!(v["dns.response_code"], "NXDOMAIN");
        assert_eq!(v["client.address"], "127.0.0.5");
        assert_eq!(v["egress.service"], "ci-runners");
        assert_eq!(v["egress.decision"], "deny");
        assert_eq!(v["egress.policy_version"], "v1");
        assert!(v.get("server.address").is_none(), "not a connection: flow readers skip it");
        assert_eq!(event.labels(), DnsQueryLabels { decision: "deny", qtype: "TXT" });
    }
}
