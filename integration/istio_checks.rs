//! egressd as the ext_authz server of Istio's egress gateway (examples/istio): the CheckRequests
//! that gateway sends for a sidecar's egress, over real gRPC to an in-process egressd serving the
//! example's policy (`examples/istio/policy/`, trust domain `cluster.local`).
//!
//! How the requests are shaped, and where that comes from:
//! - The route (examples/istio/egress-gateway.yaml, after istio.io's "Egress Gateways" task, its
//!   mutual-TLS variant, and "Egress Gateways with TLS Origination"): sidecar -> egress gateway over
//!   Istio mTLS (DestinationRule `tls.mode: ISTIO_MUTUAL`, `sni:` the external host), the gateway
//!   terminates it. Istio's gateway Service maps 80 -> 8080 and 443 -> 8443, and its Envoy listens
//!   on those target ports.
//! - The check itself: Istio builds an ext_authz HTTP filter and a network filter for an
//!   `envoyExtAuthzGrpc` provider (istio/istio pilot/pkg/security/authz/builder/extauthz.go), with
//!   no initial metadata: egressd never sees its own gateway's capability metadata here.
//! - What Envoy puts in it (envoy source/extensions/filters/common/ext_authz/check_request_utils.cc):
//!   HTTP: `source.principal` / `destination.principal` the URI SANs of the peer's and the local
//!   certificate, `request.http.host` the `:authority`, `scheme` the `:scheme`, `protocol`, `id`
//!   the stream id, and every request header (pseudo-headers included) in `headers`. Network: no
//!   `request`, the TLS server name in `destination.service`, `destination.address` the listener's
//!   own address (the gateway pod's 8443), as the envoy-lab notes observed.
//! - The headers at the gateway: Istio's gateway HTTP connection manager sets `use_remote_address`,
//!   `xff_num_trusted_hops: 0` and `forward_client_cert_details: SANITIZE_SET` with Subject, Cert,
//!   URI and DNS (pilot/pkg/networking/core/gateway_test.go). Envoy then (source/common/http/
//!   conn_manager_utility.cc) overwrites `x-forwarded-proto` with the downstream's security
//!   (`https`: the hop is mTLS), appends the sidecar to `x-forwarded-for`, keeps `:scheme` when the
//!   downstream sent one (HTTP/2: the sidecar's `http`) and otherwise derives it from
//!   `x-forwarded-proto` (HTTP/1.1: `https`), and replaces `x-forwarded-client-cert` with
//!   `By=<gateway SVID>;Hash=<sha256 of the peer cert>;Cert="<url-encoded PEM>";Subject="";URI=<peer SVID>`
//!   (mutateXfccRequestHeader). The sidecar adds `x-request-id`, the B3 trace headers and Istio's
//!   metadata exchange headers `x-envoy-peer-metadata` (base64 of a protobuf Struct of its node
//!   metadata) and `x-envoy-peer-metadata-id` (`sidecar~IP~POD.NAMESPACE~NAMESPACE.svc.cluster.local`),
//!   as they appear in ext_authz request dumps in Istio's issue threads.
//!
//! How egressd reads this gateway: the example's policy describes it as an external Gateway
//! (policy/istio-gateway.yaml, `external: true`), matched by the listener address each check
//! names as its destination:
//! - an HTTP check on its HTTP listener (8080) is decided as `httpUpstream` says the gateway
//!   sends it on, not by `:scheme`: over HTTP/1.1 the hop's mTLS makes `:scheme` `https`, and
//!   egressd's own gateways would have that denied `unsupported-scheme` (no TLS origination
//!   announced: Istio's provider sends no initial metadata);
//! - a network check on its TLS listener (8443) is decided on `tlsUpstreamPort` (443);
//! - answers set no `x-egress-*` routing headers (Istio routes by its VirtualServices and would
//!   send them to the destination) and remove them and XFCC from the request.

use std::collections::HashMap;
use std::path::Path;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, CheckResponse, check_response};
use envoy_types::pb::google::protobuf::{Struct, Value as PbValue, value::Kind};
use prost::Message;
use tonic::transport::Channel;

