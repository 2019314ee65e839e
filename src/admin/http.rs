//! Admin HTTP: `GET /healthz` (process is up), `/readyz` (a policy is loaded and the gRPC port is
//! serving), `/policy` (version, origin, services, groups, warnings of the live policy), `/xds`
//! (connected nodes, per type the version sent and ACKed, the last NACK), `/metrics`
//! (OpenMetrics text: decisions, Check latency, reloads, xDS, dropped spans and audit records),
//! `/flows` (the live flow table, JSON; `?since=7d`), `/rules` (every rule of the live policy
//! with its hits since that version was loaded).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Query, State};
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
    pub metrics: Arc<prometheus_client::registry::Registry>,
    pub runtime: Arc<crate::runtime::RuntimeOverrides>,
    /// The live flow table (`GET /flows`), when kept.
    pub flows: Option<crate::flows::live::SharedFlows>,
    /// The detectors' recent signals (`GET /signals`), when detection runs.
    pub signals: Option<crate::telemetry::signals::SharedSignals>,
}

pub fn router(state: AdminState) -> axum::Router {
    axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/policy", get(policy))
        .route("/xds", get(xds))
        .route("/metrics", get(metrics))
        .route("/flows", get(flows))
        .route("/rules", get(rules))
        .route("/signals", get(signals))
        .with_state(state)
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    if state.grpc_ready.load(Ordering::Acquire) {
        (StatusCode::OK, format!("ready: policy {}\n", state.policy.load().version))
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: gRPC listener not bound yet\n".to_string())
    }
}

#[derive(serde::Deserialize)]
struct FlowsQuery {
    /// Only flows seen within this age (`7d`, `12h`).
    since: Option<String>,
}

/// The live flow table as JSON (`flows::json::FlowsDocument`): what `--server` reads.
async fn flows(State(state): State<AdminState>, Query(q): Query<FlowsQuery>) -> axum::response::Response {
    let Some(table) = &state.flows else {
        return (StatusCode::NOT_FOUND, "the flow table is off (serve --flow-table-size 0)\n").into_response();
    };
    let since_ms = match q.since.as_deref().map(crate::flows::parse_age).transpose() {
        Ok(age) => age.map(|a| crate::clock::unix_now().saturating_sub(a).saturating_mul(1000)),
        Err(e) => return (StatusCode::BAD_REQUEST, format!("since: {e}\n")).into_response(),
    };
    // Copy under the lock, serialize outside it: the telemetry thread waits on this lock.
    let doc = table.lock().document(since_ms);
    Json(doc).into_response()
}

#[derive(serde::Deserialize)]
struct SignalsQuery {
    kind: Option<String>,
    service: Option<String>,
    limit: Option<usize>,
}

/// The detectors' most recent signals, newest first (`?kind=`, `?service=`, `?limit=`).
async fn signals(State(state): State<AdminState>, Query(q): Query<SignalsQuery>) -> axum::response::Response {
    let Some(recent) = &state.signals else {
        return (StatusCode::NOT_FOUND, "detection is off (serve --no-detect)\n").into_response();
    };
    let kind = match q.kind.as_deref().map(str::parse::<crate::detect::SignalKind>).transpose() {
        Ok(k) => k,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("kind: {e}\n")).into_response(),
    };
    Json(recent.view(kind, q.service.as_deref(), q.limit.unwrap_or(usize::MAX))).into_response()
}

