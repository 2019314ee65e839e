//! OTLP/gRPC export of decision spans: one `TraceService/Export` call per batch, one at a time, on
//! the runtime. Configured like any OpenTelemetry exporter: endpoint (flag or
//! `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`), headers (`OTEL_EXPORTER_OTLP_[TRACES_]HEADERS`,
//! `k=v,k2=v2`, values percent-decoded), timeout (`OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT`, ms), and the
//! resource from `OTEL_RESOURCE_ATTRIBUTES` plus the service name.

use std::time::Duration;

use std::sync::Arc;

use bytes::Buf;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse;
use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
use opentelemetry_proto::tonic::resource::v1::Resource;
use prost::Message;
use tokio::sync::mpsc;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataKey, AsciiMetadataValue};
use tonic::transport::Channel;

use super::metrics::{DROP_EXPORT_FAILED, Metrics};
use super::recycle::Recycler;
use super::wire::{EncodedSpans, export_request};

const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// Where and how spans are exported.
#[derive(Debug, Clone)]
pub struct OtlpConfig {
    /// Collector address, e.g. `http://127.0.0.1:4317` (a bare `HOST:PORT` means `http://`).
    pub endpoint: String,
    pub service_name: String,
    /// gRPC metadata sent with every export (e.g. an API key).
    pub headers: Vec<(String, String)>,
    pub timeout: Duration,
    /// Spans per export request (`OTEL_BSP_MAX_EXPORT_BATCH_SIZE`, default `DEFAULT_MAX_BATCH`).
    pub max_batch: usize,
}

/// The default `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`: four times the SDKs' 512, because decision
/// spans are small (~750 bytes, so a batch is ~1.5 MiB, well under the collectors' 4 MiB), and
/// at a high decision rate each export costs the exporter and the collector on top of its
/// bytes: every decision exported ran ~2% faster with 2048 than with 512 (same-run A/B, both
/// orders, benches/telemetry_load.sh's setup). A partial batch still leaves every flush
/// interval, so a low rate waits no longer.
pub const DEFAULT_MAX_BATCH: usize = 2048;
/// The largest batch accepted: decision spans are ~700-750 bytes (the wire tests' CONNECT span is
/// 746), so 4096 of them stay under the 4 MiB that gRPC servers (and the OpenTelemetry
/// Collector's receiver) accept by default.
pub const MAX_MAX_BATCH: usize = 4096;

impl OtlpConfig {
    pub fn new(endpoint: impl Into<String>, service_name: impl Into<String>) -> Self {
        OtlpConfig {
            endpoint: endpoint.into(),
            service_name: service_name.into(),
            headers: Vec::new(),
            timeout: Duration::from_secs(10),
            max_batch: DEFAULT_MAX_BATCH,
        }
    }

    /// `new`, with headers and timeout from the standard variables (traces-specific ones first).
    pub fn from_env(endpoint: impl Into<String>, service_name: impl Into<String>) -> Result<Self, OtlpError> {
        let var = |specific: &str, general: &str| std::env::var(specific).or_else(|_| std::env::var(general)).ok();
        let mut config = OtlpConfig::new(endpoint, service_name);
        if let Some(h) = var("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS") {
            config.headers = parse_headers(&h)?;
        }
        if let Some(t) = var("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT") {
            let ms = t.trim().parse::<u64>().map_err(|_| OtlpError::Timeout(t.clone()))?;
            config.timeout = Duration::from_millis(ms);
        }
        if let Ok(n) = std::env::var("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") {
            config.max_batch = parse_batch_size(&n)?;
        }
        Ok(config)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("OTLP endpoint `{0}`: {1}")]
    Endpoint(String, String),
    #[error("OTLP header `{0}` is not `key=value` with a valid gRPC metadata name and value")]
    Header(String),
    #[error("OTLP timeout `{0}` is not a number of milliseconds")]
    Timeout(String),
    #[error("OTEL_BSP_MAX_EXPORT_BATCH_SIZE `{0}` is not a number of spans between 1 and {MAX_MAX_BATCH}")]
    BatchSize(String),
}

fn parse_batch_size(text: &str) -> Result<usize, OtlpError> {
    let n = text.trim().parse::<usize>().ok().filter(|n| (1..=MAX_MAX_BATCH).contains(n));
    n.ok_or_else(|| OtlpError::BatchSize(text.to_string()))
}

