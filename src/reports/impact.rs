//! `egressd report impact --service S`: what switching S to `enforce` would deny now, and whether
//! S is ready by the rollout criteria (traffic was observed and not one request would be denied).

use std::fmt::Write;

use serde::Serialize;

use super::{ReplayedFlow, short_time, thousands};
use crate::flows::json::FlowJson;
use crate::policy::{CompiledPolicy, Mode, Outcome};

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Impact {
    pub service: String,
    pub mode: Mode,
    pub flows: usize,
    pub hits: u64,
    /// Flows enforcement would deny: today's would-denies and denies, with today's reason.
    pub denied: Vec<DeniedFlow>,
    pub denied_hits: u64,
    pub ready: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeniedFlow {
    #[serde(flatten)]
    pub flow: FlowJson,
    /// `would-deny` today (enforcement makes it a deny) or `deny` (already denied).
    pub today: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip)]
    pub last_seen: String,
    /// `api.stripe.com:443/https`, for the text report.
    #[serde(skip)]
    pub destination: String,
}

/// Why an impact cannot be computed.
#[derive(Debug, thiserror::Error)]
#[error("no service `{0}` in the policy (services: {1})")]
pub struct UnknownService(pub String, pub String);

/// The impact of enforcing `service`, from its flows replayed with `policy`.
pub fn impact(policy: &CompiledPolicy, service: &str, flows: &[ReplayedFlow]) -> Result<Impact, UnknownService> {
    let Some(info) = policy.service(service) else {
        let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
        return Err(UnknownService(service.to_string(), names.join(", ")));
    };
    let mine: Vec<&ReplayedFlow> = flows.iter().filter(|f| f.now.service.as_deref() == Some(service)).collect();
    let hits = mine.iter().map(|f| f.flow.stats.hits).sum();
    let denied: Vec<DeniedFlow> = mine
        .iter()
        .filter(|f| f.now.enforced_outcome == Outcome::Deny)
        .map(|f| DeniedFlow {
            flow: FlowJson::from(&f.flow),
            today: f.now.outcome.as_str(),
            reason: f.now.reason,
            rule: f.now.rule.as_ref().map(|r| r.id.clone()),
            last_seen: short_time(f.flow.stats.last_seen_ms),
            destination: f.flow.key.destination(),
        })
        .collect();
    let denied_hits = denied.iter().map(|d| d.flow.hits).sum();
    let (ready, detail) = if mine.is_empty() {
        (false, "no traffic observed: nothing says enforcing is safe yet".to_string())
    } else if denied.is_empty() {
        (true, format!("ready: {} flow(s), {} request(s), all allowed by its rules", mine.len(), thousands(hits)))
    } else {
        (
            false,
            format!(
                "not ready: enforcing would deny {} of {} flow(s) ({} of {} request(s))",
                denied.len(),
                mine.len(),
                thousands(denied_hits),
                thousands(hits)
            ),
        )
    };
    Ok(Impact {
        service: service.to_string(),
        mode: info.mode,
        flows: mine.len(),
        hits,
        denied,
        denied_hits,
        ready,
        detail,
    })
}

pub fn text(impact: &Impact) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{} (mode {}): {}", impact.service, impact.mode, impact.detail);
    for d in &impact.denied {
        let _ = writeln!(
            out,
            "  would deny {:<40} {:>9} hits  {:>2} workload(s)  last {}  ({}{}: {})",
            d.destination,
            thousands(d.flow.hits),
            d.flow.workloads.len(),
            d.last_seen,
            if d.today == "deny" { "already denied, " } else { "" },
            d.reason,
            d.rule.as_deref().unwrap_or("default deny"),
        );
    }
    out
}
