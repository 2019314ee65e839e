//! Server-side cost of one Check without the network: request view + decide + response build, on
//! the example policy, versus building the minimal OK response a no-op server returns; and the
//! cached-answer path the server takes for allows, the deny it writes in wire format, and a
//! tunnel check's answer built as a message (the reference) versus written in wire format.
//! Run: cargo bench --bench authorize

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use std::sync::Arc;

use egressd::authz::cache::ResponseCache;
use egressd::authz::response;
use egressd::authz::tunnel::{self, NewTunnel, TunnelStart, Tunnels};
use egressd::policy::fqdn::Host;
use egressd::policy::{CompiledPolicy, Malformed, Mode, PolicySource, TunnelTls, compile};
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
    tunnel_answers(c, &policy);
}

/// A verified tunnel's answer (the second check of every verified CONNECT).
fn tunnel_answers(c: &mut Criterion, policy: &CompiledPolicy) {
    let tunnels = Tunnels::default();
    let host = Host::Name("api.stripe.com".into());
    let connect = NewTunnel {
        host: &host,
        port: 443,
        service: "payments",
        principal: "spiffe://corp.example/ns/payments/sa/api",
        tunnel_tls: TunnelTls::RequireMatchingSni,
        mode: Mode::Enforce,
        enforced: true,
        trace: None,
    };
    let pending = tunnels.take(tunnels.register(connect, 0), 0).expect("registered");
    let verified = tunnel::decide(policy, Some(&pending), TunnelStart::Tls, Some("api.stripe.com"));
    let mismatch = tunnel::decide(policy, Some(&pending), TunnelStart::Tls, Some("evil.example.org"));
    let version = policy.version.as_str();
    let mut g = c.benchmark_group("tunnel-answer");
    for (name, d) in [("verified", &verified), ("sni-mismatch", &mismatch)] {
        g.bench_function(format!("{name}-message+encode"), |b| {
            b.iter(|| {
                black_box(
                    response::build(black_box(d), Err(&Malformed::NoDestination), version, false, None).encode_to_vec(),
                )
            })
        });
        g.bench_function(format!("{name}-wire"), |b| b.iter(|| black_box(tunnel::answer(black_box(d), version))));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
