//! ADS request handling: a stream of DiscoveryRequests (first byte even) or DeltaDiscoveryRequests
//! (odd), each as `[snapshot selector][length][protobuf bytes]` (the length a byte; a short last
//! message takes the rest), decoded with prost and fed to the handler the ADS streams use
//! (`AdsService::replay_sotw` / `replay_delta`), each against one of three snapshots: the dev
//! gateway, a changed one without its TLS listener, and an empty one. The stream ends at the
//! first message that does not decode, as tonic ends it.
//!
//! Invariants: every response is for the request's type, carries a fresh nonce and the
//! snapshot's version of the type, and only resources of the snapshot; the first request of a
//! type gets a response; a request answering a superseded response (SotW) gets none; the stream
//! counts exactly the NACKs that answer its outstanding responses; the stream deregisters.
#![no_main]

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, LazyLock};

use egressd::policy::GatewaySpec;
use egressd::xds::ads::AdsService;
use egressd::xds::registry::Registry;
use egressd::xds::snapshot::{Snapshot, SnapshotSet, is_wildcard_type};
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use libfuzzer_sys::fuzz_target;
use prost::Message;

const MAX_REQUESTS: usize = 32;

static SNAPSHOTS: LazyLock<[Snapshot; 3]> = LazyLock::new(|| {
    let dev = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    let changed = GatewaySpec { authz_timeout_ms: 250, tls_listen: None, ..dev.clone() };
    [
        Snapshot::for_gateway(&dev, "p1"),
        Snapshot::for_gateway(&changed, "p2"),
        Snapshot::from_resources("empty", "p0", Vec::new()),
    ]
});

/// A fresh service per input: nonces start at 1 again, so the fuzzer can answer them.
fn service() -> (AdsService, Arc<Registry>) {
    let (_snap_tx, snap_rx) = tokio::sync::watch::channel(Arc::new(SnapshotSet::single(SNAPSHOTS[0].clone())));
    let (_stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let registry = Arc::new(Registry::default());
    (AdsService::new(snap_rx, registry.clone(), stop_rx), registry)
}

fn messages<M: Message + Default>(mut rest: &[u8]) -> Vec<(M, &'static Snapshot)> {
    let mut out = Vec::new();
    while rest.len() >= 2 && out.len() < MAX_REQUESTS {
        let (selector, len) = (rest[0] as usize % SNAPSHOTS.len(), rest[1] as usize);
        rest = &rest[2..];
        let (bytes, after) = rest.split_at(len.min(rest.len()));
        rest = after;
        let Ok(msg) = M::decode(bytes) else { break };
        out.push((msg, &SNAPSHOTS[selector]));
    }
    out
}

fn any_in(snap: &Snapshot, type_url: &str, any: &envoy_types::pb::google::protobuf::Any) -> bool {
    snap.get(type_url).is_some_and(|t| t.resources.values().any(|r| &r.any == any))
}

fn sotw(data: &[u8]) {
    let requests: Vec<(DiscoveryRequest, &Snapshot)> = messages(data);
    let Some((first, _)) = requests.first() else { return };
    let node = first.node.clone().unwrap_or_default();
    let (ads, registry) = service();
    let responses = ads.replay_sotw(&node, requests.clone());
    assert_eq!(responses.len(), requests.len());
    let mut nonces = HashSet::new();
    let mut latest: HashMap<String, String> = HashMap::new();
    let mut nacks = 0;
    for ((req, snap), resp) in requests.iter().zip(&responses) {
        let first_for_type = !latest.contains_key(&req.type_url);
        let current = latest.get(&req.type_url).map(String::as_str).unwrap_or("");
        let stale = !req.response_nonce.is_empty() && req.response_nonce != current;
        if !req.response_nonce.is_empty() && !stale && req.error_detail.is_some() {
            nacks += 1;
        }
        if stale {
            assert!(resp.is_none(), "a reply to a superseded response was answered: {req:?}");
        }
        if first_for_type && req.response_nonce.is_empty() {
            assert!(resp.is_some(), "a new subscription got no response: {req:?}");
        }
        let Some(resp) = resp else {
            latest.entry(req.type_url.clone()).or_default();
            continue;
        };
        assert_eq!(resp.type_url, req.type_url);
        assert_eq!(resp.version_info, snap.type_version(&req.type_url));
        assert!(!resp.nonce.is_empty() && nonces.insert(resp.nonce.clone()), "nonce reused: {}", resp.nonce);
        latest.insert(req.type_url.clone(), resp.nonce.clone());
        let wildcard = req.resource_names.is_empty() && is_wildcard_type(&req.type_url)
            || req.resource_names.iter().any(|n| n == "*");
        let names: BTreeSet<&str> = req.resource_names.iter().map(String::as_str).collect();
        let expected = snap
            .get(&req.type_url)
            .map(|t| t.resources.keys().filter(|n| wildcard || names.contains(n.as_str())).count())
            .unwrap_or(0);
        assert_eq!(resp.resources.len(), expected, "resources for {req:?}");
        assert!(resp.resources.iter().all(|any| any_in(snap, &req.type_url, any)));
    }
    assert_eq!(registry.nacks.load(std::sync::atomic::Ordering::Relaxed), nacks, "NACKs counted");
    assert_eq!(registry.connected(), 0, "the replayed stream is still registered");
}

fn delta(data: &[u8]) {
    let requests: Vec<(DeltaDiscoveryRequest, &Snapshot)> = messages(data);
    let Some((first, _)) = requests.first() else { return };
    let node = first.node.clone().unwrap_or_default();
    let (ads, registry) = service();
    let responses = ads.replay_delta(&node, requests.clone());
    assert_eq!(responses.len(), requests.len());
    let mut nonces = HashSet::new();
    let mut outstanding: HashMap<String, HashSet<String>> = HashMap::new();
    let mut nacks = 0;
    for ((req, snap), resp) in requests.iter().zip(&responses) {
        let first_for_type = !outstanding.contains_key(&req.type_url);
        let pending = outstanding.entry(req.type_url.clone()).or_default();
        if !req.response_nonce.is_empty() && pending.remove(&req.response_nonce) && req.error_detail.is_some() {
            nacks += 1;
        }
        if first_for_type {
            assert!(resp.is_some(), "a new subscription got no response: {req:?}");
        }
        let Some(resp) = resp else { continue };
        assert_eq!(resp.type_url, req.type_url);
        assert_eq!(resp.system_version_info, snap.type_version(&req.type_url));
        assert!(!resp.nonce.is_empty() && nonces.insert(resp.nonce.clone()), "nonce reused: {}", resp.nonce);
        pending.insert(resp.nonce.clone());
        let mut sent = HashSet::new();
        for r in &resp.resources {
            let held = snap.get(&req.type_url).and_then(|t| t.resources.get(&r.name));
            let held = held.unwrap_or_else(|| panic!("{} is not in the snapshot", r.name));
            assert_eq!((&r.version, r.resource.as_ref()), (&held.version, Some(&held.any)));
            assert!(sent.insert(r.name.as_str()), "{} sent twice", r.name);
        }
        for name in &resp.removed_resources {
            assert!(!sent.contains(name.as_str()), "{name} both sent and removed");
            assert!(snap.get(&req.type_url).is_none_or(|t| !t.resources.contains_key(name)), "{name} removed");
        }
    }
    assert_eq!(registry.nacks.load(std::sync::atomic::Ordering::Relaxed), nacks, "NACKs counted");
    assert_eq!(registry.connected(), 0, "the replayed stream is still registered");
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    if mode % 2 == 0 { sotw(rest) } else { delta(rest) }
});
