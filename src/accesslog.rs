//! What the gateway reports when a stream ends: Envoy's gRPC Access Log Service (ALS,
//! `envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs`), served on egressd's gRPC port.
//!
//! ```text
//! Envoy HCM access log (http_grpc, log_name egressd) ──client stream──▶ service::AccessLogSink
//!   HttpAccessLogEntry ──entry::totals──▶ StreamTotals ──try_send──▶ telemetry thread
//!                                                                   └─▶ audit record "stream-totals"
//! ```
//! Each final entry (and, for long streams, each periodic one) becomes a `StreamTotals`: who
//! (the caller's SPIFFE ID from its certificate), where (the request's authority), how much
//! (body bytes each way: for a CONNECT, the tunnel's payload) and what egressd decided (the
//! ext_authz dynamic metadata). Protobuf stays in `entry` and `service`; `StreamTotals` is the
//! domain value the rest of egressd sees. The ALS stream never waits on telemetry: totals are
//! handed over with `try_send`, a full queue drops them, counted.

pub mod entry;
pub mod service;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

pub use service::AccessLogSink;

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