use egressd::policy::PolicySource;

mod support {
    pub mod check;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::server::TestServer;

/// The example's workload: ServiceAccount `checkout` in namespace `shop`.
const CHECKOUT: &str = "spiffe://cluster.local/ns/shop/sa/checkout";
/// Another workload of the mesh that no ServicePolicy claims.
const INTRUDER: &str = "spiffe://cluster.local/ns/shop/sa/intruder";
/// The egress gateway's own SVID (its ServiceAccount in istio-system).
const GATEWAY: &str = "spiffe://cluster.local/ns/istio-system/sa/istio-egressgateway-service-account";
const SIDECAR_IP: &str = "10.244.1.12";
const GATEWAY_POD_IP: &str = "10.244.2.7";
/// The SHA-256 of the sidecar's certificate, as Envoy writes `Hash=` (hex).
const CERT_HASH: &str = "4f1b2e7d8c9a0b3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c4";
/// A client certificate as Envoy writes `Cert=` (URL-encoded PEM).
const CERT_PEM: &str = "-----BEGIN%20CERTIFICATE-----%0AMIIDSTCCAjGgAwIBAgIQX7w9d2VncmVzc2QtdGVzdDANBgkqhkiG9w0BAQsFADAY%0A-----END%20CERTIFICATE-----%0A";

fn example_policy() -> PolicySource {
    PolicySource::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/istio/policy")).unwrap()
}

/// The example policy with Istio's gateway originating TLS (the "TLS origination at the egress
/// gateway" pattern: a DestinationRule `tls.mode: SIMPLE` on the destination's port 443).
fn originating_tls() -> PolicySource {
    let mut source = example_policy();
    let gateway = source.files.iter_mut().find(|f| f.name.ends_with("istio-gateway.yaml")).unwrap();
    assert!(gateway.text.contains("  protocol: http\n"));
    gateway.text = gateway.text.replace("  protocol: http\n", "  protocol: https\n  port: 443\n");
    let checkout = source.files.iter_mut().find(|f| f.text.contains("service: shop-checkout")).unwrap();
    checkout
        .text
        .push_str("  - host: api.partner.test\n    ports: [443]\n    protocols: [https]\n    justification: test\n");
    source
}

/// The example policy without its description of Istio's gateway (policy/istio-gateway.yaml).
fn without_istio_gateway() -> PolicySource {
    let mut source = example_policy();
    source.files.retain(|f| !f.name.ends_with("istio-gateway.yaml"));
    assert_eq!(source.files.len(), 2);
    source
}

/// The example policy with `trustForwardedClientCert: true`.
fn trusting_xfcc() -> PolicySource {
    let mut source = example_policy();
    let mesh = source.files.iter_mut().find(|f| f.name.ends_with("mesh.yaml")).unwrap();
    assert!(mesh.text.contains("trustForwardedClientCert: false"));
    mesh.text = mesh.text.replace("trustForwardedClientCert: false", "trustForwardedClientCert: true");
    source
}

async fn serve(source: PolicySource) -> (TestServer, AuthorizationClient<Channel>) {
    let server = TestServer::builder(source).start().await;
    let client = client(server.grpc).await;
    (server, client)
}

fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// Standard base64 (RFC 4648, padded), for `x-envoy-peer-metadata`.
fn base64(bytes: &[u8]) -> String {
    const ABC: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, b)| n | (u32::from(*b) << (16 - 8 * i)));
        for i in 0..4 {
            out.push(if i <= chunk.len() { ABC[((n >> (18 - 6 * i)) & 63) as usize] as char } else { '=' });
        }
    }
    out
}

