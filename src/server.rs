//! `egressd serve`: one gRPC port (ext_authz Check, ADS, the gateway's access log service, gRPC
//! health, admin API), one admin HTTP port.

mod io;
pub mod tls;
pub mod tls_acceptor;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::net::TcpListener;
use tonic::transport::server::TcpIncoming;

use crate::accesslog::AccessLogSink;
use crate::admin::grpc::AdminApi;
use crate::admin::http::{AdminState, router};
use crate::admin::tokens::AdminTokens;
use crate::authz::CheckServer;
use crate::policy::GatewaySpec;
use crate::policy::SharedPolicy;
use crate::reload::{ReloadStatus, spawn_watcher};
use crate::runtime::RuntimeOverrides;
use crate::runtime::breakglass::GrantStore;
use crate::telemetry::Telemetry;
use crate::xds::ads::AdsService;
use crate::xds::registry::Registry;
use crate::xds::snapshot::SnapshotSet;

/// How long shutdown waits for open gRPC calls to finish.
const DRAIN_PERIOD: std::time::Duration = std::time::Duration::from_secs(10);
/// How long start-up waits for a shared state store's first load before serving without it.
const FIRST_SYNC: std::time::Duration = std::time::Duration::from_secs(3);

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub grpc_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Where the DNS firewall listens, overriding the DnsFirewall document's `listen` (no DNS is
    /// served without a DnsFirewall document).
    pub dns_listen: Option<SocketAddr>,
    /// The default gateway served over ADS when the policy has no default `kind: Gateway`. Its
    /// `authz_address` is where Envoy reaches egressd; when unset, the bound gRPC address is used.
    pub gateway: Option<GatewaySpec>,
    /// Policy directory to watch for changes (None: no hot reload, e.g. the embedded example).
    pub watch_dir: Option<std::path::PathBuf>,
    /// Metrics, and where decision spans and audit records go.
    pub telemetry: Telemetry,
    pub admin_api: AdminApiConfig,
    /// The gRPC port over TLS (None: plaintext, for loopback and development).
    pub tls: Option<tls::GrpcTls>,
}

/// The admin gRPC API and the run-time overrides it manages.
#[derive(Debug, Clone)]
pub struct AdminApiConfig {
    /// Operators' tokens; `None` disables the API (every call refused).
    pub tokens: Option<Arc<AdminTokens>>,
    pub grants: Arc<GrantStore>,
    /// How long a service must run without would-denies to be ready for its next rollout step.
    pub rollout_window_seconds: u64,
}

impl Default for AdminApiConfig {
    fn default() -> Self {
        AdminApiConfig { tokens: None, grants: Arc::new(GrantStore::in_memory(24 * 3600)), rollout_window_seconds: 600 }
    }
}