/// `k1=v1,k2=v2` (W3C baggage style), values percent-decoded.
pub fn parse_headers(text: &str) -> Result<Vec<(String, String)>, OtlpError> {
    text.split(',')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| OtlpError::Header(pair.to_string()))?;
            let (k, v) = (k.trim().to_ascii_lowercase(), percent_decode(v.trim()));
            let valid = k.parse::<AsciiMetadataKey>().is_ok() && v.parse::<AsciiMetadataValue>().is_ok();
            if valid { Ok((k, v)) } else { Err(OtlpError::Header(pair.to_string())) }
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1).and_then(|b| hex(*b)), bytes.get(i + 2).and_then(|b| hex(*b))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A connected (lazily) OTLP trace exporter.
pub struct OtlpExporter {
    grpc: tonic::client::Grpc<Channel>,
    codec: ExportCodec,
    headers: Vec<(AsciiMetadataKey, AsciiMetadataValue)>,
    timeout: Duration,
}

impl OtlpExporter {
    /// Must be called inside the Tokio runtime (the channel connects lazily on it).
    pub fn new(config: &OtlpConfig) -> Result<Self, OtlpError> {
        let endpoint = if config.endpoint.contains("://") {
            config.endpoint.clone()
        } else {
            format!("http://{}", config.endpoint)
        };
        let bad = |why: String| OtlpError::Endpoint(config.endpoint.clone(), why);
        if endpoint.starts_with("https://") {
            return Err(
                bad("TLS to the collector is not built in; use a local collector or agent over http://".into()),
            );
        }
        let channel = Channel::from_shared(endpoint)
            .map_err(|e| bad(e.to_string()))?
            .tcp_nodelay(true)
            .timeout(config.timeout)
            .connect_lazy();
        // Resource (service.name, OTEL_RESOURCE_ATTRIBUTES, SDK attributes) and scope, encoded once.
        let sdk_resource =
            opentelemetry_sdk::Resource::builder().with_service_name(config.service_name.clone()).build();
        let resource = Resource {
            attributes: sdk_resource
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.to_string(),
                    value: Some(AnyValue { value: Some(any_value(v)) }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        };
        let scope = InstrumentationScope {
            name: "egressd".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        };
        let codec = ExportCodec {
            resource: resource.encode_to_vec().into(),
            scope: scope.encode_to_vec().into(),
            recycle: None,
        };
        let headers = config.headers.iter().filter_map(|(k, v)| Some((k.parse().ok()?, v.parse().ok()?))).collect();
        Ok(OtlpExporter { grpc: tonic::client::Grpc::new(channel), codec, headers, timeout: config.timeout })
    }

    /// Gives each batch's buffer back to the batcher once it is encoded into the request.
    pub fn recycling(mut self, recycler: Recycler) -> Self {
        self.codec.recycle = Some(recycler);
        self
    }

    /// Exports one batch. Ok(n): the collector rejected n spans (partial success).
    pub async fn export(&mut self, spans: EncodedSpans) -> Result<u64, tonic::Status> {
        let mut request = tonic::Request::new(spans);
        request.set_timeout(self.timeout);
        for (k, v) in &self.headers {
            request.metadata_mut().insert(k.clone(), v.clone());
        }
        self.grpc.ready().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let path = tonic::codegen::http::uri::PathAndQuery::from_static(EXPORT_PATH);
        let response = self.grpc.unary(request, path, self.codec.clone()).await?.into_inner();
        Ok(response.partial_success.map(|p| p.rejected_spans.max(0) as u64).unwrap_or(0))
    }
}

/// Writes a batch of encoded spans inside the export request's envelope; reads the response.
#[derive(Clone)]
struct ExportCodec {
    resource: Arc<[u8]>,
    scope: Arc<[u8]>,
    recycle: Option<Recycler>,
}

impl Codec for ExportCodec {
    type Encode = EncodedSpans;
    type Decode = ExportTraceServiceResponse;
    type Encoder = ExportCodec;
    type Decoder = ResponseDecoder;

    fn encoder(&mut self) -> ExportCodec {
        self.clone()
    }

    fn decoder(&mut self) -> ResponseDecoder {
        ResponseDecoder
    }
}

impl Encoder for ExportCodec {
    type Item = EncodedSpans;
    type Error = tonic::Status;

