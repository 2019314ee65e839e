//! `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`: the gateway's access log
//! streams (one per Envoy worker thread, open for the connection's life), read message by message.
//! Envoy expects no answer and no acknowledgement: delivery is at most once.

use envoy_types::pb::envoy::data::accesslog::v3::HttpAccessLogEntry;
use envoy_types::pb::envoy::service::accesslog::v3::access_log_service_server::{
    AccessLogService, AccessLogServiceServer,
};
use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::LogEntries;
use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
use tonic::{Request, Response, Status, Streaming};

use super::entry::{Skip, totals, tunnel_report};
use crate::authz::{TunnelRecorder, TunnelSeen};
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::ReasonLabel;
use crate::telemetry::totals::{StreamPhase, StreamTotals};

/// Open tunnels whose decision one access log stream has recorded from a progress report (so its
/// later reports and its end do not record it again). Envoy logs a stream on the worker thread
/// that owns it, and each worker has its own access log stream: a tunnel's reports all arrive on
/// one stream, and the set is the stream's own (no lock). Past this many, the oldest is forgotten
/// (its end would record the decision a second time).
const TUNNELS_REMEMBERED: usize = 65_536;

/// Entries read from one message; the rest are skipped (`over-limit`). Envoy flushes a batch at
/// `buffer_size_bytes` (16 KiB by default, a few dozen entries), so a message with more is not
/// the gateway egressd configured; the bound keeps one message's work small either way (the
/// message itself is bounded by tonic's 4 MiB decoding limit).
pub const MAX_ENTRIES_PER_MESSAGE: usize = 4096;

/// The ALS server: each entry's totals go to the telemetry thread without waiting.
#[derive(Debug, Clone)]
pub struct AccessLogSink {
    telemetry: Telemetry,
    /// Where tunnel filter reports become tunnel decisions (None: they are not recorded).
    tunnels: Option<TunnelRecorder>,
}

/// What one stream said about itself in its first message.
#[derive(Debug, Default)]
struct StreamState {
    /// `node.id` and `log_name` of the identifier, for the log line when the stream ends.
    node: Option<(String, String)>,
    entries: u64,
    /// Request ids (xxh3) of open tunnels whose decision is recorded.
    tunnels_recorded: hashlink::LinkedHashSet<u64>,
}

impl AccessLogSink {
    pub fn new(telemetry: Telemetry, tunnels: Option<TunnelRecorder>) -> Self {
        AccessLogSink { telemetry, tunnels }
    }

    pub fn into_server(self) -> AccessLogServiceServer<Self> {
        AccessLogServiceServer::new(self)
    }

    fn skipped(&self, why: Skip, n: u64) {
        if n > 0 {
            self.telemetry.metrics.access_log_skipped.get_or_create(&ReasonLabel { reason: why.as_str() }).inc_by(n);
        }
    }

    /// One message: the identifier (first message only, by Envoy's contract; a later one just
    /// replaces it), then at most `MAX_ENTRIES_PER_MESSAGE` HTTP entries.
    fn handle(&self, state: &mut StreamState, msg: StreamAccessLogsMessage) {
        if let Some(id) = msg.identifier {
            let node = id.node.map(|n| n.id).unwrap_or_default();
            tracing::debug!(node = %node, log_name = %id.log_name, "gateway access log stream opened");
            state.node = Some((node, id.log_name));
        }
        match msg.log_entries {
            None => {}
            Some(LogEntries::TcpLogs(tcp)) => self.skipped(Skip::Tcp, tcp.log_entry.len() as u64),
            Some(LogEntries::HttpLogs(http)) => {
                let over = http.log_entry.len().saturating_sub(MAX_ENTRIES_PER_MESSAGE);
                self.skipped(Skip::OverLimit, over as u64);
                for entry in http.log_entry.iter().take(MAX_ENTRIES_PER_MESSAGE) {
                    state.entries += 1;
                    match totals(entry) {
                        Ok(t) => {
                            self.tunnel(state, entry, &t);
                            self.telemetry.metrics.stream_totals.inc();
                            self.telemetry.submit_totals(t);
                        }
                        Err(why) => self.skipped(why, 1),
                    }
                }
            }
        }
    }

