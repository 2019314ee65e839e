//! Through the real gateway: Envoy 1.40 configured only by egressd's ADS, workloads with SPIFFE
//! SVIDs over mTLS, test FQDNs resolved by a real DNS server, real HTTP and TLS upstreams on
//! 127.0.0.1. Each scenario asserts what the client receives.

mod support {
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod otlp;
    pub mod pki;
    pub mod server;
    pub mod upstream;
}

use std::net::SocketAddr;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio_rustls::TlsConnector;

use egressd::policy::{GatewayTracing, PolicySource};
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use egressd::xds::gateway::{GatewaySpec, MtlsFiles};
use support::client::{
    connect_by_sni, connect_gateway, connect_tunnel, exchange, proxy_get, tls_config, tls_config_h2,
};
use support::dns::{TestDns, start_dns};
use support::envoy::{RunningEnvoy, free_port, start_ads_envoy};
use support::otlp::Collector;
use support::pki::{Ca, Issued};
use support::server::{TestServer, http_get, start_full, start_with_telemetry, try_http_get};
use support::upstream::{start_http, start_tls};

const GATEWAY_NAME: &str = "egress-gateway.corp.example";
const CHECKOUT: &str = "spiffe://corp.example/ns/checkout/sa/web";
const SEARCH: &str = "spiffe://corp.example/ns/search/sa/indexer";

struct Lab {
    ca: Ca,
    gateway: SocketAddr,
    tls_gateway: SocketAddr,
    http_upstream: SocketAddr,
    tls_upstream: SocketAddr,
    checkout: Issued,
    search: Issued,
    envoy: RunningEnvoy,
    _egressd: TestServer,
    _dns: TestDns,
    _dir: tempfile::TempDir,
}

async fn lab() -> Lab {
    lab_from(None).await
}

/// The lab; with `policy_dir`, egressd runs from (and watches) a copy of mesh-config/ there, whose
/// Gateway document describes this lab's gateway.
async fn lab_from(policy_dir: Option<&std::path::Path>) -> Lab {
    lab_with(policy_dir, None).await
}

