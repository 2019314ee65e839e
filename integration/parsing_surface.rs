//! The parsing surface, attacked: every input egressd reads from a CheckRequest, in the forms a
//! client (or a differential between parsers) could use to slip past a rule, sent over real gRPC
//! to the real server and checked against the README's "Semantics" section. Case classes:
//! authority and Host forms, IP literal forms, IDN and Unicode dot forms, XFCC, SNI versus the
//! destination address, CONNECT forms, and egressd's private headers.

use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::transport::Channel;

use egressd::policy::PolicySource;
use egressd::testing::{http_check, network_check};

mod support {
    pub mod check;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::server::TestServer;

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
/// A dry-run service: everything but mesh-wide denies and malformed requests goes through, so any
/// spelling that dodges a mesh deny shows up as `would-deny` instead of `mesh-deny`.
const OBS: &str = "spiffe://corp.example/ns/observer/sa/x";

const POLICY: &str = r#"kind: MeshDefaults
trustDomain: corp.example
mode: enforce
trustForwardedClientCert: true
deny:
  - cidr: 169.254.169.254/32
    justification: cloud instance metadata
  - host: pastebin.com
    justification: paste site
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    ports: [443]
    justification: cards
  - host: "*.stripe.com"
    justification: other stripe
  - host: bücher.example
    justification: idn
  - cidr: 10.20.0.0/16
    justification: ledger
deny:
  - cidr: 10.20.9.9/32
    justification: the ledger's admin host
---
kind: ServicePolicy
service: observer
identities: [spiffe://corp.example/ns/observer/sa/x]
mode: dry-run
allow:
  - host: github.com
    justification: checkout
"#;

async fn fixture() -> (TestServer, AuthorizationClient<Channel>) {
    let server = TestServer::builder(PolicySource::from_text("surface.yaml", POLICY)).start().await;
    let client = client(server.grpc).await;
    (server, client)
}

/// (decision, reason) of an answer, for table comparisons.
fn outcome(resp: &CheckResponse) -> (String, String) {
    (resp.decision(), resp.reason())
}

/// Runs `(label, request, decision, reason)` cases and reports every mismatch at once.
async fn table(client: &mut AuthorizationClient<Channel>, cases: Vec<(&str, CheckRequest, &str, &str)>) {
    let mut wrong = Vec::new();
    for (label, req, decision, reason) in cases {
        let got = outcome(&check(client, req).await);
        if got != (decision.to_string(), reason.to_string()) {
            wrong.push(format!("{label}: expected {decision}/{reason}, got {}/{}", got.0, got.1));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

fn get(principal: &str, host: &str) -> CheckRequest {
    http_check(principal, "GET", host, &[])
}

fn connect(principal: &str, target: &str) -> CheckRequest {
    http_check(principal, "CONNECT", target, &[])
}

#[tokio::test]
async fn authority_and_host_forms() {
    let (_s, mut c) = fixture().await;
    table(
        &mut c,
        vec![
            ("case, trailing dot", connect(PAY, "API.Stripe.COM.:443"), "allow", "allowed"),
            ("leading zeros in the port", connect(PAY, "api.stripe.com:0443"), "allow", "allowed"),
            ("two ports", connect(PAY, "api.stripe.com:443:443"), "deny", "malformed-request"),
            ("signed port", connect(PAY, "api.stripe.com:+443"), "deny", "malformed-request"),
            ("empty port", connect(PAY, "api.stripe.com:"), "deny", "malformed-request"),
            ("port 0", connect(PAY, "api.stripe.com:0"), "deny", "malformed-request"),
            ("port 65536", connect(PAY, "api.stripe.com:65536"), "deny", "malformed-request"),
            ("userinfo", get(PAY, "user@a.stripe.com"), "deny", "malformed-request"),
            ("userinfo after a backslash", get(PAY, "a.stripe.com\\@evil.test"), "deny", "malformed-request"),
            ("percent-encoded dot", get(PAY, "a%2estripe.com"), "deny", "malformed-request"),
            ("NUL", get(PAY, "a.stripe.com\0.evil.test"), "deny", "malformed-request"),
            ("tab", get(PAY, "a.stripe.com\t"), "deny", "malformed-request"),
            ("two Host values joined", get(PAY, "a.stripe.com,evil.test"), "deny", "malformed-request"),
            ("a literal wildcard", get(PAY, "*.stripe.com"), "deny", "malformed-request"),
            ("empty label", get(PAY, "a..stripe.com"), "deny", "malformed-request"),
            ("two trailing dots", get(PAY, "a.stripe.com.."), "deny", "malformed-request"),
            ("a path in the authority", get(PAY, "a.stripe.com/x"), "deny", "malformed-request"),
            ("wildcard needs a label", get(PAY, "stripe.com"), "deny", "no-matching-allow"),
            ("suffix lookalike", get(PAY, "a.evilstripe.com"), "deny", "no-matching-allow"),
        ],
    )
    .await;
    // An empty `host` falls back to the :authority header, then Host: still decided, never guessed.
    let mut req = http_check(PAY, "GET", "", &[(":authority", "evil.test")]);
    assert_eq!(outcome(&check(&mut c, req.clone()).await), ("deny".into(), "no-matching-allow".into()));
    req = http_check(PAY, "GET", "", &[]);
    assert_eq!(outcome(&check(&mut c, req).await), ("deny".into(), "malformed-request".into()));
}

#[tokio::test]
async fn ip_literal_forms() {
    let (_s, mut c) = fixture().await;
    table(
        &mut c,
        vec![
            ("dotted quad", get(OBS, "169.254.169.254"), "deny", "mesh-deny"),
            ("trailing dot", get(OBS, "169.254.169.254."), "deny", "mesh-deny"),
            ("with a port", get(OBS, "169.254.169.254:80"), "deny", "mesh-deny"),
            ("decimal", get(OBS, "2852039166"), "deny", "malformed-request"),
            ("octal", get(OBS, "0251.0376.0251.0376"), "deny", "malformed-request"),
            ("hex octets", get(OBS, "0xa9.0xfe.0xa9.0xfe"), "deny", "malformed-request"),
            ("hex", get(OBS, "0xA9FEA9FE"), "deny", "malformed-request"),
            ("short", get(OBS, "169.254.43518"), "deny", "malformed-request"),
            ("leading zeros", get(OBS, "169.254.169.0254"), "deny", "malformed-request"),
            ("IPv4-mapped", get(OBS, "[::ffff:169.254.169.254]"), "deny", "mesh-deny"),
            ("IPv4-mapped, hex", get(OBS, "[::ffff:a9fe:a9fe]:80"), "deny", "mesh-deny"),
            ("IPv4-mapped, long", get(OBS, "[0:0:0:0:0:ffff:169.254.169.254]"), "deny", "mesh-deny"),
            ("IPv4-mapped, bare", get(OBS, "::ffff:169.254.169.254"), "deny", "mesh-deny"),
            ("IPv4-compatible", get(OBS, "[::169.254.169.254]"), "deny", "mesh-deny"),
            ("NAT64", get(OBS, "[64:ff9b::a9fe:a9fe]"), "deny", "mesh-deny"),
            ("zone id", get(OBS, "[fe80::1%25eth0]"), "deny", "malformed-request"),
            ("mapped with a zone id", get(OBS, "[::ffff:169.254.169.254%eth0]"), "deny", "malformed-request"),
            ("mapped service deny", connect(PAY, "[::ffff:10.20.9.9]:5432"), "deny", "service-deny"),
            ("mapped allow", connect(PAY, "[::ffff:10.20.1.1]:5432"), "allow", "allowed"),
            ("IPv6 stays IPv6", connect(PAY, "[::1]:5432"), "deny", "no-matching-allow"),
        ],
    )
    .await;
    // A mapped destination is authorized, and dialed, as its IPv4 address.
    let resp = check(&mut c, connect(PAY, "[::ffff:10.20.1.1]:5432")).await;
    assert_eq!(resp.set_header("x-egress-host").as_deref(), Some("10.20.1.1"));
    let resp = check(&mut c, connect(OBS, "[2001:db8::1]:443")).await;
    assert_eq!(
        resp.set_header("x-egress-host").as_deref(),
        Some("[2001:db8::1]"),
        "IPv6 in brackets for the forward proxy"
    );
    // Network checks without SNI are decided by the destination address, canonical too.
    for addr in ["169.254.169.254", "::ffff:169.254.169.254"] {
        let resp = check(&mut c, network_check(OBS, "", addr, 443)).await;
        assert_eq!(outcome(&resp), ("deny".into(), "mesh-deny".into()), "{addr}");
    }
}

#[tokio::test]
async fn idn_and_unicode_dot_forms() {
    let (_s, mut c) = fixture().await;
    table(
        &mut c,
        vec![
            ("IDN", connect(PAY, "bücher.example:443"), "allow", "allowed"),
            ("IDN, upper case", connect(PAY, "BÜCHER.example:443"), "allow", "allowed"),
            ("IDN as punycode", connect(PAY, "xn--bcher-kva.example:443"), "allow", "allowed"),
            ("ideographic full stops", connect(PAY, "api\u{3002}stripe\u{3002}com:443"), "allow", "allowed"),
            ("mesh deny, upper case", get(OBS, "PASTEBIN.COM."), "deny", "mesh-deny"),
            ("mesh deny, ideographic dot", get(OBS, "pastebin\u{3002}com"), "deny", "mesh-deny"),
            ("mesh deny, fullwidth dot", get(OBS, "pastebin\u{ff0e}com"), "deny", "mesh-deny"),
            ("mesh deny, halfwidth dot", get(OBS, "pastebin\u{ff61}com"), "deny", "mesh-deny"),
            (
                "mesh deny, fullwidth letters",
                get(OBS, "\u{ff50}\u{ff41}\u{ff53}\u{ff54}\u{ff45}bin.com"),
                "deny",
                "mesh-deny",
            ),
            ("mesh deny, soft hyphen", get(OBS, "paste\u{ad}bin.com"), "deny", "mesh-deny"),
            ("fullwidth digits", get(OBS, "\u{ff11}\u{ff16}\u{ff19}.254.169.254"), "deny", "malformed-request"),
            ("not valid IDNA", get(OBS, "a\u{2488}b.com"), "deny", "malformed-request"),
        ],
    )
    .await;
    // Whatever the spelling, the gateway is told the canonical name it may dial.
    let resp = check(&mut c, connect(PAY, "api\u{3002}stripe\u{3002}com:443")).await;
    assert_eq!(resp.set_header("x-egress-host").as_deref(), Some("api.stripe.com"));
    let resp = check(&mut c, connect(PAY, "BÜCHER.example:443")).await;
    assert_eq!(resp.set_header("x-egress-host").as_deref(), Some("xn--bcher-kva.example"));
    // A zero-width space is not a way around a deny: dropped or refused, never a new name.
    let resp = check(&mut c, get(OBS, "paste\u{200b}bin.com")).await;
    assert_eq!(resp.decision(), "deny", "{:?}", outcome(&resp));
}

fn with_xfcc(xfcc: &str, principal: &str) -> CheckRequest {
    http_check(principal, "CONNECT", "api.stripe.com:443", &[("x-forwarded-client-cert", xfcc)])
}

#[tokio::test]
async fn xfcc_forms() {
    let (_s, mut c) = fixture().await;
    let sidecar = "By=spiffe://corp.example/ns/observer/sa/sidecar;Hash=abc;Subject=\"\";URI=";
    table(
        &mut c,
        vec![
            ("nearest hop", with_xfcc(&format!("{sidecar}{PAY}"), ""), "allow", "allowed"),
            (
                "an earlier hop is not the caller",
                with_xfcc(&format!("URI={PAY},{sidecar}{OBS}"), ""),
                "would-deny",
                "no-matching-allow",
            ),
            (
                "injected open quote",
                with_xfcc(&format!("URI={PAY};Subject=\",{sidecar}{OBS}"), ""),
                "deny",
                "unauthenticated",
            ),
            (
                "escaped quote balancing a prefix",
                with_xfcc(&format!("URI={PAY};Subject=\"x,By=a;Subject=\"CN=\\\"q\";URI={OBS}"), ""),
                "deny",
                "unauthenticated",
            ),
            ("no URI in the nearest hop", with_xfcc(&format!("URI={PAY},Hash=abc"), ""), "deny", "unauthenticated"),
            ("two URIs in the nearest hop", with_xfcc(&format!("URI={OBS};URI={PAY}"), ""), "deny", "unauthenticated"),
            ("quoted URI", with_xfcc(&format!("Hash=abc;URI=\"{PAY}\""), ""), "allow", "allowed"),
            ("the peer principal wins", with_xfcc(&format!("URI={PAY}"), OBS), "would-deny", "no-matching-allow"),
            (
                "another trust domain",
                with_xfcc("URI=spiffe://evil.example/ns/payments/sa/api", ""),
                "deny",
                "unauthenticated",
            ),
        ],
    )
    .await;
}

fn sni(principal: &str, name: &str) -> CheckRequest {
    network_check(principal, name, "10.0.0.1", 443)
}

#[tokio::test]
async fn sni_versus_the_destination() {
    let (_s, mut c) = fixture().await;
    table(
        &mut c,
        vec![
            ("SNI decides", sni(PAY, "api.stripe.com"), "allow", "allowed"),
            ("SNI, case and dot", sni(PAY, "API.STRIPE.COM."), "allow", "allowed"),
            ("SNI as an IP literal", sni(OBS, "169.254.169.254"), "deny", "mesh-deny"),
            ("Unicode SNI", sni(PAY, "\u{ff41}pi.stripe.com"), "deny", "malformed-request"),
            ("SNI with a port", sni(PAY, "api.stripe.com:443"), "deny", "malformed-request"),
            ("no SNI: the address", network_check(OBS, "", "169.254.169.254", 443), "deny", "mesh-deny"),
            ("no SNI: mapped address", network_check(OBS, "", "::ffff:a9fe:a9fe", 443), "deny", "mesh-deny"),
            ("no SNI, no address", network_check(OBS, "", "", 0), "deny", "malformed-request"),
        ],
    )
    .await;
}

#[tokio::test]
async fn connect_forms() {
    let (_s, mut c) = fixture().await;
    table(
        &mut c,
        vec![
            ("no port", connect(PAY, "api.stripe.com"), "deny", "malformed-request"),
            ("a path", connect(PAY, "api.stripe.com:443/x"), "deny", "malformed-request"),
            ("a URL", connect(PAY, "http://api.stripe.com:443"), "deny", "malformed-request"),
            ("lower-case method", http_check(PAY, "connect", "api.stripe.com:443", &[]), "allow", "allowed"),
            // One IPv6 address, not host:port: it names no port, and a CONNECT needs one.
            ("IPv6 without brackets", connect(OBS, "2001:db8::1:443"), "deny", "malformed-request"),
            ("IPv6 in brackets", connect(OBS, "[2001:db8::1]:443"), "would-deny", "no-matching-allow"),
        ],
    )
    .await;
}

#[tokio::test]
async fn egressd_private_headers_cannot_be_supplied_by_a_client() {
    let (_s, mut c) = fixture().await;
    let forged = [
        ("x-egress-host", "evil.test"),
        ("x-egress-port", "22"),
        ("x-egress-tunnel", "off"),
        ("x-egress-tls-name", "evil.test"),
        ("x-forwarded-client-cert", "URI=spiffe://corp.example/ns/observer/sa/x"),
    ];
    let resp = check(&mut c, http_check(PAY, "GET", "a.stripe.com", &forged)).await;
    assert_eq!(outcome(&resp), ("allow".into(), "allowed".into()));
    assert_eq!(
        resp.set_header("x-egress-host").as_deref(),
        Some("a.stripe.com"),
        "overwritten with what was authorized"
    );
    assert_eq!(resp.set_header("x-egress-port").as_deref(), Some("80"));
    let removed = resp.removed_headers();
    for h in ["x-egress-tunnel", "x-egress-tls-name", "x-forwarded-client-cert"] {
        assert!(removed.iter().any(|r| r == h), "{h} is removed: {removed:?}");
    }
    // Gateway capabilities come from the Check call's metadata, which only the gateway sets,
    // never from the request's own headers.
    let mut https = http_check(PAY, "GET", "a.stripe.com", &[("x-egressd-upstream-tls", "originate")]);
    if let Some(http) = https.attributes.as_mut().and_then(|a| a.request.as_mut()).and_then(|r| r.http.as_mut()) {
        http.scheme = "https".into();
    }
    assert_eq!(outcome(&check(&mut c, https).await), ("deny".into(), "unsupported-scheme".into()));
}
