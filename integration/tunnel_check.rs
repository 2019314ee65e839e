//! CONNECT tunnels checked twice, over real gRPC with Envoy-shaped requests: the CONNECT check
//! answers with a correlation, and the gateway's check of the tunnel's first bytes (SNI in
//! `destination.service`, the correlation as `destination.address`, `x-egressd-check` metadata)
//! pairs with it once. Decisions: tunnel-verified, sni-mismatch, sni-missing, not-tls,
//! unknown-correlation; both decisions in one trace with the correlation in both.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use egressd::policy::PolicySource;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use egressd::testing::{http_check, network_check};

mod support {
    pub mod check;
    pub mod otlp;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::otlp::Collector;
use support::server::TestServer;

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const CI: &str = "spiffe://corp.example/ns/ci/sa/runner";

async fn serve(telemetry: Telemetry) -> (TestServer, AuthorizationClient<Channel>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
    let source = PolicySource::from_dir(&dir).unwrap();
    let server = TestServer::builder(source).telemetry(telemetry).start().await;
    let client = client(server.grpc).await;
    (server, client)
}

async fn connect(
    client: &mut AuthorizationClient<Channel>,
    from: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> CheckResponse {
    check(client, http_check(from, "CONNECT", host, headers)).await
}

/// What the gateway's internal tunnel listener sends: no identity, the correlation as the
/// destination address, the SNI (if any) as destination.service.
async fn tunnel(client: &mut AuthorizationClient<Channel>, corr: &str, sni: &str, kind: &str) -> CheckResponse {
    let (ip, port) = corr.rsplit_once(':').unwrap();
    let mut req = tonic::Request::new(network_check("", sni, ip, port.parse().unwrap()));
    req.metadata_mut().insert("x-egressd-check", kind.parse().unwrap());
    check(client, req).await
}

#[tokio::test]
async fn a_connect_answer_carries_a_fresh_correlation_and_a_clients_own_is_never_used() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    let a = connect(&mut client, PAY, "api.stripe.com:443", &[("x-egress-corr", "127.0.0.1:1")]).await;
    let b = connect(&mut client, PAY, "api.stripe.com:443", &[]).await;
    let (ca, cb) = (a.correlation().expect("set"), b.correlation().expect("set"));
    assert_ne!(ca, cb);
    assert_ne!(ca, "127.0.0.1:1", "the client's value is overwritten");
    // Plain requests get none, and a client's is removed before the request goes on.
    let get = check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[("x-egress-corr", "127.0.0.1:1")])).await;
    assert_eq!(get.correlation(), None);
    assert!(get.removed_headers().contains(&"x-egress-corr".to_string()), "{get:?}");
    // A denied CONNECT registers nothing.
    assert_eq!(connect(&mut client, PAY, "evil.example.org:443", &[]).await.correlation(), None);
}

#[tokio::test]
async fn the_tunnel_must_start_with_tls_naming_the_connect_host() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    let issuer = client.clone();
    let corr = || {
        let mut c = issuer.clone();
        async move { connect(&mut c, PAY, "api.stripe.com:443", &[]).await.correlation().unwrap() }
    };
    let ok = tunnel(&mut client, &corr().await, "API.Stripe.com", "tunnel-tls").await;
    assert_eq!((ok.code(), ok.reason()), (0, "tunnel-verified".into()));
    let c = corr().await;
    let fronted = tunnel(&mut client, &c, "evil.example.org", "tunnel-tls").await;
    assert_eq!((fronted.code(), fronted.reason()), (7, "sni-mismatch".into()));
    assert_eq!(fronted.meta("service"), "payments");
    let replay = tunnel(&mut client, &c, "api.stripe.com", "tunnel-tls").await;
    assert_eq!((replay.code(), replay.reason()), (7, "unknown-correlation".into()), "one check per CONNECT");
    let no_sni = tunnel(&mut client, &corr().await, "", "tunnel-tls").await;
    assert_eq!((no_sni.code(), no_sni.reason()), (7, "sni-missing".into()));
    let plain = tunnel(&mut client, &corr().await, "", "tunnel-raw").await;
    assert_eq!((plain.code(), plain.reason()), (7, "not-tls".into()));
    let forged = tunnel(&mut client, "127.9.9.9:77", "api.stripe.com", "tunnel-tls").await;
    assert_eq!((forged.code(), forged.reason()), (7, "unknown-correlation".into()), "fails closed");
}

#[tokio::test]
async fn a_dry_run_service_lets_the_mismatch_through_and_records_it() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    // A would-deny CONNECT goes through, so its tunnel is checked too.
    let would = connect(&mut client, CI, "evil.example.org:443", &[]).await;
    assert_eq!(would.decision(), "would-deny");
    let c = would.correlation().expect("a would-deny CONNECT carries a correlation");
    let r = tunnel(&mut client, &c, "other.example.org", "tunnel-tls").await;
    assert_eq!((r.code(), r.decision(), r.reason()), (0, "would-deny".into(), "sni-mismatch".into()));
    let c = connect(&mut client, CI, "github.com:443", &[]).await.correlation().unwrap();
    let r = tunnel(&mut client, &c, "evil.example.org", "tunnel-tls").await;
    assert_eq!((r.code(), r.decision(), r.reason()), (0, "would-deny".into(), "sni-mismatch".into()));
}

#[tokio::test]
async fn both_decisions_are_in_one_trace_with_the_correlation() {
    let collector = Collector::start().await;
    let config = TelemetryConfig { otlp: Some(OtlpConfig::new(collector.endpoint(), "egressd")), ..Default::default() };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let (_server, mut client) = serve(telemetry).await;
    let c = connect(&mut client, PAY, "api.stripe.com:443", &[]).await.correlation().unwrap();
    tunnel(&mut client, &c, "evil.example.org", "tunnel-tls").await;
    let spans = collector.wait_for(Duration::from_secs(10), |s| s.len() >= 2).await;
    let by_check = |k: &str| spans.iter().find(|s| s.attr("egress.check").as_deref() == Some(k)).unwrap();
    let (connect_span, tunnel_span) = (by_check("http"), by_check("network"));
    assert_eq!(connect_span.trace_id(), tunnel_span.trace_id(), "one trace");
    assert_eq!(tunnel_span.parent_span_id(), connect_span.span_id(), "CONNECT allowed, then the tunnel's check");
    assert_eq!(connect_span.attr("egress.tunnel.correlation").as_deref(), Some(c.as_str()));
    assert_eq!(tunnel_span.attr("egress.tunnel.correlation").as_deref(), Some(c.as_str()));
    assert_eq!(tunnel_span.attr("egress.reason").as_deref(), Some("sni-mismatch"));
    assert_eq!(tunnel_span.attr("egress.sni").as_deref(), Some("evil.example.org"));
    assert_eq!(tunnel_span.attr("server.address").as_deref(), Some("api.stripe.com"));
    assert_eq!(tunnel_span.attr("egress.spiffe_id").as_deref(), Some(PAY));
}
