//! `egressd discover`: per subject, the destinations seen (ports, protocols, hits, workloads,
//! first and last seen) and what today's policy does to each.

use std::fmt::Write;

use serde::Serialize;

use super::{ReplayedFlow, short_time, thousands};
use crate::flows::json::FlowJson;

/// One flow as `discover --format json` prints it: the flow, and today's decision.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DiscoveredJson {
    #[serde(flatten)]
    pub flow: FlowJson,
    pub policy: PolicyJson,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PolicyJson {
    pub decision: &'static str,
    pub reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub location: Option<String>,
}

pub fn json(flows: &[ReplayedFlow]) -> Vec<DiscoveredJson> {
    flows
        .iter()
        .map(|f| DiscoveredJson {
            flow: FlowJson::from(&f.flow),
            policy: PolicyJson {
                decision: f.now.outcome.as_str(),
                reason: f.now.reason,
                rule: f.now.rule.as_ref().map(|r| r.id.clone()),
                location: f.now.rule.as_ref().map(|r| r.location.clone()),
            },
        })
        .collect()
}

/// The text report: a block per subject, a line per destination.
pub fn text(flows: &[ReplayedFlow]) -> String {
    let mut out = String::new();
    if flows.is_empty() {
        out.push_str("no flows observed\n");
        return out;
    }
    let mut current = None;
    for f in flows {
        let subject = &f.flow.key.subject;
        if current != Some(subject) {
            let of_subject: Vec<_> = flows.iter().filter(|g| &g.flow.key.subject == subject).collect();
            let hits: u64 = of_subject.iter().map(|g| g.flow.stats.hits).sum();
            let _ = writeln!(
                out,
                "{}{}: {} destination(s), {} request(s)",
                if current.is_some() { "\n" } else { "" },
                subject.describe(),
                of_subject.len(),
                thousands(hits)
            );
            current = Some(subject);
        }
        let s = &f.flow.stats;
        let _ = writeln!(
            out,
            "  {:<40} {:>9} hits  {:>2} workload(s){}  {} .. {}",
            f.flow.key.destination(),
            thousands(s.hits),
            s.workloads.len(),
            if s.workloads_truncated { "+" } else { "" },
            short_time(s.first_seen_ms),
            short_time(s.last_seen_ms),
        );
        let _ = writeln!(out, "      now: {}", describe_now(f));
    }
    out
}

/// `allowed by payments/allow/0 (services/payments.yaml:9:5)`, `would-deny: no-matching-allow`.
pub fn describe_now(f: &ReplayedFlow) -> String {
    let now = &f.now;
    match (&now.rule, now.outcome) {
        (Some(r), crate::policy::Outcome::Allow) => format!("allowed by {} ({})", r.id, r.location),
        (Some(r), o) => format!("{}: {} by {} ({})", o.as_str(), now.reason, r.id, r.location),
        (None, o) => format!("{}: {}", o.as_str(), now.reason),
    }
}
