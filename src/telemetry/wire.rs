//! Decision, signal and DNS query spans written straight into OTLP protobuf wire format.
//!
//! Building `opentelemetry_proto` messages first cost two allocations per attribute (~25 per
//! span), freed on another thread after export, plus prost encoding into a growing buffer on the
//! runtime: together most of the export cost (`cargo bench --bench telemetry`,
//! benches/telemetry_load.sh). Here a span is written into one reusable buffer with prost's
//! wire-format helpers, and a batch is handed over as bytes already framed as repeated
//! `ScopeSpans.spans`; the exporter only adds the request's envelope. Tests decode the output with
//! the generated OTLP types and compare it with the same span built as messages.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};

use super::dns::DnsEvent;
use super::record::{DecisionRecord, Value};
use super::spans::{SPAN_NAME, SpanIds};
use crate::policy::Outcome;

/// Spans of one export batch, each framed as field 2 (`spans`) of `ScopeSpans`.
#[derive(Debug, Default)]
pub struct EncodedSpans {
    pub bytes: Vec<u8>,
    pub count: usize,
}

/// Field numbers of the OTLP messages written here (opentelemetry/proto/trace/v1/trace.proto,
/// common/v1/common.proto, collector/trace/v1/trace_service.proto).
mod field {
    pub const REQUEST_RESOURCE_SPANS: u32 = 1; // ExportTraceServiceRequest.resource_spans
    pub const RESOURCE_SPANS_RESOURCE: u32 = 1; // ResourceSpans.resource
    pub const RESOURCE_SPANS_SCOPE_SPANS: u32 = 2; // ResourceSpans.scope_spans
    pub const SCOPE_SPANS_SCOPE: u32 = 1; // ScopeSpans.scope
    pub const SCOPE_SPANS_SPANS: u32 = 2; // ScopeSpans.spans
    pub const SPAN_TRACE_ID: u32 = 1;
    pub const SPAN_SPAN_ID: u32 = 2;
    pub const SPAN_TRACE_STATE: u32 = 3;
    pub const SPAN_PARENT_SPAN_ID: u32 = 4;
    pub const SPAN_NAME: u32 = 5;
    pub const SPAN_KIND: u32 = 6;
    pub const SPAN_START_TIME: u32 = 7;
    pub const SPAN_END_TIME: u32 = 8;
    pub const SPAN_ATTRIBUTES: u32 = 9;
    pub const SPAN_STATUS: u32 = 15;
    pub const SPAN_FLAGS: u32 = 16;
    pub const STATUS_MESSAGE: u32 = 2;
    pub const STATUS_CODE: u32 = 3;
    pub const KEY_VALUE_KEY: u32 = 1;
    pub const KEY_VALUE_VALUE: u32 = 2;
    pub const ANY_VALUE_STRING: u32 = 1;
    pub const ANY_VALUE_BOOL: u32 = 2;
    pub const ANY_VALUE_INT: u32 = 3;
}

/// `Span.kind` SPAN_KIND_SERVER.
const KIND_SERVER: u64 = 2;
/// `Span.flags`: W3C flags in the low byte; bit 8 "parent remoteness known", bit 9 "parent remote".
const FLAGS_REMOTE_KNOWN: u32 = 0x100;
const FLAGS_REMOTE: u32 = 0x200;
/// `Status.code` STATUS_CODE_ERROR.
const STATUS_ERROR: u64 = 2;

fn len_field(buf: &mut impl BufMut, tag: u32, bytes: &[u8]) {
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.put_slice(bytes);
}

fn len_field_len(tag: u32, len: usize) -> usize {
    prost::encoding::key_len(tag) + encoded_len_varint(len as u64) + len
}

/// Appends `Span.attributes` entry `key = value` (a KeyValue with an AnyValue).
fn attribute(buf: &mut Vec<u8>, key: &str, value: Value<'_>) {
    let any_len = match value {
        Value::Str(s) => len_field_len(field::ANY_VALUE_STRING, s.len()),
        Value::Bool(_) => prost::encoding::key_len(field::ANY_VALUE_BOOL) + 1,
        Value::Int(i) => prost::encoding::key_len(field::ANY_VALUE_INT) + encoded_len_varint(i as u64),
    };
    let kv_len = len_field_len(field::KEY_VALUE_KEY, key.len()) + len_field_len(field::KEY_VALUE_VALUE, any_len);
    encode_key(field::SPAN_ATTRIBUTES, WireType::LengthDelimited, buf);
    encode_varint(kv_len as u64, buf);
    len_field(buf, field::KEY_VALUE_KEY, key.as_bytes());
    encode_key(field::KEY_VALUE_VALUE, WireType::LengthDelimited, buf);
    encode_varint(any_len as u64, buf);
    match value {
        Value::Str(s) => len_field(buf, field::ANY_VALUE_STRING, s.as_bytes()),
        Value::Bool(b) => {
            encode_key(field::ANY_VALUE_BOOL, WireType::Varint, buf);
            encode_varint(u64::from(b), buf);
        }
        Value::Int(i) => {
            encode_key(field::ANY_VALUE_INT, WireType::Varint, buf);
            encode_varint(i as u64, buf);
        }
    }
}

