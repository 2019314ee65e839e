//! The gateway's access log over gRPC (ALS), through the real Envoy 1.40 configured only by
//! egressd's ADS: a workload uploads through a CONNECT tunnel (TLS inside, to a loopback
//! upstream) and through a plain HTTP POST; egressd's audit log then holds a `stream-totals`
//! record per stream with the bytes each way, the caller, the destination and, for the tunnel,
//! the trace of the CONNECT's decision; the POST's decision record carries its declared body size.
//!
//! The relation the test pins: a CONNECT's request body bytes are everything the client sent into
//! the tunnel (here TLS records carrying the upload: at least the upload, plus handshake and
//! record overhead); a plain request's are its body, exactly.

mod support {
    pub mod audit_log;
    pub mod check;
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use egressd::telemetry::{Telemetry, TelemetryConfig};
use support::audit_log::{audit_at, is, lab_with_audit, records, wait_record};
use support::client::connect_tunnel;
use support::eventually::eventually;
use support::lab::{CHECKOUT, Lab};
use support::pki::Issued;
use support::server::http_get;
use support::upstream::provider;

const UPLOAD: usize = 3 << 20;
const DOWNLOAD: usize = 1 << 20;
const POST_BODY: usize = 12_345;

/// Reads one request (head, then `content-length` bytes of body) and answers 200 with
/// `x-download` bytes of body, then closes.
async fn sink<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let field = |name: &str| -> usize {
        head.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    let (length, download) = (field("content-length:"), field("x-download:"));
    let mut got = buf.len() - head_end;
    while got < length {
        match s.read(&mut chunk).await {
            Ok(0) | Err(_) => return,
            Ok(n) => got += n,
        }
    }
    let head =
        format!("HTTP/1.1 200 OK\r\ncontent-length: {download}\r\nx-received: {got}\r\nconnection: close\r\n\r\n");
    let _ = s.write_all(head.as_bytes()).await;
    let _ = s.write_all(&vec![b'd'; download]).await;
    let _ = s.shutdown().await;
}

/// A plaintext and a TLS sink on loopback (the TLS one proves `cert`).
async fn start_sinks(cert: &Issued) -> (SocketAddr, SocketAddr) {
    let plain = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addrs = (plain.local_addr().unwrap(), tls.local_addr().unwrap());
    tokio::spawn(async move {
        while let Ok((s, _)) = plain.accept().await {
            tokio::spawn(sink(s));
        }
    });
    let config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.key())
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    tokio::spawn(async move {
        while let Ok((s, _)) = tls.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(s) = acceptor.accept(s).await {
                    sink(s).await;
                }
            });
        }
    });
    addrs
}