    /// Records the tunnel decision a CONNECT's entry reports, once per tunnel: from its first
    /// progress report, or from its end when it had none (an entry without a request id, only
    /// from its end). A report that does not read is counted and its totals still go on.
    fn tunnel(&self, state: &mut StreamState, entry: &HttpAccessLogEntry, t: &StreamTotals) {
        let Some(recorder) = &self.tunnels else { return };
        let report = match tunnel_report(entry) {
            None => return,
            Some(Ok(r)) => r,
            Some(Err(e)) => {
                self.skipped(Skip::TunnelReport, 1);
                tracing::warn!(error = %e, "gateway access log: unreadable tunnel report");
                return;
            }
        };
        let key = t.request_id.as_deref().map(|id| xxhash_rust::xxh3::xxh3_64(id.as_bytes()));
        let first = match (t.phase, key) {
            (StreamPhase::Progress, None) => false,
            (StreamPhase::Progress, Some(k)) => {
                let first = !state.tunnels_recorded.contains(&k);
                if first {
                    state.tunnels_recorded.insert(k);
                    if state.tunnels_recorded.len() > TUNNELS_REMEMBERED {
                        state.tunnels_recorded.pop_front();
                    }
                }
                first
            }
            (StreamPhase::End, None) => true,
            (StreamPhase::End, Some(k)) => !state.tunnels_recorded.remove(&k),
        };
        if first {
            recorder.record(&TunnelSeen {
                report: &report,
                service: t.decision.service.as_deref(),
                principal: t.spiffe_id.as_deref(),
                request_id: t.request_id.as_deref(),
                port: t.port,
            });
        }
    }
}

