//! The Aggregated Discovery Service, state-of-the-world and incremental (delta).
//!
//! Protocol state per stream and type: the nonce of the last response, what was sent, what was
//! ACKed. A NACK (a request carrying `error_detail`) leaves the node on its last ACKed version, is
//! logged and recorded for `/xds`, and the rejected version is not sent again: only a new snapshot
//! version triggers the next push (go-control-plane#962 re-sent rejected configs in a loop).

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use envoy_types::pb::envoy::config::core::v3::{ControlPlane, Node};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::{
    AggregatedDiscoveryService, AggregatedDiscoveryServiceServer,
};
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse, Resource,
};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use super::registry::Registry;
use super::snapshot::{Snapshot, SnapshotSet, is_wildcard_type, short_type, type_order};

/// xDS streams served at once (SotW and delta together). A gateway fleet opens one per Envoy;
/// beyond this, a new stream is refused with RESOURCE_EXHAUSTED (Envoy retries with backoff) rather
/// than letting streams, each holding its snapshot state and a task, grow without bound.
pub const MAX_STREAMS: usize = 1024;

#[derive(Clone)]
pub struct AdsService {
    /// One permit per open stream (`MAX_STREAMS`).
    streams: Arc<tokio::sync::Semaphore>,
    snapshots: watch::Receiver<Arc<SnapshotSet>>,
    registry: Arc<Registry>,
    nonces: Arc<AtomicU64>,
    /// Set when the server stops: streams end so graceful shutdown does not wait on them forever.
    stopping: watch::Receiver<bool>,
}

impl AdsService {
    pub fn new(
        snapshots: watch::Receiver<Arc<SnapshotSet>>,
        registry: Arc<Registry>,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        let streams = Arc::new(tokio::sync::Semaphore::new(MAX_STREAMS));
        AdsService { streams, snapshots, registry, nonces: Arc::new(AtomicU64::new(1)), stopping }
    }

    /// A permit for one more stream, or the error that refuses it.
    fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, Status> {
        self.streams.clone().try_acquire_owned().map_err(|_| {
            tracing::warn!(max = MAX_STREAMS, "xDS stream refused: the stream limit is reached");
            Status::resource_exhausted(format!("egressd serves at most {MAX_STREAMS} xDS streams at once"))
        })
    }

    async fn stopped(&self) {
        let mut stopping = self.stopping.clone();
        let _ = stopping.wait_for(|s| *s).await;
    }

    pub fn into_server(self) -> AggregatedDiscoveryServiceServer<Self> {
        AggregatedDiscoveryServiceServer::new(self)
    }

    fn nonce(&self) -> String {
        self.nonces.fetch_add(1, Ordering::Relaxed).to_string()
    }
}

fn control_plane() -> Option<ControlPlane> {
    Some(ControlPlane { identifier: format!("egressd {}", env!("CARGO_PKG_VERSION")) })
}

impl AdsService {
    /// What both protocols do when a stream's first request arrives: take the node, subscribe to
    /// snapshot changes, and register the stream for `/xds` (deregistered when the guard drops).
    fn open_stream(
        &self,
        node: Option<&Node>,
        protocol: &'static str,
    ) -> (Node, watch::Receiver<Arc<SnapshotSet>>, Registered) {
        let node = node.cloned().unwrap_or_default();
        let snapshots = self.snapshots.clone();
        let profile = snapshots.borrow().select(&node).profile.clone();
        let id = self.registry.connect(&node.id, &node.cluster, protocol, &profile);
        tracing::info!(node = %node.id, cluster = %node.cluster, profile, protocol, "xDS stream opened");
        (node, snapshots, Registered(self.registry.clone(), id))
    }
}

/// Deregisters a stream when its task ends, however it ends.
struct Registered(Arc<Registry>, u64);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.disconnect(self.1);
    }
}