/// The fixed attributes every decision span starts with.
pub const RPC_ATTRIBUTES: [(&str, &str); 3] =
    [("rpc.system", "grpc"), ("rpc.service", "envoy.service.auth.v3.Authorization"), ("rpc.method", "Check")];

/// Writes spans; keeps its scratch buffer between spans.
#[derive(Default)]
pub struct SpanWriter {
    scratch: Vec<u8>,
}

/// What every span starts with: its ids, name, kind and times (unix nanoseconds).
struct Head<'a> {
    trace_id: TraceId,
    span_id: SpanId,
    trace_state: &'a str,
    parent: Option<SpanId>,
    name: &'a str,
    kind: u64,
    start: u64,
    end: u64,
}

impl Head<'_> {
    fn write(&self, s: &mut Vec<u8>) {
        len_field(s, field::SPAN_TRACE_ID, &self.trace_id.to_bytes());
        len_field(s, field::SPAN_SPAN_ID, &self.span_id.to_bytes());
        if !self.trace_state.is_empty() {
            len_field(s, field::SPAN_TRACE_STATE, self.trace_state.as_bytes());
        }
        if let Some(parent) = self.parent {
            len_field(s, field::SPAN_PARENT_SPAN_ID, &parent.to_bytes());
        }
        len_field(s, field::SPAN_NAME, self.name.as_bytes());
        encode_key(field::SPAN_KIND, WireType::Varint, s);
        encode_varint(self.kind, s);
        encode_key(field::SPAN_START_TIME, WireType::SixtyFourBit, s);
        s.put_u64_le(self.start);
        encode_key(field::SPAN_END_TIME, WireType::SixtyFourBit, s);
        s.put_u64_le(self.end);
    }
}

