//! Admin HTTP: `GET /healthz` (process is up), `/readyz` (a policy is loaded and the gRPC port is
//! serving), `/policy` (version, origin, services, groups, warnings of the live policy), `/xds`
//! (connected nodes, per type the version sent and ACKed, the last NACK).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json};
use axum::routing::get;
use serde_json::json;

use crate::policy::SharedPolicy;
use crate::reload::ReloadStatus;
use crate::xds::registry::Registry;
use crate::xds::snapshot::SnapshotSet;

#[derive(Clone)]
pub struct AdminState {
    pub policy: SharedPolicy,
    /// Set once the gRPC listener is bound.
    pub grpc_ready: Arc<AtomicBool>,
    pub registry: Arc<Registry>,
    pub snapshot: tokio::sync::watch::Receiver<Arc<SnapshotSet>>,
    pub reload: Arc<ReloadStatus>,
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/policy", get(policy))
        .route("/xds", get(xds))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.grpc_ready.load(Ordering::Acquire) {
        (StatusCode::OK, format!("ready: policy {}\n", state.policy.load().version))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: gRPC listener not bound yet\n".to_string())
    }
}

async fn policy(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let p = state.policy.load();
    Json(json!({
        "version": p.version,
        "origin": p.origin,
        "trustDomain": p.trust_domain,
        "defaultMode": p.default_mode,
        "trustForwardedClientCert": p.trust_forwarded_client_cert,
        "meshDenyRules": p.mesh_deny_rules,
        "rules": p.rule_count(),
        "services": p.services,
        "groups": p.groups,
        "warnings": p.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
        "gateways": p.gateways,
        "reloads": state.reload.reloads.load(std::sync::atomic::Ordering::Relaxed),
        "reloadFailures": state.reload.failures.load(std::sync::atomic::Ordering::Relaxed),
        "lastReloadError": *state.reload.last_error.lock().expect("status lock"),
    }))
}

async fn xds(State(state): State<AdminState>) -> Json<serde_json::Value> {
    use std::sync::atomic::Ordering::Relaxed;
    let set = state.snapshot.borrow().clone();
    let describe = |s: &crate::xds::snapshot::Snapshot| json!({ "version": s.version, "policyVersion": s.policy_version, "profile": s.profile });
    Json(json!({
        "snapshot": describe(&set.default),
        "profiles": set.by_node.iter().map(|(node, s)| (node.clone(), describe(s))).collect::<serde_json::Map<_, _>>(),
        "pushes": state.registry.pushes.load(Relaxed),
        "nacks": state.registry.nacks.load(Relaxed),
        "nodes": state.registry.snapshot(),
    }))
}
