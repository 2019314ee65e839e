//! Decision, signal and DNS query spans written straight into OTLP protobuf wire format.
//!
//! Building `opentelemetry_proto` messages first cost two allocations per attribute (~25 per
//! span), freed on another thread after export, plus prost encoding into a growing buffer on the
//! runtime: together most of the export cost (`cargo bench --bench telemetry`,
//! benches/telemetry_load.sh). Here a span is written into one reusable buffer with prost's
//! wire-format helpers, and a batch is handed over as bytes already framed as repeated
//! `ScopeSpans.spans`; the exporter only adds the request's envelope. Tests decode the output with
//! the generated OTLP types and compare it with the same span built as messages.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::BufMut;
use opentelemetry::trace::{SpanId, TraceFlags, TraceId};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use rustc_hash::FxHashMap;

use super::dns::DnsEvent;
use super::record::{DecisionClass, DecisionRecord, Value};
use super::spans::{SPAN_NAME, SpanIds};
use crate::policy::{CompiledPolicy, Outcome};

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
pub struct SpanWriter {
    scratch: Vec<u8>,
    /// `RPC_ATTRIBUTES` encoded once: every decision span carries them, unchanged.
    rpc_attributes: Vec<u8>,
    decisions: DecisionBlocks,
}

/// The most decision classes kept encoded; past it the cache starts again (a policy has a few
/// classes per rule, so this is only reached by a huge policy, at the cost of re-encoding).
const MAX_DECISION_BLOCKS: usize = 4096;

/// A decision's attributes (`DecisionRecord::visit_decision`) encoded once per class
/// (`DecisionRecord::class`) of the policy version the last record came from: about half of a
/// decision span's attributes, the same for every decision a rule makes: writing a span takes
/// ~0.58x the time it took encoding them every time (`cargo bench --bench telemetry -- span`).
#[derive(Default)]
struct DecisionBlocks {
    policy: Option<Arc<CompiledPolicy>>,
    blocks: FxHashMap<DecisionClass, Box<[u8]>>,
}

impl DecisionBlocks {
    /// Appends `record`'s decision attributes to `s`.
    fn write(&mut self, record: &DecisionRecord<'_>, s: &mut Vec<u8>) {
        let Some(class) = record.class() else {
            record.visit_decision(&mut |k, v| attribute(s, k, v));
            return;
        };
        // Another version names other rules, locations and services by the same indexes.
        if !self.policy.as_ref().is_some_and(|p| Arc::ptr_eq(p, &record.event.policy)) {
            self.blocks.clear();
            self.policy = Some(record.event.policy.clone());
        }
        if let Some(block) = self.blocks.get(&class) {
            s.extend_from_slice(block);
            return;
        }
        if self.blocks.len() >= MAX_DECISION_BLOCKS {
            self.blocks.clear();
        }
        let mut block = Vec::new();
        record.visit_decision(&mut |k, v| attribute(&mut block, k, v));
        s.extend_from_slice(&block);
        self.blocks.insert(class, block.into_boxed_slice());
    }
}

impl Default for SpanWriter {
    fn default() -> Self {
        let mut rpc_attributes = Vec::new();
        for (k, v) in RPC_ATTRIBUTES {
            attribute(&mut rpc_attributes, k, Value::Str(v));
        }
        SpanWriter { scratch: Vec::new(), rpc_attributes, decisions: DecisionBlocks::default() }
    }
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
        s.extend_from_slice(&self.rpc_attributes);
        self.decisions.write(record, s);
        record.visit_request(&mut |k, v| attribute(s, k, v));
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
mod tests;