/// The live policy's rules with their hit counters (which restart with each policy version: ids
/// are positional, so each rule also carries its content key).
async fn rules(State(state): State<AdminState>) -> Json<serde_json::Value> {
    let p = state.policy.load();
    let time = |t: Option<i64>| t.map(|s| crate::flows::json::rfc3339(s.saturating_mul(1000)));
    let rules: Vec<_> = p
        .rules
        .iter()
        .map(|r| {
            let count = p.rule_hits.get(r.index);
            json!({
                "id": r.id,
                "service": r.service.map(|s| p.services[s.get()].name.as_str()),
                "action": r.action,
                "key": r.content_key(),
                "location": r.loc.to_string(),
                "group": r.group,
                "justification": r.justification,
                "hits": count.hits,
                "firstHit": time(count.first_hit),
                "lastHit": time(count.last_hit),
            })
        })
        .collect();
    Json(json!({ "version": p.version, "countingSince": time(Some(p.compiled_unix)), "rules": rules }))
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
        "externalGateways": p.external_gateways,
        "dnsFirewall": p.dns,
        "reloads": state.reload.reloads.load(Ordering::Relaxed),
        "reloadFailures": state.reload.failures.load(Ordering::Relaxed),
        "lastReloadError": *state.reload.last_error.lock().expect("status lock"),
        "rollbackGuardTripped": *state.runtime.tripped(),
        "breakGlassGrants": state.runtime.grants.list(false, crate::clock::unix_now()),
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

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    ([(axum::http::header::CONTENT_TYPE, content_type)], crate::telemetry::metrics::render(&state.metrics))
}

/// The scrape registry: telemetry's own metrics plus what the reload watcher and the xDS registry
/// already count, read at scrape time.
pub fn metrics_registry(
    metrics: &crate::telemetry::metrics::Metrics,
    xds: Arc<Registry>,
    reload: Arc<ReloadStatus>,
    policy: SharedPolicy,
) -> prometheus_client::registry::Registry {
    metrics.registry(vec![Box::new(StateCollector { xds, reload }), Box::new(RuleHitsCollector { policy })])
}

#[derive(Debug)]
struct StateCollector {
    xds: Arc<Registry>,
    reload: Arc<ReloadStatus>,
}

/// `egressd_rule_hits_total{service,rule}` of the live policy, read at scrape time. Rules that
/// never decided are left out (a 100,000-rule policy would otherwise scrape 100,000 zeros); the
/// series restart with each policy version, as the counters do.
struct RuleHitsCollector {
    policy: SharedPolicy,
}

impl std::fmt::Debug for RuleHitsCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RuleHitsCollector")
    }
}

impl prometheus_client::collector::Collector for RuleHitsCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        let p = self.policy.load();
        let mut family = encoder.encode_descriptor(
            "egressd_rule_hits",
            "Checks decided by each rule of the live policy version (rules without hits are not listed)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for r in &p.rules {
            let hits = p.rule_hits.get(r.index).hits;
            if hits == 0 {
                continue;
            }
            let service = r.service.map(|s| p.services[s.get()].name.as_str()).unwrap_or("(mesh)");
            let labels = [("service", service), ("rule", r.id.as_str())];
            ConstCounter::new(hits).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

impl prometheus_client::collector::Collector for StateCollector {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        use prometheus_client::encoding::EncodeMetric;
        use prometheus_client::metrics::counter::ConstCounter;
        use prometheus_client::metrics::gauge::ConstGauge;
        use std::sync::atomic::Ordering::Relaxed;
        let counters = [
            ("egressd_policy_reloads", "Policy sets loaded and swapped in by hot reload", &self.reload.reloads),
            (
                "egressd_policy_reload_failures",
                "Policy sets rejected by hot reload (the running one stayed)",
                &self.reload.failures,
            ),
            ("egressd_xds_pushes", "xDS responses sent to gateways", &self.xds.pushes),
            ("egressd_xds_nacks", "xDS responses rejected (NACKed) by gateways", &self.xds.nacks),
        ];
        for (name, help, value) in counters {
            let metric = ConstCounter::new(value.load(Relaxed));
            metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)?;
        }
        let nodes = ConstGauge::new(self.xds.connected() as i64);
        nodes.encode(encoder.encode_descriptor(
            "egressd_xds_connected_nodes",
            "Gateway xDS streams currently open",
            None,
            nodes.metric_type(),
        )?)?;
        Ok(())
    }
}
