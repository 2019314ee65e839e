//! Server-side cost of one Check without the network: request view + decide + response build, on
//! the example policy, versus building the minimal OK response a no-op server returns; and the
//! cached-answer path the server takes for allows, the deny it writes in wire format, and the
//! tunnel report egressd reads from the gateway's access log.
//! Run: cargo bench --bench authorize

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use egressd::authz::cache::ResponseCache;
use egressd::authz::tunnel;
use egressd::policy::{CompiledPolicy, PolicySource, compile};
use egressd::testing::http_check;
use egressd::testing::{answer, authorize};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status;
use prost::Message;

fn request(principal: &str, method: &str, host: &str) -> CheckRequest {
    http_check(principal, method, host, &[("x-request-id", "4bf92f35-77b3-4da6-a3ce-000000000001")])
}

fn bench(c: &mut Criterion) {
    let policy = Arc::new(compile(&PolicySource::embedded(), 0).unwrap());
    let cache = ResponseCache::new(policy.clone());
    let allow = request("spiffe://corp.example/ns/payments/sa/api", "CONNECT", "api.stripe.com:443");
    let deny = request("spiffe://corp.example/ns/checkout/sa/web", "CONNECT", "evil.example.org:443");
    let mut g = c.benchmark_group("authorize");
    g.bench_function("noop-response+encode", |b| {
        b.iter(|| {
            let r = CheckResponse { status: Some(Status { code: 0, ..Default::default() }), ..Default::default() };
            black_box(r.encode_to_vec())
        })
    });
    for (name, req) in [("allow+encode", &allow), ("deny+encode", &deny)] {
        g.bench_function(name, |b| b.iter(|| black_box(authorize(&policy, black_box(req), 0).encode_to_vec())));
    }
    // What the server does: the allow answer comes from the per-version cache, already encoded.
    g.bench_function("allow-cached", |b| b.iter(|| black_box(answer(&cache, black_box(&allow), 0))));
    // What the server does for a deny: the same decision, the answer written in wire format.
    g.bench_function("deny-wire", |b| b.iter(|| black_box(answer(&cache, black_box(&deny), 0))));
    g.finish();
    tunnel_reports(c, &policy);
}

/// A tunnel report read from the gateway's access log and turned into the tunnel's decision (off
/// the Check path: the ALS stream's cost per tunnel).
fn tunnel_reports(c: &mut Criterion, policy: &CompiledPolicy) {
    let mut g = c.benchmark_group("tunnel-report");
    for (name, text) in [
        ("verified", "tunnel-verified enforce 1700000000123 api.stripe.com api.stripe.com"),
        ("sni-mismatch", "sni-mismatch enforce 1700000000123 api.stripe.com evil.example.org"),
    ] {
        g.bench_function(format!("{name}-parse+decide"), |b| {
            b.iter(|| {
                let report = tunnel::Report::parse(black_box(text)).expect("a report");
                black_box(tunnel::decide(policy, Some("payments"), &report).outcome)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
