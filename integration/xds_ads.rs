//! ADS protocol over real gRPC: a tonic client plays Envoy against egressd's ADS on loopback.
//! State of the world and delta: first response, ACK, NACK (kept on the last good version, not
//! re-sent, visible on /xds), pushes on a new snapshot, named subscriptions, unchanged resources not
//! re-sent.

mod support {
    pub mod eventually;
    pub mod server;
}

use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use envoy_types::pb::google::rpc::Status;
use prost::{Message, Name};
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use egressd::policy::GatewaySpec;
use egressd::policy::PolicySource;
use egressd::xds::snapshot::{Snapshot, SnapshotSet};
use support::eventually::eventually;
use support::server::{TestServer, http_get};

/// Polls /xds until `check` holds (the server processes ACKs asynchronously), or fails after 2 s.
async fn xds_eventually(s: &TestServer, what: &str, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    eventually(&format!("/xds to show {what}"), Duration::from_secs(2), || async {
        let (_, body) = http_get(s.admin, "/xds").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        check(&v).then_some(v)
    })
    .await
}

fn node() -> Option<Node> {
    Some(Node { id: "gw-1".into(), cluster: "egress-gateway".into(), ..Default::default() })
}

async fn server() -> TestServer {
    TestServer::builder(PolicySource::embedded()).start().await
}

/// Publishes a new snapshot built from a changed gateway spec.
fn publish(s: &TestServer, change: impl FnOnce(&mut GatewaySpec)) -> Snapshot {
    let mut spec = s.xds.gateway.clone();
    change(&mut spec);
    let snap = Snapshot::for_gateway(&spec, "test");
    s.xds.snapshots.send_replace(std::sync::Arc::new(SnapshotSet::single(snap.clone())));
    snap
}

struct Sotw {
    tx: mpsc::Sender<DiscoveryRequest>,
    rx: Streaming<DiscoveryResponse>,
}

impl Sotw {
    async fn open(s: &TestServer) -> Sotw {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", s.grpc)).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Sotw { tx, rx }
    }

    async fn send(&self, req: DiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(2), self.rx.next())
            .await
            .expect("a response within 2 s")
            .unwrap()
            .unwrap()
    }

    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.rx.next()).await {
            panic!("unexpected response: {:?}", r.map(|r| (r.type_url, r.version_info)));
        }
    }
}

fn ack(type_url: &str, resp: &DiscoveryResponse) -> DiscoveryRequest {
    DiscoveryRequest {
        type_url: type_url.into(),
        version_info: resp.version_info.clone(),
        response_nonce: resp.nonce.clone(),
        ..Default::default()
    }
}

fn names<M: Message + Default>(resp: &DiscoveryResponse, name: impl Fn(&M) -> String) -> Vec<String> {
    resp.resources.iter().map(|a| name(&M::decode(a.value.as_slice()).unwrap())).collect()
}

#[tokio::test]
async fn sotw_first_response_ack_and_push_on_change() {
    let s = server().await;
    let mut c = Sotw::open(&s).await;
    let cds = Cluster::type_url();
    c.send(DiscoveryRequest { node: node(), type_url: cds.clone(), ..Default::default() }).await;
    let r1 = c.recv().await;
    assert_eq!(names::<Cluster>(&r1, |c| c.name.clone()), ["egress_dfp", "egressd_authz"]);
    assert!(!r1.nonce.is_empty() && !r1.version_info.is_empty());
    c.send(ack(&cds, &r1)).await;
    // An ACK gets no response.
    c.nothing_for(Duration::from_millis(300)).await;
    // A new snapshot where the clusters change reaches the stream.
    let snap = publish(&s, |g| g.connect_timeout_ms = 1234);
    let r2 = c.recv().await;
    assert_eq!(r2.version_info, snap.type_version(&cds));
    assert_ne!(r2.version_info, r1.version_info);
    c.send(ack(&cds, &r2)).await;
    // A snapshot whose clusters did not change sends nothing for clusters.
    publish(&s, |g| {
        g.connect_timeout_ms = 1234;
        g.authz_timeout_ms = 900 // listeners only
    });
    c.nothing_for(Duration::from_millis(300)).await;
    // /xds shows the node on the ACKed version.
    let v = xds_eventually(&s, "the ACK", |v| {
        v["nodes"][0]["types"]["Cluster"]["ackedVersion"] == r2.version_info.as_str()
    })
    .await;
    assert_eq!(v["nodes"][0]["nodeId"], "gw-1");
    assert_eq!(v["nodes"][0]["nodeCluster"], "egress-gateway");
}

