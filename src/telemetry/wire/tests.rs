//! The wire format checked against the generated OTLP types: bytes decoded and compared with
//! the same spans built as messages.

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

/// One policy version for every event, as on a server between reloads.
static POLICY: std::sync::LazyLock<Arc<crate::policy::CompiledPolicy>> = std::sync::LazyLock::new(|| {
    let text = include_str!("../../../integration/fixtures/semantics.yaml");
    Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap())
});

fn event(req: envoy_types::pb::envoy::service::auth::v3::CheckRequest) -> CheckEvent {
    let policy = POLICY.clone();
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
    // Twice each: the second time the decision attributes come from the writer's cache.
    for e in events.iter().chain(&events) {
        let mut text = String::new();
        let record = DecisionRecord::describe_in(e, &mut text);
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
    assert_eq!(out.count, 8);
    assert_eq!(decoded, reference);
    // Three of the four decisions have a class (the malformed one's message names its flaw).
    let reasons: Vec<_> = events.iter().map(|e| e.verdict.reason.code()).collect();
    assert_eq!(writer.decisions.blocks.len(), 3, "{reasons:?}");
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
        ("egress.policy.version", s("v1")),
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

/// The cached decision attributes are those of the record's own policy version: a reload (same
/// rule, same class, another version) is written with the new version, and a decision whose
/// message names more than its code (a malformed request) is never cached.
#[test]
fn cached_decision_attributes_follow_the_policy_version() {
    let pay = "spiffe://corp.example/ns/payments/sa/api";
    let text = include_str!("../../../integration/fixtures/semantics.yaml");
    let policies = [text.to_string(), format!("{text}\n# reloaded\n")]
        .map(|t| Arc::new(compile(&PolicySource::from_text("f.yaml", &t), 0).unwrap()));
    assert_ne!(policies[0].version, policies[1].version);
    let sampler = DecisionSampler::new(parse_sampler("always_on", None).unwrap(), false);
    let (mut writer, mut out) = (SpanWriter::default(), EncodedSpans::default());
    let request = crate::testing::http_check(pay, "CONNECT", "api.stripe.com:443", &[]);
    for policy in policies.iter().chain(&policies) {
        let (verdict, facts) = crate::testing::checked(policy, &request, &Default::default());
        let e = CheckEvent {
            facts,
            verdict,
            policy: policy.clone(),
            start: crate::clock::wall_now(),
            duration: Duration::ZERO,
        };
        let mut text = String::new();
        let record = DecisionRecord::describe_in(&e, &mut text);
        assert!(record.class().is_some());
        writer.append(&mut out, &record, &sampler.sample(None, e.verdict.outcome));
    }
    let versions: Vec<String> = decoded_spans(&out)
        .iter()
        .map(|span| {
            let kv = span.attributes.iter().find(|kv| kv.key == "egress.policy.version").expect("a version");
            match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(v)) => v.clone(),
                other => panic!("{other:?}"),
            }
        })
        .collect();
    let [a, b] = [policies[0].version.clone(), policies[1].version.clone()];
    assert_eq!(versions, [a.clone(), b.clone(), a, b]);

    let malformed = event(Default::default());
    let mut text = String::new();
    assert!(DecisionRecord::describe_in(&malformed, &mut text).class().is_none());
}