    fn encode(&mut self, spans: EncodedSpans, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        // Room for the whole request at once: a batch is ~300 KiB, and growing tonic's 8 KiB
        // buffer by doubling copied it six times over.
        buf.reserve(spans.bytes.len() + self.resource.len() + self.scope.len() + 32);
        export_request(buf, &self.resource, &self.scope, &spans);
        if let Some(recycle) = &self.recycle {
            recycle.give_back(spans.bytes);
        }
        Ok(())
    }
}

struct ResponseDecoder;

impl Decoder for ResponseDecoder {
    type Item = ExportTraceServiceResponse;
    type Error = tonic::Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<ExportTraceServiceResponse>, tonic::Status> {
        let bytes = buf.copy_to_bytes(buf.remaining());
        ExportTraceServiceResponse::decode(bytes)
            .map(Some)
            .map_err(|e| tonic::Status::internal(format!("collector answered with an invalid response: {e}")))
    }
}

fn any_value(v: &opentelemetry::Value) -> any_value::Value {
    match v {
        opentelemetry::Value::Bool(b) => any_value::Value::BoolValue(*b),
        opentelemetry::Value::I64(i) => any_value::Value::IntValue(*i),
        opentelemetry::Value::F64(f) => any_value::Value::DoubleValue(*f),
        other => any_value::Value::StringValue(other.to_string()),
    }
}

/// Exports batches until the batcher is gone. One export at a time: if the collector is slow,
/// batches wait in the bounded queue and the batcher drops (and counts) what does not fit.
/// Whether the collector is failing: set by the exporter when an export fails, cleared when one
/// (or a probe) succeeds. While it is set, the span batcher encodes nothing (counted as
/// `export-failed`), so a collector outage costs the telemetry thread nothing per decision.
#[derive(Debug, Clone, Default)]
pub struct ExportHealth(Arc<std::sync::atomic::AtomicBool>);

impl ExportHealth {
    pub fn is_failing(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Records an export's outcome; returns whether that changed the state.
    pub(super) fn set_failing(&self, failing: bool) -> bool {
        self.0.swap(failing, std::sync::atomic::Ordering::Relaxed) != failing
    }
}

/// How often a failing collector is probed (an empty export) while no spans are sent to it.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

pub async fn export_loop(
    mut exporter: OtlpExporter,
    mut rx: mpsc::Receiver<EncodedSpans>,
    metrics: Metrics,
    health: ExportHealth,
) {
    loop {
        let batch = if health.is_failing() {
            match tokio::time::timeout(PROBE_INTERVAL, rx.recv()).await {
                Ok(Some(batch)) => batch,
                Ok(None) => return,
                Err(_) => EncodedSpans::default(), // the probe: an export of no spans
            }
        } else {
            match rx.recv().await {
                Some(batch) => batch,
                None => return,
            }
        };
        let n = batch.count as u64;
        match exporter.export(batch).await {
            Ok(rejected) => {
                if health.set_failing(false) {
                    tracing::info!("OTLP collector reachable again; exporting spans");
                }
                metrics.spans_exported.inc_by(n - rejected.min(n));
                if rejected > 0 {
                    metrics.spans_dropped.get_or_create(&DROP_EXPORT_FAILED).inc_by(rejected.min(n));
                }
            }
            Err(status) => {
                metrics.spans_dropped.get_or_create(&DROP_EXPORT_FAILED).inc_by(n);
                // Said once per outage, not once per batch.
                if health.set_failing(true) {
                    tracing::warn!(spans = n, error = %status.message(), code = ?status.code(), "OTLP span export failed; spans are dropped (counted) until the collector answers again");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_parse_and_percent_decode() {
        let h = parse_headers("api-key=abc%20def, X-Tenant = t1 ,").unwrap();
        assert_eq!(h, vec![("api-key".into(), "abc def".into()), ("x-tenant".into(), "t1".into())]);
        assert!(matches!(parse_headers("novalue"), Err(OtlpError::Header(_))));
        assert!(matches!(parse_headers("bad key=1"), Err(OtlpError::Header(_))));
    }

    #[test]
    fn batch_sizes_are_bounded() {
        assert_eq!(parse_batch_size(" 2048 ").unwrap(), 2048);
        for bad in ["0", "-1", "many", "4097"] {
            let err = parse_batch_size(bad).unwrap_err().to_string();
            assert!(err.contains("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") && err.contains(bad), "{err}");
        }
    }

    #[tokio::test]
    async fn endpoints_without_a_scheme_are_http_and_https_is_refused_clearly() {
        assert!(OtlpExporter::new(&OtlpConfig::new("127.0.0.1:4317", "s")).is_ok());
        let err = OtlpExporter::new(&OtlpConfig::new("https://collector:4317", "s")).err().unwrap().to_string();
        assert!(err.contains("TLS to the collector is not built in"), "{err}");
    }
}