#[tokio::test]
async fn sotw_nack_keeps_last_good_and_is_not_resent() {
    let s = server().await;
    let mut c = Sotw::open(&s).await;
    let lds = Listener::type_url();
    c.send(DiscoveryRequest { node: node(), type_url: lds.clone(), ..Default::default() }).await;
    let good = c.recv().await;
    c.send(ack(&lds, &good)).await;
    xds_eventually(&s, "the first ACK", |v| {
        v["nodes"][0]["types"]["Listener"]["ackedVersion"] == good.version_info.as_str()
    })
    .await;
    publish(&s, |g| g.authz_timeout_ms = 777);
    let bad = c.recv().await;
    // Envoy rejects it: the request carries the last good version and the error.
    c.send(DiscoveryRequest {
        type_url: lds.clone(),
        version_info: good.version_info.clone(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(Status {
            code: 3,
            message: "listener egress_http: bad config".into(),
            ..Default::default()
        }),
        ..Default::default()
    })
    .await;
    // Not re-sent in a loop.
    c.nothing_for(Duration::from_millis(500)).await;
    let v = xds_eventually(&s, "the NACK", |v| v["nacks"] == 1).await;
    let t = &v["nodes"][0]["types"]["Listener"];
    assert_eq!(t["ackedVersion"], good.version_info.as_str(), "node stays on its last ACKed version");
    assert_eq!(t["lastNack"]["rejectedVersion"], bad.version_info.as_str());
    assert_eq!(t["lastNack"]["message"], "listener egress_http: bad config");
    assert_eq!(v["nacks"], 1);
    // The next snapshot version is offered.
    publish(&s, |g| g.authz_timeout_ms = 600);
    let fixed = c.recv().await;
    assert_ne!(fixed.version_info, bad.version_info);
}

#[tokio::test]
async fn sotw_named_route_subscription_and_stale_nonces() {
    let s = server().await;
    let mut c = Sotw::open(&s).await;
    let rds = RouteConfiguration::type_url();
    c.send(DiscoveryRequest {
        node: node(),
        type_url: rds.clone(),
        resource_names: vec!["egress_http".into()],
        ..Default::default()
    })
    .await;
    let r = c.recv().await;
    assert_eq!(names::<RouteConfiguration>(&r, |r| r.name.clone()), ["egress_http"]);
    // A name that does not exist: an empty answer for it, not the other routes.
    c.send(DiscoveryRequest {
        type_url: rds.clone(),
        version_info: r.version_info.clone(),
        response_nonce: r.nonce.clone(),
        resource_names: vec!["nope".into()],
        ..Default::default()
    })
    .await;
    let r2 = c.recv().await;
    assert!(r2.resources.is_empty());
    // A reply to the superseded nonce is ignored.
    c.send(ack(&rds, &r)).await;
    c.nothing_for(Duration::from_millis(300)).await;
}

struct Delta {
    tx: mpsc::Sender<DeltaDiscoveryRequest>,
    rx: Streaming<DeltaDiscoveryResponse>,
}

impl Delta {
    async fn open(s: &TestServer) -> Delta {
        let mut client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", s.grpc)).await.unwrap();
        let (tx, rx) = mpsc::channel(16);
        let rx = client.delta_aggregated_resources(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Delta { tx, rx }
    }

    async fn send(&self, req: DeltaDiscoveryRequest) {
        self.tx.send(req).await.unwrap();
    }

    async fn recv(&mut self) -> DeltaDiscoveryResponse {
        tokio::time::timeout(Duration::from_secs(2), self.rx.next())
            .await
            .expect("a response within 2 s")
            .unwrap()
            .unwrap()
    }

    async fn nothing_for(&mut self, wait: Duration) {
        if let Ok(Some(r)) = tokio::time::timeout(wait, self.rx.next()).await {
            panic!("unexpected delta response: {:?}", r.map(|r| (r.type_url, r.system_version_info)));
        }
    }
}

fn delta_names(r: &DeltaDiscoveryResponse) -> Vec<&str> {
    r.resources.iter().map(|r| r.name.as_str()).collect()
}

#[tokio::test]
async fn delta_sends_only_what_changed() {
    let s = server().await;
    let mut c = Delta::open(&s).await;
    let lds = Listener::type_url();
    c.send(DeltaDiscoveryRequest { node: node(), type_url: lds.clone(), ..Default::default() }).await;
    let r1 = c.recv().await;
    assert_eq!(delta_names(&r1), ["egress_http", "egress_tls"]);
    c.send(DeltaDiscoveryRequest { type_url: lds.clone(), response_nonce: r1.nonce.clone(), ..Default::default() })
        .await;
    c.nothing_for(Duration::from_millis(300)).await;
    // Disabling the TLS listener removes it and leaves egress_http alone.
    publish(&s, |g| g.tls_listen = None);
    let r2 = c.recv().await;
    assert!(r2.resources.is_empty(), "nothing changed in egress_http");
    assert_eq!(r2.removed_resources, ["egress_tls"]);
    c.send(DeltaDiscoveryRequest { type_url: lds.clone(), response_nonce: r2.nonce.clone(), ..Default::default() })
        .await;
    let v = xds_eventually(&s, "the delta ACK", |v| {
        v["nodes"][0]["types"]["Listener"]["ackedVersion"] == r2.system_version_info.as_str()
    })
    .await;
    assert_eq!(v["nodes"][0]["protocol"], "delta");
}

#[tokio::test]
async fn delta_reconnect_with_initial_versions_gets_nothing_unchanged() {
    let s = server().await;
    let mut first = Delta::open(&s).await;
    let cds = Cluster::type_url();
    first.send(DeltaDiscoveryRequest { node: node(), type_url: cds.clone(), ..Default::default() }).await;
    let r = first.recv().await;
    let have = r.resources.iter().map(|r| (r.name.clone(), r.version.clone())).collect();
    drop(first);
    let mut again = Delta::open(&s).await;
    again
        .send(DeltaDiscoveryRequest {
            node: node(),
            type_url: cds.clone(),
            initial_resource_versions: have,
            ..Default::default()
        })
        .await;
    let r2 = again.recv().await;
    assert!(r2.resources.is_empty() && r2.removed_resources.is_empty(), "{:?}", delta_names(&r2));
}

#[tokio::test]
async fn delta_nack_is_not_resent_and_next_version_is() {
    let s = server().await;
    let mut c = Delta::open(&s).await;
    let cds = Cluster::type_url();
    c.send(DeltaDiscoveryRequest { node: node(), type_url: cds.clone(), ..Default::default() }).await;
    let r1 = c.recv().await;
    c.send(DeltaDiscoveryRequest { type_url: cds.clone(), response_nonce: r1.nonce.clone(), ..Default::default() })
        .await;
    publish(&s, |g| g.connect_timeout_ms = 4321);
    let bad = c.recv().await;
    assert_eq!(delta_names(&bad), ["egress_dfp"], "only the changed cluster");
    c.send(DeltaDiscoveryRequest {
        type_url: cds.clone(),
        response_nonce: bad.nonce.clone(),
        error_detail: Some(Status { code: 3, message: "cluster egress_dfp: rejected".into(), ..Default::default() }),
        ..Default::default()
    })
    .await;
    c.nothing_for(Duration::from_millis(500)).await;
    // A later version is offered, and the NACKed resource counts as not held by the client.
    publish(&s, |g| g.connect_timeout_ms = 4000);
    let next = c.recv().await;
    assert_eq!(delta_names(&next), ["egress_dfp"]);
}

#[tokio::test]
async fn half_sotw_half_delta_all_receive_a_change() {
    let s = server().await;
    let cds = Cluster::type_url();
    let mut sotw = Vec::new();
    let mut delta = Vec::new();
    for _ in 0..10 {
        let c = Sotw::open(&s).await;
        c.send(DiscoveryRequest { node: node(), type_url: cds.clone(), ..Default::default() }).await;
        sotw.push(c);
        let d = Delta::open(&s).await;
        d.send(DeltaDiscoveryRequest { node: node(), type_url: cds.clone(), ..Default::default() }).await;
        delta.push(d);
    }
    for c in &mut sotw {
        c.recv().await;
    }
    for d in &mut delta {
        d.recv().await;
    }
    let snap = publish(&s, |g| g.connect_timeout_ms = 999);
    for c in &mut sotw {
        assert_eq!(c.recv().await.version_info, snap.type_version(&cds));
    }
    for d in &mut delta {
        assert_eq!(d.recv().await.system_version_info, snap.type_version(&cds));
    }
}

/// Streams past `xds::ads::MAX_STREAMS` are refused with RESOURCE_EXHAUSTED (Envoy retries with
/// backoff); a closed stream's place is taken by the next.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_past_the_limit_are_refused_until_one_closes() {
    use egressd::xds::ads::MAX_STREAMS;
    let s = server().await;
    // Several connections: a connection carries at most a few hundred concurrent streams.
    const PER_CONNECTION: usize = 100;
    let mut open = Vec::new();
    let mut clients = Vec::new();
    while open.len() < MAX_STREAMS {
        let client = AggregatedDiscoveryServiceClient::connect(format!("http://{}", s.grpc)).await.unwrap();
        for _ in 0..PER_CONNECTION.min(MAX_STREAMS - open.len()) {
            let (tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
            let stream = client.clone().stream_aggregated_resources(ReceiverStream::new(rx)).await.expect("admitted");
            open.push((tx, stream.into_inner()));
        }
        clients.push(client);
    }
    let (_tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
    let refused = clients[0].clone().stream_aggregated_resources(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::ResourceExhausted, "{refused:?}");
    assert!(refused.message().contains(&format!("at most {MAX_STREAMS} xDS streams")), "{refused:?}");

    // One stream ends (the client closes it): the next is admitted.
    drop(open.pop());
    eventually("a stream admitted again", Duration::from_secs(5), || {
        let mut client = clients[0].clone();
        async move {
            let (tx, rx) = mpsc::channel::<DiscoveryRequest>(1);
            let admitted = client.stream_aggregated_resources(ReceiverStream::new(rx)).await.ok()?;
            Some((tx, admitted))
        }
    })
    .await;
}