impl AdsService {
    /// Feeds one SotW stream's requests, each with the snapshot it meets, to the request handler
    /// `run_sotw` uses, without a network (fuzzing and tests); returns each request's response.
    pub fn replay_sotw<'s>(
        &self,
        node: &Node,
        requests: impl IntoIterator<Item = (DiscoveryRequest, &'s Snapshot)>,
    ) -> Vec<Option<DiscoveryResponse>> {
        let registered = Registered(self.registry.clone(), self.registry.connect(&node.id, &node.cluster, "sotw", ""));
        let mut types = HashMap::new();
        requests.into_iter().map(|(req, snap)| self.sotw_request(registered.1, node, &mut types, req, snap)).collect()
    }

    /// As `replay_sotw`, for a delta stream (`run_delta`'s request handler).
    pub fn replay_delta<'s>(
        &self,
        node: &Node,
        requests: impl IntoIterator<Item = (DeltaDiscoveryRequest, &'s Snapshot)>,
    ) -> Vec<Option<DeltaDiscoveryResponse>> {
        let registered = Registered(self.registry.clone(), self.registry.connect(&node.id, &node.cluster, "delta", ""));
        let mut types = HashMap::new();
        requests.into_iter().map(|(req, snap)| self.delta_request(registered.1, node, &mut types, req, snap)).collect()
    }
}

// ---------------------------------------------------------------- state of the world

#[derive(Default)]
struct SotwType {
    /// `None`: wildcard (every resource of the type).
    names: Option<BTreeSet<String>>,
    nonce: String,
    sent_version: String,
}

impl AdsService {
    async fn run_sotw(
        self,
        mut requests: Streaming<DiscoveryRequest>,
        tx: mpsc::Sender<Result<DiscoveryResponse, Status>>,
    ) {
        // The first request names the node (Envoy may omit it afterwards).
        let Ok(Some(first)) = requests.message().await else { return };
        let (node, mut snapshots, registered) = self.open_stream(first.node.as_ref(), "sotw");
        let id = registered.1;
        let mut types: HashMap<String, SotwType> = HashMap::new();
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                let snap = snapshots.borrow().select(&node);
                if let Some(resp) = self.sotw_request(id, &node, &mut types, req, &snap)
                    && tx.send(Ok(resp)).await.is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = self.stopped() => break,
                msg = requests.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(node = %node.id, "xDS stream error: {e}");
                        break;
                    }
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().select(&node);
                    for type_url in type_order() {
                        let Some(state) = types.get_mut(&type_url) else { continue };
                        // Unchanged (or the version this node already rejected): nothing to send.
                        if snap.type_version(&type_url) == state.sent_version {
                            continue;
                        }
                        let resp = self.sotw_response(id, &type_url, state, &snap);
                        if tx.send(Ok(resp)).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
        tracing::info!(node = %node.id, "xDS stream closed");
    }

    /// Handles one request: ACK, NACK or (re)subscription. Returns a response to send, if any.
    fn sotw_request(
        &self,
        id: u64,
        node: &Node,
        types: &mut HashMap<String, SotwType>,
        req: DiscoveryRequest,
        snap: &Snapshot,
    ) -> Option<DiscoveryResponse> {
        let first_for_type = !types.contains_key(&req.type_url);
        let state = types.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() {
            if req.response_nonce != state.nonce {
                // A reply to a response since superseded: nothing to answer, but an ACK still says
                // which version the node runs.
                if req.error_detail.is_none() {
                    self.registry.acked(id, &req.type_url, &req.version_info);
                }
                return None;
            }
            match &req.error_detail {
                Some(err) => {
                    tracing::warn!(
                        node = %node.id, type_url = short_type(&req.type_url), rejected = %state.sent_version,
                        kept = %req.version_info, "Envoy rejected config (NACK): {}", err.message
                    );
                    self.registry.nacked(id, &req.type_url, &state.sent_version, &err.message);
                }
                None => self.registry.acked(id, &req.type_url, &req.version_info),
            }
        }
        let names = if req.resource_names.is_empty() && is_wildcard_type(&req.type_url)
            || req.resource_names.iter().any(|n| n == "*")
        {
            None
        } else {
            Some(req.resource_names.iter().cloned().collect::<BTreeSet<_>>())
        };
        let names_changed = names != state.names;
        state.names = names;
        // Respond to a new subscription or a changed one; an ACK or NACK alone gets no response.
        (first_for_type || names_changed).then(|| self.sotw_response(id, &req.type_url, state, snap))
    }

