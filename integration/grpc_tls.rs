//! The gRPC port over TLS (`serve --tls-cert --tls-key --client-ca`), with the real binary, real
//! gRPC and the real Envoy: plaintext clients get nowhere; the admin API accepts a client
//! certificate whose SPIFFE ID MeshDefaults `adminIdentities` lists, or a token, and counts every
//! refusal by reason; the generated gateway reaches egressd over TLS (`authz.tls`), both for ADS
//! and for its checks.

mod support {
    pub mod client;
    pub mod envoy;
    pub mod eventually;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use egressd::admin::grpc::{ClientTls, connect_with, pb};
use support::envoy::{free_port, start_ads_envoy_tls};
use support::eventually::eventually;
use support::pki::{Ca, Issued};
use support::process::EgressdProcess;
use support::server::{http_get, try_http_get};

const OPS: &str = "spiffe://corp.example/ns/ops/sa/oncall";
const PAYMENTS: &str = "spiffe://corp.example/ns/payments/sa/api";
const TOKEN: &str = "alice-0123456789abcdef";

struct Setup {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    ca: Ca,
    egressd: EgressdProcess,
    gateway_http: SocketAddr,
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p
}

fn write_issued(dir: &Path, name: &str, issued: &Issued) -> (PathBuf, PathBuf) {
    (write(dir, &format!("{name}.pem"), &issued.cert_pem), write(dir, &format!("{name}-key.pem"), &issued.key_pem))
}

/// egressd serving TLS with a client CA, `adminIdentities: [OPS]`, an admin token, and a Gateway
/// document whose `authz.tls` points at the CA and the gateway's client certificate.
async fn start() -> Setup {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let ca = Ca::new("corp.example trust bundle");
    let ca_path = write(&dir, "ca.pem", &ca.pem);
    let (server_cert, server_key) = write_issued(&dir, "egressd", &ca.issue(&["localhost"], &[]));
    let (gw_cert, gw_key) = write_issued(&dir, "gateway", &ca.issue(&["egress-gateway"], &[]));
    let tokens = write(&dir, "tokens", &format!("alice {TOKEN}\n"));
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let gateway_http: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let policy = dir.join("policy");
    std::fs::create_dir(&policy).unwrap();
    write(
        &policy,
        "mesh.yaml",
        &format!(
            "kind: MeshDefaults\ntrustDomain: corp.example\nadminIdentities: [{OPS}]\n---\nkind: ServicePolicy\nservice: payments\nidentities: [{PAYMENTS}]\nallow:\n  - host: api.stripe.com\n    justification: cards\n"
        ),
    );
    write(
        &policy,
        "gateway.yaml",
        &format!(
            "kind: Gateway\nname: default\nlisteners:\n  http: {gateway_http}\nauthz:\n  address: {grpc}\n  tls:\n    trustBundle: {}\n    serverName: localhost\n    certificateChain: {}\n    privateKey: {}\n",
            ca_path.display(),
            gw_cert.display(),
            gw_key.display()
        ),
    );
    let args = [
        format!("--tls-cert={}", server_cert.display()),
        format!("--tls-key={}", server_key.display()),
        format!("--client-ca={}", ca_path.display()),
        format!("--admin-tokens={}", tokens.display()),
    ];
    let egressd = EgressdProcess::start_with(&policy, &dir, grpc, admin, &args).await;
    Setup { _dir: tmp, dir, ca, egressd, gateway_http }
}

impl Setup {
    fn tls(&self, client: Option<&Issued>) -> ClientTls {
        ClientTls {
            ca_pem: self.ca.pem.clone().into_bytes(),
            identity: client.map(|c| (c.cert_pem.clone().into_bytes(), c.key_pem.clone().into_bytes())),
        }
    }

    /// `ListGrants` over TLS as `client` (certificate) with `token`.
    async fn list(&self, client: Option<&Issued>, token: Option<&str>) -> Result<(), tonic::Status> {
        let url = format!("https://localhost:{}", self.egressd.grpc.port());
        let mut admin = connect_with(&url, token, Some(&self.tls(client))).await.expect("TLS connection");
        admin.list_grants(pb::ListGrantsRequest { include_inactive: true }).await.map(|_| ())
    }

