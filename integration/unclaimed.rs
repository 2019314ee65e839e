//! MeshDefaults `unclaimedIdentities: observe` over real gRPC: a caller in the trust domain that
//! no service claims is let through as a would-deny (answered from the cache like any permitted
//! answer), mesh-wide denies still deny it, and callers that do not authenticate stay denied.

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;

use egressd::policy::PolicySource;
use egressd::testing::{http_check, network_check};

mod support {
    pub mod check;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::server::TestServer;

const NOBODY: &str = "spiffe://corp.example/ns/nobody/sa/x";

/// The semantics fixture, observing unclaimed callers.
fn observing() -> PolicySource {
    let fixture = include_str!("fixtures/semantics.yaml");
    let text = fixture.replacen("mode: enforce\n", "mode: enforce\nunclaimedIdentities: observe\n", 1);
    assert_ne!(text, fixture, "the fixture's MeshDefaults says `mode: enforce`");
    PolicySource::from_text("observe.yaml", &text)
}

/// (grpc code, decision, reason, rule, service, mode) of an answer.
type Summary = (i32, String, String, String, String, String);

fn summary(resp: &CheckResponse) -> Summary {
    (resp.code(), resp.decision(), resp.reason(), resp.meta("rule"), resp.meta("service"), resp.meta("mode"))
}

/// An answer's summary for a caller no service claims (its `service` is always empty).
fn expect(code: i32, decision: &str, reason: &str, rule: &str, mode: &str) -> Summary {
    (code, decision.into(), reason.into(), rule.into(), String::new(), mode.into())
}

#[tokio::test]
async fn an_unclaimed_caller_is_let_through_as_a_would_deny() {
    let server = TestServer::builder(observing()).start().await;
    let mut c = client(server.grpc).await;
    let req = http_check(NOBODY, "CONNECT", "evil.example.org:443", &[]);
    let first = check(&mut c, req.clone()).await;
    assert_eq!(summary(&first), expect(0, "would-deny", "unknown-service", "", "dry-run"));
    // A permitted answer: the gateway is told where the request goes, and the caller's identity
    // does not leave the mesh.
    assert_eq!(
        (first.set_header("x-egress-host").as_deref(), first.set_header("x-egress-port").as_deref()),
        (Some("evil.example.org"), Some("443"))
    );
    assert!(first.removed_headers().iter().any(|h| h == "x-forwarded-client-cert"), "{first:?}");
    // No service's `tunnelTls` applies to this tunnel: the filter lets it through unread.
    assert_eq!(first.tunnel_order().as_deref(), Some("off"));
    // The second answer comes from the answer cache; it must be the same answer.
    assert_eq!(check(&mut c, req).await, first);

    // A network (TLS by SNI) check: the answer's core alone.
    let resp = check(&mut c, network_check(NOBODY, "evil.example.org", "127.0.0.1", 10443)).await;
    assert_eq!(summary(&resp), expect(0, "would-deny", "unknown-service", "", "dry-run"));
}

#[tokio::test]
async fn mesh_denies_and_authentication_still_hold() {
    let server = TestServer::builder(observing()).start().await;
    let mut c = client(server.grpc).await;
    let resp = check(&mut c, http_check(NOBODY, "CONNECT", "api.stripe.com:22", &[])).await;
    assert_eq!(summary(&resp), expect(7, "deny", "mesh-deny", "mesh/deny/0", "dry-run"));
    let resp = check(&mut c, http_check(NOBODY, "GET", "blocked.example.com", &[])).await;
    assert_eq!(summary(&resp), expect(7, "deny", "mesh-deny", "mesh/deny/1", "dry-run"));
    for caller in ["spiffe://evil.example/ns/nobody/sa/x", "alice", ""] {
        let resp = check(&mut c, http_check(caller, "CONNECT", "evil.example.org:443", &[])).await;
        assert_eq!(summary(&resp), expect(7, "deny", "unauthenticated", "", "none"), "{caller:?}");
    }
}