/// The sidecar's node metadata as Istio's metadata exchange sends it: a protobuf Struct, base64.
fn peer_metadata() -> String {
    let text = |s: &str| PbValue { kind: Some(Kind::StringValue(s.to_string())) };
    let fields = [
        ("NAME", "checkout-7d4b9c6f5-x2x9q"),
        ("NAMESPACE", "shop"),
        ("CLUSTER_ID", "Kubernetes"),
        ("SERVICE_ACCOUNT", "checkout"),
        ("WORKLOAD_NAME", "checkout"),
        ("ISTIO_VERSION", "1.27.1"),
        ("MESH_ID", "cluster.local"),
    ];
    let metadata = Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), text(v))).collect() };
    base64(&metadata.encode_to_vec())
}

/// The XFCC an Istio gateway (`SANITIZE_SET`; Subject, Cert, URI, DNS) sets for a peer whose
/// certificate names `uri` (Istio's workload certificates have no DNS SAN and an empty subject).
fn gateway_xfcc(uri: &str) -> String {
    format!("By={GATEWAY};Hash={CERT_HASH};Cert=\"{CERT_PEM}\";Subject=\"\";URI={uri}")
}

/// The HTTP check Istio's egress gateway sends for a sidecar's plaintext request to `authority`:
/// `principal` is the peer's SVID ("" when the hop had no client certificate), `scheme` and
/// `protocol` the hop's (`http` over HTTP/2, `https` over HTTP/1.1). `headers` are added or
/// replace the default ones (an empty value removes one).
fn istio_http_check(
    principal: &str,
    authority: &str,
    scheme: &str,
    protocol: &str,
    headers: &[(&str, &str)],
) -> CheckRequest {
    let mut map: HashMap<String, String> = [
        (":authority", authority.to_string()),
        (":method", "GET".to_string()),
        (":path", "/v1/prices?sku=42".to_string()),
        (":scheme", scheme.to_string()),
        ("user-agent", "checkout/2.3 (okhttp)".to_string()),
        ("accept", "application/json".to_string()),
        ("x-forwarded-proto", "https".to_string()),
        ("x-forwarded-for", SIDECAR_IP.to_string()),
        ("x-request-id", "0c9cbd3a-6a43-4e3f-9d3c-5f1f4b7c2a11".to_string()),
        ("x-envoy-attempt-count", "1".to_string()),
        ("x-envoy-peer-metadata", peer_metadata()),
        (
            "x-envoy-peer-metadata-id",
            format!("sidecar~{SIDECAR_IP}~checkout-7d4b9c6f5-x2x9q.shop~shop.svc.cluster.local"),
        ),
        ("x-b3-traceid", "5b8aa5a2d2c872e8321cf37308d69df2".to_string()),
        ("x-b3-spanid", "051581bf3cb55c13".to_string()),
        ("x-b3-parentspanid", "5b8aa5a2d2c872e8".to_string()),
        ("x-b3-sampled", "1".to_string()),
        ("x-forwarded-client-cert", if principal.is_empty() { String::new() } else { gateway_xfcc(principal) }),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    for (k, v) in headers {
        map.insert(k.to_string(), v.to_string());
    }
    map.retain(|_, v| !v.is_empty());
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                address: Some(socket(SIDECAR_IP, 41234)),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: GATEWAY.to_string(),
                address: Some(socket(GATEWAY_POD_IP, 8080)),
                ..Default::default()
            }),
            request: Some(Request {
                http: Some(HttpRequest {
                    id: "4421856387429398512".to_string(),
                    method: "GET".to_string(),
                    path: "/v1/prices?sku=42".to_string(),
                    host: authority.to_string(),
                    scheme: scheme.to_string(),
                    protocol: protocol.to_string(),
                    headers: map,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// The sidecar's HTTP/2 hop (the example's `h2UpgradePolicy: UPGRADE`): `:scheme: http` kept.
fn http2(principal: &str, authority: &str) -> CheckRequest {
    istio_http_check(principal, authority, "http", "HTTP/2", &[])
}

/// The network check of the gateway's TLS server (`tls.mode: ISTIO_MUTUAL`, port 443 -> listener
/// 8443): the outer SNI is the DestinationRule's `sni`, the application's TLS is opaque inside.
fn istio_tls_check(principal: &str, sni: &str) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                address: Some(socket(SIDECAR_IP, 41236)),
                ..Default::default()
            }),
            destination: Some(Peer {
                principal: GATEWAY.to_string(),
                service: sni.to_string(),
                address: Some(socket(GATEWAY_POD_IP, 8443)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
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

/// The 403 a denied HTTP check answers: its body and `x-egressd-reason`.
fn denied_http(resp: &CheckResponse) -> (String, String) {
    let Some(check_response::HttpResponse::DeniedResponse(d)) = &resp.http_response else { panic!("{resp:?}") };
    assert_eq!(d.status.unwrap().code, 403);
    let reason = d.headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == "x-egressd-reason");
    (d.body.clone(), reason.map(|h| h.value.clone()).unwrap_or_default())
}

#[tokio::test]
async fn plain_http_egress_of_an_allowed_host_is_allowed_and_sent_to_that_host() {
    let (_s, mut c) = serve(example_policy()).await;
    let resp = check(&mut c, http2(CHECKOUT, "api.partner.test")).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"), "{resp:?}");
    assert_eq!((resp.meta("service").as_str(), resp.meta("mode").as_str()), ("shop-checkout", "enforce"));
    // Istio routes by its own VirtualServices: egressd's routing headers would only travel on to
    // the destination, so none is set; the answer removes them (whatever a client sent) and the
    // caller's XFCC, which Istio's gateway does not strip itself.
    assert!(resp.set_header("x-egress-host").is_none() && resp.set_header("x-egress-port").is_none(), "{resp:?}");
    let mut removed = resp.removed_headers();
    removed.sort();
    assert_eq!(
        removed,
        ["x-egress-host", "x-egress-port", "x-egress-tls-name", "x-egress-tunnel", "x-forwarded-client-cert"],
    );

    // The authority with its port, as a sidecar may forward it, is the same destination.
    let resp = check(&mut c, http2(CHECKOUT, "api.partner.test:80")).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"));
    // Another port of the host is not allowed (the rule names 80).
    let resp = check(&mut c, http2(CHECKOUT, "api.partner.test:8080")).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
}

#[tokio::test]
async fn other_destinations_are_denied_with_the_reason() {
    let (_s, mut c) = serve(example_policy()).await;
    let resp = check(&mut c, http2(CHECKOUT, "evil.example.com")).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
    let (body, reason) = denied_http(&resp);
    assert_eq!(reason, "no-matching-allow");
    assert!(body.contains("shop-checkout") && body.contains("evil.example.com:80"), "{body}");

    // A mesh-wide deny names its rule.
    let resp = check(&mut c, http2(CHECKOUT, "pastebin.com")).await;
    assert_eq!(summary(&resp), denied("mesh-deny", "mesh/deny/2"));
    assert_eq!(denied_http(&resp).1, "mesh-deny");
    // The TLS-only host over plain HTTP: the allow names protocol `tls`.
    let resp = check(&mut c, http2(CHECKOUT, "api.stripe.com")).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
}

/// Over an HTTP/1.1 hop the gateway derives `:scheme` from `x-forwarded-proto`, which it has just
/// set to `https` (the hop is mTLS). The external Gateway says the request leaves as plain HTTP,
/// so it is decided as `http` on port 80; without that document the `https` scheme is refused as
/// from any gateway that does not announce TLS origination.
#[tokio::test]
async fn an_http1_hop_arriving_as_https_is_decided_as_the_gateway_sends_it_on() {
    let (_s, mut c) = serve(example_policy()).await;
    let http1 = || istio_http_check(CHECKOUT, "api.partner.test", "https", "HTTP/1.1", &[]);
    let resp = check(&mut c, http1()).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"), "{resp:?}");
    let resp = check(&mut c, istio_http_check(CHECKOUT, "evil.example.com", "https", "HTTP/1.1", &[])).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
    assert!(denied_http(&resp).0.contains("evil.example.com:80"), "decided as http/80");

    let (_s, mut c) = serve(without_istio_gateway()).await;
    let resp = check(&mut c, http1()).await;
    assert_eq!(summary(&resp), denied("unsupported-scheme", ""), "{resp:?}");
}

/// Where Istio's gateway originates TLS (`httpUpstream: {protocol: https, port: 443}`), the plain
/// request the sidecar sent to port 80 is decided as https on 443: the allow of http/80 does not
/// admit it, an allow of https/443 does.
#[tokio::test]
async fn a_gateway_that_originates_tls_has_its_requests_decided_as_https_on_443() {
    let (_s, mut c) = serve(originating_tls()).await;
    let resp = check(&mut c, http2(CHECKOUT, "api.partner.test")).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/2"), "{resp:?}");
    assert!(resp.set_header("x-egress-tls-name").is_none(), "Istio's DestinationRule names the TLS peer");
    let resp = check(&mut c, http2(CHECKOUT, "api.partner.test:80")).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/2"), "the app's :80 leaves on 443");

    let (_s, mut c) = serve(example_policy()).await;
    let resp = check(&mut c, istio_http_check(CHECKOUT, "api.partner.test:443", "http", "HTTP/2", &[])).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""), "plain http on 443 is not the allow");
}

/// A check that did not arrive at the external gateway's HTTP listener (another port of the same
/// pod, e.g. egressd's own gateway beside it) is read as from a gateway that declares nothing.
#[tokio::test]
async fn only_checks_on_the_external_gateways_listener_are_read_by_its_document() {
    let (_s, mut c) = serve(example_policy()).await;
    let mut req = http2(CHECKOUT, "api.partner.test");
    req.attributes.as_mut().unwrap().destination.as_mut().unwrap().address = Some(socket(GATEWAY_POD_IP, 15001));
    let resp = check(&mut c, req).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"), "{resp:?}");
    assert_eq!(resp.set_header("x-egress-host").as_deref(), Some("api.partner.test"), "routing headers set");
}

#[tokio::test]
async fn tls_by_sni_inside_istio_mtls_is_decided_on_the_destinations_port() {
    let (_s, mut c) = serve(example_policy()).await;
    let resp = check(&mut c, istio_tls_check(CHECKOUT, "api.stripe.com")).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/1"), "{resp:?}");
    assert!(resp.http_response.is_none(), "a network check gets no HTTP answer");

    let resp = check(&mut c, istio_tls_check(CHECKOUT, "evil.example.com")).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""));
    let resp = check(&mut c, istio_tls_check(CHECKOUT, "pastebin.com")).await;
    assert_eq!(summary(&resp), denied("mesh-deny", "mesh/deny/2"));
    // An SNI with a Unicode name is malformed (RFC 6066 A-labels only).
    let resp = check(&mut c, istio_tls_check(CHECKOUT, "bücher.example")).await;
    assert_eq!(summary(&resp), denied("malformed-request", ""));
}

