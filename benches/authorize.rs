//! Server-side cost of one Check without the network: request view + decide + response build, on
//! the example policy, versus building the minimal OK response a no-op server returns; and the
//! cached-answer path the server takes for allows.
//! Run: cargo bench --bench authorize

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use egressd::authz::cache::ResponseCache;
use egressd::policy::{PolicySource, compile};
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
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
