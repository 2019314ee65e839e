//! The Check service over real gRPC: a tonic client calls `egressd::server::serve` on loopback with
//! HTTP (ext_authz HTTP filter) and network (ext_authz network filter) CheckRequests shaped like the
//! ones Envoy 1.40 sends (see shared envoy-lab notes), one test per semantic rule.

use std::path::Path;

use envoy_types::pb::envoy::service::auth::v3::attribute_context::TlsSession;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse, check_response};
use tonic::transport::Channel;

use egressd::policy::PolicySource;
use egressd::testing::{http_check, network_check};

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const CI: &str = "spiffe://corp.example/ns/ci/sa/runner";
const CANARY: &str = "spiffe://corp.example/ns/canary/sa/x";

mod support {
    pub mod check;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::server::{TestServer, http_get};

async fn fixture() -> (TestServer, AuthorizationClient<Channel>) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
    let server = TestServer::builder(PolicySource::from_dir(&dir).unwrap()).start().await;
    let client = client(server.grpc).await;
    (server, client)
}

/// (grpc code, decision, reason, rule)
fn summary(resp: &CheckResponse) -> (i32, String, String, String) {
    (resp.code(), resp.decision(), resp.reason(), resp.meta("rule"))
}

fn allowed(rule: &str) -> (i32, String, String, String) {
    (0, "allow".into(), "allowed".into(), rule.into())
}

fn denied(reason: &str, rule: &str) -> (i32, String, String, String) {
    (7, "deny".into(), reason.into(), rule.into())
}

#[tokio::test]
async fn allow_answers_ok_strips_xfcc_and_carries_metadata() {
    let (_s, mut c) = fixture().await;
    let resp = check(&mut c, http_check(PAY, "CONNECT", "api.stripe.com:443", &[])).await;
    assert_eq!(summary(&resp), allowed("payments/allow/0"));
    assert_eq!((resp.meta("service").as_str(), resp.meta("mode").as_str()), ("payments", "enforce"));
    assert!(resp.meta("policy_version").starts_with("sha256:"));
    // The caller's identity and every internal header the answer does not set are removed.
    assert_eq!(resp.removed_headers(), ["x-forwarded-client-cert", "x-egress-tls-name"]);
    // The gateway is told where the request goes: the authorized host and port (and, for this
    // verified CONNECT, what the tunnel filter checks in the tunnel).
    assert_eq!(
        (resp.set_header("x-egress-host").as_deref(), resp.set_header("x-egress-port").as_deref()),
        (Some("api.stripe.com"), Some("443"))
    );
    assert_eq!(resp.tunnel_order().as_deref(), Some("require-matching-sni enforce"), "{resp:?}");
}

#[tokio::test]
async fn default_deny_is_a_403_with_reason() {
    let (_s, mut c) = fixture().await;
    let resp = check(&mut c, http_check(PAY, "GET", "evil.example.org", &[])).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
    let Some(check_response::HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!("{resp:?}") };
    assert_eq!(d.status.unwrap().code, 403);
    assert!(
        d.body.contains("no-matching-allow") && d.body.contains("payments") && d.body.contains("evil.example.org:80"),
        "{}",
        d.body
    );
    let h = d.headers.iter().map(|h| h.header.as_ref().unwrap()).find(|h| h.key == "x-egressd-reason").unwrap();
    assert_eq!(h.value, "no-matching-allow");
}

#[tokio::test]
async fn host_normalization_over_grpc() {
    let (_s, mut c) = fixture().await;
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "API.Stripe.COM.:443", &[])).await),
        allowed("payments/allow/0")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "GET", "bücher.example", &[])).await),
        allowed("payments/allow/2")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "GET", "xn--bcher-kva.example", &[])).await),
        allowed("payments/allow/2")
    );
}