/// Without the policy's description of Istio's gateway, the port of a network check is the
/// gateway's own listener (8443, the Service's targetPort for 443), so `ports: [443]` never
/// matches: the reason the example policy names that listener (policy/istio-gateway.yaml).
#[tokio::test]
async fn without_the_gateway_document_a_tls_check_is_decided_on_the_listeners_port_8443() {
    let (_s, mut c) = serve(without_istio_gateway()).await;
    let resp = check(&mut c, istio_tls_check(CHECKOUT, "api.stripe.com")).await;
    assert_eq!(summary(&resp), denied("no-matching-allow", ""), "{resp:?}");
}

#[tokio::test]
async fn callers_without_an_identity_of_the_mesh_are_unauthenticated() {
    let (_s, mut c) = serve(example_policy()).await;
    // No client certificate on the hop (a Gateway server without ISTIO_MUTUAL, e.g. Istio's plain
    // PASSTHROUGH pattern): no principal, no XFCC.
    let resp = check(&mut c, http2("", "api.partner.test")).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
    assert_eq!(denied_http(&resp).1, "unauthenticated");
    let resp = check(&mut c, istio_tls_check("", "api.stripe.com")).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
    // Another trust domain (a federated mesh), or a certificate whose URI SAN is no SPIFFE ID.
    for principal in ["spiffe://other.example/ns/shop/sa/checkout", "checkout.shop.svc.cluster.local"] {
        let resp = check(&mut c, http2(principal, "api.partner.test")).await;
        assert_eq!(summary(&resp), denied("unauthenticated", ""), "{principal}");
        let resp = check(&mut c, istio_tls_check(principal, "api.stripe.com")).await;
        assert_eq!(summary(&resp), denied("unauthenticated", ""), "{principal}");
    }
    // A workload of the mesh that no service claims.
    let resp = check(&mut c, http2(INTRUDER, "api.partner.test")).await;
    assert_eq!(summary(&resp), denied("unknown-service", ""));
}