/// Sends a request with `body` bytes and reads the whole answer: (status, body length).
async fn upload<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, head: &str, body: usize) -> (u16, usize) {
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&vec![b'u'; body]).await.unwrap();
    s.flush().await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let status = std::str::from_utf8(&raw[9..12]).unwrap().parse().unwrap();
    let head_end = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    (status, raw.len() - head_end)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_and_request_totals_become_audit_records_joined_to_their_decisions() {
    let (lab, dir, _tasks) = lab_with_audit(|b| b).await;
    let audit = dir.path().join("audit.jsonl");
    let cert = lab.ca.issue(&["api.partner.test"], &[]);
    let (plain_sink, tls_sink) = start_sinks(&cert).await;

    // A CONNECT tunnel: TLS inside to the sink, 3 MiB up, 1 MiB down, then closed.
    let mut conn = lab.as_workload(&lab.checkout).await;
    let authority = format!("api.partner.test:{}", tls_sink.port());
    let (status, head) = connect_tunnel(&mut conn, &authority).await.unwrap();
    assert_eq!(status, 200, "{head}\n{}", lab.envoy.log());
    let mut inner = lab.upstream_tls().connect(ServerName::try_from("api.partner.test").unwrap(), conn).await.unwrap();
    let request = format!(
        "POST /upload HTTP/1.1\r\nhost: api.partner.test\r\ncontent-length: {UPLOAD}\r\nx-download: {DOWNLOAD}\r\nconnection: close\r\n\r\n"
    );
    assert_eq!(upload(&mut inner, &request, UPLOAD).await, (200, DOWNLOAD));
    drop(inner);

    let connect = wait_record(&audit, "the CONNECT's decision", |r| {
        is(r, "http.request.method", "CONNECT") && r.get("egress.decision").is_some()
    })
    .await;
    let request_id = connect["egress.request_id"].as_str().expect("the gateway generated a request id").to_string();
    let totals = wait_record(&audit, "the tunnel's totals", |r| {
        is(r, "egress.record", "stream-totals") && is(r, "egress.request_id", &request_id)
    })
    .await;
    assert!(is(&totals, "http.request.method", "CONNECT"), "{totals}");
    assert!(is(&totals, "egress.spiffe_id", CHECKOUT) && is(&totals, "egress.service", "checkout"), "{totals}");
    assert!(is(&totals, "server.address", "api.partner.test"), "{totals}");
    assert_eq!(totals["server.port"], u64::from(tls_sink.port()), "{totals}");
    let (sent, received) =
        (totals["egress.bytes_sent"].as_u64().unwrap(), totals["egress.bytes_received"].as_u64().unwrap());
    assert!(sent >= UPLOAD as u64, "the tunnel's upload, TLS records included: {totals}");
    assert!(received >= DOWNLOAD as u64, "the tunnel's download: {totals}");
    assert!(sent < (UPLOAD + UPLOAD / 10) as u64, "what the client sent, not more: {totals}");
    assert_eq!(totals["trace_id"], connect["trace_id"], "the tunnel's totals join its decision's trace");
    assert_eq!(totals["span_id"], connect["span_id"], "{totals}\n{connect}");
    assert!(is(&totals, "egress.stream.decision", "allow") && totals.get("egress.decision").is_none(), "{totals}");
    assert!(totals["duration_us"].as_f64().unwrap() > 0.0, "{totals}");

    // A plain POST: its decision says the declared size, its totals the body bytes, exactly.
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://api.partner.test:{}/upload", plain_sink.port());
    let head = format!(
        "POST {url} HTTP/1.1\r\nhost: api.partner.test:{}\r\ncontent-length: {POST_BODY}\r\nx-download: 10\r\nconnection: close\r\n\r\n",
        plain_sink.port()
    );
    assert_eq!(upload(&mut conn, &head, POST_BODY).await, (200, 10));
    let decision = wait_record(&audit, "the POST's decision", |r| {
        is(r, "http.request.method", "POST") && r.get("egress.decision").is_some()
    })
    .await;
    assert_eq!(decision["http.request.body.size"], POST_BODY as u64, "{decision}");
    let post_id = decision["egress.request_id"].as_str().unwrap().to_string();
    let totals = wait_record(&audit, "the POST's totals", |r| {
        is(r, "egress.record", "stream-totals") && is(r, "egress.request_id", &post_id)
    })
    .await;
    assert_eq!(totals["egress.bytes_sent"], POST_BODY as u64, "{totals}");
    assert_eq!(totals["egress.bytes_received"], 10, "{totals}");
    assert_eq!(totals["http.response.status_code"], 200, "{totals}");
    assert!(totals.get("trace_id").is_none(), "only CONNECT decisions are joined: {totals}");

    let metrics = http_get(lab.egressd.admin, "/metrics").await.1;
    let count = |name: &str| -> u64 {
        metrics.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
    };
    assert!(count("egressd_stream_totals_total ") >= 2, "{metrics}");
    assert_eq!(count("egressd_access_log_entries_skipped_total{reason=\"malformed\"} "), 0, "{metrics}");
}

