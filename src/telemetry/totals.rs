//! Stream totals: what the gateway's access log (`accesslog`) reports of a request or CONNECT
//! tunnel (`StreamTotals`), and its audit record, written on the telemetry thread. A record is told from a decision by `egress.record` (`stream-totals`, or
//! `stream-progress` for a long stream's periodic report); decision records have no such key.
//! A CONNECT tunnel's record names the trace and span of the decision that let it open (see
//! `recent`); without a match (evicted, or decided before a restart) it names none.

use std::io;
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use serde::ser::{SerializeMap, Serializer};

use super::Worker;
use super::metrics::DROP_WRITE_FAILED;
use super::recent::ConnectIds;

/// Which of a stream's access log entries this is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPhase {
    /// The stream ended: the totals are final.
    End,
    /// The stream is still open (a periodic entry, see `xds::als`): totals so far, cumulative.
    Progress,
}

impl StreamPhase {
    /// The audit record's `egress.record` discriminator.
    pub fn record_kind(self) -> &'static str {
        match self {
            StreamPhase::End => "stream-totals",
            StreamPhase::Progress => "stream-progress",
        }
    }
}

/// egressd's decision as the gateway carried it in the stream's dynamic metadata (what the
/// ext_authz answer set; see `authz::response`). Absent for streams egressd never checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StreamDecision {
    pub decision: Option<String>,
    pub service: Option<String>,
    pub rule: Option<String>,
    pub reason: Option<String>,
}

/// One HTTP stream (a request, or a CONNECT tunnel) as the gateway reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamTotals {
    pub phase: StreamPhase,
    /// When the stream started (its first byte from the client).
    pub start: SystemTime,
    /// How long it lasted (so far, for `Progress`), when Envoy said.
    pub duration: Option<Duration>,
    /// `CONNECT`, `GET`, ...; `None` when Envoy did not know the method.
    pub method: Option<&'static str>,
    /// The request's authority: host (lowercase; IPv6 without brackets) and port when it had one.
    pub host: Option<String>,
    pub port: Option<u16>,
    /// The caller's SPIFFE ID: the URI SAN of its certificate on the gateway's mTLS.
    pub spiffe_id: Option<String>,
    pub client: Option<SocketAddr>,
    /// The gateway-generated `x-request-id`: the same value egressd's decision record carries.
    pub request_id: Option<String>,
    /// Body bytes from the client toward the destination. For a CONNECT, the tunnel's payload
    /// (everything the client sent through the tunnel, TLS records included).
    pub bytes_sent: u64,
    /// Body bytes from the destination back to the client (for a CONNECT, the tunnel's download).
    pub bytes_received: u64,
    /// The status the gateway answered (a CONNECT that opened a tunnel: 200).
    pub response_code: Option<u16>,
    pub decision: StreamDecision,
}

impl StreamTotals {
    pub fn is_connect(&self) -> bool {
        self.method == Some("CONNECT")
    }
}

/// The key that tells audit records apart; decision records do not carry it.
pub const RECORD_KEY: &str = "egress.record";

impl Worker {
    /// One stream's totals: joined to its CONNECT decision's ids, then written as an audit record.
    pub(super) fn totals(&mut self, t: &StreamTotals) {
        let ids = match (t.phase, t.request_id.as_deref()) {
            (_, None) => None,
            (StreamPhase::End, Some(id)) => self.recent.take(id),
            (StreamPhase::Progress, Some(id)) => self.recent.get(id).cloned(),
        };
        if let Some(d) = &mut self.detect {
            let service = t.decision.service.as_deref().or(ids.as_ref().and_then(|i| i.service.as_deref()));
            d.observe_totals(t, service, &self.metrics);
            self.record_signals(ids.as_ref().map(|i| (i.trace_id, i.span_id)));
        }
        // A plain request without a body is all in its decision record: no second record.
        if !t.is_connect() && t.bytes_sent == 0 {
            return;
        }
        let Some(audit) = &mut self.audit else { return };
        match audit.append_with(|line| encode(line, t, ids.as_ref())) {
            Ok(()) => {
                self.metrics.audit_written.inc();
            }
            Err(e) => {
                self.metrics.audit_dropped.get_or_create(&DROP_WRITE_FAILED).inc();
                if self.audit_failures_logged.is_multiple_of(1000) {
                    tracing::error!(error = %e, "stream totals record could not be written");
                }
                self.audit_failures_logged += 1;
            }
        }
    }
}