/// Handles to the running server's xDS state, for callers that change snapshots (tests, reload).
#[derive(Clone)]
pub struct XdsHandle {
    pub snapshots: Arc<tokio::sync::watch::Sender<Arc<SnapshotSet>>>,
    pub registry: Arc<Registry>,
    /// The fallback default gateway (used when the policy defines none).
    pub gateway: GatewaySpec,
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot listen on {addr} ({what})")]
    Bind { what: &'static str, addr: SocketAddr, source: std::io::Error },
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("admin server failed: {0}")]
    Admin(std::io::Error),
    #[error("cannot watch policy directory {0}: {1}")]
    Watch(String, String),
    #[error(transparent)]
    Dns(#[from] crate::dns::DnsBindError),
}

/// With the gRPC port on TLS, a gateway told to reach egressd in plaintext fails every check
/// closed: say which, at start-up.
fn warn_plaintext_gateways(policy: &crate::policy::CompiledPolicy, fallback: &GatewaySpec) {
    let has_default = policy.gateways.iter().any(|g| g.nodes.is_empty());
    let served = policy.gateways.iter().chain((!has_default).then_some(fallback));
    for g in served.filter(|g| g.authz_tls.is_none()) {
        tracing::warn!(
            gateway = %g.name,
            "the gRPC port serves TLS but this gateway reaches egressd in plaintext: set its authz.tls, or its checks fail (closed)"
        );
    }
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Addresses actually bound (useful with port 0 in tests) and the xDS handles.
#[derive(Clone)]
pub struct Bound {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// The DNS firewall's address (UDP and TCP), when the policy has one.
    pub dns: Option<SocketAddr>,
    pub xds: XdsHandle,
}

/// Binds both ports, then serves until `shutdown` resolves. `on_bound` learns the real addresses.
pub async fn serve(
    config: ServeConfig,
    policy: SharedPolicy,
    on_bound: impl FnOnce(Bound),
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    let bind = |what, addr| async move {
        TcpListener::bind(addr).await.map_err(|source| ServeError::Bind { what, addr, source })
    };
    let grpc = bind("gRPC", config.grpc_listen).await?;
    let admin = bind("admin", config.admin_listen).await?;
    let grpc_addr = grpc.local_addr().expect("bound");
    let admin_addr = admin.local_addr().expect("bound");

    let dns = start_dns(config.dns_listen, &config.telemetry, &policy).await?;
    let mut gateway = config.gateway.unwrap_or_else(|| GatewaySpec::local(grpc_addr));
    // The gateway resolves through the address the DNS firewall is bound to, not only the one
    // its document names (`--dns-listen`, port 0).
    gateway.dns_firewall_address = gateway.dns_firewall_address.or(dns.as_ref().map(|d| d.0));
    if config.tls.is_some() {
        warn_plaintext_gateways(&policy.load(), &gateway);
    }
    let grpc_tls = config.tls.clone().map(tls_acceptor::ReloadingTls::load).transpose()?;
    let (snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(SnapshotSet::build(&policy.load(), &gateway)));
    let registry = Arc::new(Registry::default());
    let xds = XdsHandle { snapshots: Arc::new(snap_tx), registry: registry.clone(), gateway: gateway.clone() };
    let reload_status = Arc::new(ReloadStatus::default());
    // Kept alive for the server's lifetime; dropping it stops watching.
    let _watcher = match &config.watch_dir {
        Some(dir) => {
            let snapshots = xds.snapshots.clone();
            let on_new = Arc::new(move |p: &Arc<crate::policy::CompiledPolicy>| {
                snapshots.send_replace(Arc::new(SnapshotSet::build(p, &gateway)));
            });
            let task = spawn_watcher(dir.clone(), policy.clone(), reload_status.clone(), on_new)
                .map_err(|e| ServeError::Watch(dir.display().to_string(), e.to_string()))?;
            Some(AbortOnDrop(task))
        }
        None => None,
    };
    let bound = Bound { grpc: grpc_addr, admin: admin_addr, dns: dns.as_ref().map(|d| d.0), xds: xds.clone() };
    let runtime = Arc::new(RuntimeOverrides::new(
        config.admin_api.grants.clone(),
        config.admin_api.rollout_window_seconds,
        config.telemetry.metrics.rollback_guard_trips.clone(),
    ));
    let _sampler = AbortOnDrop(runtime.spawn_sampler(policy.clone()));
    // Other replicas' grants and trips, applied in the background (shared stores only).
    let _replication = runtime.spawn_replication().map(AbortOnDrop);
    if let Some(mut synced) = runtime.grants.store().synced() {
        // Ready with the replicas' grants and trips, not an empty set; with the store away,
        // serve anyway (nothing better is known) and let replication catch up.
        if tokio::time::timeout(FIRST_SYNC, synced.wait_for(|s| *s)).await.is_err() {
            tracing::warn!("shared state not loaded within {FIRST_SYNC:?}; serving without it until it is");
        }
    }
    let admin_auth = crate::admin::auth::AdminAuth::new(
        config.admin_api.tokens.clone(),
        policy.clone(),
        config.telemetry.metrics.admin_auth_failures.clone(),
    );
    let admin_api = AdminApi::new(policy.clone(), runtime.clone(), admin_auth);

    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    health_reporter.set_serving::<CheckServer>().await;

    let grpc_ready = Arc::new(AtomicBool::new(false));
    let metrics = crate::admin::http::metrics_registry(
        &config.telemetry.metrics,
        registry.clone(),
        reload_status.clone(),
        policy.clone(),
    );
    let admin_state = AdminState {
        policy: policy.clone(),
        grpc_ready: grpc_ready.clone(),
        registry: registry.clone(),
        snapshot: snap_rx.clone(),
        reload: reload_status,
        metrics: Arc::new(metrics),
        runtime: runtime.clone(),
        flows: config.telemetry.flows().cloned(),
        signals: config.telemetry.signals().cloned(),
    };

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let ads = AdsService::new(snap_rx.clone(), registry.clone(), stop_rx.clone());
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let wait_stop = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };

    let admin_task = tokio::spawn({
        let stop = wait_stop(stop_rx.clone());
        async move { axum::serve(admin, router(admin_state)).with_graceful_shutdown(stop).await }
    });

    tracing::info!(grpc = %bound.grpc, admin = %bound.admin, policy = %policy.load().version, "egressd serving");
    on_bound(bound);
    grpc_ready.store(true, Ordering::Release);
    let tcp = tokio_stream::StreamExt::map(TcpIncoming::from(grpc).with_nodelay(Some(true)), |conn| {
        conn.map(io::BatchingStream)
    });
    let check = CheckServer::new(policy, config.telemetry.clone(), runtime);
    let routes = tonic::transport::Server::builder()
        // When many gateway clients disconnect at once, Envoy cancels their in-flight Checks
        // (RST_STREAM) before egressd has picked them up; h2's default of 20 such resets per
        // connection then GOAWAYs the gateway's whole connection (seen under benches/gateway_bench.sh),
        // failing every other Check on it closed. The limit stays finite against rapid-reset floods.
        .http2_max_pending_accept_reset_streams(Some(256))
        .add_service(health_service)
        .add_service(AccessLogSink::new(config.telemetry.clone(), Some(check.tunnel_recorder())).into_server())
        .add_service(check)
        .add_service(ads.into_server())
        .add_service(admin_api.into_server());
    // Our own listener (bound above, so port 0 works): Nagle must be turned off here, because the
    // builder's tcp_nodelay only applies to sockets tonic binds itself. With Nagle on, small Check
    // answers wait for delayed ACKs and p99 jumps to ~40 ms. With TLS, our acceptor (certificates
    // reload in place) hands tonic finished TLS streams.
    let stop = wait_stop(stop_rx.clone());
    type Serving = std::pin::Pin<Box<dyn std::future::Future<Output = Result<(), tonic::transport::Error>> + Send>>;
    let (grpc_server, _tls_watch): (Serving, _) = match grpc_tls {
        None => (Box::pin(routes.serve_with_incoming_shutdown(tcp, stop)), None),
        Some(tls) => {
            let watch = tls.watch()?;
            (Box::pin(routes.serve_with_incoming_shutdown(tls_acceptor::incoming(tcp, tls), stop)), Some(watch))
        }
    };
    // Graceful shutdown finishes in-flight calls; a client that keeps a connection open past the
    // drain period does not keep the process alive.
    let drain_expired = async move {
        wait_stop(stop_rx).await;
        tokio::time::sleep(DRAIN_PERIOD).await;
    };
    tokio::select! {
        served = grpc_server => served?,
        _ = drain_expired => tracing::warn!("gRPC connections still open after {DRAIN_PERIOD:?}; closing them"),
    }
    grpc_ready.store(false, Ordering::Release);
    match admin_task.await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(ServeError::Admin(e)),
        Err(e) => Err(ServeError::Admin(std::io::Error::other(e))),
    }
}

/// Binds the DNS firewall when the policy has one. Its listen address is read once: a reload that
/// moves it takes effect at the next start (every other DnsFirewall setting is read per query).
async fn start_dns(
    listen: Option<SocketAddr>,
    telemetry: &Telemetry,
    policy: &SharedPolicy,
) -> Result<Option<(SocketAddr, AbortOnDrop)>, ServeError> {
    let Some(spec) = policy.load().dns.clone() else { return Ok(None) };
    let listen = listen.unwrap_or(spec.listen);
    let server = crate::dns::DnsServer::bind(listen, &spec, policy.clone(), telemetry.clone()).await?;
    let addr = server.local_addr();
    tracing::info!(dns = %addr, upstreams = ?spec.upstreams, "DNS firewall serving");
    Ok(Some((addr, AbortOnDrop(tokio::spawn(server.run())))))
}