    fn sotw_response(&self, id: u64, type_url: &str, state: &mut SotwType, snap: &Snapshot) -> DiscoveryResponse {
        let resources = snap
            .get(type_url)
            .map(|t| {
                t.resources
                    .values()
                    .filter(|r| state.names.as_ref().is_none_or(|n| n.contains(&r.name)))
                    .map(|r| r.any.clone())
                    .collect()
            })
            .unwrap_or_default();
        state.nonce = self.nonce();
        state.sent_version = snap.type_version(type_url).to_string();
        self.registry.sent(id, type_url, &state.sent_version);
        DiscoveryResponse {
            version_info: state.sent_version.clone(),
            resources,
            type_url: type_url.to_string(),
            nonce: state.nonce.clone(),
            control_plane: control_plane(),
            ..Default::default()
        }
    }
}

// ---------------------------------------------------------------- incremental (delta)

/// What one delta response changed in the client's view, so a NACK can undo it.
struct PendingDelta {
    /// (resource name, the version the client held before; `None` if it held none).
    previous: Vec<(String, Option<String>)>,
    type_version: String,
}

#[derive(Default)]
struct DeltaType {
    wildcard: bool,
    names: BTreeSet<String>,
    /// What the client has: name -> version.
    known: HashMap<String, String>,
    /// Per outstanding nonce: what the response changed.
    pending: HashMap<String, PendingDelta>,
    /// A type version the client rejected: not offered again.
    rejected: Option<String>,
}

impl DeltaType {
    fn wants(&self, name: &str) -> bool {
        self.wildcard || self.names.contains(name)
    }
}