/// A tunnel still open is reported while it is open (cumulative bytes so far, the decision's
/// trace), then once more when it closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_tunnel_reports_progress_before_its_totals() {
    let (lab, dir, _tasks) = lab_with_audit(|b| b.progress_every(200)).await;
    let audit = dir.path().join("audit.jsonl");
    let cert = lab.ca.issue(&["api.partner.test"], &[]);
    let (_, tls_sink) = start_sinks(&cert).await;
    let mut conn = lab.as_workload(&lab.checkout).await;
    let (status, head) = connect_tunnel(&mut conn, &format!("api.partner.test:{}", tls_sink.port())).await.unwrap();
    assert_eq!(status, 200, "{head}");
    let mut inner = lab.upstream_tls().connect(ServerName::try_from("api.partner.test").unwrap(), conn).await.unwrap();
    let half = UPLOAD / 2;
    let head =
        format!("POST / HTTP/1.1\r\nhost: api.partner.test\r\ncontent-length: {UPLOAD}\r\nx-download: 10\r\n\r\n");
    inner.write_all(head.as_bytes()).await.unwrap();
    inner.write_all(&vec![b'u'; half]).await.unwrap();
    inner.flush().await.unwrap();

    let progress = wait_record(&audit, "a progress report of the open tunnel", |r| {
        is(r, "egress.record", "stream-progress") && r["egress.bytes_sent"].as_u64().is_some_and(|b| b >= half as u64)
    })
    .await;
    let connect = records(&audit)
        .into_iter()
        .find(|r| is(r, "http.request.method", "CONNECT") && r.get("egress.decision").is_some())
        .expect("the CONNECT's decision was written before the tunnel carried bytes");
    assert_eq!(progress["egress.request_id"], connect["egress.request_id"], "{progress}");
    assert_eq!(progress["trace_id"], connect["trace_id"], "{progress}");
    assert!(is(&progress, "egress.spiffe_id", CHECKOUT), "{progress}");

    // The rest of the upload, then the answer; the tunnel closes and its totals follow.
    inner.write_all(&vec![b'u'; UPLOAD - half]).await.unwrap();
    let mut raw = Vec::new();
    inner.read_to_end(&mut raw).await.unwrap();
    assert!(raw.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&raw));
    drop(inner);
    let request_id = connect["egress.request_id"].as_str().unwrap().to_string();
    let totals = wait_record(&audit, "the tunnel's totals", |r| {
        is(r, "egress.record", "stream-totals") && is(r, "egress.request_id", &request_id)
    })
    .await;
    assert!(totals["egress.bytes_sent"].as_u64().unwrap() >= UPLOAD as u64, "{totals}");
    assert_eq!(totals["trace_id"], connect["trace_id"], "a progress report does not use up the join");
    // Only the stdout log of the stream's end, however many progress reports went to egressd.
    lab.wait_for_log("CONNECT api.partner.test").await;
    let lines = lab.envoy.log().lines().filter(|l| l.contains("CONNECT api.partner.test")).count();
    assert_eq!(lines, 1, "{}", lab.envoy.log());
}

/// Bytes sent as one gRPC message as they are: lets the test send what no typed client would.
#[derive(Debug, Clone, Default, PartialEq)]
struct Raw(Vec<u8>);

impl prost::Message for Raw {
    fn encode_raw(&self, buf: &mut impl prost::bytes::BufMut) {
        buf.put_slice(&self.0);
    }
    fn merge_field(
        &mut self,
        tag: u32,
        wire_type: prost::encoding::WireType,
        buf: &mut impl prost::bytes::Buf,
        ctx: prost::encoding::DecodeContext,
    ) -> Result<(), prost::DecodeError> {
        prost::encoding::skip_field(wire_type, tag, buf, ctx)
    }
    fn encoded_len(&self) -> usize {
        self.0.len()
    }
    fn clear(&mut self) {
        self.0.clear();
    }
}

/// Over real gRPC to egressd's port: the identifier, a good entry and a partial one, then a message
/// that does not decode. The good entry counts, the others are skipped and counted, the stream
/// ends with an error, and Check keeps answering.
#[tokio::test]
async fn malformed_access_log_messages_are_skipped_and_counted_and_check_keeps_serving() {
    use envoy_types::pb::envoy::config::core::v3::Node;
    use envoy_types::pb::envoy::data::accesslog::v3::{AccessLogCommon, HttpAccessLogEntry, HttpRequestProperties};
    use envoy_types::pb::envoy::service::accesslog::v3::stream_access_logs_message::{
        HttpAccessLogEntries, Identifier, LogEntries,
    };
    use envoy_types::pb::envoy::service::accesslog::v3::{StreamAccessLogsMessage, StreamAccessLogsResponse};
    use envoy_types::pb::google::protobuf::Timestamp;
    use prost::Message;

    let server = support::server::TestServer::builder(support::server::mesh_without_gateway()).start().await;
    let entry = |start: Option<Timestamp>| HttpAccessLogEntry {
        common_properties: Some(AccessLogCommon { start_time: start, ..Default::default() }),
        request: Some(HttpRequestProperties { authority: "api.partner.test:443".into(), ..Default::default() }),
        ..Default::default()
    };
    let first = StreamAccessLogsMessage {
        identifier: Some(Identifier {
            node: Some(Node { id: "gw-test".into(), ..Default::default() }),
            log_name: "egressd".into(),
        }),
        log_entries: Some(LogEntries::HttpLogs(HttpAccessLogEntries {
            log_entry: vec![entry(Some(Timestamp { seconds: 1_800_000_000, nanos: 0 })), entry(None)],
        })),
    };
    // Field 1 (the identifier, a message) as a varint: no StreamAccessLogsMessage.
    let garbage = Raw(vec![0x08, 0x01]);
    let messages = tokio_stream::iter([Raw(first.encode_to_vec()), garbage]);

    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", server.grpc)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/envoy.service.accesslog.v3.AccessLogService/StreamAccessLogs");
    let codec = tonic_prost::ProstCodec::<Raw, StreamAccessLogsResponse>::default();
    let ended = grpc.client_streaming(tonic::Request::new(messages), path, codec).await;
    assert!(ended.is_err(), "an undecodable message ends the stream: {ended:?}");

    let metrics = eventually("the skips counted", Duration::from_secs(5), || async {
        let m = http_get(server.admin, "/metrics").await.1;
        m.contains("egressd_access_log_entries_skipped_total{reason=\"undecodable\"} 1").then_some(m)
    })
    .await;
    assert!(metrics.contains("egressd_stream_totals_total 1\n"), "{metrics}");
    assert!(metrics.contains("egressd_access_log_entries_skipped_total{reason=\"malformed\"} 1"), "{metrics}");
    let mut check = support::check::client(server.grpc).await;
    let answer =
        support::check::check(&mut check, egressd::testing::http_check(CHECKOUT, "GET", "api.partner.test", &[])).await;
    assert_eq!(answer.status.map(|s| s.code), Some(0), "Check still answers");
}

