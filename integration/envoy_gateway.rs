//! Through the real gateway: Envoy 1.40 configured only by egressd's ADS, workloads with SPIFFE
//! SVIDs over mTLS, test FQDNs resolved by a real DNS server, real HTTP and TLS upstreams on
//! 127.0.0.1. Each scenario asserts what the client receives.

mod support {
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod otlp;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use egressd::policy::{GatewaySpec, MtlsPaths};
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use support::client::{
    connect_by_sni, connect_gateway, connect_tunnel, exchange, proxy_get, tls_config, tls_config_h2,
};
use support::eventually::eventually;
use support::lab::{CHECKOUT, GATEWAY_NAME, Lab, SEARCH, atomic_write, gateway_yaml};
use support::otlp::Collector;
use support::pki::Ca;

async fn lab() -> Lab {
    Lab::start().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_plain_http_reaches_the_upstream() {
    let lab = lab().await;
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://api.partner.test:{}/v1/prices", lab.http_upstream.port());
    let (status, resp) = proxy_get(&mut conn, &url).await.unwrap();
    assert_eq!(status, 200, "{resp}\n{}", lab.envoy.log());
    assert!(resp.contains("upstream http host api.partner.test"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_request_gets_403_with_the_reason() {
    let lab = lab().await;
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://admin.partner.test:{}/", lab.http_upstream.port());
    let (status, resp) = proxy_get(&mut conn, &url).await.unwrap();
    assert_eq!(status, 403, "{resp}");
    assert!(resp.to_ascii_lowercase().contains("x-egressd-reason: service-deny"), "{resp}");
    assert!(resp.contains("checkout") && resp.contains("admin.partner.test"), "{resp}");
    assert!(!resp.contains("upstream"), "the upstream was never reached");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_an_allowed_host_completes_tls_with_the_upstream() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let tls = lab.upstream_tls();
    let mut inner =
        tls.connect(ServerName::try_from("api.partner.test").unwrap(), conn).await.expect("TLS through the tunnel");
    let (status, resp) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: api.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200);
    assert!(resp.contains("upstream tls host api.partner.test"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_to_a_denied_host_is_refused() {
    let lab = lab().await;
    let mut conn = lab.as_workload(&lab.checkout).await;
    let (status, head) =
        connect_tunnel(&mut conn, &format!("admin.partner.test:{}", lab.tls_upstream.port())).await.unwrap();
    assert_eq!(status, 403, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-egressd-reason: service-deny"), "{head}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_valid_svid_is_rejected_at_the_handshake() {
    let lab = lab().await;
    let url = format!("http://api.partner.test:{}/", lab.http_upstream.port());
    // No client certificate.
    let outcome = match connect_gateway(lab.gateway, GATEWAY_NAME, tls_config(&lab.ca.der, None)).await {
        Err(e) => Err(e),
        Ok(mut conn) => proxy_get(&mut conn, &url).await,
    };
    assert!(outcome.as_ref().map(|(status, _)| *status == 0).unwrap_or(true), "no SVID got through: {outcome:?}");
    // An SVID signed by another trust bundle.
    let rogue = Ca::new("rogue").issue(&[], &[CHECKOUT]);
    let outcome = match connect_gateway(lab.gateway, GATEWAY_NAME, tls_config(&lab.ca.der, Some(&rogue))).await {
        Err(e) => Err(e),
        Ok(mut conn) => proxy_get(&mut conn, &url).await,
    };
    assert!(
        outcome.as_ref().map(|(status, _)| *status == 0).unwrap_or(true),
        "a foreign SVID got through: {outcome:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_service_traffic_flows_and_is_logged_as_would_deny() {
    let lab = lab().await;
    let mut conn = lab.as_workload(&lab.search).await;
    // search allows only api.partner.test:443; this would be denied, but search is in dry-run.
    let url = format!("http://unknown.partner.test:{}/", lab.http_upstream.port());
    let (status, resp) = proxy_get(&mut conn, &url).await.unwrap();
    assert_eq!(status, 200, "{resp}");
    // Envoy's access log carries egressd's decision from the ext_authz dynamic metadata.
    let line = lab.wait_for_log_within("decision=would-deny", Duration::from_secs(5)).await;
    assert!(line.contains("service=search") && line.contains("mode=dry-run") && line.contains(SEARCH), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_allowed_reaches_the_upstream_over_the_workloads_mtls() {
    let lab = lab().await;
    let outer =
        connect_by_sni(lab.tls_gateway, GATEWAY_NAME, "api.partner.test", &lab.ca.der, &lab.checkout).await.unwrap();
    // Inside the mTLS to the gateway: the workload's own TLS to the destination.
    let tls = TlsConnector::from(tls_config(&lab.ca.der, None));
    let mut inner = tls
        .connect(ServerName::try_from("api.partner.test").unwrap(), outer)
        .await
        .unwrap_or_else(|e| panic!("inner TLS: {e}\n{}", lab.envoy.log()));
    let (status, resp) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: api.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("upstream tls host api.partner.test"), "{resp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_passthrough_denied_is_cut_and_logged() {
    let lab = lab().await;
    let outer =
        connect_by_sni(lab.tls_gateway, GATEWAY_NAME, "admin.partner.test", &lab.ca.der, &lab.checkout).await.unwrap();
    let tls = TlsConnector::from(tls_config(&lab.ca.der, None));
    let outcome = match tls.connect(ServerName::try_from("admin.partner.test").unwrap(), outer).await {
        Err(e) => Err(e),
        Ok(mut inner) => {
            exchange(&mut inner, "GET / HTTP/1.1\r\nhost: admin.partner.test\r\nconnection: close\r\n\r\n").await
        }
    };
    assert!(outcome.as_ref().map(|(status, _)| *status == 0).unwrap_or(true), "a denied SNI got through: {outcome:?}");
    let line = lab.wait_for_log_within("reason=service-deny", Duration::from_secs(5)).await;
    assert!(
        line.contains("admin.partner.test") && line.contains("service=checkout") && line.contains("decision=deny"),
        "{line}"
    );
}

/// CONNECT over HTTP/2 (one stream per tunnel), allowed and denied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connect_tunnels_are_checked_too() {
    let lab = lab().await;
    let conn = connect_gateway(lab.gateway, GATEWAY_NAME, tls_config_h2(&lab.ca.der, &lab.checkout)).await.unwrap();
    assert_eq!(conn.get_ref().1.alpn_protocol(), Some(&b"h2"[..]), "the gateway speaks HTTP/2");
    let (client, h2conn) = h2::client::handshake(conn).await.unwrap();
    tokio::spawn(h2conn);
    let mut client = client.ready().await.unwrap();
    // Allowed: 200. The tunnel then carries plaintext, which the tunnel filter refuses (not TLS).
    let authority = format!("api.partner.test:{}", lab.http_upstream.port());
    let req = http::Request::builder().method("CONNECT").uri(authority.as_str()).body(()).unwrap();
    let (resp, mut send) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 200, "{}", lab.envoy.log());
    send.send_data(format!("GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n").into(), false).unwrap();
    let mut body = resp.into_body();
    let mut got = Vec::new();
    while let Some(Ok(chunk)) = body.data().await {
        let _ = body.flow_control().release_capacity(chunk.len());
        got.extend_from_slice(&chunk);
    }
    assert!(!String::from_utf8_lossy(&got).contains("upstream"), "plaintext never reached the upstream");
    lab.wait_for_log("tunnel=not-tls enforce").await;
    // Denied: the CONNECT stream is answered 403 with the reason.
    let mut client = client.ready().await.unwrap();
    let req = http::Request::builder()
        .method("CONNECT")
        .uri(format!("admin.partner.test:{}", lab.http_upstream.port()))
        .body(())
        .unwrap();
    let (resp, _send) = client.send_request(req, false).unwrap();
    let resp = resp.await.unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-egressd-reason"], "service-deny");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_policy_changes_decisions_and_envoy_config_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let lab = Lab::builder().policy_dir(dir.path()).start().await;
    let admin_url = format!("http://admin.partner.test:{}/", lab.http_upstream.port());
    let mut conn = lab.as_workload(&lab.checkout).await;
    assert_eq!(proxy_get(&mut conn, &admin_url).await.unwrap().0, 403, "denied before the edit");
    let before = lab.admin_json("/xds").await;
    let route_before = before["nodes"][0]["types"]["RouteConfiguration"]["ackedVersion"].as_str().unwrap().to_string();
    assert!(!route_before.is_empty(), "{before:#}");
    // An established tunnel, opened before the change.
    let mut tunnel = lab.as_workload(&lab.checkout).await;
    let (status, _) =
        connect_tunnel(&mut tunnel, &format!("api.partner.test:{}", lab.tls_upstream.port())).await.unwrap();
    assert_eq!(status, 200);

    // The edit: checkout may now reach admin.partner.test, and the gateway's request timeout changes.
    let checkout = dir.path().join("services/checkout.yaml");
    let text = std::fs::read_to_string(&checkout).unwrap();
    let edited = text.split("deny:").next().unwrap().to_string()
        + "  - host: admin.partner.test\n    justification: partner admin API, now in scope (CHK-77)\n";
    atomic_write(&checkout, &edited);
    atomic_write(&dir.path().join("gateway.yaml"), &gateway_yaml(&test_spec_from(&lab, dir.path()), 20_000));
    let t0 = tokio::time::Instant::now();
    let route_after = loop {
        let v = lab.admin_json("/xds").await;
        let acked = v["nodes"][0]["types"]["RouteConfiguration"]["ackedVersion"].as_str().unwrap_or("").to_string();
        if acked != route_before && !acked.is_empty() {
            break acked;
        }
        assert!(t0.elapsed() < Duration::from_secs(2), "Envoy did not ACK a new route version within 2 s: {v:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    let mut conn = lab.as_workload(&lab.checkout).await;
    let (status, resp) = proxy_get(&mut conn, &admin_url).await.unwrap();
    assert_eq!(status, 200, "allowed after the edit: {resp}");
    assert!(t0.elapsed() < Duration::from_secs(2), "decisions changed within 2 s");
    // The tunnel opened before the change still carries TLS to the upstream.
    let tls = TlsConnector::from(tls_config(&lab.ca.der, None));
    let mut inner =
        tls.connect(ServerName::try_from("api.partner.test").unwrap(), tunnel).await.expect("tunnel survived");
    let (status, _) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: api.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200);

    // An invalid policy is rejected with FILE:LINE:COL and the previous one keeps serving.
    let version = lab.admin_json("/policy").await["version"].clone();
    atomic_write(&checkout, &edited.replace("    justification: partner admin API, now in scope (CHK-77)\n", ""));
    let t1 = tokio::time::Instant::now();
    let err = loop {
        let p = lab.admin_json("/policy").await;
        if p["lastReloadError"].is_object() {
            break p;
        }
        assert!(t1.elapsed() < Duration::from_secs(2), "no reload error reported: {p:#}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert_eq!(err["version"], version, "the running policy stayed");
    let message = err["lastReloadError"]["errors"][0].as_str().unwrap();
    assert!(message.contains("services/checkout.yaml:") && message.contains("no justification"), "{message}");
    let mut conn = lab.as_workload(&lab.checkout).await;
    assert_eq!(proxy_get(&mut conn, &admin_url).await.unwrap().0, 200, "still the last good policy");
    let v = lab.admin_json("/xds").await;
    assert_eq!(v["nodes"][0]["types"]["RouteConfiguration"]["ackedVersion"], route_after.as_str());
}

/// The lab's gateway spec, read back from the Gateway document it wrote.
fn test_spec_from(lab: &Lab, dir: &std::path::Path) -> GatewaySpec {
    let text = std::fs::read_to_string(dir.join("gateway.yaml")).unwrap();
    let field = |k: &str| text.lines().find_map(|l| l.trim().strip_prefix(k)).unwrap().trim().to_string();
    let mut spec = GatewaySpec::local("127.0.0.1:1".parse().unwrap());
    spec.http_listen = lab.gateway;
    spec.tls_listen = Some(lab.tls_gateway);
    spec.tls_upstream_port = lab.tls_upstream.port();
    spec.mtls = Some(MtlsPaths {
        certificate_chain: field("certificateChain:"),
        private_key: field("privateKey:"),
        trust_bundle: field("trustBundle:"),
    });
    spec.dns_resolvers = vec![field("resolvers:").trim_matches(|c| c == '[' || c == ']').parse().unwrap()];
    spec
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_span_and_the_decision_span_share_one_trace_as_parent_and_child() {
    let collector = Collector::start().await;
    let config = TelemetryConfig { otlp: Some(OtlpConfig::new(collector.endpoint(), "egressd")), ..Default::default() };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let lab = Lab::builder().traced(collector.addr, telemetry).start().await;
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://api.partner.test:{}/traced", lab.http_upstream.port());
    let (status, resp) = proxy_get(&mut conn, &url).await.unwrap();
    assert_eq!(status, 200, "{resp}");

    // Envoy's tracer flushes on a timer (5 s by default).
    let linked = |spans: &[support::otlp::Received]| {
        let decision = spans.iter().find(|s| s.service == "egressd")?;
        let parent =
            spans.iter().find(|s| s.service == "egress-gateway" && s.span_id() == decision.parent_span_id())?;
        Some((decision.clone(), parent.clone()))
    };
    let spans = collector.wait_for(Duration::from_secs(20), |s| linked(s).is_some()).await;
    let Some((decision, parent)) = linked(&spans) else {
        let summary: Vec<_> = spans
            .iter()
            .map(|s| (s.service.clone(), s.span.name.clone(), s.trace_id(), s.span_id(), s.parent_span_id()))
            .collect();
        panic!("no decision span whose parent is an Envoy span: {summary:#?}\n{}", lab.envoy.log());
    };
    assert_eq!(decision.trace_id(), parent.trace_id(), "one trace");
    assert_eq!(decision.attr("egress.decision").as_deref(), Some("allow"));
    assert_eq!(decision.attr("egress.spiffe_id").as_deref(), Some(CHECKOUT));
    // Envoy's request span is in the same trace too (the parent is its ext_authz call's span).
    assert!(spans.iter().filter(|s| s.service == "egress-gateway" && s.trace_id() == decision.trace_id()).count() >= 2);
}

/// Domain fronting: CONNECT to an allowed name, then TLS for another name the upstream also serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_tls_names_another_host_is_cut_as_sni_mismatch() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let tls = lab.upstream_tls();
    let fronted = tls.connect(ServerName::try_from("admin.partner.test").unwrap(), conn).await;
    assert!(fronted.is_err(), "the TLS handshake for the fronted name must not complete");
    // The CONNECT was allowed; the tunnel filter cut the tunnel and said why.
    let line = lab.wait_for_log("tunnel=sni-mismatch enforce").await;
    assert!(line.contains("decision=allow") && line.contains("service=checkout"), "{line}");
    assert!(line.ends_with(" api.partner.test admin.partner.test"), "the authorized host, then the SNI: {line}");
}

/// A ClientHello without SNI (TLS to an IP address name) in a tunnel to an allowed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_tls_names_no_server_is_cut_as_sni_missing() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let tls = lab.upstream_tls();
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()); // rustls sends no SNI for an IP
    assert!(tls.connect(ip, conn).await.is_err(), "the tunnel is cut before any TLS completes");
    let line = lab.wait_for_log("tunnel=sni-missing enforce").await;
    assert!(line.contains("service=checkout"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_service_tunnel_with_a_mismatching_sni_flows_and_is_recorded() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.search).await;
    let tls = lab.upstream_tls();
    let mut inner =
        tls.connect(ServerName::try_from("admin.partner.test").unwrap(), conn).await.expect("dry-run: flows");
    let (status, resp) =
        exchange(&mut inner, "GET / HTTP/1.1\r\nhost: admin.partner.test\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "{resp}");
    drop(inner); // the tunnel's access log line is written when it closes
    let line = lab.wait_for_log("tunnel=sni-mismatch observe").await;
    assert!(line.contains("service=search"), "{line}");
}

/// `tunnelTls: off`: an opaque TCP tunnel (here plaintext HTTP) to a CIDR-allowed destination.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_tls_off_lets_an_opaque_tunnel_through_to_a_cidr_allow() {
    const MIGRATOR: &str = "spiffe://corp.example/ns/db/sa/migrator";
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("services")).unwrap();
    std::fs::write(
        dir.path().join("services/migrations.yaml"),
        format!(
            "kind: ServicePolicy\nservice: migrations\nidentities: [{MIGRATOR}]\ntunnelTls: off\nallow:\n  - cidr: 127.0.0.1/32\n    justification: database on the test host\n"
        ),
    )
    .unwrap();
    let lab = Lab::builder().policy_dir(dir.path()).start().await;
    let svid = lab.ca.issue(&[], &[MIGRATOR]);
    let mut conn = lab.as_workload(&svid).await;
    let (status, head) = connect_tunnel(&mut conn, &format!("127.0.0.1:{}", lab.http_upstream.port())).await.unwrap();
    assert_eq!(status, 200, "{head}\n{}", lab.envoy.log());
    let (status, resp) = exchange(&mut conn, "GET / HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("upstream http"), "{resp}");
}

/// The gateway's SVID is served as an SDS secret naming its files and the directory to watch: when
/// the kubelet swaps the Secret volume's `..data` to a new generation, Envoy presents the new
/// certificate on new connections, with no xDS push and no restart, and requests keep flowing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_svid_rotates_in_place_when_the_kubelet_swaps_its_secret() {
    let lab = Lab::builder().kubelet_svid().start().await;
    let presented = || async {
        let conn = connect_gateway(lab.gateway, GATEWAY_NAME, tls_config(&lab.ca.der, Some(&lab.checkout))).await;
        conn.ok().and_then(|c| c.get_ref().1.peer_certificates().map(|certs| certs[0].clone()))
    };
    let first = presented().await.expect("a handshake with the first SVID");
    let next = lab.ca.issue(&[GATEWAY_NAME], &[]);
    assert_ne!(first, next.cert_der);
    lab.rotate_svid("2", &next, &lab.ca.pem);
    eventually("Envoy to present the rotated SVID", Duration::from_secs(15), || async {
        (presented().await.as_ref() == Some(&next.cert_der)).then_some(())
    })
    .await;
    let url = format!("http://api.partner.test:{}/v1/prices", lab.http_upstream.port());
    let (status, resp) = proxy_get(&mut lab.as_workload(&lab.checkout).await, &url).await.unwrap();
    assert_eq!(status, 200, "{resp}\n{}", lab.envoy.log());

    // A new trust bundle rotates the same way: a workload of the old CA is then refused.
    let new_ca = Ca::new("corp.example trust bundle, rotated");
    let next = new_ca.issue(&[GATEWAY_NAME], &[]);
    lab.rotate_svid("3", &next, &new_ca.pem);
    let new_workload = new_ca.issue(&[], &[CHECKOUT]);
    eventually("Envoy to verify workloads with the rotated bundle", Duration::from_secs(15), || async {
        let conn = connect_gateway(lab.gateway, GATEWAY_NAME, tls_config(&new_ca.der, Some(&new_workload))).await;
        let Ok(mut conn) = conn else { return None };
        matches!(proxy_get(&mut conn, &url).await, Ok((200, _))).then_some(())
    })
    .await;
    let old = match connect_gateway(lab.gateway, GATEWAY_NAME, tls_config(&new_ca.der, Some(&lab.checkout))).await {
        Err(e) => Err(e),
        Ok(mut conn) => proxy_get(&mut conn, &url).await,
    };
    assert!(old.as_ref().map(|(status, _)| *status == 0).unwrap_or(true), "an SVID of the old CA got through: {old:?}");
}