#[tokio::test]
async fn malformed_hosts_are_denied_with_a_reason() {
    let (_s, mut c) = fixture().await;
    let long = format!("{}.example.com", vec!["a"; 130].join("."));
    for host in
        ["user@api.stripe.com", "api stripe.com", "", "api.stripe.com:99999", "api.stripe.com:0", long.as_str(), "a..b"]
    {
        let resp = check(&mut c, http_check(PAY, "GET", host, &[])).await;
        assert_eq!(summary(&resp), denied("malformed-request", ""), "{host:?}");
    }
    let resp = check(&mut c, http_check(PAY, "CONNECT", "api.stripe.com", &[])).await;
    let Some(check_response::HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!() };
    assert!(d.body.contains("CONNECT target has no port"), "{}", d.body);
}

#[tokio::test]
async fn requests_without_attributes_are_denied_not_errors() {
    let (_s, mut c) = fixture().await;
    let resp = check(&mut c, CheckRequest { attributes: None }).await;
    assert_eq!(summary(&resp), denied("malformed-request", ""));
    let resp = check(&mut c, CheckRequest { attributes: Some(AttributeContext::default()) }).await;
    assert_eq!(resp.code(), 7);
}

/// The hard limits of a Check (`authz::limits`): more headers than egressd reads is a
/// malformed-request deny; a message over the size limit is refused before it is parsed, and the
/// connection serves the next Check.
#[tokio::test]
async fn requests_past_the_hard_limits_are_denied_or_refused() {
    use egressd::authz::limits::{MAX_CHECK_REQUEST_BYTES, MAX_HEADERS};
    let (_s, mut c) = fixture().await;
    let names: Vec<String> = (0..=MAX_HEADERS).map(|i| format!("x-h{i}")).collect();
    let headers: Vec<(&str, &str)> = names.iter().map(|n| (n.as_str(), "v")).collect();
    let ok = "api.stripe.com:443";
    let resp = check(&mut c, http_check(PAY, "CONNECT", ok, &headers)).await;
    assert_eq!(summary(&resp), denied("malformed-request", ""));
    let Some(check_response::HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!() };
    assert!(d.body.contains(&format!("more than the {MAX_HEADERS} egressd reads")), "{}", d.body);
    // At the limit: decided as usual.
    let resp = check(&mut c, http_check(PAY, "CONNECT", ok, &headers[..MAX_HEADERS])).await;
    assert_eq!(summary(&resp), allowed("payments/allow/0"));

    let big = "x".repeat(MAX_CHECK_REQUEST_BYTES);
    let err = c.check(http_check(PAY, "CONNECT", ok, &[("x-big", &big)])).await.unwrap_err();
    assert_eq!(err.code(), tonic::Code::OutOfRange, "{err:?}");
    assert!(err.message().contains("decoded message length too large"), "{err:?}");
    assert_eq!(summary(&check(&mut c, http_check(PAY, "CONNECT", ok, &[])).await), allowed("payments/allow/0"));
}

#[tokio::test]
async fn wildcards_ports_and_scheme_defaults() {
    let (_s, mut c) = fixture().await;
    // Plain HTTP to api.stripe.com: port 80 from the scheme, the exact rule wants 443, the wildcard takes it.
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "GET", "api.stripe.com", &[])).await),
        allowed("payments/allow/1")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "GET", "stripe.com", &[])).await),
        denied("no-matching-allow", "")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "pypi.org:443", &[])).await),
        allowed("payments/allow/3/mirrors/0")
    );
    assert_eq!(summary(&check(&mut c, http_check(PAY, "GET", "pypi.org", &[])).await), denied("no-matching-allow", ""));
}

#[tokio::test]
async fn precedence_mesh_then_service_deny_then_allow() {
    let (_s, mut c) = fixture().await;
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "uploads.stripe.com:443", &[])).await),
        denied("service-deny", "payments/deny/0")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "blocked.example.com:443", &[])).await),
        denied("mesh-deny", "mesh/deny/1")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "api.stripe.com:22", &[])).await),
        denied("mesh-deny", "mesh/deny/0")
    );
}

