//! A CONNECT tunnel's check, end to end through the real Envoy 1.40 configured only by egressd's
//! ADS: egressd's CONNECT answer orders the check (`x-egress-tunnel`), the tunnel filter (wasm, in
//! the HTTP listener) judges the tunnel's ClientHello, the gateway's access log (gRPC ALS) carries
//! the verdict back, and egressd records it as the tunnel's own decision: one audit record per
//! tunnel, a child of the CONNECT's decision in the same trace, with the SNI the tunnel named.
//! Decisions: tunnel-verified, sni-mismatch (enforced and dry-run), not-tls. And, over real gRPC,
//! the order each kind of CONNECT answer carries.

mod support {
    pub mod audit_log;
    pub mod check;
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::path::Path;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;

use egressd::policy::PolicySource;
use egressd::testing::http_check;
use support::audit_log::{is, lab_with_audit, records, wait_record};
use support::check::{CheckResponseExt, check, client};
use support::client::exchange;
use support::lab::{CHECKOUT, SEARCH};
use support::server::TestServer;

/// The audit records of the tunnel decisions (they carry `egress.tunnel.start`).
fn tunnel_records(audit: &Path) -> Vec<Value> {
    records(audit).into_iter().filter(|r| r.get("egress.tunnel.start").is_some()).collect()
}

/// The CONNECT's decision record with this request id's tunnel decision.
async fn connect_and_tunnel(audit: &Path, reason: &str) -> (Value, Value) {
    let tunnel = wait_record(audit, &format!("a {reason} tunnel decision"), |r| {
        r.get("egress.tunnel.start").is_some() && is(r, "egress.reason", reason)
    })
    .await;
    let id = tunnel["egress.request_id"].as_str().expect("the tunnel decision names its request").to_string();
    let connect = records(audit)
        .into_iter()
        .find(|r| is(r, "http.request.method", "CONNECT") && is(r, "egress.request_id", &id))
        .expect("the CONNECT's decision was written first");
    (connect, tunnel)
}

fn assert_child_of(tunnel: &Value, connect: &Value) {
    assert_eq!(tunnel["trace_id"], connect["trace_id"], "one trace:\n{tunnel}\n{connect}");
    assert_eq!(tunnel["parent_span_id"], connect["span_id"], "the CONNECT's child:\n{tunnel}\n{connect}");
    assert_ne!(tunnel["span_id"], connect["span_id"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verified_tunnel_is_recorded_once_as_the_connects_child_while_it_is_still_open() {
    // Progress every 200 ms: the decision is recorded from the first report, not again at the
    // second, nor when the tunnel closes.
    let (lab, dir, _tasks) = lab_with_audit(|b| b.progress_every(200)).await;
    let audit = dir.path().join("audit.jsonl");
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let mut inner = lab.upstream_tls().connect(ServerName::try_from("api.partner.test").unwrap(), conn).await.unwrap();
    let (connect, tunnel) = connect_and_tunnel(&audit, "tunnel-verified").await;
    assert!(is(&tunnel, "egress.decision", "allow") && is(&tunnel, "egress.tunnel.start", "tls"), "{tunnel}");
    assert!(is(&tunnel, "egress.sni", "api.partner.test") && is(&tunnel, "server.address", "api.partner.test"));
    assert!(is(&tunnel, "egress.spiffe_id", CHECKOUT) && is(&tunnel, "egress.service", "checkout"), "{tunnel}");
    assert!(is(&tunnel, "egress.check", "network") && tunnel["egress.enforced"] == true, "{tunnel}");
    assert_eq!(tunnel["server.port"], connect["server.port"], "{tunnel}");
    assert_child_of(&tunnel, &connect);
    // The tunnel stays open through more progress reports, then carries a request and closes.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let (status, _) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: api.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200);
    drop(inner);
    let id = tunnel["egress.request_id"].as_str().unwrap().to_string();
    wait_record(&audit, "the tunnel's totals", |r| {
        is(r, "egress.record", "stream-totals") && is(r, "egress.request_id", &id)
    })
    .await;
    let progress = records(&audit).iter().filter(|r| is(r, "egress.record", "stream-progress")).count();
    assert!(progress >= 2, "the tunnel was reported open more than once ({progress})");
    assert_eq!(tunnel_records(&audit).len(), 1, "one decision per tunnel: {:#?}", tunnel_records(&audit));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fronted_tunnel_is_cut_and_recorded_as_a_deny_naming_the_sni() {
    let (lab, dir, _tasks) = lab_with_audit(|b| b).await;
    let audit = dir.path().join("audit.jsonl");
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let fronted = lab.upstream_tls().connect(ServerName::try_from("admin.partner.test").unwrap(), conn).await;
    assert!(fronted.is_err(), "the handshake for the fronted name must not complete");
    let (connect, tunnel) = connect_and_tunnel(&audit, "sni-mismatch").await;
    assert!(is(&connect, "egress.decision", "allow"), "the CONNECT itself was allowed: {connect}");
    assert!(is(&tunnel, "egress.decision", "deny") && tunnel["egress.enforced"] == true, "{tunnel}");
    assert!(is(&tunnel, "egress.sni", "admin.partner.test"), "{tunnel}");
    assert!(is(&tunnel, "server.address", "api.partner.test"), "the host the CONNECT was allowed: {tunnel}");
    let message = tunnel["egress.reason.message"].as_str().unwrap();
    assert!(message.contains("admin.partner.test") && message.contains("api.partner.test"), "{message}");
    assert_child_of(&tunnel, &connect);
    assert_eq!(tunnel_records(&audit).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_services_fronted_tunnel_flows_and_is_recorded_as_would_deny() {
    let (lab, dir, _tasks) = lab_with_audit(|b| b).await;
    let audit = dir.path().join("audit.jsonl");
    let conn = lab.tunnel_to_tls_upstream(&lab.search).await;
    let mut inner =
        lab.upstream_tls().connect(ServerName::try_from("admin.partner.test").unwrap(), conn).await.unwrap();
    let (status, _) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: admin.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "dry-run: the tunnel flows");
    drop(inner);
    let (connect, tunnel) = connect_and_tunnel(&audit, "sni-mismatch").await;
    assert!(is(&tunnel, "egress.decision", "would-deny") && tunnel["egress.enforced"] == false, "{tunnel}");
    assert!(is(&tunnel, "egress.spiffe_id", SEARCH) && is(&tunnel, "egress.mode", "dry-run"), "{tunnel}");
    assert_child_of(&tunnel, &connect);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_tunnel_is_cut_as_not_tls() {
    let (lab, dir, _tasks) = lab_with_audit(|b| b).await;
    let audit = dir.path().join("audit.jsonl");
    let mut conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let got = exchange(&mut conn, "GET / HTTP/1.1\r\nhost: api.partner.test\r\nconnection: close\r\n\r\n").await;
    assert!(got.map(|(status, _)| status == 0).unwrap_or(true), "plaintext never reached the upstream");
    let (_, tunnel) = connect_and_tunnel(&audit, "not-tls").await;
    assert!(is(&tunnel, "egress.decision", "deny") && is(&tunnel, "egress.tunnel.start", "not-tls"), "{tunnel}");
    assert!(tunnel.get("egress.sni").is_none(), "{tunnel}");
}

/// The order is a function of the service and the CONNECT's enforcement alone, the same for
/// every tunnel of a kind (which is why the answer needs no per-tunnel state).
#[tokio::test]
async fn every_permitted_connect_answer_orders_its_tunnels_check() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
    let server = TestServer::builder(PolicySource::from_dir(&dir).unwrap()).start().await;
    let mut c = client(server.grpc).await;
    let mut order = async |from: &str, method: &str, host: &str, headers: &[(&str, &str)]| {
        let resp = check(&mut c, http_check(from, method, host, headers)).await;
        (resp.decision(), resp.tunnel_order())
    };
    const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
    const CI: &str = "spiffe://corp.example/ns/ci/sa/runner";
    let enforce = Some("require-matching-sni enforce".to_string());
    let observe = Some("require-matching-sni observe".to_string());
    assert_eq!(order(PAY, "CONNECT", "api.stripe.com:443", &[]).await, ("allow".into(), enforce.clone()));
    // A client's own order is dropped by the gateway and overwritten here.
    let forged = [("x-egress-tunnel", "off")];
    assert_eq!(order(PAY, "CONNECT", "api.stripe.com:443", &forged).await, ("allow".into(), enforce));
    // A dry-run service's tunnels are judged and reported, never cut; even a would-deny CONNECT's.
    assert_eq!(order(CI, "CONNECT", "github.com:443", &[]).await, ("allow".into(), observe.clone()));
    assert_eq!(order(CI, "CONNECT", "evil.example.org:443", &[]).await, ("would-deny".into(), observe));
    // No tunnel, no order; a denied CONNECT has no tunnel.
    assert_eq!(order(PAY, "GET", "api.stripe.com", &[]).await, ("allow".into(), None));
    assert_eq!(order(PAY, "CONNECT", "evil.example.org:443", &[]).await, ("deny".into(), None));
}