/// As `lab_from`; with `traced`, Envoy traces to that OTLP collector and egressd sends its
/// decisions to that telemetry.
async fn lab_with(policy_dir: Option<&std::path::Path>, traced: Option<(SocketAddr, Telemetry)>) -> Lab {
    let dns = start_dns(&["api.partner.test", "admin.partner.test", "unknown.partner.test"]).await;
    let ca = Ca::new("corp.example trust bundle");
    let dir = tempfile::tempdir().unwrap();
    let gw = ca.issue(&[GATEWAY_NAME], &[]);
    let path = |n: &str| dir.path().join(n).display().to_string();
    std::fs::write(path("gw.pem"), &gw.cert_pem).unwrap();
    std::fs::write(path("gw.key"), &gw.key_pem).unwrap();
    std::fs::write(path("bundle.pem"), &ca.pem).unwrap();
    let upstream_cert = ca.issue(&["api.partner.test", "admin.partner.test"], &[]);
    let http_upstream = start_http("http").await;
    let tls_upstream = start_tls("tls", &upstream_cert).await;

    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let mut spec = GatewaySpec::local(grpc);
    spec.http_listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    spec.tls_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    // The SNI forward proxy dials the TLS upstream's port.
    spec.tls_upstream_port = tls_upstream.port();
    spec.dns_resolvers = vec![dns.addr];
    spec.mtls = Some(MtlsFiles {
        certificate_chain: path("gw.pem"),
        private_key: path("gw.key"),
        trust_bundle: path("bundle.pem"),
    });
    let (collector, telemetry) = match traced {
        Some((collector, telemetry)) => (Some(collector), telemetry),
        None => (None, Telemetry::metrics_only()),
    };
    spec.tracing = collector.map(|collector| GatewayTracing {
        collector,
        sampling_percent: 100,
        service_name: "egress-gateway".into(),
    });
    let egressd = match policy_dir {
        None => {
            let source = support::server::mesh_without_gateway();
            start_with_telemetry(source, Some(spec.clone()), grpc, None, telemetry).await
        }
        Some(dir) => {
            copy_mesh_config(dir);
            std::fs::write(dir.join("gateway.yaml"), gateway_yaml(&spec, 30_000)).unwrap();
            let source = PolicySource::from_dir(dir).unwrap();
            start_full(source, None, grpc, Some(dir.to_path_buf())).await
        }
    };
    let envoy = start_ads_envoy(egressd.grpc);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let ready = matches!(try_http_get(envoy.admin, "/ready").await, Ok((200, _)));
        if ready
            && tokio::net::TcpStream::connect(spec.http_listen).await.is_ok()
            && tokio::net::TcpStream::connect(spec.tls_listen.unwrap()).await.is_ok()
        {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gateway never became ready\n{}", envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let checkout = ca.issue(&[], &[CHECKOUT]);
    let search = ca.issue(&[], &[SEARCH]);
    Lab {
        ca,
        gateway: spec.http_listen,
        tls_gateway: spec.tls_listen.unwrap(),
        http_upstream,
        tls_upstream,
        checkout,
        search,
        envoy,
        _egressd: egressd,
        _dns: dns,
        _dir: dir,
    }
}

impl Lab {
    /// As `svid`: mTLS to the gateway, then `CONNECT api.partner.test:<tls upstream>`, answered 200.
    async fn tunnel_to_tls_upstream(&self, svid: &Issued) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut conn = self.as_workload(svid).await;
        let authority = format!("api.partner.test:{}", self.tls_upstream.port());
        let (status, head) = connect_tunnel(&mut conn, &authority).await.unwrap();
        assert_eq!(status, 200, "{head}\n{}", self.envoy.log());
        conn
    }

    /// A TLS client trusting the lab's CA (for TLS inside a tunnel).
    fn upstream_tls(&self) -> TlsConnector {
        TlsConnector::from(tls_config(&self.ca.der, None))
    }

    async fn as_workload(&self, svid: &Issued) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        connect_gateway(self.gateway, GATEWAY_NAME, tls_config(&self.ca.der, Some(svid)))
            .await
            .expect("mTLS to the gateway")
    }
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !lab.envoy.log().contains("decision=would-deny") {
        assert!(tokio::time::Instant::now() < deadline, "no would-deny access log line:\n{}", lab.envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = lab.envoy.log();
    let line = log.lines().find(|l| l.contains("decision=would-deny")).unwrap();
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
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !lab.envoy.log().contains("reason=service-deny") {
        assert!(tokio::time::Instant::now() < deadline, "no deny in the TLS access log:\n{}", lab.envoy.log());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let log = lab.envoy.log();
    let line = log.lines().find(|l| l.contains("reason=service-deny")).unwrap();
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
    // Allowed: 200. The tunnel then carries plaintext, which the tunnel check refuses (not TLS).
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
    wait_for_log(&lab, "reason=not-tls").await;
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

fn copy_mesh_config(dir: &std::path::Path) {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh-config");
    for sub in ["", "services"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(root.join(sub)).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
}

fn gateway_yaml(spec: &GatewaySpec, request_ms: u64) -> String {
    let m = spec.mtls.as_ref().unwrap();
    format!(
        "kind: Gateway\nname: lab\nlisteners:\n  http: {}\n  tls: {}\ntlsUpstreamPort: {}\nmtls:\n  certificateChain: {}\n  privateKey: {}\n  trustBundle: {}\ndns:\n  resolvers: [{}]\ntimeouts:\n  requestMs: {request_ms}\n",
        spec.http_listen,
        spec.tls_listen.unwrap(),
        spec.tls_upstream_port,
        m.certificate_chain,
        m.private_key,
        m.trust_bundle,
        spec.dns_resolvers[0]
    )
}

/// Replaces a file the way editors do: write a sibling, then rename over it.
fn atomic_write(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn admin_json(lab: &Lab, path: &str) -> serde_json::Value {
    serde_json::from_str(&http_get(lab._egressd.admin, path).await.1).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn editing_the_policy_changes_decisions_and_envoy_config_without_dropping_connections() {
    let dir = tempfile::tempdir().unwrap();
    let lab = lab_from(Some(dir.path())).await;
    let admin_url = format!("http://admin.partner.test:{}/", lab.http_upstream.port());
    let mut conn = lab.as_workload(&lab.checkout).await;
    assert_eq!(proxy_get(&mut conn, &admin_url).await.unwrap().0, 403, "denied before the edit");
    let before = admin_json(&lab, "/xds").await;
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
        let v = admin_json(&lab, "/xds").await;
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
    let version = admin_json(&lab, "/policy").await["version"].clone();
    atomic_write(&checkout, &edited.replace("    justification: partner admin API, now in scope (CHK-77)\n", ""));
    let t1 = tokio::time::Instant::now();
    let err = loop {
        let p = admin_json(&lab, "/policy").await;
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
    let v = admin_json(&lab, "/xds").await;
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
    spec.mtls = Some(MtlsFiles {
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
    let lab = lab_with(None, Some((collector.addr, telemetry))).await;
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

async fn wait_for_log(lab: &Lab, needle: &str) -> String {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let log = lab.envoy.log();
        if let Some(line) = log.lines().find(|l| l.contains(needle)) {
            return line.to_string();
        }
        assert!(tokio::time::Instant::now() < deadline, "no `{needle}` in the access log:\n{log}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Domain fronting: CONNECT to an allowed name, then TLS for another name the upstream also serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_tls_names_another_host_is_cut_as_sni_mismatch() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let tls = lab.upstream_tls();
    let fronted = tls.connect(ServerName::try_from("admin.partner.test").unwrap(), conn).await;
    assert!(fronted.is_err(), "the TLS handshake for the fronted name must not complete");
    let line = wait_for_log(&lab, "reason=sni-mismatch").await;
    assert!(line.contains("decision=deny") && line.contains("service=checkout"), "{line}");
}

/// A ClientHello without SNI (TLS to an IP address name) in a tunnel to an allowed name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tunnel_whose_tls_names_no_server_is_cut_as_sni_missing() {
    let lab = lab().await;
    let conn = lab.tunnel_to_tls_upstream(&lab.checkout).await;
    let tls = lab.upstream_tls();
    let ip = ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()); // rustls sends no SNI for an IP
    assert!(tls.connect(ip, conn).await.is_err(), "the tunnel is cut before any TLS completes");
    let line = wait_for_log(&lab, "reason=sni-missing").await;
    assert!(line.contains("decision=deny"), "{line}");
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
    let line = wait_for_log(&lab, "reason=sni-mismatch").await;
    assert!(line.contains("decision=would-deny") && line.contains("service=search"), "{line}");
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
    let lab = lab_from(Some(dir.path())).await;
    let svid = lab.ca.issue(&[], &[MIGRATOR]);
    let mut conn = lab.as_workload(&svid).await;
    let (status, head) = connect_tunnel(&mut conn, &format!("127.0.0.1:{}", lab.http_upstream.port())).await.unwrap();
    assert_eq!(status, 200, "{head}\n{}", lab.envoy.log());
    let (status, resp) = exchange(&mut conn, "GET / HTTP/1.1\r\nhost: db\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("upstream http"), "{resp}");
}
