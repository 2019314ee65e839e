//! The tunnel filter's module (the one egressd sends, `xds::tunnel::TUNNEL_FILTER_WASM`) in the
//! real Envoy 1.40 behind an authorizer that is not egressd: a stub Check server whose answer per
//! CONNECT host carries no order, a garbled one, `off`, or a real order. The filter fails closed
//! (403 `tunnel-unchecked` without an order it reads), lets `off` through unread, and judges a
//! ClientHello that arrives in two TCP writes as one: the authorized SNI reaches the upstream, a
//! fronted one never does.

mod support {
    pub mod envoy;
    pub mod eventually;
}

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse, OkHttpResponse, check_response};
use envoy_types::pb::google::rpc::Status;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use support::envoy::{RunningEnvoy, free_port, start_static_envoy};

/// Answers every Check OK; the headers it adds depend on the CONNECT's host.
struct StubAuthorizer;

#[tonic::async_trait]
impl Authorization for StubAuthorizer {
    async fn check(&self, req: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let http = req.into_inner().attributes.and_then(|a| a.request).and_then(|r| r.http).unwrap_or_default();
        let host = http.host.split(':').next().unwrap_or_default().to_string();
        let order = match host.as_str() {
            "none.test" => None,
            "garbled.test" => Some("require-matching-sni maybe"),
            "off.test" => Some("off"),
            _ => Some("require-matching-sni enforce"),
        };
        let header = |k: &str, v: &str| HeaderValueOption {
            header: Some(HeaderValue { key: k.into(), value: v.into(), ..Default::default() }),
            append_action: 2, // overwrite
            ..Default::default()
        };
        let mut headers = vec![header("x-egress-host", &host)];
        headers.extend(order.map(|o| header("x-egress-tunnel", o)));
        Ok(tonic::Response::new(CheckResponse {
            status: Some(Status::default()),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers,
                ..Default::default()
            })),
            ..Default::default()
        }))
    }
}

/// An upstream that echoes what it receives, and counts the bytes.
async fn echo() -> (SocketAddr, Arc<std::sync::atomic::AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = received.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let count = count.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = s.read(&mut buf).await {
                    if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                        break;
                    }
                    count.fetch_add(n, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
    });
    (addr, received)
}

struct Gateway {
    envoy: RunningEnvoy,
    listen: SocketAddr,
    received: Arc<std::sync::atomic::AtomicUsize>,
    _module: tempfile::TempDir,
}

/// Envoy: ext_authz to the stub, then the tunnel filter, then a CONNECT route to the echo upstream.
async fn gateway() -> Gateway {
    let authz = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let authz_addr = authz.local_addr().unwrap();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(AuthorizationServer::new(StubAuthorizer))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(authz)),
    );
    let (upstream, received) = echo().await;
    let module = tempfile::tempdir().unwrap();
    let module_path = module.path().join("tunnel_filter.wasm");
    std::fs::write(&module_path, egressd::xds::tunnel::TUNNEL_FILTER_WASM).unwrap();
    let listen: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let cluster = |name: &str, addr: SocketAddr, h2: bool| {
        let h2 = if h2 {
            "\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {http2_protocol_options: {}}"
        } else {
            ""
        };
        format!(
            "  - name: {name}\n    type: STATIC\n    connect_timeout: 1s{h2}\n    load_assignment:\n      cluster_name: {name}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {}}}}}}}}}]}}]\n",
            addr.port()
        )
    };
    let config = format!(
        r#"admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: ADMIN_PORT}}}}
static_resources:
  listeners:
  - name: gateway
    address: {{socket_address: {{address: 127.0.0.1, port_value: {port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: gateway
          upgrade_configs: [{{upgrade_type: CONNECT}}]
          http_filters:
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              grpc_service: {{envoy_grpc: {{cluster_name: authz}}}}
          - name: egressd.tunnel
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                name: egressd.tunnel
                vm_config:
                  vm_id: egressd.tunnel
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {module}}}}}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
          route_config:
            virtual_hosts:
            - name: any
              domains: ["*"]
              routes:
              - match: {{connect_matcher: {{}}}}
                route: {{cluster: upstream, upgrade_configs: [{{upgrade_type: CONNECT, connect_config: {{}}}}]}}
  clusters:
{authz_cluster}{upstream_cluster}"#,
        port = listen.port(),
        module = module_path.display(),
        authz_cluster = cluster("authz", authz_addr, true),
        upstream_cluster = cluster("upstream", upstream, false),
    );
    let envoy = start_static_envoy(&config);
    support::eventually::eventually("the gateway listens", Duration::from_secs(20), || async {
        TcpStream::connect(listen).await.ok().map(|_| ())
    })
    .await;
    Gateway { envoy, listen, received, _module: module }
}

/// CONNECT `authority`; returns the stream and the response head.
async fn connect(gw: &Gateway, authority: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(gw.listen).await.unwrap();
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    (s, String::from_utf8_lossy(&head).into_owned())
}

fn client_hello(sni: &str) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(config), ServerName::try_from(sni.to_string()).unwrap()).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

/// Sends the ClientHello for `sni` in two writes 200 ms apart; returns what came back (the echo
/// of the whole ClientHello, or nothing when the tunnel was cut).
async fn hello_in_two_writes(s: &mut TcpStream, sni: &str) -> Vec<u8> {
    let hello = client_hello(sni);
    let (first, rest) = hello.split_at(hello.len() / 3);
    s.write_all(first).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = s.write_all(rest).await;
    let mut back = Vec::new();
    let mut buf = [0u8; 4096];
    while back.len() < hello.len() {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await {
            Ok(Ok(n)) if n > 0 => back.extend_from_slice(&buf[..n]),
            _ => break,
        }
    }
    back
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connect_without_an_order_the_filter_reads_is_refused() {
    let gw = gateway().await;
    for host in ["none.test", "garbled.test"] {
        let (_, head) = connect(&gw, &format!("{host}:443")).await;
        assert!(head.starts_with("HTTP/1.1 403"), "{host}: {head}\n{}", gw.envoy.log());
        assert!(head.to_ascii_lowercase().contains("x-egressd-reason: tunnel-unchecked"), "{head}");
    }
    assert_eq!(gw.received.load(std::sync::atomic::Ordering::SeqCst), 0, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_off_tunnel_passes_unread() {
    let gw = gateway().await;
    let (mut s, head) = connect(&gw, "off.test:22").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", gw.envoy.log());
    s.write_all(b"SSH-2.0-OpenSSH_9.6\r\n").await.unwrap();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"SSH-2.0-OpenSSH_9.6\r\n", "the opaque bytes went through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hello_in_two_writes_is_judged_whole() {
    let gw = gateway().await;
    let (mut s, head) = connect(&gw, "checked.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}\n{}", gw.envoy.log());
    let hello = client_hello("checked.test");
    assert_eq!(hello_in_two_writes(&mut s, "checked.test").await.len(), hello.len(), "the authorized SNI passes");

    let before = gw.received.load(std::sync::atomic::Ordering::SeqCst);
    let (mut s, head) = connect(&gw, "checked.test:443").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(hello_in_two_writes(&mut s, "evil.test").await.is_empty(), "a fronted tunnel is cut");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after = gw.received.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(after, before, "not a byte of the fronted ClientHello reached the upstream");
}
