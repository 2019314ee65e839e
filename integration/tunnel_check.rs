//! CONNECT tunnels checked twice, over real gRPC with Envoy-shaped requests: the CONNECT check
//! answers with a correlation, and the gateway's check of the tunnel's first bytes (SNI in
//! `destination.service`, the correlation as `destination.address`, `x-egressd-check` metadata)
//! pairs with it once. Decisions: tunnel-verified, sni-mismatch, sni-missing, not-tls,
//! unknown-correlation; both decisions in one trace with the correlation in both.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, check_response};
use envoy_types::pb::google::protobuf::value::Kind;
use tonic::transport::Channel;

use egressd::policy::PolicySource;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use egressd::testing::{http_check, network_check};

mod support {
    pub mod otlp;
    pub mod server;
}

use support::otlp::Collector;
use support::server::{TestServer, start_with_telemetry};

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const CI: &str = "spiffe://corp.example/ns/ci/sa/runner";

async fn serve(telemetry: Telemetry) -> (TestServer, AuthorizationClient<Channel>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
    let source = PolicySource::from_dir(&dir).unwrap();
    let server = start_with_telemetry(source, None, "127.0.0.1:0".parse().unwrap(), None, telemetry).await;
    let client = AuthorizationClient::connect(format!("http://{}", server.grpc)).await.unwrap();
    (server, client)
}

fn meta(resp: &CheckResponse, key: &str) -> String {
    match resp.dynamic_metadata.as_ref().and_then(|m| m.fields.get(key)).and_then(|v| v.kind.as_ref()) {
        Some(Kind::StringValue(s)) => s.clone(),
        other => panic!("{key}: {other:?}"),
    }
}

/// The correlation the CONNECT answer sets, if any.
fn correlation(resp: &CheckResponse) -> Option<String> {
    let Some(check_response::HttpResponse::OkResponse(ok)) = &resp.http_response else { return None };
    let values: Vec<&str> = ok
        .headers
        .iter()
        .filter_map(|h| h.header.as_ref())
        .filter(|h| h.key == "x-egress-corr")
        .map(|h| h.value.as_str())
        .collect();
    assert!(values.len() <= 1, "one correlation at most: {values:?}");
    values.first().map(|v| v.to_string())
}

async fn connect(
    client: &mut AuthorizationClient<Channel>,
    from: &str,
    host: &str,
    headers: &[(&str, &str)],
) -> CheckResponse {
    client.check(http_check(from, "CONNECT", host, headers)).await.unwrap().into_inner()
}

/// What the gateway's internal tunnel listener sends: no identity, the correlation as the
/// destination address, the SNI (if any) as destination.service.
async fn tunnel(client: &mut AuthorizationClient<Channel>, corr: &str, sni: &str, kind: &str) -> CheckResponse {
    let (ip, port) = corr.rsplit_once(':').unwrap();
    let mut req = tonic::Request::new(network_check("", sni, ip, port.parse().unwrap()));
    req.metadata_mut().insert("x-egressd-check", kind.parse().unwrap());
    client.check(req).await.unwrap().into_inner()
}

fn code(resp: &CheckResponse) -> i32 {
    resp.status.as_ref().unwrap().code
}

#[tokio::test]
async fn a_connect_answer_carries_a_fresh_correlation_and_a_clients_own_is_never_used() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    let a = connect(&mut client, PAY, "api.stripe.com:443", &[("x-egress-corr", "127.0.0.1:1")]).await;
    let b = connect(&mut client, PAY, "api.stripe.com:443", &[]).await;
    let (ca, cb) = (correlation(&a).expect("set"), correlation(&b).expect("set"));
    assert_ne!(ca, cb);
    assert_ne!(ca, "127.0.0.1:1", "the client's value is overwritten");
    // Plain requests get none, and a client's is removed before the request goes on.
    let get = client.check(http_check(PAY, "GET", "api.stripe.com", &[("x-egress-corr", "127.0.0.1:1")])).await;
    let get = get.unwrap().into_inner();
    assert_eq!(correlation(&get), None);
    let Some(check_response::HttpResponse::OkResponse(ok)) = &get.http_response else { panic!() };
    assert!(ok.headers_to_remove.contains(&"x-egress-corr".to_string()));
    // A denied CONNECT registers nothing.
    assert_eq!(correlation(&connect(&mut client, PAY, "evil.example.org:443", &[]).await), None);
}

#[tokio::test]
async fn the_tunnel_must_start_with_tls_naming_the_connect_host() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    let issuer = client.clone();
    let corr = || {
        let mut c = issuer.clone();
        async move { correlation(&connect(&mut c, PAY, "api.stripe.com:443", &[]).await).unwrap() }
    };
    let ok = tunnel(&mut client, &corr().await, "API.Stripe.com", "tunnel-tls").await;
    assert_eq!((code(&ok), meta(&ok, "reason")), (0, "tunnel-verified".into()));
    let c = corr().await;
    let fronted = tunnel(&mut client, &c, "evil.example.org", "tunnel-tls").await;
    assert_eq!((code(&fronted), meta(&fronted, "reason")), (7, "sni-mismatch".into()));
    assert_eq!(meta(&fronted, "service"), "payments");
    let replay = tunnel(&mut client, &c, "api.stripe.com", "tunnel-tls").await;
    assert_eq!((code(&replay), meta(&replay, "reason")), (7, "unknown-correlation".into()), "one check per CONNECT");
    let no_sni = tunnel(&mut client, &corr().await, "", "tunnel-tls").await;
    assert_eq!((code(&no_sni), meta(&no_sni, "reason")), (7, "sni-missing".into()));
    let plain = tunnel(&mut client, &corr().await, "", "tunnel-raw").await;
    assert_eq!((code(&plain), meta(&plain, "reason")), (7, "not-tls".into()));
    let forged = tunnel(&mut client, "127.9.9.9:77", "api.stripe.com", "tunnel-tls").await;
    assert_eq!((code(&forged), meta(&forged, "reason")), (7, "unknown-correlation".into()), "fails closed");
}

#[tokio::test]
async fn a_dry_run_service_lets_the_mismatch_through_and_records_it() {
    let (_server, mut client) = serve(Telemetry::metrics_only()).await;
    // A would-deny CONNECT goes through, so its tunnel is checked too.
    let would = connect(&mut client, CI, "evil.example.org:443", &[]).await;
    assert_eq!(meta(&would, "decision"), "would-deny");
    let c = correlation(&would).expect("a would-deny CONNECT carries a correlation");
    let r = tunnel(&mut client, &c, "other.example.org", "tunnel-tls").await;
    assert_eq!((code(&r), meta(&r, "decision"), meta(&r, "reason")), (0, "would-deny".into(), "sni-mismatch".into()));
    let c = correlation(&connect(&mut client, CI, "github.com:443", &[]).await).unwrap();
    let r = tunnel(&mut client, &c, "evil.example.org", "tunnel-tls").await;
    assert_eq!((code(&r), meta(&r, "decision"), meta(&r, "reason")), (0, "would-deny".into(), "sni-mismatch".into()));
}

#[tokio::test]
async fn both_decisions_are_in_one_trace_with_the_correlation() {
    let collector = Collector::start().await;
    let config = TelemetryConfig { otlp: Some(OtlpConfig::new(collector.endpoint(), "egressd")), ..Default::default() };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let (_server, mut client) = serve(telemetry).await;
    let c = correlation(&connect(&mut client, PAY, "api.stripe.com:443", &[]).await).unwrap();
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
