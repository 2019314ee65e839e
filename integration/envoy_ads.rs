//! A real Envoy 1.40 whose bootstrap names only egressd gets its whole config over ADS, ACKs it,
//! follows changes, and survives a config it rejects (NACK) on its previous version.

mod support {
    pub mod envoy;
    pub mod eventually;
    pub mod server;
}

use std::sync::Arc;
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use prost::Name;

use egressd::policy::GatewaySpec;
use egressd::xds::resources;
use egressd::xds::snapshot::{Snapshot, SnapshotSet};
use support::envoy::{RunningEnvoy, free_port, start_ads_envoy};
use support::eventually::eventually;
use support::server::{TestServer, http_get, mesh_without_gateway, try_http_get};

/// How long Envoy gets for each step (a failing wait shows Envoy's log as it is dropped).
const ENVOY_WAIT: Duration = Duration::from_secs(20);

async fn xds(s: &TestServer) -> serde_json::Value {
    serde_json::from_str(&http_get(s.admin, "/xds").await.1).unwrap()
}

/// The node's ACKed version of each type, once all three are ACKed at the snapshot's versions.
async fn acked_all(s: &TestServer, snap: &Snapshot) -> bool {
    let v = xds(s).await;
    let types = &v["nodes"][0]["types"];
    [Cluster::type_url(), Listener::type_url(), RouteConfiguration::type_url()].iter().all(|t| {
        let short = t.rsplit('.').next().unwrap();
        types[short]["ackedVersion"] == snap.type_version(t)
    })
}

async fn envoy_stat(envoy: &RunningEnvoy, name: &str) -> u64 {
    let (_, body) = http_get(envoy.admin, &format!("/stats?filter=^{}$", name.replace('.', "\\."))).await;
    body.lines().find_map(|l| l.strip_prefix(&format!("{name}: "))).and_then(|v| v.trim().parse().ok()).unwrap_or(0)
}