    async fn failures(&self, reason: &str) -> u64 {
        let (_, metrics) = http_get(self.egressd.admin, "/metrics").await;
        let line = format!("egressd_admin_auth_failures_total{{reason=\"{reason}\"}} ");
        metrics.lines().find_map(|l| l.strip_prefix(&line)).map(|v| v.trim().parse().unwrap()).unwrap_or(0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_over_tls_are_authorized_by_a_listed_svid_or_a_token_and_refusals_are_counted() {
    let s = start().await;
    let ops = s.ca.issue(&[], &[OPS]);
    let payments = s.ca.issue(&[], &[PAYMENTS]);

    // A listed SVID is an admin without any token; its SPIFFE ID is the grantor.
    s.list(Some(&ops), None).await.expect("the admin identity's call");
    let url = format!("https://localhost:{}", s.egressd.grpc.port());
    let mut admin = connect_with(&url, None, Some(&s.tls(Some(&ops)))).await.unwrap();
    let grant = admin
        .grant_break_glass(pb::GrantBreakGlassRequest {
            service: "payments".into(),
            to: "status.partner.test:443".into(),
            all: false,
            duration_seconds: 600,
            reason: "INC-1: partner status page".into(),
        })
        .await
        .expect("grant by certificate")
        .into_inner();
    assert_eq!(grant.grantor, OPS);

    // A token still works over TLS, with or without a certificate.
    s.list(None, Some(TOKEN)).await.expect("token, no certificate");
    s.list(Some(&payments), Some(TOKEN)).await.expect("token, unlisted certificate");

    // Refusals, each counted by its reason.
    let code = |r: Result<(), tonic::Status>| r.unwrap_err().code();
    assert_eq!(code(s.list(Some(&payments), None).await), tonic::Code::Unauthenticated);
    assert_eq!(code(s.list(None, Some("mallory-0123456789abcdef")).await), tonic::Code::Unauthenticated);
    assert_eq!(code(s.list(None, None).await), tonic::Code::Unauthenticated);
    assert_eq!(s.failures("unknown-identity").await, 1);
    assert_eq!(s.failures("unknown-token").await, 1);
    assert_eq!(s.failures("missing-credentials").await, 1);
    let log = s.egressd.log();
    assert!(log.contains("admin API call refused"), "refusals are logged");
    assert!(!log.contains("mallory-0123456789abcdef"), "a presented token is never logged");

    // Plaintext gRPC to the TLS port gets no answer at all.
    let plain = connect_with(&s.egressd.grpc.to_string(), Some(TOKEN), None).await;
    let refused = match plain {
        Err(_) => true,
        Ok(mut c) => c.list_grants(pb::ListGrantsRequest { include_inactive: true }).await.is_err(),
    };
    assert!(refused, "a plaintext client must not be served");
    // A certificate from another CA is refused at the handshake.
    let stranger = Ca::new("another trust domain").issue(&[], &[OPS]);
    assert!(s.list(Some(&stranger), None).await.is_err(), "a certificate the client CA did not sign");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_generated_gateway_reaches_egressd_over_tls_for_ads_and_checks() {
    let s = start().await;
    let gw = (s.dir.join("gateway.pem"), s.dir.join("gateway-key.pem"));
    let envoy = start_ads_envoy_tls(s.egressd.grpc, &s.dir.join("ca.pem"), "localhost", &gw.0, &gw.1);
    // ADS over TLS: the gateway's listener appears.
    eventually("the gateway's listener from ADS over TLS", Duration::from_secs(20), || async {
        let ready = matches!(try_http_get(envoy.admin, "/ready").await, Ok((200, _)));
        (ready && tokio::net::TcpStream::connect(s.gateway_http).await.is_ok()).then_some(())
    })
    .await;
    let (_, clusters) = http_get(envoy.admin, "/config_dump?resource=dynamic_active_clusters").await;
    assert!(clusters.contains("UpstreamTlsContext"), "egressd_authz is served with TLS");
    // A check over TLS: this plaintext listener gives no identity, so egressd denies it and says
    // why (Envoy's own failure-closed 403 carries no x-egressd-reason).
    let mut conn = tokio::net::TcpStream::connect(s.gateway_http).await.unwrap();
    let (status, response) = support::client::proxy_get(&mut conn, "http://api.stripe.com/v1").await.unwrap();
    assert_eq!(status, 403, "{response}\n{}", envoy.log());
    assert!(response.to_ascii_lowercase().contains("x-egressd-reason: unauthenticated"), "{response}");
    assert!(response.contains("egressd denied this request"), "{response}");
}

/// One generation of a kubelet-mounted TLS Secret in `dir` (`tls.crt`, `tls.key` links through
/// `..data`), swapped in with one rename as the kubelet does.
fn kubelet_tls_generation(dir: &Path, stamp: &str, cert_pem: &str, key_pem: &str) {
    let generation = format!("..2026_12_02_07_00_0{stamp}.000000001");
    std::fs::create_dir_all(dir.join(&generation)).unwrap();
    write(&dir.join(&generation), "tls.crt", cert_pem);
    write(&dir.join(&generation), "tls.key", key_pem);
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&generation, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
    for key in ["tls.crt", "tls.key"] {
        if !dir.join(key).exists() {
            std::os::unix::fs::symlink(Path::new("..data").join(key), dir.join(key)).unwrap();
        }
    }
}

/// The certificate a new TLS connection to `addr` is shown.
async fn presented(addr: SocketAddr, ca: &Ca) -> Option<rustls::pki_types::CertificateDer<'static>> {
    let tcp = tokio::net::TcpStream::connect(addr).await.ok()?;
    let connector = tokio_rustls::TlsConnector::from(support::client::tls_config(&ca.der, None));
    let tls = connector.connect(rustls::pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.ok()?;
    tls.get_ref().1.peer_certificates().map(|c| c[0].clone())
}

/// egressd's own certificate rotates without a restart: when the kubelet swaps the Secret volume,
/// new connections are shown the new certificate and connections already open keep working; a
/// swap to a set that does not load (a key of another certificate) is refused, logged, and the
/// last good certificate keeps being served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_ports_certificate_reloads_in_place_and_a_broken_one_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ca = Ca::new("corp.example trust bundle");
    let secret = dir.join("grpc-tls");
    let first = ca.issue(&["localhost"], &[]);
    kubelet_tls_generation(&secret, "1", &first.cert_pem, &first.key_pem);
    let tokens = write(dir, "tokens", &format!("alice {TOKEN}\n"));
    let policy = dir.join("policy");
    std::fs::create_dir(&policy).unwrap();
    write(&policy, "mesh.yaml", "kind: MeshDefaults\ntrustDomain: corp.example\n");
    let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let admin: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let args = [
        format!("--tls-cert={}", secret.join("tls.crt").display()),
        format!("--tls-key={}", secret.join("tls.key").display()),
        format!("--admin-tokens={}", tokens.display()),
    ];
    let egressd = EgressdProcess::start_with(&policy, dir, grpc, admin, &args).await;
    assert_eq!(presented(grpc, &ca).await, Some(first.cert_der.clone()));
    let tls = ClientTls { ca_pem: ca.pem.clone().into_bytes(), identity: None };
    let url = format!("https://localhost:{}", grpc.port());
    let mut open = connect_with(&url, Some(TOKEN), Some(&tls)).await.expect("TLS connection");
    open.list_grants(pb::ListGrantsRequest { include_inactive: true })
        .await
        .expect("a call over the first certificate");

    // A certificate with another certificate's key: refused, the first one still served.
    let (second, other) = (ca.issue(&["localhost"], &[]), ca.issue(&["localhost"], &[]));
    kubelet_tls_generation(&secret, "2", &second.cert_pem, &other.key_pem);
    eventually("the broken swap to be refused", Duration::from_secs(10), || async {
        egressd.log().contains("do not load; serving the previous certificate").then_some(())
    })
    .await;
    assert_eq!(presented(grpc, &ca).await, Some(first.cert_der.clone()), "{}", egressd.log());

    // A good swap: new connections get it.
    kubelet_tls_generation(&secret, "3", &second.cert_pem, &second.key_pem);
    eventually("the new certificate to be served", Duration::from_secs(10), || async {
        (presented(grpc, &ca).await == Some(second.cert_der.clone())).then_some(())
    })
    .await;
    assert!(egressd.log().contains("gRPC TLS certificate reloaded"), "{}", egressd.log());
    // The connection made before the swaps still serves calls.
    open.list_grants(pb::ListGrantsRequest { include_inactive: true }).await.expect("the open connection");
    let mut fresh = connect_with(&url, Some(TOKEN), Some(&tls)).await.expect("TLS connection");
    fresh.list_grants(pb::ListGrantsRequest { include_inactive: true }).await.expect("a call over the new certificate");
}
