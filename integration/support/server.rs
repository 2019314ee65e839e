#![allow(dead_code)] // each test binary uses a subset of these helpers
//! egressd in-process on loopback ports chosen by the OS, for integration tests.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use arc_swap::ArcSwap;
use egressd::policy::GatewaySpec;
use egressd::policy::{self, PolicySource};
use egressd::server::{AdminApiConfig, ServeConfig, XdsHandle, serve};
use egressd::telemetry::Telemetry;

pub struct TestServer {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The DNS firewall's address, when the policy has a DnsFirewall.
    pub dns: Option<SocketAddr>,
    pub xds: XdsHandle,
    /// The live policy the server decides with (tests may swap it as a reload would).
    pub policy: policy::SharedPolicy,
    _stop: tokio::sync::oneshot::Sender<()>,
}

/// The example mesh-config/ without its Gateway document, for tests that bring their own gateway.
pub fn mesh_without_gateway() -> PolicySource {
    let mut source = PolicySource::embedded();
    source.files.retain(|f| !f.name.ends_with("gateway.yaml"));
    source
}

impl TestServer {
    /// A server on `source`: gRPC on a port the OS picks, no gateway, no watcher, metrics-only
    /// telemetry, the default admin API. `start` it; it stops when the returned value is dropped.
    pub fn builder(source: PolicySource) -> TestServerBuilder {
        TestServerBuilder {
            source,
            gateway: None,
            grpc_listen: "127.0.0.1:0".parse().unwrap(),
            watch_dir: None,
            telemetry: Telemetry::metrics_only(),
            admin_api: AdminApiConfig::default(),
            dns_listen: None,
        }
    }
}

/// How to start a `TestServer`.
pub struct TestServerBuilder {
    source: PolicySource,
    gateway: Option<GatewaySpec>,
    grpc_listen: SocketAddr,
    watch_dir: Option<PathBuf>,
    telemetry: Telemetry,
    admin_api: AdminApiConfig,
    dns_listen: Option<SocketAddr>,
}

impl TestServerBuilder {
    /// Serves xDS for `gateway` (instead of a Gateway document in the policy).
    pub fn gateway(mut self, gateway: GatewaySpec) -> Self {
        self.gateway = Some(gateway);
        self
    }

    /// The gRPC port given (a gateway spec must name egressd's address up front).
    pub fn grpc_listen(mut self, addr: SocketAddr) -> Self {
        self.grpc_listen = addr;
        self
    }

    /// Hot-reloads `dir` (which the source should have been read from).
    pub fn watch(mut self, dir: PathBuf) -> Self {
        self.watch_dir = Some(dir);
        self
    }

    /// Decisions go to `telemetry` (spans, audit log).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = telemetry;
        self
    }

    /// The admin API configured (tokens, grants, rollout window).
    pub fn admin_api(mut self, admin_api: AdminApiConfig) -> Self {
        self.admin_api = admin_api;
        self
    }

    /// The DNS firewall on this address instead of the DnsFirewall's `listen` (`serve --dns-listen`).
    pub fn dns_listen(mut self, addr: SocketAddr) -> Self {
        self.dns_listen = Some(addr);
        self
    }

    /// Starts egressd; the server stops when the returned value is dropped.
    pub async fn start(self) -> TestServer {
        let TestServerBuilder { source, gateway, grpc_listen, watch_dir, telemetry, admin_api, dns_listen } = self;
        let compiled = policy::compile(&source, egressd::clock::unix_now()).expect("test policy is valid");
        let shared = Arc::new(ArcSwap::from_pointee(compiled));
        let live = shared.clone();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (bound_tx, bound_rx) = tokio::sync::oneshot::channel();
        let admin_listen = "127.0.0.1:0".parse().unwrap();
        let config =
            ServeConfig { grpc_listen, admin_listen, dns_listen, gateway, watch_dir, telemetry, admin_api, tls: None };
        tokio::spawn(async move {
            let on_bound = move |b| {
                let _ = bound_tx.send(b);
            };
            serve(config, shared, on_bound, async {
                let _ = stop_rx.await;
            })
            .await
            .expect("server runs");
        });
        let bound = bound_rx.await.expect("server bound its ports");
        TestServer {
            grpc: bound.grpc,
            admin: bound.admin,
            dns: bound.dns,
            xds: bound.xds,
            policy: live,
            _stop: stop_tx,
        }
    }
}

/// A minimal HTTP/1.1 GET, to keep an HTTP client out of the dependency graph.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    try_http_get(addr, path).await.unwrap_or_else(|e| panic!("GET http://{addr}{path}: {e}"))
}

/// As `http_get`, for polling a port that may not be listening yet.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut raw = String::new();
    stream.read_to_string(&mut raw).await?;
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    Ok((status, body))
}