/// One totals record (without the newline) into `out`. Absent values are left out.
pub fn encode(out: &mut Vec<u8>, t: &StreamTotals, ids: Option<&ConnectIds>) -> io::Result<()> {
    let mut ser = serde_json::Serializer::new(out);
    let mut map = ser.serialize_map(None)?;
    let time = jiff::Timestamp::try_from(t.start).map(|t| t.to_string()).unwrap_or_default();
    map.serialize_entry("time", &time)?;
    map.serialize_entry(RECORD_KEY, t.phase.record_kind())?;
    if let Some(ids) = ids {
        map.serialize_entry("trace_id", &ids.trace_id.to_string())?;
        map.serialize_entry("span_id", &ids.span_id.to_string())?;
    }
    if let Some(d) = t.duration {
        map.serialize_entry("duration_us", &(d.as_nanos() as f64 / 1e3))?;
    }
    let service = t.decision.service.as_deref().or(ids.and_then(|i| i.service.as_deref()));
    let client = t.client.map(|c| c.ip().to_string());
    let strings = [
        ("egress.spiffe_id", t.spiffe_id.as_deref()),
        ("egress.service", service),
        ("client.address", client.as_deref()),
        ("server.address", t.host.as_deref()),
        ("http.request.method", t.method),
        ("egress.request_id", t.request_id.as_deref()),
        ("egress.stream.decision", t.decision.decision.as_deref()),
        ("egress.rule.id", t.decision.rule.as_deref()),
        ("egress.reason", t.decision.reason.as_deref()),
    ];
    for (key, value) in strings {
        if let Some(v) = value {
            map.serialize_entry(key, v)?;
        }
    }
    if let Some(c) = t.client {
        map.serialize_entry("client.port", &c.port())?;
    }
    if let Some(p) = t.port {
        map.serialize_entry("server.port", &p)?;
    }
    if let Some(code) = t.response_code {
        map.serialize_entry("http.response.status_code", &code)?;
    }
    map.serialize_entry("egress.bytes_sent", &t.bytes_sent)?;
    map.serialize_entry("egress.bytes_received", &t.bytes_received)?;
    map.end()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanId, TraceId};

    fn tunnel() -> StreamTotals {
        StreamTotals {
            phase: StreamPhase::End,
            start: SystemTime::UNIX_EPOCH + Duration::from_millis(1_800_000_000_250),
            duration: Some(Duration::from_micros(2_500_000)),
            method: Some("CONNECT"),
            host: Some("api.stripe.com".into()),
            port: Some(443),
            spiffe_id: Some("spiffe://corp.example/ns/payments/sa/api".into()),
            client: Some("10.1.2.3:40000".parse().unwrap()),
            request_id: Some("r-1".into()),
            bytes_sent: 3 << 20,
            bytes_received: 4096,
            response_code: Some(200),
            decision: StreamDecision { decision: Some("allow".into()), ..Default::default() },
        }
    }

    fn json(t: &StreamTotals, ids: Option<&ConnectIds>) -> serde_json::Value {
        let mut out = vec![];
        encode(&mut out, t, ids).unwrap();
        serde_json::from_slice(&out).unwrap()
    }

    #[test]
    fn a_tunnels_record_names_its_decisions_trace_and_the_bytes() {
        let ids = ConnectIds {
            trace_id: TraceId::from(7u128),
            span_id: SpanId::from(9u64),
            sampled: true,
            service: Some("pay".into()),
        };
        let v = json(&tunnel(), Some(&ids));
        assert_eq!(v["time"], "2027-01-15T08:00:00.25Z");
        assert_eq!(v["egress.record"], "stream-totals");
        assert_eq!(v["trace_id"], "00000000000000000000000000000007");
        assert_eq!(v["span_id"], "0000000000000009");
        assert_eq!(v["duration_us"], 2_500_000.0);
        assert_eq!(v["egress.service"], "pay", "from the decision when the metadata has none");
        assert_eq!(v["server.address"], "api.stripe.com");
        assert_eq!(v["server.port"], 443);
        assert_eq!(v["http.request.method"], "CONNECT");
        assert_eq!(v["egress.bytes_sent"], 3 << 20);
        assert_eq!(v["egress.bytes_received"], 4096);
        assert_eq!(v["egress.stream.decision"], "allow");
        assert!(v.get("egress.decision").is_none(), "not a decision record");
    }

    /// Through the telemetry thread: the CONNECT's decision, then its tunnel's progress and end.
    #[tokio::test]
    async fn the_worker_joins_a_tunnels_totals_to_its_connect_decision_once() {
        use crate::policy::{PolicySource, compile};
        use crate::telemetry::audit::{AuditConfig, FsyncPolicy};
        use crate::telemetry::record::CheckEvent;
        use crate::telemetry::{Telemetry, TelemetryConfig};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let audit = AuditConfig { path: path.clone(), max_bytes: 1 << 20, keep: 1, fsync: FsyncPolicy::Never };
        let (telemetry, tasks) =
            Telemetry::start(TelemetryConfig { audit: Some(audit), ..Default::default() }).unwrap();
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = std::sync::Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let pay = "spiffe://corp.example/ns/payments/sa/api";
        let req = crate::testing::http_check(pay, "CONNECT", "api.stripe.com:443", &[("x-request-id", "r-1")]);
        let (verdict, facts) = crate::testing::checked(&policy, &req, &Default::default());
        telemetry.submit(CheckEvent {
            facts,
            verdict,
            policy,
            start: crate::clock::wall_now(),
            duration: Duration::ZERO,
        });
        let metadata_less = StreamTotals { decision: StreamDecision::default(), ..tunnel() };
        telemetry.submit_totals(StreamTotals { phase: StreamPhase::Progress, ..metadata_less.clone() });
        telemetry.submit_totals(metadata_less.clone());
        telemetry.submit_totals(metadata_less);
        tasks.shutdown(Duration::from_secs(1)).await;
        let lines: Vec<serde_json::Value> =
            std::fs::read_to_string(&path).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(lines.len(), 4, "{lines:?}");
        let (decision, progress, end, again) = (&lines[0], &lines[1], &lines[2], &lines[3]);
        assert_eq!(decision["egress.decision"], "allow");
        assert_eq!((&progress["trace_id"], &progress["span_id"]), (&decision["trace_id"], &decision["span_id"]));
        assert_eq!((&end["trace_id"], &end["span_id"]), (&decision["trace_id"], &decision["span_id"]));
        assert_eq!(end["egress.service"], "payments", "the decision's service when the metadata has none");
        assert!(again.get("trace_id").is_none(), "the end used up the join: {again}");
    }

    #[test]
    fn without_a_matching_decision_the_record_names_no_trace() {
        let t = StreamTotals { phase: StreamPhase::Progress, ..tunnel() };
        let v = json(&t, None);
        assert_eq!(v["egress.record"], "stream-progress");
        assert!(v.get("trace_id").is_none() && v.get("span_id").is_none() && v.get("egress.service").is_none());
    }
}