/// A tunnel's bytes from the gateway's access log count toward a large-upload signal: a policy
/// whose upload threshold is 2 MiB, two tunnels of 1.5 MiB each from the same workload to the same
/// destination; the second tunnel's totals raise the signal, in that tunnel's CONNECT's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_bytes_over_als_raise_a_large_upload_signal() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy");
    support::lab::copy_mesh_config(&policy);
    let mesh = policy.join("mesh.yaml");
    let text = std::fs::read_to_string(&mesh).unwrap();
    std::fs::write(&mesh, format!("{text}detection:\n  largeUpload:\n    bytes: 2MiB\n")).unwrap();
    let config = TelemetryConfig {
        audit: Some(audit_at(&dir.path().join("audit.jsonl"))),
        detect: Some(egressd::telemetry::signals::DetectSetup::default()),
        ..Default::default()
    };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let lab = Lab::builder().telemetry(telemetry).policy_dir(&policy).own_policy().start().await;
    let audit = dir.path().join("audit.jsonl");
    let cert = lab.ca.issue(&["api.partner.test"], &[]);
    let (_plain, tls_sink) = start_sinks(&cert).await;
    let authority = format!("api.partner.test:{}", tls_sink.port());
    let chunk = 3 << 19; // 1.5 MiB
    for _ in 0..2 {
        let mut conn = lab.as_workload(&lab.checkout).await;
        let (status, head) = connect_tunnel(&mut conn, &authority).await.unwrap();
        assert_eq!(status, 200, "{head}\n{}", lab.envoy.log());
        let mut inner =
            lab.upstream_tls().connect(ServerName::try_from("api.partner.test").unwrap(), conn).await.unwrap();
        let request = format!(
            "POST /upload HTTP/1.1\r\nhost: api.partner.test\r\ncontent-length: {chunk}\r\nx-download: 10\r\nconnection: close\r\n\r\n"
        );
        assert_eq!(upload(&mut inner, &request, chunk).await, (200, 10));
    }
    let signal = wait_record(&audit, "a large-upload signal", |r| r["egress.signal"]["kind"] == "large-upload").await;
    let s = &signal["egress.signal"];
    assert_eq!(s["spiffe_id"], CHECKOUT, "{signal}");
    assert_eq!(s["service"], "checkout", "{signal}");
    assert_eq!(s["destination"], "api.partner.test", "{signal}");
    assert!(s["evidence"]["bytes_sent"].as_u64().unwrap() >= 2 * chunk as u64, "both tunnels counted: {signal}");
    assert!(s["summary"].as_str().unwrap().contains("at least 2.0 MiB in 8 h"), "{signal}");
    // The signal names the trace of the CONNECT whose tunnel crossed the threshold.
    let connects: Vec<Value> = records(&audit)
        .into_iter()
        .filter(|r| is(r, "http.request.method", "CONNECT") && r.get("egress.decision").is_some())
        .collect();
    assert_eq!(connects.len(), 2);
    assert!(
        connects.iter().any(|c| c["trace_id"] == signal["trace_id"] && c["span_id"] == signal["parent_span_id"]),
        "{signal}"
    );
    let (_, metrics) = http_get(lab.egressd.admin, "/metrics").await;
    assert!(metrics.contains(r#"egressd_signals_total{kind="large-upload",service="checkout"} 1"#), "{metrics}");
}