#[tokio::test]
async fn xfcc_names_the_caller_only_when_the_policy_trusts_it_and_there_is_no_peer() {
    // The example (trustForwardedClientCert: false): an XFCC without a peer is not an identity.
    let (_s, mut c) = serve(example_policy()).await;
    let xfcc = gateway_xfcc(CHECKOUT);
    let resp = check(
        &mut c,
        istio_http_check("", "api.partner.test", "http", "HTTP/2", &[("x-forwarded-client-cert", &xfcc)]),
    )
    .await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
    // The peer is the identity, whatever XFCC says.
    let resp = check(
        &mut c,
        istio_http_check(INTRUDER, "api.partner.test", "http", "HTTP/2", &[("x-forwarded-client-cert", &xfcc)]),
    )
    .await;
    assert_eq!(summary(&resp), denied("unknown-service", ""));

    // Trusted (a hop that terminates mTLS stands between the sidecars and this gateway).
    let (_s, mut c) = serve(trusting_xfcc()).await;
    let with_xfcc = |principal: &str, xfcc: &str| {
        istio_http_check(principal, "api.partner.test", "http", "HTTP/2", &[("x-forwarded-client-cert", xfcc)])
    };
    let resp = check(&mut c, with_xfcc("", &xfcc)).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"), "the URI of the gateway's SANITIZE_SET element");
    let resp = check(&mut c, with_xfcc(INTRUDER, &xfcc)).await;
    assert_eq!(summary(&resp), denied("unknown-service", ""), "a peer principal still wins");
    let resp = check(&mut c, with_xfcc("", &gateway_xfcc("spiffe://other.example/ns/shop/sa/checkout"))).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""), "another trust domain");
    // APPEND_FORWARD chains: only the nearest hop (the last element) is vouched for.
    let chain = format!("{},{}", gateway_xfcc(CHECKOUT), gateway_xfcc(INTRUDER));
    let resp = check(&mut c, with_xfcc("", &chain)).await;
    assert_eq!(summary(&resp), denied("unknown-service", ""), "the nearest hop is the intruder");
    let chain = format!("{},{}", gateway_xfcc(INTRUDER), gateway_xfcc(CHECKOUT));
    let resp = check(&mut c, with_xfcc("", &chain)).await;
    assert_eq!(summary(&resp), allowed("shop-checkout/allow/0"));
    // A client's own text with an open quote that would swallow the hop's comma: no guess.
    let forged = format!("Subject=\"x,{}", gateway_xfcc(CHECKOUT));
    let resp = check(&mut c, with_xfcc("", &forged)).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
    // A network check carries no headers: without a peer it is unauthenticated, trusted or not.
    let resp = check(&mut c, istio_tls_check("", "api.stripe.com")).await;
    assert_eq!(summary(&resp), denied("unauthenticated", ""));
}

#[test]
fn the_base64_helper_is_rfc_4648() {
    assert_eq!(base64(b""), "");
    assert_eq!(base64(b"f"), "Zg==");
    assert_eq!(base64(b"fo"), "Zm8=");
    assert_eq!(base64(b"foo"), "Zm9v");
    assert_eq!(base64(b"foobar"), "Zm9vYmFy");
}
