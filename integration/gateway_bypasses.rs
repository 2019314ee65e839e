//! Policy bypasses tried from outside, through the real gateway (Envoy 1.40 configured by egressd's
//! ADS), each with the request an attacker would send: XFCC quote injection through a sidecar,
//! `https://` without a port, IPv4-mapped IPv6 destinations, and client-chosen canary buckets.

mod support {
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

use std::net::{Ipv4Addr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use support::client::{connect_gateway, connect_tunnel, exchange, tls_config};
use support::envoy::{free_port, start_static_envoy};
use support::eventually::eventually;
use support::lab::Lab;
use support::pki::Issued;
use support::upstream::{start_http_on, start_tls_on};

const CI: &str = "spiffe://corp.example/ns/ci/sa/runner";
const BILLING: &str = "spiffe://corp.example/ns/billing/sa/api";
const CANARY: &str = "spiffe://corp.example/ns/canary/sa/web";
/// A loopback address of these tests' own, for upstreams on well-known ports.
/// Two tests bind these well-known ports, each on its own address (tests run in parallel).
const SECURE_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 18);
const SECURE_IP_ORIGINATING: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 20);
const WRONG_CERT_IP: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 19);

/// The policy under attack: a billing-only destination, a CI service with a broad IPv6 allow and
/// an HTTPS-only allow, and a 50% canary.
const POLICY: &str = r#"kind: MeshDefaults
trustDomain: corp.example
mode: enforce
trustForwardedClientCert: true
deny:
  - cidr: 169.254.169.254/32
    justification: cloud instance metadata is reachable only from the node
---
kind: ServicePolicy
service: billing
identities: [spiffe://corp.example/ns/billing/sa/api]
allow:
  - host: billing-api.partner.test
    justification: the billing-only upstream (BIL-1)
---
kind: ServicePolicy
service: ci-runners
identities: ["spiffe://corp.example/ns/ci/*"]
tunnelTls: "off"
allow:
  - host: api.partner.test
    justification: build dependencies (CI-1)
  - host: secure.partner.test
    ports: [443]
    protocols: [https]
    justification: an HTTPS API (CI-2)
  - host: wrongcert.partner.test
    ports: [443]
    protocols: [https]
    justification: an HTTPS API whose certificate names another host (CI-5)
  - cidr: "::/0"
    justification: the broad IPv6 allow of the report (CI-3)
deny:
  - cidr: 10.30.0.5/32
    justification: the build cache is off limits (CI-4)
---
kind: ServicePolicy
service: canary-web
identities: [spiffe://corp.example/ns/canary/sa/web]
mode: canary
canaryPercent: 50
allow:
  - host: api.partner.test
    ports: [443]
    justification: the only destination (CAN-1)
"#;

/// A lab on `POLICY`; `plaintext`: workloads reach the gateway without mTLS (through a sidecar).
async fn lab(plaintext: bool, upstream_tls: bool) -> (Lab, tempfile::TempDir) {
    lab_with_secure_at(plaintext, upstream_tls, SECURE_IP).await
}

/// As `lab`, with `secure.partner.test` at `secure_ip`.
async fn lab_with_secure_at(plaintext: bool, upstream_tls: bool, secure_ip: Ipv4Addr) -> (Lab, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("policy.yaml"), POLICY).unwrap();
    let mut builder = Lab::builder()
        .policy_dir(dir.path())
        .own_policy()
        .name("secure.partner.test", secure_ip)
        .name("wrongcert.partner.test", WRONG_CERT_IP);
    if plaintext {
        builder = builder.plaintext();
    }
    if upstream_tls {
        builder = builder.upstream_tls();
    }
    (builder.start().await, dir)
}

/// A sidecar Envoy in front of the gateway: terminates the workload's mTLS and forwards its
/// requests with `forward_client_cert_details: APPEND_FORWARD` (Subject and URI of the peer).
fn start_sidecar(lab: &Lab, listen: SocketAddr) -> support::envoy::RunningEnvoy {
    let cert = lab.ca.issue(&["sidecar.corp.example"], &["spiffe://corp.example/ns/ci/sa/sidecar"]);
    let path = |n: &str| lab.dir.path().join(n).display().to_string();
    std::fs::write(path("sidecar.pem"), &cert.cert_pem).unwrap();
    std::fs::write(path("sidecar.key"), &cert.key_pem).unwrap();
    let config = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: sidecar
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - transport_socket:
        name: envoy.transport_sockets.tls
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
          require_client_certificate: true
          common_tls_context:
            tls_certificates: [{{certificate_chain: {{filename: {cert}}}, private_key: {{filename: {key}}}}}]
            validation_context: {{trusted_ca: {{filename: {bundle}}}}}
      filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: sidecar
          forward_client_cert_details: APPEND_FORWARD
          set_current_client_cert_details: {{subject: true, uri: true}}
          http_protocol_options: {{allow_absolute_url: true}}
          route_config:
            virtual_hosts:
            - {{name: all, domains: ["*"], routes: [{{match: {{prefix: /}}, route: {{cluster: gateway}}}}]}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: gateway
    type: STATIC
    load_assignment:
      cluster_name: gateway
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {gw}}}}}}}}}]}}]
"#,
        port = listen.port(),
        cert = path("sidecar.pem"),
        key = path("sidecar.key"),
        bundle = path("bundle.pem"),
        gw = lab.gateway.port(),
    );
    start_static_envoy(&config)
}

