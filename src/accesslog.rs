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
//! ext_authz dynamic metadata). Protobuf stays in `entry` and `service`; `StreamTotals` (defined
//! by its consumer, `telemetry::totals`, as `RequestFacts` is by `telemetry::record`) is the
//! domain value the rest of egressd sees. The ALS stream never waits on telemetry: totals are
//! handed over with `try_send`, a full queue drops them, counted.

pub mod entry;
pub mod service;

pub use service::AccessLogSink;