/// Ends the span in `s` with its flags (sampled; `remote`: its parent came from another process)
/// and frames it into `out`.
fn close(out: &mut EncodedSpans, s: &mut Vec<u8>, remote: bool) {
    let remote = if remote { FLAGS_REMOTE } else { 0 };
    encode_key(field::SPAN_FLAGS, WireType::ThirtyTwoBit, s);
    s.put_u32_le(u32::from(TraceFlags::SAMPLED.to_u8()) | FLAGS_REMOTE_KNOWN | remote);
    len_field(&mut out.bytes, field::SCOPE_SPANS_SPANS, s);
    out.count += 1;
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

impl SpanWriter {
    /// Appends the span of one decision to `out`.
    pub fn append(&mut self, out: &mut EncodedSpans, record: &DecisionRecord<'_>, ids: &SpanIds) {
        let s = &mut self.scratch;
        s.clear();
        let event = record.event;
        Head {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            trace_state: &ids.trace_state.header(),
            parent: ids.parent.as_ref().map(|p| p.span_id()),
            name: SPAN_NAME,
            kind: KIND_SERVER,
            start: unix_nanos(event.start),
            end: unix_nanos(event.start + event.duration),
        }
        .write(s);
        for (k, v) in RPC_ATTRIBUTES {
            attribute(s, k, Value::Str(v));
        }
        record.visit(&mut |k, v| attribute(s, k, v));
        close(out, s, ids.parent.is_some());
    }
}

/// `Span.kind` SPAN_KIND_INTERNAL.
const KIND_INTERNAL: u64 = 1;
/// The name of a detector signal's span.
pub const SIGNAL_SPAN_NAME: &str = "egress signal";

impl SpanWriter {
    /// Appends the span of a detector signal: in the trace of the decision that raised it, a child
    /// of that decision's span, timed at the signal's last observation.
    pub fn append_signal(
        &mut self,
        out: &mut EncodedSpans,
        signal: &crate::detect::Signal,
        ids: &super::signals::SignalIds,
    ) {
        let s = &mut self.scratch;
        s.clear();
        let nanos = (signal.last.max(0) as u64).saturating_mul(1_000_000);
        Head {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            trace_state: "",
            parent: Some(ids.parent_span_id),
            name: SIGNAL_SPAN_NAME,
            kind: KIND_INTERNAL,
            start: nanos,
            end: nanos,
        }
        .write(s);
        let score = format!("{:.3}", signal.score);
        let mut attrs = vec![
            ("egress.signal.kind", Value::Str(signal.kind.as_str())),
            ("egress.signal.destination", Value::Str(&signal.destination)),
            ("egress.signal.score", Value::Str(&score)),
            ("egress.signal.summary", Value::Str(&signal.summary)),
            ("egress.signal.context", Value::Str(&signal.context)),
        ];
        if let Some(svc) = &signal.service {
            attrs.push(("egress.service", Value::Str(svc)));
        }
        if let Some(id) = &signal.spiffe_id {
            attrs.push(("egress.spiffe_id", Value::Str(id)));
        }
        for (k, v) in attrs {
            attribute(s, k, v);
        }
        for (k, v) in &signal.evidence {
            let key = format!("egress.signal.evidence.{k}");
            match v {
                crate::detect::Evidence::Count(n) => attribute(s, &key, Value::Int(*n as i64)),
                crate::detect::Evidence::Number(x) => attribute(s, &key, Value::Str(&x.to_string())),
                crate::detect::Evidence::Text(t) => attribute(s, &key, Value::Str(t)),
            }
        }
        close(out, s, false);
    }
}

/// The name of a DNS query's span.
pub const DNS_SPAN_NAME: &str = "egress dns";

impl SpanWriter {
    /// Appends the span of one DNS firewall query: kind SERVER (egressd answered it), from its
    /// arrival to its answer, the audit line's fields as attributes. A deny has status ERROR with
    /// its reason, so trace backends can find blocked names without knowing egressd's attributes.
    pub fn append_dns(&mut self, out: &mut EncodedSpans, event: &DnsEvent, ids: &SpanIds) {
        let s = &mut self.scratch;
        s.clear();
        Head {
            trace_id: ids.trace_id,
            span_id: ids.span_id,
            trace_state: &ids.trace_state.header(),
            parent: None,
            name: DNS_SPAN_NAME,
            kind: KIND_SERVER,
            start: unix_nanos(event.time),
            end: unix_nanos(event.time + event.duration),
        }
        .write(s);
        event.visit(&mut |k, v| attribute(s, k, v));
        if event.decision == Outcome::Deny {
            status_error(s, event.reason);
        }
        close(out, s, false);
    }
}

/// Appends `Span.status` with code ERROR and `message`.
fn status_error(s: &mut Vec<u8>, message: &str) {
    let len = len_field_len(field::STATUS_MESSAGE, message.len())
        + prost::encoding::key_len(field::STATUS_CODE)
        + encoded_len_varint(STATUS_ERROR);
    encode_key(field::SPAN_STATUS, WireType::LengthDelimited, s);
    encode_varint(len as u64, s);
    len_field(s, field::STATUS_MESSAGE, message.as_bytes());
    encode_key(field::STATUS_CODE, WireType::Varint, s);
    encode_varint(STATUS_ERROR, s);
}

/// Writes an `ExportTraceServiceRequest` with one `ResourceSpans` (`resource`: an encoded
/// `Resource`) holding one `ScopeSpans` (`scope`: an encoded `InstrumentationScope`) and `spans`.
pub fn export_request(buf: &mut impl BufMut, resource: &[u8], scope: &[u8], spans: &EncodedSpans) {
    let scope_spans_len = len_field_len(field::SCOPE_SPANS_SCOPE, scope.len()) + spans.bytes.len();
    let resource_spans_len = len_field_len(field::RESOURCE_SPANS_RESOURCE, resource.len())
        + len_field_len(field::RESOURCE_SPANS_SCOPE_SPANS, scope_spans_len);
    encode_key(field::REQUEST_RESOURCE_SPANS, WireType::LengthDelimited, buf);
    encode_varint(resource_spans_len as u64, buf);
    len_field(buf, field::RESOURCE_SPANS_RESOURCE, resource);
    encode_key(field::RESOURCE_SPANS_SCOPE_SPANS, WireType::LengthDelimited, buf);
    encode_varint(scope_spans_len as u64, buf);
    len_field(buf, field::SCOPE_SPANS_SCOPE, scope);
    buf.put_slice(&spans.bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};
    use crate::telemetry::record::CheckEvent;
    use crate::telemetry::spans::{DecisionSampler, parse_sampler};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::{AnyValue, InstrumentationScope, KeyValue, any_value};
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans, Span, span};
    use prost::Message;
    use std::sync::Arc;
    use std::time::{Duration, SystemTime};

    /// The reference: the same span built as generated OTLP messages.
    fn span_message(record: &DecisionRecord<'_>, ids: &SpanIds) -> Span {
        let kv = |k: &str, v: any_value::Value| KeyValue {
            key: k.to_string(),
            value: Some(AnyValue { value: Some(v) }),
            ..Default::default()
        };
        let mut attributes: Vec<KeyValue> =
            RPC_ATTRIBUTES.iter().map(|(k, v)| kv(k, any_value::Value::StringValue(v.to_string()))).collect();
        record.visit(&mut |k, v| {
            attributes.push(kv(
                k,
                match v {
                    Value::Str(s) => any_value::Value::StringValue(s.to_string()),
                    Value::Int(i) => any_value::Value::IntValue(i),
                    Value::Bool(b) => any_value::Value::BoolValue(b),
                },
            ))
        });
        let nanos = |t: SystemTime| t.duration_since(UNIX_EPOCH).unwrap().as_nanos() as u64;
        Span {
            trace_id: ids.trace_id.to_bytes().to_vec(),
            span_id: ids.span_id.to_bytes().to_vec(),
            trace_state: ids.trace_state.header(),
            parent_span_id: ids.parent.as_ref().map(|p| p.span_id().to_bytes().to_vec()).unwrap_or_default(),
            flags: 0x01 | FLAGS_REMOTE_KNOWN | if ids.parent.is_some() { FLAGS_REMOTE } else { 0 },
            name: SPAN_NAME.to_string(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: nanos(record.event.start),
            end_time_unix_nano: nanos(record.event.start + record.event.duration),
            attributes,
            ..Default::default()
        }
    }

    fn event(req: envoy_types::pb::envoy::service::auth::v3::CheckRequest) -> CheckEvent {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let (verdict, facts) = crate::testing::checked(&policy, &req, &Default::default());
        CheckEvent { facts, verdict, policy, start: crate::clock::wall_now(), duration: Duration::from_nanos(1234) }
    }

    #[test]
    fn written_bytes_decode_to_the_same_spans_as_built_messages() {
        let pay = "spiffe://corp.example/ns/payments/sa/api";
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let events = [
            event(crate::testing::http_check(pay, "CONNECT", "api.stripe.com:443", &[("traceparent", tp)])),
            event(crate::testing::http_check(pay, "GET", "evil.example.org", &[("x-request-id", "é-ü")])),
            event(crate::testing::network_check(pay, "api.stripe.com", "127.0.0.1", 443)),
            event(Default::default()),
        ];
        let sampler = DecisionSampler::new(parse_sampler("always_on", None).unwrap(), false);
        let propagators = crate::telemetry::context::Propagators::default();
        let (mut writer, mut out, mut expected) = (SpanWriter::default(), EncodedSpans::default(), vec![]);
        for e in &events {
            let record = DecisionRecord::describe(e);
            let ids = sampler.sample(propagators.parent(&e.facts), e.verdict.outcome);
            writer.append(&mut out, &record, &ids);
            expected.push(span_message(&record, &ids));
        }
        let resource = Resource {
            attributes: vec![KeyValue {
                key: "service.name".into(),
                value: Some(AnyValue { value: Some(any_value::Value::StringValue("egressd".into())) }),
                ..Default::default()
            }],
            ..Default::default()
        };
        let scope = InstrumentationScope { name: "egressd".into(), version: "1".into(), ..Default::default() };
        let mut wire = Vec::new();
        export_request(&mut wire, &resource.encode_to_vec(), &scope.encode_to_vec(), &out);
        let decoded = ExportTraceServiceRequest::decode(wire.as_slice()).expect("valid OTLP");
        let reference = ExportTraceServiceRequest {
            resource_spans: vec![ResourceSpans {
                resource: Some(resource),
                scope_spans: vec![ScopeSpans { scope: Some(scope), spans: expected, ..Default::default() }],
                ..Default::default()
            }],
        };
        assert_eq!(out.count, 4);
        assert_eq!(decoded, reference);
        // The reference really carries what it should (a parent, attributes).
        let spans = &decoded.resource_spans[0].scope_spans[0].spans;
        assert_eq!(spans[0].parent_span_id, 0x00f067aa0ba902b7u64.to_be_bytes());
        assert!(spans[0].attributes.len() > 15);
    }

    /// The spans of `out`, through the generated OTLP types.
    fn decoded_spans(out: &EncodedSpans) -> Vec<Span> {
        let mut wire = Vec::new();
        export_request(&mut wire, &[], &[], out);
        let mut decoded = ExportTraceServiceRequest::decode(wire.as_slice()).expect("valid OTLP");
        std::mem::take(&mut decoded.resource_spans[0].scope_spans[0].spans)
    }

    #[test]
    fn a_dns_query_span_decodes_with_the_audit_lines_fields_and_an_error_status_when_denied() {
        use crate::telemetry::dns::tests::denied_query;
        use opentelemetry_proto::tonic::trace::v1::{Status, status};
        let denied = denied_query();
        let allowed = crate::telemetry::dns::DnsEvent {
            qname: "allowed.test".into(),
            qtype: "A".into(),
            rcode: "NOERROR",
            service: None,
            rule: Some("ci-runners/allow/0".into()),
            decision: Outcome::Allow,
            reason: "allowed",
            answers: 1,
            cached: true,
            transport: "tcp",
            ..denied_query()
        };
        let sampler = DecisionSampler::new(parse_sampler("always_on", None).unwrap(), false);
        let (mut writer, mut out) = (SpanWriter::default(), EncodedSpans::default());
        let ids: Vec<SpanIds> = [&denied, &allowed].iter().map(|e| sampler.sample(None, e.decision)).collect();
        writer.append_dns(&mut out, &denied, &ids[0]);
        writer.append_dns(&mut out, &allowed, &ids[1]);
        let spans = decoded_spans(&out);
        assert_eq!(out.count, 2);
        let s = |v: &str| any_value::Value::StringValue(v.into());
        let attrs = |span: &Span| -> Vec<(String, any_value::Value)> {
            span.attributes.iter().map(|kv| (kv.key.clone(), kv.value.clone().unwrap().value.unwrap())).collect()
        };
        let start = 1_800_000_000u64 * 1_000_000_000;
        let reference = Span {
            trace_id: ids[0].trace_id.to_bytes().to_vec(),
            span_id: ids[0].span_id.to_bytes().to_vec(),
            name: "egress dns".into(),
            kind: span::SpanKind::Server as i32,
            start_time_unix_nano: start,
            end_time_unix_nano: start + 12_000,
            flags: 0x01 | FLAGS_REMOTE_KNOWN,
            status: Some(Status { message: "no-matching-allow".into(), code: status::StatusCode::Error as i32 }),
            attributes: spans[0].attributes.clone(),
            ..Default::default()
        };
        assert_eq!(spans[0], reference, "ids, name, kind, times, flags and status");
        let expected = [
            ("egress.check", s("dns")),
            ("dns.question.name", s("exfil.example.com")),
            ("dns.question.type", s("TXT")),
            ("dns.response_code", s("NXDOMAIN")),
            ("dns.answers", any_value::Value::IntValue(0)),
            ("dns.answer_bytes", any_value::Value::IntValue(40)),
            ("dns.cached", any_value::Value::BoolValue(false)),
            ("dns.truncated", any_value::Value::BoolValue(false)),
            ("network.transport", s("udp")),
            ("client.address", s("127.0.0.5")),
            ("client.port", any_value::Value::IntValue(5353)),
            ("egress.service", s("ci-runners")),
            ("egress.decision", s("deny")),
            ("egress.reason", s("no-matching-allow")),
            ("egress.policy_version", s("v1")),
        ];
        let expected: Vec<_> = expected.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        assert_eq!(attrs(&spans[0]), expected);
        // An allow: no error status; the rule and the flags it sets, no service when unmapped.
        assert_eq!(spans[1].status, None);
        assert_eq!(spans[1].span_id, ids[1].span_id.to_bytes());
        let got = attrs(&spans[1]);
        let get = |k: &str| got.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        assert_eq!(get("egress.rule.id"), Some(s("ci-runners/allow/0")));
        assert_eq!(get("dns.cached"), Some(any_value::Value::BoolValue(true)));
        assert_eq!(get("network.transport"), Some(s("tcp")));
        assert_eq!(get("egress.decision"), Some(s("allow")));
        assert_eq!(get("egress.service"), None);
    }
}