/// `GET url` through the sidecar as `svid`, with extra request headers.
async fn via_sidecar(lab: &Lab, sidecar: SocketAddr, svid: &Issued, url: &str, headers: &str) -> (u16, String) {
    let mut conn = eventually("the sidecar to listen", std::time::Duration::from_secs(20), || async {
        connect_gateway(sidecar, "sidecar.corp.example", tls_config(&lab.ca.der, Some(svid))).await.ok()
    })
    .await;
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    exchange(&mut conn, &format!("GET {url} HTTP/1.1\r\nhost: {host}\r\n{headers}connection: close\r\n\r\n"))
        .await
        .unwrap()
}

fn reason(resp: &str) -> Option<String> {
    resp.lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("x-egressd-reason")))
        .map(|(_, v)| v.trim().to_string())
}

/// Report 1: the client's own XFCC element with an open quote swallowed the sidecar's comma, and
/// egressd read the client's URI. Now the nearest hop is found from the end, and an XFCC whose
/// quoting does not balance is denied as unauthenticated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_injected_xfcc_element_does_not_take_another_services_identity() {
    let (lab, _dir) = lab(true, false).await;
    let sidecar_addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let sidecar = start_sidecar(&lab, sidecar_addr);
    let billing_url = format!("http://billing-api.partner.test:{}/invoices", lab.http_upstream.port());
    let (ci, billing) = (lab.ca.issue(&[], &[CI]), lab.ca.issue(&[], &[BILLING]));

    // The XFCC path works: billing's own SVID, through the sidecar, reaches its upstream.
    let (status, resp) = via_sidecar(&lab, sidecar_addr, &billing, &billing_url, "").await;
    assert_eq!(status, 200, "{resp}\n{}\n{}", lab.envoy.log(), sidecar.log());
    // CI is CI: no allow for billing's destination.
    let (status, resp) = via_sidecar(&lab, sidecar_addr, &ci, &billing_url, "").await;
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("no-matching-allow")), "{resp}");
    // The attack: CI's request carries an element naming billing, its quote left open.
    let injected = format!("x-forwarded-client-cert: URI={BILLING};Subject=\"\r\n");
    let (status, resp) = via_sidecar(&lab, sidecar_addr, &ci, &billing_url, &injected).await;
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("unauthenticated")), "{resp}");
    assert!(resp.contains("quoting does not balance"), "the deny says why: {resp}");
    assert!(!resp.contains("upstream http"), "the billing-only upstream was not reached: {resp}");
    // A balanced injected element is simply not the nearest hop: CI is still CI.
    let injected = format!("x-forwarded-client-cert: URI={BILLING};Subject=\"x\"\r\n");
    let (status, resp) = via_sidecar(&lab, sidecar_addr, &ci, &billing_url, &injected).await;
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("no-matching-allow")), "{resp}");
}

/// `GET https://host/` as a workload sends it to the gateway (absolute form).
async fn https_get(lab: &Lab, svid: &Issued, host: &str) -> (u16, String) {
    let mut conn = lab.as_workload(svid).await;
    exchange(&mut conn, &format!("GET https://{host}/v1 HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n"))
        .await
        .unwrap()
}

/// Upstreams for `secure.partner.test`: plaintext on port 80 (where the gateway used to send an
/// `https://` request without a port) and TLS on 443 (where it must go).
async fn secure_upstreams(lab: &Lab, ip: Ipv4Addr) {
    start_http_on(SocketAddr::new(ip.into(), 80), "port-80").await;
    let cert = lab.ca.issue(&["secure.partner.test"], &[]);
    start_tls_on(SocketAddr::new(ip.into(), 443), "tls-443", &cert).await;
}

