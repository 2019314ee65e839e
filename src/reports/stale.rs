//! `egressd report stale`: what the policy allows that nobody uses, from observed flows replayed.
//! Allows pile up; each unused one is an opening an attacker can use and nobody would miss.
//!
//! - allows and group destinations with no hits in the window, longest unused first (never hit,
//!   then by last hit), with their `FILE:LINE:COL`;
//! - wildcards whose hits came from a few names (at most `NARROW_TO` exact names are suggested);
//! - allows only one workload of a service with several used;
//! - destination groups no service uses in the window (or none references);
//! - break-glass grants made in the window that decided no request.

use std::fmt::Write;

use serde::Serialize;

use super::usage::Usage;
use super::{short_time, thousands};
use crate::flows::json::rfc3339;
use crate::policy::fqdn::HostPattern;
use crate::policy::{Action, CompiledPolicy, RuleInfo};
use crate::runtime::breakglass::Grant;

/// A wildcard that matched at most this many names is reported with those names to use instead.
pub const NARROW_TO: usize = 5;

/// A rule, as the report names it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RuleRef {
    pub rule: String,
    pub service: String,
    pub target: String,
    /// `FILE:LINE:COL` of the rule, or of the group destination it expanded from.
    pub location: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnusedAllow {
    #[serde(flatten)]
    pub rule: RuleRef,
    /// When a flow it decides was last seen (before the window); `None`: never seen.
    pub last_seen: Option<String>,
    #[serde(skip)]
    last_seen_ms: Option<i64>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Narrowable {
    #[serde(flatten)]
    pub rule: RuleRef,
    /// The names it matched in the window, with hits.
    pub names: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SingleWorkload {
    #[serde(flatten)]
    pub rule: RuleRef,
    pub workload: String,
    /// Distinct workloads of the service seen in the window.
    pub service_workloads: usize,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnusedGroup {
    pub group: String,
    pub location: String,
    /// Services that reference it (none: nobody even references it).
    pub referenced_by: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UnusedGrant {
    pub id: String,
    pub service: String,
    pub target: String,
    pub grantor: String,
    pub reason: String,
    pub created: String,
    pub expires: String,
}

/// Everything stale, each list in report order.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StaleReport {
    pub window_start: String,
    pub flows_in_window: usize,
    pub flows: usize,
    pub unused_allows: Vec<UnusedAllow>,
    pub narrowable_wildcards: Vec<Narrowable>,
    pub single_workload_allows: Vec<SingleWorkload>,
    pub unused_groups: Vec<UnusedGroup>,
    pub unused_grants: Vec<UnusedGrant>,
}

impl StaleReport {
    pub fn is_empty(&self) -> bool {
        self.unused_allows.is_empty()
            && self.narrowable_wildcards.is_empty()
            && self.single_workload_allows.is_empty()
            && self.unused_groups.is_empty()
            && self.unused_grants.is_empty()
    }
}

/// The stale report of `policy` given the `usage` of its rules since `window_start_ms`, and the
/// break-glass `grants` on record (grants created before the window are not judged).
pub fn stale(policy: &CompiledPolicy, usage: &Usage, grants: &[Grant], window_start_ms: i64) -> StaleReport {
    let allows = || policy.rules.iter().filter(|r| r.action == Action::Allow && r.service.is_some());
    let mut unused_allows: Vec<UnusedAllow> = allows()
        .filter(|r| usage.rule(r.index).hits == 0)
        .map(|r| {
            let last = usage.rule(r.index).last_seen_ms;
            UnusedAllow { rule: rule_ref(policy, r), last_seen: last.map(rfc3339), last_seen_ms: last }
        })
        .collect();
    // Never seen first, then the longest unused; `sort_by_key` is stable: policy order within.
    unused_allows.sort_by_key(|u| u.last_seen_ms.unwrap_or(i64::MIN));

    let narrowable_wildcards = allows()
        .filter(|r| matches!(r.host, Some(HostPattern::Wildcard(_))))
        .filter_map(|r| {
            let u = usage.rule(r.index);
            let few = u.hits > 0 && !u.names_truncated && u.names.len() <= NARROW_TO;
            few.then(|| Narrowable {
                rule: rule_ref(policy, r),
                names: u.names.iter().map(|(n, h)| (n.clone(), *h)).collect(),
            })
        })
        .collect();

    let single_workload_allows = allows()
        .filter_map(|r| {
            let u = usage.rule(r.index);
            let service_workloads = usage.service_workloads[r.service?.get()].len();
            let one = u.hits > 0 && u.workloads.len() == 1 && !u.workloads_truncated && service_workloads > 1;
            one.then(|| SingleWorkload {
                rule: rule_ref(policy, r),
                workload: u.workloads.iter().next().cloned().unwrap_or_default(),
                service_workloads,
            })
        })
        .collect();

    StaleReport {
        window_start: rfc3339(window_start_ms),
        flows_in_window: usage.flows_in_window,
        flows: usage.flows,
        unused_allows,
        narrowable_wildcards,
        single_workload_allows,
        unused_groups: unused_groups(policy, usage),
        unused_grants: unused_grants(usage, grants, window_start_ms),
    }
}

fn rule_ref(policy: &CompiledPolicy, r: &RuleInfo) -> RuleRef {
    RuleRef {
        rule: r.id.clone(),
        service: r.service.map(|s| policy.services[s.get()].name.clone()).unwrap_or_default(),
        target: r.content_key(),
        location: r.loc.to_string(),
        group: r.group.clone(),
    }
}

fn unused_groups(policy: &CompiledPolicy, usage: &Usage) -> Vec<UnusedGroup> {
    policy
        .groups
        .iter()
        .filter_map(|g| {
            let expansions: Vec<&RuleInfo> =
                policy.rules.iter().filter(|r| r.group.as_deref() == Some(g.name.as_str())).collect();
            if expansions.iter().any(|r| usage.rule(r.index).hits > 0) {
                return None;
            }
            let mut referenced_by: Vec<String> =
                expansions.iter().filter_map(|r| r.service).map(|s| policy.services[s.get()].name.clone()).collect();
            referenced_by.dedup();
            Some(UnusedGroup { group: g.name.clone(), location: g.loc.to_string(), referenced_by })
        })
        .collect()
}

fn unused_grants(usage: &Usage, grants: &[Grant], window_start_ms: i64) -> Vec<UnusedGrant> {
    let mut unused: Vec<UnusedGrant> = grants
        .iter()
        .filter(|g| g.created_unix.saturating_mul(1000) >= window_start_ms && !usage.grants.contains_key(&g.id))
        .map(|g| UnusedGrant {
            id: g.id.clone(),
            service: g.service.clone(),
            target: g.target(),
            grantor: g.grantor.clone(),
            reason: g.reason.clone(),
            created: rfc3339(g.created_unix.saturating_mul(1000)),
            expires: rfc3339(g.expires_unix.saturating_mul(1000)),
        })
        .collect();
    unused.sort_by(|a, b| a.created.cmp(&b.created));
    unused
}

/// The text report: a section per finding kind, each line naming where to edit.
pub fn text(report: &StaleReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "window: since {} ({} of {} flow(s) seen in it)",
        report.window_start, report.flows_in_window, report.flows
    );
    if report.is_empty() {
        out.push_str("nothing stale\n");
        return out;
    }
    section(&mut out, "allows without hits in the window (longest unused first)", &report.unused_allows, |u| {
        let seen = match u.last_seen_ms {
            Some(ms) => format!("last seen {}", short_time(ms)),
            None => "never seen".into(),
        };
        format!("{}: {} {} -> {} ({seen}){}", u.rule.location, u.rule.service, u.rule.rule, u.rule.target, via(&u.rule))
    });
    section(&mut out, "wildcards that matched only a few names", &report.narrowable_wildcards, |n| {
        let names: Vec<String> =
            n.names.iter().map(|(name, hits)| format!("{name} ({} hits)", thousands(*hits))).collect();
        format!(
            "{}: {} {} -> {}: allow exactly {}",
            n.rule.location,
            n.rule.service,
            n.rule.rule,
            n.rule.target,
            names.join(", ")
        )
    });
    section(&mut out, "allows used by one workload of several", &report.single_workload_allows, |s| {
        format!(
            "{}: {} {} -> {}: only {} ({} workloads of the service seen)",
            s.rule.location, s.rule.service, s.rule.rule, s.rule.target, s.workload, s.service_workloads
        )
    });
    section(&mut out, "destination groups nobody used", &report.unused_groups, |g| match g.referenced_by.as_slice() {
        [] => format!("{}: {} (referenced by no service)", g.location, g.group),
        by if by.len() <= 5 => format!("{}: {} (referenced by {})", g.location, g.group, by.join(", ")),
        by => format!("{}: {} (referenced by {} and {} more)", g.location, g.group, by[..5].join(", "), by.len() - 5),
    });
    section(&mut out, "break-glass grants never used", &report.unused_grants, |g| {
        format!(
            "{} {} -> {} by {} ({}), {} .. {}",
            g.id, g.service, g.target, g.grantor, g.reason, g.created, g.expires
        )
    });
    out
}

fn via(r: &RuleRef) -> String {
    r.group.as_ref().map(|g| format!(" [group {g}]")).unwrap_or_default()
}

fn section<T>(out: &mut String, title: &str, items: &[T], line: impl Fn(&T) -> String) {
    if items.is_empty() {
        return;
    }
    let _ = writeln!(out, "\n{title}: {}", items.len());
    for item in items {
        let _ = writeln!(out, "  {}", line(item));
    }
}

#[cfg(test)]
mod tests;