fn gateway(grpc: std::net::SocketAddr) -> GatewaySpec {
    let mut g = GatewaySpec::local(grpc);
    g.http_listen = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    g.tls_listen = Some(format!("127.0.0.1:{}", free_port()).parse().unwrap());
    // No DNS is needed here; point c-ares at a loopback port that nothing answers.
    g.dns_resolvers = vec![format!("127.0.0.1:{}", free_port()).parse().unwrap()];
    g
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_gets_acks_follows_and_survives_a_nack() {
    // The gateway's listener ports must be known before egressd starts serving them.
    let grpc_port = free_port();
    let grpc: std::net::SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let spec = gateway(grpc);
    let s = start_on(grpc, spec.clone()).await;
    let envoy = start_ads_envoy(s.grpc);

    // 1. Everything arrives and is ACKed; Envoy goes LIVE with our listeners.
    let snap = s.xds.snapshots.borrow().default.clone();
    eventually("all types ACKed", ENVOY_WAIT, || async { acked_all(&s, &snap).await.then_some(()) }).await;
    eventually("Envoy ready", ENVOY_WAIT, || async {
        matches!(try_http_get(envoy.admin, "/ready").await, Ok((200, _))).then_some(())
    })
    .await;
    let (_, listeners) = http_get(envoy.admin, "/listeners").await;
    assert!(listeners.contains("egress_http") && listeners.contains("egress_tls"), "{listeners}");

    // 2. The generated listener really calls egressd: a proxy request with no client identity is
    //    denied by egressd (403, reason in the header), through Envoy's ext_authz filter.
    let (status, headers) = proxy_get(spec.http_listen, "http://api.partner.test/").await;
    assert_eq!(status, 403, "{headers}\n{}", envoy.log());
    assert!(headers.to_ascii_lowercase().contains("x-egressd-reason: unauthenticated"), "{headers}");

    // 3. A change reaches Envoy and is ACKed within 2 s.
    let mut changed = spec.clone();
    changed.request_timeout_ms = 12_000;
    let snap2 = Arc::new(Snapshot::for_gateway(&changed, "v2"));
    let t0 = tokio::time::Instant::now();
    s.xds.snapshots.send_replace(Arc::new(SnapshotSet::single((*snap2).clone())));
    eventually("new version ACKed", ENVOY_WAIT, || async { acked_all(&s, &snap2).await.then_some(()) }).await;
    assert!(t0.elapsed() < Duration::from_secs(2), "took {:?}", t0.elapsed());

    // 4. A config Envoy rejects: a DFP cluster whose DNS cache settings differ from the filters'.
    let mut odd = changed.clone();
    odd.dns_max_hosts = 7;
    let cds = Cluster::type_url();
    let lds = Listener::type_url();
    let rds = RouteConfiguration::type_url();
    let bad = Arc::new(Snapshot::from_resources(
        "default",
        "v3-bad",
        vec![
            (cds.clone(), resources::authz_cluster(&changed)),
            (cds.clone(), resources::dfp_cluster(&odd)),
            (lds.clone(), resources::http_listener(&changed)),
            (lds.clone(), resources::tls_listener(&changed, changed.tls_listen.unwrap())),
            (rds.clone(), resources::http_route(&changed)),
        ],
    ));
    let rejected_before = envoy_stat(&envoy, "cluster_manager.cds.update_rejected").await;
    s.xds.snapshots.send_replace(Arc::new(SnapshotSet::single((*bad).clone())));
    let v = eventually("a NACK", ENVOY_WAIT, || async {
        let v = xds(&s).await;
        v["nodes"][0]["types"]["Cluster"]["lastNack"].is_object().then_some(v)
    })
    .await;
    let cluster = &v["nodes"][0]["types"]["Cluster"];
    assert_eq!(cluster["lastNack"]["rejectedVersion"], bad.type_version(&cds));
    assert!(cluster["lastNack"]["message"].as_str().unwrap().contains("egress_dns_cache"), "{cluster}");
    assert_eq!(cluster["ackedVersion"], snap2.type_version(&cds), "Envoy stays on its last good clusters");
    assert!(envoy_stat(&envoy, "cluster_manager.cds.update_rejected").await > rejected_before);
    // Not re-sent in a loop: over a second, no further pushes and no further NACKs.
    let (pushes, nacks) = (v["pushes"].as_u64().unwrap(), v["nacks"].as_u64().unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let v = xds(&s).await;
    assert_eq!((v["pushes"].as_u64().unwrap(), v["nacks"].as_u64().unwrap()), (pushes, nacks));
    // The previous config still serves.
    assert_eq!(proxy_get(spec.http_listen, "http://api.partner.test/").await.0, 403);

    // 5. A good version after the bad one is accepted.
    let mut fixed = changed.clone();
    fixed.request_timeout_ms = 15_000;
    let snap3 = Arc::new(Snapshot::for_gateway(&fixed, "v4"));
    s.xds.snapshots.send_replace(Arc::new(SnapshotSet::single((*snap3).clone())));
    eventually("recovery ACKed", ENVOY_WAIT, || async { acked_all(&s, &snap3).await.then_some(()) }).await;
}

/// A Gateway that names egressd by DNS name (`authz.address: localhost:PORT`, what a Kubernetes
/// Service name is): Envoy resolves it itself (STRICT_DNS, the system's resolver: /etc/hosts) and
/// its ext_authz calls reach egressd, whose deny comes back with egressd's reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_reaches_egressd_by_dns_name() {
    let grpc_port = free_port();
    let grpc: std::net::SocketAddr = format!("127.0.0.1:{grpc_port}").parse().unwrap();
    let mut spec = gateway(grpc);
    spec.authz_address = Some(egressd::policy::AuthzAddress::Name { host: "localhost".into(), port: grpc_port });
    let s = start_on(grpc, spec.clone()).await;
    let envoy = start_ads_envoy(s.grpc);
    let snap = s.xds.snapshots.borrow().default.clone();
    eventually("all types ACKed", ENVOY_WAIT, || async { acked_all(&s, &snap).await.then_some(()) }).await;
    let (_, config) = http_get(envoy.admin, "/config_dump?resource=dynamic_active_clusters").await;
    assert!(config.contains("STRICT_DNS") && config.contains("\"localhost\""), "{config}");
    eventually("localhost resolved to egressd", ENVOY_WAIT, || async {
        let (_, clusters) = http_get(envoy.admin, "/clusters").await;
        clusters.contains(&format!("egressd_authz::127.0.0.1:{grpc_port}::")).then_some(())
    })
    .await;
    eventually("egressd answers through the named cluster", ENVOY_WAIT, || async {
        let (status, headers) = proxy_get(spec.http_listen, "http://api.partner.test/").await;
        (status == 403 && headers.to_ascii_lowercase().contains("x-egressd-reason: unauthenticated")).then_some(())
    })
    .await;
}

async fn start_on(grpc: std::net::SocketAddr, spec: GatewaySpec) -> TestServer {
    TestServer::builder(mesh_without_gateway()).gateway(spec).grpc_listen(grpc).start().await
}

/// An absolute-form proxy request; returns the status and the raw response head.
async fn proxy_get(proxy: std::net::SocketAddr, url: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    let mut stream = tokio::net::TcpStream::connect(proxy).await.unwrap();
    stream
        .write_all(format!("GET {url} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.unwrap();
    let raw = String::from_utf8_lossy(&raw).to_string();
    let status = raw.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let head = raw.split("\r\n\r\n").next().unwrap_or_default().to_string();
    (status, head)
}