/// Report 2, gateway without upstream TLS: egressd decided port 443 / https, the gateway dialed
/// port 80 in plaintext. Now the request is denied with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_request_without_tls_origination_is_denied_not_sent_in_plaintext() {
    let (lab, _dir) = lab(false, false).await;
    secure_upstreams(&lab, SECURE_IP).await;
    let ci = lab.ca.issue(&[], &[CI]);
    let (status, resp) = https_get(&lab, &ci, "secure.partner.test").await;
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("unsupported-scheme")), "{resp}");
    assert!(resp.contains("originate TLS"), "{resp}");
    assert!(!resp.contains("port-80"), "nothing reached port 80: {resp}");
}

/// Report 2, gateway with upstream TLS: the request leaves with TLS to exactly the host and port
/// egressd authorized (443), verified against the trust bundle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_proxy_request_leaves_with_tls_to_the_authorized_port() {
    let (lab, _dir) = lab_with_secure_at(false, true, SECURE_IP_ORIGINATING).await;
    secure_upstreams(&lab, SECURE_IP_ORIGINATING).await;
    let ci = lab.ca.issue(&[], &[CI]);
    let (status, resp) = https_get(&lab, &ci, "secure.partner.test").await;
    assert_eq!(status, 200, "{resp}\n{}", lab.envoy.log());
    assert!(resp.contains("upstream tls-443 host secure.partner.test"), "{resp}");
    assert!(resp.contains("internal-headers 0"), "the route removed egressd's headers: {resp}");
    // The same name in plaintext is another request (port 80, http): not allowed, never sent.
    let mut conn = lab.as_workload(&ci).await;
    let head = "GET http://secure.partner.test/v1 HTTP/1.1\r\nhost: secure.partner.test\r\nconnection: close\r\n\r\n";
    let (status, resp) = exchange(&mut conn, head).await.unwrap();
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("no-matching-allow")), "{resp}");
    // The gateway verifies what it dials: a certificate for another name fails the origination.
    let other = lab.ca.issue(&["other.partner.test"], &[]);
    start_tls_on(SocketAddr::new(WRONG_CERT_IP.into(), 443), "wrong-cert", &other).await;
    let (status, resp) = https_get(&lab, &ci, "wrongcert.partner.test").await;
    assert_eq!(status, 503, "{resp}");
    assert!(!resp.contains("upstream wrong-cert"), "{resp}");
}

/// Report 3: IPv4 inside IPv6 is IPv4. The mesh deny of 169.254.169.254/32 holds for its mapped
/// form, and an allowed mapped destination is dialed as the IPv4 address egressd authorized.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mapped_ipv6_destinations_meet_the_ipv4_rules() {
    let (lab, _dir) = lab(false, false).await;
    let ci = lab.ca.issue(&[], &[CI]);
    for target in ["[::ffff:169.254.169.254]:443", "[::ffff:a9fe:a9fe]:80", "[64:ff9b::169.254.169.254]:443"] {
        let mut conn = lab.as_workload(&ci).await;
        let (status, head) = connect_tunnel(&mut conn, target).await.unwrap();
        assert_eq!((status, reason(&head).as_deref()), (403, Some("mesh-deny")), "{target}: {head}");
    }
    let mut conn = lab.as_workload(&ci).await;
    let (status, head) = connect_tunnel(&mut conn, "[::ffff:10.30.0.5]:443").await.unwrap();
    assert_eq!((status, reason(&head).as_deref()), (403, Some("service-deny")), "{head}");
    // Allowed (`::/0` holds the mapped range, so it allows IPv4 too): the tunnel reaches 127.0.0.1.
    let mut conn = lab.as_workload(&ci).await;
    let target = format!("[::ffff:127.0.0.1]:{}", lab.http_upstream.port());
    let (status, head) = connect_tunnel(&mut conn, &target).await.unwrap();
    assert_eq!(status, 200, "{head}\n{}", lab.envoy.log());
    let (status, resp) = exchange(&mut conn, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("upstream http"), "{resp}");
}

/// Report 4: a workload chose x-request-id values that land in a canary's dry-run share. The
/// gateway now generates every request's id, so the client's choice does not decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_cannot_choose_its_canary_bucket() {
    let (lab, _dir) = lab(false, false).await;
    let svid = lab.ca.issue(&[], &[CANARY]);
    // Ids egressd would place in the dry-run half (bucket >= 50).
    let chosen: Vec<String> =
        (0..).map(|i| format!("pick-{i}")).filter(|id| egressd::policy::canary_bucket(id) >= 50).take(24).collect();
    let url = format!("http://unknown.partner.test:{}/", lab.http_upstream.port());
    let mut statuses = Vec::new();
    for id in &chosen {
        let mut conn = lab.as_workload(&svid).await;
        let head = format!(
            "GET {url} HTTP/1.1\r\nhost: unknown.partner.test:{}\r\nx-request-id: {id}\r\nconnection: close\r\n\r\n",
            lab.http_upstream.port()
        );
        let (status, resp) = exchange(&mut conn, &head).await.unwrap();
        if status == 200 {
            assert!(!resp.contains(&format!("request-id {id}")), "the upstream saw the client's own id: {resp}");
        }
        statuses.push(status);
    }
    // With ids of its own choosing every request would have been a would-deny (200); with the
    // gateway's ids about half are enforced (all 24 in the dry-run half: 1 in 16 million).
    assert!(statuses.contains(&403), "no request was enforced: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 403), "{statuses:?}");
}