impl AdsService {
    async fn run_delta(
        self,
        mut requests: Streaming<DeltaDiscoveryRequest>,
        tx: mpsc::Sender<Result<DeltaDiscoveryResponse, Status>>,
    ) {
        let Ok(Some(first)) = requests.message().await else { return };
        let (node, mut snapshots, registered) = self.open_stream(first.node.as_ref(), "delta");
        let id = registered.1;
        let mut types: HashMap<String, DeltaType> = HashMap::new();
        let mut next = Some(first);
        loop {
            if let Some(req) = next.take() {
                let snap = snapshots.borrow().select(&node);
                if let Some(resp) = self.delta_request(id, &node, &mut types, req, &snap)
                    && tx.send(Ok(resp)).await.is_err()
                {
                    return;
                }
            }
            tokio::select! {
                _ = self.stopped() => break,
                msg = requests.message() => match msg {
                    Ok(Some(req)) => next = Some(req),
                    Ok(None) | Err(_) => break,
                },
                changed = snapshots.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    let snap = snapshots.borrow_and_update().select(&node);
                    for type_url in type_order() {
                        let Some(state) = types.get_mut(&type_url) else { continue };
                        if state.rejected.as_deref() == Some(snap.type_version(&type_url)) {
                            continue;
                        }
                        if let Some(resp) = self.delta_response(id, &type_url, state, &snap, false)
                            && tx.send(Ok(resp)).await.is_err()
                        {
                            return;
                        }
                    }
                }
            }
        }
        tracing::info!(node = %node.id, "xDS delta stream closed");
    }

    fn delta_request(
        &self,
        id: u64,
        node: &Node,
        types: &mut HashMap<String, DeltaType>,
        req: DeltaDiscoveryRequest,
        snap: &Snapshot,
    ) -> Option<DeltaDiscoveryResponse> {
        let first_for_type = !types.contains_key(&req.type_url);
        let state = types.entry(req.type_url.clone()).or_default();
        if first_for_type {
            // Reconnecting clients say what they already have, so nothing unchanged is re-sent.
            state.known = req.initial_resource_versions.clone();
            state.wildcard = req.resource_names_subscribe.is_empty() && is_wildcard_type(&req.type_url);
        }
        let mut subscription_changed = false;
        for name in &req.resource_names_subscribe {
            subscription_changed = true;
            if name == "*" {
                state.wildcard = true;
            } else {
                state.names.insert(name.clone());
            }
        }
        for name in &req.resource_names_unsubscribe {
            subscription_changed = true;
            if name == "*" {
                state.wildcard = false;
            } else {
                state.names.remove(name);
                state.known.remove(name);
            }
        }
        if !req.response_nonce.is_empty()
            && let Some(PendingDelta { previous: changes, type_version: version }) =
                state.pending.remove(&req.response_nonce)
        {
            match &req.error_detail {
                Some(err) => {
                    // The client kept what it had: undo our record of what it holds.
                    for (name, previous) in changes {
                        match previous {
                            Some(v) => state.known.insert(name, v),
                            None => state.known.remove(&name),
                        };
                    }
                    tracing::warn!(
                        node = %node.id, type_url = short_type(&req.type_url), rejected = %version,
                        "Envoy rejected config (NACK): {}", err.message
                    );
                    self.registry.nacked(id, &req.type_url, &version, &err.message);
                    state.rejected = Some(version);
                }
                None => self.registry.acked(id, &req.type_url, &version),
            }
        }
        if first_for_type || subscription_changed {
            return self.delta_response(id, &req.type_url, state, snap, first_for_type);
        }
        None
    }

    /// The difference between the snapshot and what the client holds; `None` when there is none
    /// (unless `always`, for the first response of a type, which Envoy waits for).
    fn delta_response(
        &self,
        id: u64,
        type_url: &str,
        state: &mut DeltaType,
        snap: &Snapshot,
        always: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let mut resources = Vec::new();
        let mut changes = Vec::new();
        if let Some(t) = snap.get(type_url) {
            for r in t.resources.values() {
                if state.wants(&r.name) && state.known.get(&r.name) != Some(&r.version) {
                    changes.push((r.name.clone(), state.known.insert(r.name.clone(), r.version.clone())));
                    resources.push(Resource {
                        name: r.name.clone(),
                        version: r.version.clone(),
                        resource: Some(r.any.clone()),
                        ..Default::default()
                    });
                }
            }
        }
        let removed: Vec<String> = state
            .known
            .keys()
            .filter(|name| snap.get(type_url).is_none_or(|t| !t.resources.contains_key(*name)))
            .cloned()
            .collect();
        for name in &removed {
            changes.push((name.clone(), state.known.remove(name)));
        }
        if resources.is_empty() && removed.is_empty() && !always {
            return None;
        }
        let nonce = self.nonce();
        let version = snap.type_version(type_url).to_string();
        state.pending.insert(nonce.clone(), PendingDelta { previous: changes, type_version: version.clone() });
        self.registry.sent(id, type_url, &version);
        Some(DeltaDiscoveryResponse {
            system_version_info: version,
            resources,
            type_url: type_url.to_string(),
            removed_resources: removed,
            nonce,
            control_plane: control_plane(),
            ..Default::default()
        })
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for AdsService {
    type StreamAggregatedResourcesStream = ReceiverStream<Result<DiscoveryResponse, Status>>;
    type DeltaAggregatedResourcesStream = ReceiverStream<Result<DeltaDiscoveryResponse, Status>>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let permit = self.admit()?;
        let (tx, rx) = mpsc::channel(8);
        let run = self.clone().run_sotw(request.into_inner(), tx);
        tokio::spawn(async move {
            run.await;
            drop(permit);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let permit = self.admit()?;
        let (tx, rx) = mpsc::channel(8);
        let run = self.clone().run_delta(request.into_inner(), tx);
        tokio::spawn(async move {
            run.await;
            drop(permit);
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