#[tonic::async_trait]
impl AccessLogService for AccessLogSink {
    async fn stream_access_logs(
        &self,
        request: Request<Streaming<StreamAccessLogsMessage>>,
    ) -> Result<Response<StreamAccessLogsResponse>, Status> {
        let mut stream = request.into_inner();
        let mut state = StreamState::default();
        let ended = loop {
            match stream.message().await {
                Ok(Some(msg)) => self.handle(&mut state, msg),
                Ok(None) => break Ok(()),
                Err(status) => break Err(status),
            }
        };
        let (node, log_name) = state.node.unwrap_or_default();
        match ended {
            Ok(()) => {
                tracing::debug!(node = %node, log_name = %log_name, entries = state.entries, "gateway access log stream closed");
                Ok(Response::new(StreamAccessLogsResponse {}))
            }
            Err(status) => {
                // A message that does not decode ends the stream (its framing cannot be trusted);
                // Envoy opens a new one. A gateway going away is not counted.
                if status.code() == tonic::Code::Internal {
                    self.skipped(Skip::Undecodable, 1);
                }
                tracing::debug!(node = %node, error = %status.message(), entries = state.entries, "gateway access log stream ended");
                Err(status)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::data::accesslog::v3::{
        AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties, TcpAccessLogEntry,
    };
    use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
        HttpAccessLogEntries, Identifier, TcpAccessLogEntries,
    };
    use envoy_types::pb::google::protobuf::Timestamp;

    fn entry(ok: bool) -> HttpAccessLogEntry {
        HttpAccessLogEntry {
            common_properties: Some(AccessLogCommon {
                start_time: ok.then_some(Timestamp { seconds: 1, nanos: 0 }),
                ..Default::default()
            }),
            request: Some(HttpRequestProperties { authority: "a.test:443".into(), ..Default::default() }),
            ..Default::default()
        }
    }

    fn skipped(sink: &AccessLogSink, reason: &'static str) -> u64 {
        sink.telemetry.metrics.access_log_skipped.get_or_create(&ReasonLabel { reason }).get()
    }

    #[test]
    fn the_identifier_is_kept_and_entries_are_counted_by_outcome() {
        let sink = AccessLogSink::new(Telemetry::metrics_only(), None);
        let mut state = StreamState::default();
        let first = StreamAccessLogsMessage {
            identifier: Some(Identifier {
                node: Some(Node { id: "gw-1".into(), ..Default::default() }),
                log_name: "egressd".into(),
            }),
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
                log_entry: vec![entry(true), entry(false), entry(true)],
            })),
        };
        sink.handle(&mut state, first);
        assert_eq!(state.node, Some(("gw-1".into(), "egressd".into())));
        assert_eq!(sink.telemetry.metrics.stream_totals.get(), 2);
        assert_eq!(skipped(&sink, "malformed"), 1);
        let tcp = StreamAccessLogsMessage {
            identifier: None,
            log_entries: Some(LogEntries::TcpLogs(TcpAccessLogEntries {
                log_entry: vec![TcpAccessLogEntry::default()],
            })),
        };
        sink.handle(&mut state, tcp);
        assert_eq!(skipped(&sink, "tcp"), 1);
        sink.handle(&mut state, StreamAccessLogsMessage::default());
        assert_eq!(state.entries, 3);
    }

    /// A sink whose tunnel reports become decisions of the embedded example policy.
    fn recording_sink() -> AccessLogSink {
        let policy = crate::policy::compile(&crate::policy::PolicySource::embedded(), 0).unwrap();
        let shared = std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(policy));
        let telemetry = Telemetry::metrics_only();
        let runtime = std::sync::Arc::new(crate::runtime::RuntimeOverrides::new(
            std::sync::Arc::new(crate::runtime::breakglass::GrantStore::in_memory(3600)),
            60,
            Default::default(),
        ));
        let check = crate::authz::CheckServer::new(shared, telemetry.clone(), runtime);
        AccessLogSink::new(telemetry, Some(check.tunnel_recorder()))
    }

    /// A CONNECT entry of payments' with the tunnel filter's `report`, at `phase`.
    fn tunnel_entry(request_id: &str, report: &str, periodic: bool) -> HttpAccessLogEntry {
        use envoy_types::pb::envoy::config::core::v3::Metadata;
        use envoy_types::pb::envoy::data::accesslog::v3::AccessLogType;
        use envoy_types::pb::google::protobuf::{StringValue, Struct, Value, value};
        let mut e = entry(true);
        let common = e.common_properties.as_mut().unwrap();
        let service = Value { kind: Some(value::Kind::StringValue("payments".into())) };
        let fields = [("service".to_string(), service)].into_iter().collect();
        common.metadata = Some(Metadata {
            filter_metadata: [(crate::contract::DECISION_METADATA_NAMESPACE.to_string(), Struct { fields })]
                .into_iter()
                .collect(),
            ..Default::default()
        });
        common.access_log_type =
            if periodic { AccessLogType::DownstreamPeriodic } else { AccessLogType::DownstreamEnd } as i32;
        let state = envoy_types::util::pack_any(StringValue { value: report.into() });
        common.filter_state_objects = [(crate::contract::TUNNEL_REPORT_STATE.to_string(), state)].into_iter().collect();
        e.request.as_mut().unwrap().request_id = request_id.into();
        e
    }

    /// payments' tunnel decisions by outcome, as /metrics counts them.
    fn payments_decisions(sink: &AccessLogSink, outcome: &str) -> u64 {
        let text = crate::telemetry::metrics::render(&sink.telemetry.metrics.registry(vec![]));
        let line = text.lines().find(|l| {
            l.starts_with("egressd_decisions_total{")
                && l.contains("service=\"payments\"")
                && l.contains(&format!("decision=\"{outcome}\""))
        });
        line.and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok()).unwrap_or(0)
    }

    fn send(sink: &AccessLogSink, state: &mut StreamState, entries: Vec<HttpAccessLogEntry>) {
        let msg = StreamAccessLogsMessage {
            identifier: None,
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry: entries })),
        };
        sink.handle(state, msg);
    }

    #[test]
    fn a_tunnel_is_recorded_once_from_its_first_report() {
        let sink = recording_sink();
        let mut state = StreamState::default();
        let verified = "tunnel-verified enforce 1700000000000 api.stripe.com api.stripe.com";
        // Two progress reports, then the end: one decision.
        send(&sink, &mut state, vec![tunnel_entry("r-1", verified, true)]);
        send(&sink, &mut state, vec![tunnel_entry("r-1", verified, true), tunnel_entry("r-1", verified, false)]);
        assert_eq!(payments_decisions(&sink, "allow"), 1);
        assert!(state.tunnels_recorded.is_empty(), "the end forgets the tunnel");
        // A tunnel cut at once has only its end; another tunnel is another decision.
        let cut = "sni-mismatch enforce 1700000000000 api.stripe.com evil.test";
        send(&sink, &mut state, vec![tunnel_entry("r-2", cut, false)]);
        assert_eq!(payments_decisions(&sink, "deny"), 1);
        // Without a request id, only the end records (a progress report could not be paired).
        send(&sink, &mut state, vec![tunnel_entry("", verified, true), tunnel_entry("", verified, false)]);
        assert_eq!(payments_decisions(&sink, "allow"), 2);
        assert_eq!(sink.telemetry.metrics.stream_totals.get(), 6, "every entry's totals still count");
    }

    #[test]
    fn an_unreadable_report_is_counted_and_its_totals_go_on() {
        let sink = recording_sink();
        let mut state = StreamState::default();
        send(&sink, &mut state, vec![tunnel_entry("r-1", "tunnel-verified maybe 1 api.stripe.com x", false)]);
        send(&sink, &mut state, vec![tunnel_entry("r-2", &"x".repeat(5000), false)]);
        assert_eq!(skipped(&sink, "tunnel-report"), 2);
        assert_eq!(payments_decisions(&sink, "allow") + payments_decisions(&sink, "deny"), 0);
        assert_eq!(sink.telemetry.metrics.stream_totals.get(), 2);
    }

    #[test]
    fn one_message_does_bounded_work() {
        let sink = AccessLogSink::new(Telemetry::metrics_only(), None);
        let mut state = StreamState::default();
        let many = vec![entry(true); MAX_ENTRIES_PER_MESSAGE + 10];
        let msg = StreamAccessLogsMessage {
            identifier: None,
            log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries { log_entry: many })),
        };
        sink.handle(&mut state, msg);
        assert_eq!(sink.telemetry.metrics.stream_totals.get(), MAX_ENTRIES_PER_MESSAGE as u64);
        assert_eq!(skipped(&sink, "over-limit"), 10);
    }
}