/// A sibling of report 2: an origin-form request (`GET /v1`, `Host: ...`) over the workload's mTLS
/// reaches egressd with Envoy's `:scheme: https` (the downstream is TLS). It used to be decided as
/// https and then dialed in plaintext, so a `protocols: [https]` rule let plaintext out; now it
/// is an https request like any other: denied without upstream TLS, never sent in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_origin_form_request_over_mtls_is_https_and_never_leaves_in_plaintext() {
    let (lab, _dir) = lab(false, false).await;
    let ci = lab.ca.issue(&[], &[CI]);
    let mut conn = lab.as_workload(&ci).await;
    let port = lab.http_upstream.port();
    let head = format!("GET /v1 HTTP/1.1\r\nhost: api.partner.test:{port}\r\nconnection: close\r\n\r\n");
    let (status, resp) = exchange(&mut conn, &head).await.unwrap();
    assert_eq!((status, reason(&resp).as_deref()), (403, Some("unsupported-scheme")), "{resp}");
    assert!(!resp.contains("upstream http"), "{resp}");
    // The absolute form names its scheme: plaintext http, decided and sent as such.
    let mut conn = lab.as_workload(&ci).await;
    let head = format!(
        "GET http://api.partner.test:{port}/v1 HTTP/1.1\r\nhost: api.partner.test:{port}\r\nconnection: close\r\n\r\n"
    );
    let (status, resp) = exchange(&mut conn, &head).await.unwrap();
    assert_eq!(status, 200, "{resp}");
    assert!(resp.contains("upstream http host api.partner.test"), "{resp}");
    assert!(resp.contains("internal-headers 0"), "the route removed egressd's headers: {resp}");
}

/// The generated gateway drops a client's own `x-egress-*` headers before any filter runs, so
/// egressd's answers need not remove them: a forged TLS name does not send a plaintext request to
/// TLS origination, a forged host or port does not move the request, and a forged tunnel order
/// (`x-egress-tunnel: off`) does not let a verified service's tunnel through unchecked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clients_own_egress_headers_do_nothing() {
    let (lab, _dir) = lab(false, true).await;
    let ci = lab.ca.issue(&[], &[CI]);
    let port = lab.http_upstream.port();
    let forged = "x-egress-tls-name: evil.test\r\nx-egress-host: admin.partner.test\r\nx-egress-port: 1\r\nx-egress-tunnel: off\r\n";
    let mut conn = lab.as_workload(&ci).await;
    let head = format!(
        "GET http://api.partner.test:{port}/v1 HTTP/1.1\r\nhost: api.partner.test:{port}\r\n{forged}connection: close\r\n\r\n"
    );
    let (status, resp) = exchange(&mut conn, &head).await.unwrap();
    assert_eq!(status, 200, "{resp}\n{}", lab.envoy.log());
    assert!(resp.contains("upstream http host api.partner.test") && resp.contains("internal-headers 0"), "{resp}");
    // CI's tunnels are opaque (tunnelTls off): the forged headers change nothing either way.
    let mut conn = lab.as_workload(&ci).await;
    let target = format!("127.0.0.1:{port}");
    conn.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{forged}\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.unwrap() == 1 {
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let (status, resp) = exchange(&mut conn, "GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
    assert_eq!(status, 200, "the opaque tunnel reached the upstream: {resp}");
    // Billing's tunnels are verified: with `off` forged, a fronted ClientHello is still cut.
    let billing = lab.ca.issue(&[], &[BILLING]);
    let mut conn = lab.as_workload(&billing).await;
    let target = format!("billing-api.partner.test:{}", lab.tls_upstream.port());
    conn.write_all(format!("CONNECT {target} HTTP/1.1\r\nhost: {target}\r\n{forged}\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).await.unwrap() == 1 {
        head.push(byte[0]);
    }
    assert!(String::from_utf8_lossy(&head).starts_with("HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let fronted =
        lab.upstream_tls().connect(rustls::pki_types::ServerName::try_from("admin.partner.test").unwrap(), conn);
    assert!(fronted.await.is_err(), "the tunnel filter cut the fronted tunnel despite the forged order");
    lab.wait_for_log("tunnel=sni-mismatch enforce").await;
}