#[tokio::test]
async fn network_checks_by_sni_and_by_ip() {
    let (_s, mut c) = fixture().await;
    // TLS passthrough: SNI in destination.service, port from the destination address.
    assert_eq!(
        summary(&check(&mut c, network_check(PAY, "tls-only.example.com", "127.0.0.1", 443)).await),
        allowed("payments/allow/6")
    );
    // The tls-only rule does not cover HTTPS through CONNECT.
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "tls-only.example.com:443", &[])).await),
        denied("no-matching-allow", "")
    );
    // No SNI: the destination IP, matched by CIDR only.
    assert_eq!(summary(&check(&mut c, network_check(PAY, "", "10.20.3.4", 5432)).await), allowed("payments/allow/4"));
    assert_eq!(
        summary(&check(&mut c, network_check(PAY, "", "10.21.3.4", 5432)).await),
        denied("no-matching-allow", "")
    );
    // tls_session.sni, when Envoy provides it, counts too.
    let mut req = network_check(PAY, "", "127.0.0.1", 443);
    req.attributes.as_mut().unwrap().tls_session = Some(TlsSession { sni: "tls-only.example.com".into() });
    assert_eq!(summary(&check(&mut c, req).await), allowed("payments/allow/6"));
    // A network check answer has no HTTP part.
    assert!(check(&mut c, network_check(PAY, "evil.example.org", "127.0.0.1", 443)).await.http_response.is_none());
}

#[tokio::test]
async fn tls_checks_on_a_gateway_listener_see_the_upstream_port() {
    let (_s, mut c) = fixture().await;
    // The fixture's Gateway: TLS listener 127.0.0.1:10443, dialing upstream port 443.
    assert_eq!(
        summary(&check(&mut c, network_check(PAY, "port443.example.com", "127.0.0.1", 10443)).await),
        allowed("payments/allow/7")
    );
    // The same check on another listener keeps the port it arrived on: 10444 is not 443.
    assert_eq!(
        summary(&check(&mut c, network_check(PAY, "port443.example.com", "127.0.0.1", 10444)).await),
        denied("no-matching-allow", "")
    );
}

#[tokio::test]
async fn cidr_rules_see_ip_literals_not_names() {
    let (_s, mut c) = fixture().await;
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "10.20.0.9:5432", &[])).await),
        allowed("payments/allow/4")
    );
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "db.internal.example:5432", &[])).await),
        denied("no-matching-allow", "")
    );
}

#[tokio::test]
async fn identity_from_principal_or_trusted_xfcc() {
    let (_s, mut c) = fixture().await;
    assert_eq!(
        summary(&check(&mut c, http_check("", "CONNECT", "api.stripe.com:443", &[])).await),
        denied("unauthenticated", "")
    );
    assert_eq!(
        summary(&check(&mut c, http_check("alice", "CONNECT", "api.stripe.com:443", &[])).await),
        denied("unauthenticated", "")
    );
    let foreign = "spiffe://evil.example/ns/payments/sa/api";
    assert_eq!(
        summary(&check(&mut c, http_check(foreign, "CONNECT", "api.stripe.com:443", &[])).await),
        denied("unauthenticated", "")
    );
    let nobody = "spiffe://corp.example/ns/nobody/sa/x";
    assert_eq!(
        summary(&check(&mut c, http_check(nobody, "CONNECT", "api.stripe.com:443", &[])).await),
        denied("unknown-service", "")
    );
    // The fixture trusts XFCC: the last element's URI is the caller.
    let xfcc = format!(
        "By=spiffe://corp.example/gw;URI=spiffe://corp.example/ns/nobody/sa/x,By=spiffe://corp.example/gw;URI={PAY}"
    );
    let resp =
        check(&mut c, http_check("", "CONNECT", "api.stripe.com:443", &[("x-forwarded-client-cert", &xfcc)])).await;
    assert_eq!((summary(&resp), resp.meta("service").as_str()), (allowed("payments/allow/0"), "payments"));
    // The mTLS principal wins over XFCC.
    let resp = check(&mut c, http_check(CI, "CONNECT", "github.com:443", &[("x-forwarded-client-cert", &xfcc)])).await;
    assert_eq!(resp.meta("service"), "ci");
}

