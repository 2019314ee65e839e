//! The admin gRPC API over real gRPC: authentication, break-glass grants (decisions, expiry,
//! revocation, persistence across a restart), Explain, the rollback guard tripping and resetting,
//! and rollout status.

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use tonic::Code;
use tonic::transport::Channel;

use egressd::admin::grpc::{connect, pb};
use egressd::admin::tokens::AdminTokens;
use egressd::policy::PolicySource;
use egressd::runtime::breakglass::GrantStore;
use egressd::server::AdminApiConfig;
use egressd::testing::http_check;

mod support {
    pub mod check;
    pub mod eventually;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::eventually::eventually;
use support::server::{TestServer, http_get};

const POLICY: &str = "kind: MeshDefaults
trustDomain: corp.example
deny:
  - host: pastebin.com
    justification: exfiltration channel
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    justification: cards
---
kind: ServicePolicy
service: search
identities: [spiffe://corp.example/ns/search/sa/indexer]
mode: dry-run
allow:
  - host: api.search.test
    justification: index
---
kind: ServicePolicy
service: ledger
identities: [spiffe://corp.example/ns/ledger/sa/a, spiffe://corp.example/ns/ledger/sa/b]
mode: canary
canaryWorkloads: [spiffe://corp.example/ns/ledger/sa/a]
rollbackGuard: {maxDenyRate: 0.5, windowSeconds: 30, minChecks: 10}
allow:
  - host: db.ledger.test
    justification: database
";
const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const SEARCH: &str = "spiffe://corp.example/ns/search/sa/indexer";
const LEDGER_A: &str = "spiffe://corp.example/ns/ledger/sa/a";
const ALICE: &str = "alice-0123456789abcdef";
const TOKENS: &str = "# operators\nalice alice-0123456789abcdef\nbob   bob-0123456789abcdef0\n";

type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<Channel, egressd::admin::tokens::BearerToken>,
>;

async fn serve(grants: GrantStore, window_seconds: u64, tokens: bool) -> TestServer {
    let admin_api = AdminApiConfig {
        tokens: tokens.then(|| Arc::new(AdminTokens::parse("tokens", TOKENS).unwrap())),
        grants: Arc::new(grants),
        rollout_window_seconds: window_seconds,
    };
    let source = PolicySource::from_text("mesh.yaml", POLICY);
    TestServer::builder(source).admin_api(admin_api).start().await
}

async fn admin(server: &TestServer, token: Option<&str>) -> Admin {
    connect(&server.grpc.to_string(), token).await.unwrap()
}

/// A CONNECT to `host` from `from`, on a fresh connection.
async fn connect_as(server: &TestServer, from: &str, host: &str) -> CheckResponse {
    check(&mut client(server.grpc).await, http_check(from, "CONNECT", host, &[])).await
}

fn grant_req(service: &str, to: &str, seconds: u64) -> pb::GrantBreakGlassRequest {
    pb::GrantBreakGlassRequest {
        service: service.into(),
        to: to.into(),
        all: to.is_empty(),
        duration_seconds: seconds,
        reason: "INC-4711: payment provider failover".into(),
    }
}

#[tokio::test]
async fn calls_without_a_valid_token_are_refused() {
    let server = serve(GrantStore::in_memory(3600), 600, true).await;
    for token in [None, Some("wrong-0123456789abcdef"), Some("")] {
        let err = admin(&server, token).await.list_grants(pb::ListGrantsRequest::default()).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{token:?}: {err:?}");
        let err = admin(&server, token).await.grant_break_glass(grant_req("payments", "x.test", 60)).await.unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    assert!(admin(&server, Some(ALICE)).await.list_grants(pb::ListGrantsRequest::default()).await.is_ok());
    // No tokens file: the API is off, whatever the caller presents.
    let closed = serve(GrantStore::in_memory(3600), 600, false).await;
    let err = admin(&closed, Some(ALICE)).await.list_grants(pb::ListGrantsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("--admin-tokens"), "{}", err.message());
}

#[tokio::test]
async fn a_grant_lets_its_destination_through_with_reason_and_grantor_until_revoked() {
    let server = serve(GrantStore::in_memory(3600), 600, true).await;
    assert_eq!(connect_as(&server, PAY, "evil.example.org:443").await.code(), 7);
    let mut a = admin(&server, Some(ALICE)).await;
    let g = a.grant_break_glass(grant_req("payments", "evil.example.org:443", 600)).await.unwrap().into_inner();
    assert_eq!((g.grantor.as_str(), g.host.as_str(), g.port), ("alice", "evil.example.org", 443));

    let resp = connect_as(&server, PAY, "evil.example.org:443").await;
    assert_eq!(resp.code(), 0);
    assert_eq!(resp.reason(), "break-glass");
    assert_eq!(resp.meta("break_glass_grant"), g.id);
    // A grant opens the destination, not the tunnel: the service's tunnelTls (the default,
    // require-matching-sni) still holds, so a fronted tunnel through the grant is cut.
    assert_eq!(resp.tunnel_order().as_deref(), Some("require-matching-sni enforce"));
    assert_eq!(resp.set_header("x-egress-host").as_deref(), Some("evil.example.org"));
    assert_eq!(connect_as(&server, PAY, "evil.example.org:8443").await.code(), 7, "only the granted port");
    assert_eq!(connect_as(&server, SEARCH, "evil.example.org:443").await.code(), 0, "search is dry-run anyway");

    // Explain, against the live policy and grants, says so.
    let ex = a
        .explain(pb::ExplainRequest { from: PAY.into(), to: "evil.example.org:443".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert!(ex.permits && ex.decision == "allow", "{ex:?}");
    assert!(ex.text.contains("break-glass grant") && ex.text.contains("by alice"), "{}", ex.text);

    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("egressd_break_glass_decisions_total{service=\"payments\"} 1"), "{metrics}");

    let revoked = admin(&server, Some("bob-0123456789abcdef0")).await;
    let r = revoked.clone().revoke_grant(pb::RevokeGrantRequest { id: g.id.clone() }).await.unwrap().into_inner();
    assert_eq!(r.revoker, "bob");
    assert_eq!(connect_as(&server, PAY, "evil.example.org:443").await.code(), 7, "revoked: denied again");
    let err = revoked.clone().revoke_grant(pb::RevokeGrantRequest { id: g.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn an_all_destinations_grant_never_opens_a_mesh_wide_deny_nor_fixes_identity() {
    let server = serve(GrantStore::in_memory(3600), 600, true).await;
    let mut a = admin(&server, Some(ALICE)).await;
    a.grant_break_glass(grant_req("payments", "", 600)).await.unwrap();
    assert_eq!(connect_as(&server, PAY, "anything.example.net:443").await.code(), 0);
    let mesh = connect_as(&server, PAY, "pastebin.com:443").await;
    assert_eq!((mesh.code(), mesh.reason().as_str()), (7, "mesh-deny"));
    assert_eq!(connect_as(&server, "spiffe://corp.example/ns/nobody/sa/x", "a.test:443").await.code(), 7);
    // Refusals are clear.
    let bad =
        [grant_req("nosuch", "a.test", 60), grant_req("payments", "a.test", 0), grant_req("payments", "a.test", 7200)];
    for req in bad {
        let err = a.grant_break_glass(req).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    }
    let mut no_reason = grant_req("payments", "a.test", 60);
    no_reason.reason = "  ".into();
    assert!(a.grant_break_glass(no_reason).await.unwrap_err().message().contains("needs a reason"));
}

#[tokio::test]
async fn grants_expire_by_themselves() {
    let server = serve(GrantStore::in_memory(3600), 600, true).await;
    let mut a = admin(&server, Some(ALICE)).await;
    a.grant_break_glass(grant_req("payments", "evil.example.org", 1)).await.unwrap();
    assert_eq!(connect_as(&server, PAY, "evil.example.org:443").await.code(), 0);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_eq!(connect_as(&server, PAY, "evil.example.org:443").await.code(), 7, "expired");
    assert!(a.list_grants(pb::ListGrantsRequest::default()).await.unwrap().into_inner().grants.is_empty());
    let all = a.list_grants(pb::ListGrantsRequest { include_inactive: true }).await.unwrap().into_inner().grants;
    assert_eq!(all.len(), 1, "expired grants stay listed for a day");
}

#[tokio::test]
async fn grants_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("break-glass.json");
    let now = egressd::clock::unix_now();
    let id = {
        let server = serve(GrantStore::open(&state, 3600, now).unwrap(), 600, true).await;
        let g =
            admin(&server, Some(ALICE)).await.grant_break_glass(grant_req("payments", "evil.example.org", 600)).await;
        g.unwrap().into_inner().id
    };
    assert!(!dir.path().join("break-glass.json.tmp").exists(), "written atomically, no leftovers");
    let restarted = serve(GrantStore::open(&state, 3600, now).unwrap(), 600, true).await;
    let resp = connect_as(&restarted, PAY, "evil.example.org:443").await;
    assert_eq!((resp.code(), resp.meta("break_glass_grant")), (0, id));
    // A damaged state file is an error with its path, not silently empty grants.
    std::fs::write(&state, "{not json").unwrap();
    let err = GrantStore::open(&state, 3600, now).err().unwrap().to_string();
    assert!(err.contains("break-glass.json is not valid"), "{err}");
}

#[tokio::test]
async fn the_rollback_guard_trips_on_a_deny_spike_and_resets() {
    let server = serve(GrantStore::in_memory(3600), 600, true).await;
    // ledger is a canary enforced for workload `a`: its denies are enforced.
    assert_eq!(connect_as(&server, LEDGER_A, "db.ledger.test:443").await.code(), 0);
    for _ in 0..12 {
        assert_eq!(connect_as(&server, LEDGER_A, "unknown.example.net:443").await.code(), 7);
    }
    // The tracker samples once a second; the deny rate (12 of 13) passes 0.5.
    let resp = eventually("the rollback guard to trip", Duration::from_secs(5), || async {
        let resp = connect_as(&server, LEDGER_A, "unknown.example.net:443").await;
        (resp.code() == 0).then_some(resp)
    })
    .await;
    assert_eq!(resp.decision(), "would-deny", "dry-run now");
    let (_, policy) = http_get(server.admin, "/policy").await;
    let policy: serde_json::Value = serde_json::from_str(&policy).unwrap();
    assert!(policy["rollbackGuardTripped"]["ledger"]["denyRate"].as_f64().unwrap() > 0.5, "{policy}");
    let mut a = admin(&server, Some(ALICE)).await;
    let status = a.rollout_status(pb::RolloutStatusRequest {}).await.unwrap().into_inner();
    let ledger = status.services.iter().find(|s| s.service == "ledger").unwrap();
    assert!(ledger.guard_tripped && ledger.effective_mode == "dry-run" && !ledger.ready, "{ledger:?}");
    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("egressd_rollback_guard_trips_total 1"), "{metrics}");

    let reset = a.reset_rollback_guard(pb::ResetRollbackGuardRequest { service: "ledger".into() }).await.unwrap();
    assert!(reset.into_inner().was_tripped);
    assert_eq!(connect_as(&server, LEDGER_A, "unknown.example.net:443").await.code(), 7, "enforced again");
}

#[tokio::test]
async fn rollout_status_says_when_a_dry_run_service_is_ready() {
    let server = serve(GrantStore::in_memory(3600), 2, true).await;
    let mut a = admin(&server, Some(ALICE)).await;
    // search: clean traffic for longer than the 2 s window.
    for _ in 0..4 {
        connect_as(&server, SEARCH, "api.search.test:443").await;
        tokio::time::sleep(Duration::from_millis(900)).await;
    }
    let status = a.rollout_status(pb::RolloutStatusRequest {}).await.unwrap().into_inner();
    let search = status.services.iter().find(|s| s.service == "search").unwrap().clone();
    assert_eq!((search.mode.as_str(), search.next_step.as_str()), ("dry-run", "canary"));
    assert!(search.ready && search.would_denies == 0 && search.checks >= 1, "{search:?}");
    // One would-deny makes it not ready.
    let would = connect_as(&server, SEARCH, "unknown.example.net:443").await;
    assert_eq!(would.decision(), "would-deny");
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let status = a.rollout_status(pb::RolloutStatusRequest {}).await.unwrap().into_inner();
    let search = status.services.iter().find(|s| s.service == "search").unwrap();
    assert!(!search.ready && search.would_denies >= 1, "{search:?}");
    let payments = status.services.iter().find(|s| s.service == "payments").unwrap();
    assert_eq!((payments.next_step.as_str(), payments.ready), ("", false));
}

#[tokio::test]
async fn rules_count_their_hits_on_the_admin_port_and_in_metrics_and_restart_with_the_version() {
    let server = serve(GrantStore::in_memory(3600), 600, false).await;
    for _ in 0..3 {
        assert_eq!(connect_as(&server, PAY, "api.stripe.com:443").await.code(), 0);
    }
    assert_eq!(connect_as(&server, PAY, "pastebin.com:443").await.code(), 7);
    assert_eq!(connect_as(&server, PAY, "elsewhere.test:443").await.code(), 7, "default deny: no rule");

    let (status, body) = http_get(server.admin, "/rules").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rule = |id: &str| doc["rules"].as_array().unwrap().iter().find(|r| r["id"] == id).cloned().unwrap();
    let stripe = rule("payments/allow/0");
    assert_eq!(stripe["hits"], 3, "{stripe}");
    assert_eq!(stripe["key"], "api.stripe.com");
    assert_eq!(stripe["justification"], "cards");
    assert!(stripe["location"].as_str().unwrap().starts_with("mesh.yaml:"), "{stripe}");
    assert!(stripe["lastHit"].as_str().is_some_and(|t| t.ends_with('Z')), "{stripe}");
    assert_eq!(rule("mesh/deny/0")["hits"], 1);
    assert_eq!(rule("search/allow/0")["hits"], 0);
    assert!(rule("search/allow/0")["lastHit"].is_null());
    assert_eq!(doc["version"].as_str(), Some(server.policy.load().version.as_str()));

    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains("egressd_rule_hits_total{service=\"payments\",rule=\"payments/allow/0\"} 3"), "{metrics}");
    assert!(metrics.contains("egressd_rule_hits_total{service=\"(mesh)\",rule=\"mesh/deny/0\"} 1"), "{metrics}");
    assert!(!metrics.contains("rule=\"search/allow/0\""), "rules without hits are not listed");

    // A new version counts from zero.
    let source = PolicySource::from_text("mesh.yaml", &format!("{POLICY}\n# edited\n"));
    server.policy.store(Arc::new(egressd::policy::compile(&source, 0).unwrap()));
    let (_, body) = http_get(server.admin, "/rules").await;
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["rules"].as_array().unwrap().iter().map(|r| r["hits"].as_u64().unwrap()).sum::<u64>(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_flow_table_alone_is_counted_by_the_check_path_and_read_whole_on_the_admin_port() {
    use egressd::flows::live::LiveFlows;
    use egressd::telemetry::{Telemetry, TelemetryConfig};
    let config = TelemetryConfig { flows: Some(LiveFlows::shared(1000)), ..Default::default() };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let admin_api = AdminApiConfig {
        tokens: Some(Arc::new(AdminTokens::parse("tokens", TOKENS).unwrap())),
        grants: Arc::new(GrantStore::in_memory(3600)),
        rollout_window_seconds: 600,
    };
    let source = PolicySource::from_text("mesh.yaml", POLICY);
    let server = TestServer::builder(source).telemetry(telemetry).admin_api(admin_api).start().await;
    // Repeats on several connections (so several Check threads), a dry-run would-deny, a deny,
    // a break-glass allow, and an unauthenticated caller (nobody's flow).
    let mut sends = Vec::new();
    for _ in 0..4 {
        let grpc = server.grpc;
        sends.push(tokio::spawn(async move {
            let mut c = client(grpc).await;
            for _ in 0..25 {
                assert_eq!(check(&mut c, http_check(PAY, "CONNECT", "api.stripe.com:443", &[])).await.code(), 0);
            }
        }));
    }
    for s in sends {
        s.await.unwrap();
    }
    assert_eq!(connect_as(&server, SEARCH, "elsewhere.test:443").await.decision(), "would-deny");
    assert_eq!(connect_as(&server, PAY, "pastebin.com:443").await.code(), 7);
    let mut a = admin(&server, Some(ALICE)).await;
    let g = a.grant_break_glass(grant_req("payments", "evil.example.org:443", 600)).await.unwrap().into_inner();
    assert_eq!(connect_as(&server, PAY, "evil.example.org:443").await.reason(), "break-glass");
    let stranger = "spiffe://other.example/ns/x/sa/y";
    assert_eq!(connect_as(&server, stranger, "api.stripe.com:443").await.code(), 7);

    // Read at once: the table takes in every thread's pending counts when it is read.
    let (status, body) = http_get(server.admin, "/flows").await;
    assert_eq!(status, 200, "{body}");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    let flows = doc["flows"].as_array().unwrap();
    let flow = |host: &str| flows.iter().find(|f| f["host"] == host).unwrap_or_else(|| panic!("{host}: {body}"));
    let stripe = flow("api.stripe.com");
    assert_eq!((stripe["service"].as_str(), stripe["hits"].as_u64()), (Some("payments"), Some(100)), "{stripe}");
    assert_eq!(stripe["workloads"], serde_json::json!([PAY]));
    assert_eq!(stripe["decisions"][0]["rule"], "payments/allow/0");
    assert_eq!(flow("elsewhere.test")["decisions"][0]["decision"], "would-deny");
    assert_eq!(flow("pastebin.com")["decisions"][0]["reason"], "mesh-deny");
    assert_eq!(flow("evil.example.org")["decisions"][0]["rule"], g.id, "a break-glass decision names its grant");
    assert_eq!(flows.len(), 4, "the unauthenticated caller is nobody's flow: {body}");
    assert_eq!(doc["dropped"], 0);
}
