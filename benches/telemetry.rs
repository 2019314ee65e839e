//! Per-decision cost of telemetry: on the Check path, copying the request's facts; on the
//! telemetry thread, preparing the record, trace context + sampling, the audit JSON line, and the OTLP span
//! (built, and built + encoded), against the Check itself (`authorize` on the same request).
//! Run: cargo bench --bench telemetry

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};

use egressd::authz::checker::GatewayCaps;
use egressd::authz::{facts, request};
use egressd::policy::{PolicySource, compile};
use egressd::telemetry::audit;
use egressd::telemetry::context::Propagators;
use egressd::telemetry::record::{CheckEvent, DecisionRecord};
use egressd::telemetry::spans::{DecisionSampler, parse_sampler};
use egressd::telemetry::wire::{EncodedSpans, SpanWriter};
use egressd::testing::http_check;
use egressd::testing::{authorize, decide_verdict};

fn bench(c: &mut Criterion) {
    let policy = Arc::new(compile(&PolicySource::embedded(), 0).unwrap());
    let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
    let request = http_check(
        "spiffe://corp.example/ns/payments/sa/api",
        "CONNECT",
        "api.stripe.com:443",
        &[("x-request-id", "4bf92f35-77b3-4da6-a3ce-000000000001"), ("traceparent", tp), ("user-agent", "curl/8.5.0")],
    );
    let verdict = decide_verdict(&policy, &request, 0);
    let metadata = Default::default();
    let facts = facts::capture(&request, &metadata, &policy);
    let event = CheckEvent {
        facts,
        verdict,
        policy: policy.clone(),
        start: egressd::clock::wall_now(),
        duration: Duration::from_micros(2),
    };
    let propagators = Propagators::default();
    let sampler = DecisionSampler::new(parse_sampler("parentbased_always_on", None).unwrap(), false);
    let mut text = String::new();
    let record = DecisionRecord::describe_in(&event, &mut text);
    let ids = sampler.sample(propagators.parent(&event.facts), event.verdict.outcome);

    let mut g = c.benchmark_group("telemetry");
    g.bench_function("check (authorize, for scale)", |b| b.iter(|| black_box(authorize(&policy, &request, 0))));
    // The Check path copies the facts from the view it already made of the request.
    let view = request::view(&request, &policy, GatewayCaps::generated(true)).unwrap();
    g.bench_function("facts from the check's view (on the Check path)", |b| {
        b.iter(|| black_box(facts::from_view(Some(black_box(&view)), &request, &metadata, true)))
    });
    g.bench_function("describe", |b| {
        let mut text = String::new();
        b.iter(|| black_box(DecisionRecord::describe_in(black_box(&event), &mut text).reason_message.len()))
    });
    g.bench_function("trace-context+sample", |b| {
        b.iter(|| black_box(sampler.sample(propagators.parent(&event.facts), event.verdict.outcome)))
    });
    let mut line = Vec::with_capacity(1024);
    g.bench_function("audit-json", |b| {
        b.iter(|| {
            line.clear();
            audit::encode(&mut line, &record, &ids).unwrap();
            black_box(line.len())
        })
    });
    let mut writer = SpanWriter::default();
    let mut spans = EncodedSpans::default();
    g.bench_function("span (OTLP wire format)", |b| {
        b.iter(|| {
            spans.bytes.clear();
            writer.append(&mut spans, &record, &ids);
            black_box(spans.bytes.len())
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