#[tokio::test]
async fn untrusted_xfcc_is_ignored() {
    // The example mesh sets trustForwardedClientCert: false.
    let server = TestServer::builder(PolicySource::embedded()).start().await;
    let mut c = client(server.grpc).await;
    let xfcc = "URI=spiffe://corp.example/ns/checkout/sa/web";
    let resp =
        check(&mut c, http_check("", "CONNECT", "hooks.slack.com:443", &[("x-forwarded-client-cert", xfcc)])).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
    let resp =
        check(&mut c, http_check("spiffe://corp.example/ns/checkout/sa/web", "CONNECT", "hooks.slack.com:443", &[]))
            .await;
    assert_eq!(summary(&resp), allowed("checkout/allow/2"));
}

#[tokio::test]
async fn prefix_identities_match_whole_segments() {
    let (_s, mut c) = fixture().await;
    let resp = check(&mut c, http_check(CI, "CONNECT", "github.com:443", &[])).await;
    assert_eq!((resp.code(), resp.meta("service").as_str()), (0, "ci"));
    let resp = check(&mut c, http_check("spiffe://corp.example/ns/cicd/sa/x", "CONNECT", "github.com:443", &[])).await;
    assert_eq!(summary(&resp), denied("unknown-service", ""));
}

#[tokio::test]
async fn dry_run_lets_traffic_through_and_says_would_deny() {
    let (_s, mut c) = fixture().await;
    let resp = check(&mut c, http_check(CI, "CONNECT", "evil.example.org:443", &[])).await;
    assert_eq!(summary(&resp), (0, "would-deny".into(), "no-matching-allow".into(), String::new()));
    assert_eq!(resp.meta("mode"), "dry-run");
    // Mesh-wide denies hold in dry-run.
    assert_eq!(
        summary(&check(&mut c, http_check(CI, "CONNECT", "github.com:22", &[])).await),
        denied("mesh-deny", "mesh/deny/0")
    );
}

#[tokio::test]
async fn canary_is_stable_per_request_id() {
    let (_s, mut c) = fixture().await;
    let mut enforced = 0;
    for i in 0..200 {
        let id = format!("req-{i}");
        let req = || http_check(CANARY, "CONNECT", "evil.example.org:443", &[("x-request-id", id.as_str())]);
        let first = summary(&check(&mut c, req()).await);
        assert_eq!(first, summary(&check(&mut c, req()).await), "same x-request-id, same outcome");
        enforced += usize::from(first.0 == 7);
        assert!(first.1 == "deny" || first.1 == "would-deny");
    }
    // 30% canary: a binomial(200, 0.3) is inside 35..=85 with overwhelming probability.
    assert!((35..=85).contains(&enforced), "{enforced}/200 enforced");
    assert_eq!(
        summary(&check(&mut c, http_check(CANARY, "CONNECT", "ok.example.com:443", &[("x-request-id", "x")])).await).1,
        "allow"
    );
}

#[tokio::test]
async fn expired_allow_is_a_default_deny() {
    let (_s, mut c) = fixture().await;
    assert_eq!(
        summary(&check(&mut c, http_check(PAY, "CONNECT", "old.example.com:443", &[])).await),
        denied("no-matching-allow", "")
    );
}

#[tokio::test]
async fn grpc_health_and_admin_endpoints() {
    let (s, _c) = fixture().await;
    let channel = Channel::from_shared(format!("http://{}", s.grpc)).unwrap().connect().await.unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "envoy.service.auth.v3.Authorization"] {
        let resp = health.check(tonic_health::pb::HealthCheckRequest { service: service.into() }).await.unwrap();
        assert_eq!(resp.into_inner().status, tonic_health::pb::health_check_response::ServingStatus::Serving as i32);
    }
    let (status, body) = http_get(s.admin, "/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, body) = http_get(s.admin, "/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = http_get(s.admin, "/policy").await;
    assert_eq!(status, 200);
    let json: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(json["version"].as_str().unwrap().starts_with("sha256:"));
    let names: Vec<&str> = json["services"].as_array().unwrap().iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["payments", "ci", "canary"]);
}
