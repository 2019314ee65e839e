//! `egressd plan --base DIR --head DIR`: the observed flows replayed through two policy sets, and
//! every flow whose decision changes. What a team runs on a policy pull request: a change that
//! would block traffic that is let through today is a failing check.

use std::fmt::Write;

use serde::Serialize;

use super::thousands;
use crate::flows::Flow;
use crate::flows::json::FlowJson;
use crate::flows::replay::{Replayed, replay};
use crate::policy::{CompiledPolicy, Outcome};

/// How a flow's decision moves from base to head.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    /// Allowed by a rule before; denied by head (enforced).
    AllowToDeny,
    /// Allowed by a rule before; head's rules deny it, but the service is not enforced.
    AllowToWouldDeny,
    /// Let through as a would-deny before; enforced head denies it.
    WouldDenyToDeny,
    DenyToAllow,
    WouldDenyToAllow,
    DenyToWouldDeny,
    /// Still allowed, by another rule (or the same rule moved: ids are positions).
    RuleChanged,
    /// Still denied or would-denied, for another reason or by another rule.
    ReasonChanged,
}

impl Change {
    /// Whether traffic that goes through today (or that the rules allow today) stops.
    pub fn breaks(self) -> bool {
        matches!(self, Change::AllowToDeny | Change::AllowToWouldDeny | Change::WouldDenyToDeny)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Change::AllowToDeny => "allow -> deny",
            Change::AllowToWouldDeny => "allow -> would-deny",
            Change::WouldDenyToDeny => "would-deny -> deny",
            Change::DenyToAllow => "deny -> allow",
            Change::WouldDenyToAllow => "would-deny -> allow",
            Change::DenyToWouldDeny => "deny -> would-deny",
            Change::RuleChanged => "rule changed",
            Change::ReasonChanged => "reason changed",
        }
    }

    fn between(base: &Replayed, head: &Replayed) -> Option<Change> {
        use Outcome::*;
        let rule = |r: &Replayed| r.rule.as_ref().map(|r| (r.id.clone(), r.matches.clone()));
        Some(match (base.outcome, head.outcome) {
            (Allow, Deny) => Change::AllowToDeny,
            (Allow, WouldDeny) => Change::AllowToWouldDeny,
            (WouldDeny, Deny) => Change::WouldDenyToDeny,
            (Deny, Allow) => Change::DenyToAllow,
            (WouldDeny, Allow) => Change::WouldDenyToAllow,
            (Deny, WouldDeny) => Change::DenyToWouldDeny,
            (Allow, Allow) if rule(base) != rule(head) => Change::RuleChanged,
            (a, b) if a == b && (base.reason != head.reason || rule(base) != rule(head)) => Change::ReasonChanged,
            _ => return None,
        })
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangedFlow {
    pub change: Change,
    #[serde(flatten)]
    pub flow: FlowJson,
    pub base: String,
    pub head: String,
    /// `api.stripe.com:443/https`, for the text report.
    #[serde(skip)]
    pub destination: String,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Plan {
    pub flows: usize,
    pub changed: Vec<ChangedFlow>,
    /// Per kind of change: flows and requests.
    pub totals: Vec<(Change, usize, u64)>,
    /// Some flow let through (or allowed) today would be blocked.
    pub breaking: bool,
}

/// Replays `flows` through `base` and `head` at `now` (unix seconds); with `service`, only the
/// flows of that subject or that either policy gives to that service.
pub fn plan(base: &CompiledPolicy, head: &CompiledPolicy, flows: &[Flow], service: Option<&str>, now: i64) -> Plan {
    let mut considered = 0;
    let mut changed: Vec<ChangedFlow> = flows
        .iter()
        .filter_map(|flow| {
            let (b, h) = (replay(base, flow, now), replay(head, flow, now));
            if let Some(s) = service
                && flow.key.subject.name() != s
                && b.service.as_deref() != Some(s)
                && h.service.as_deref() != Some(s)
            {
                return None;
            }
            considered += 1;
            Change::between(&b, &h).map(|change| ChangedFlow {
                change,
                flow: FlowJson::from(flow),
                destination: flow.key.destination(),
                base: b.summary(),
                head: h.summary(),
            })
        })
        .collect();
    changed.sort_by_key(|c| c.change);
    let mut totals: Vec<(Change, usize, u64)> = Vec::new();
    for c in &changed {
        match totals.last_mut() {
            Some((k, n, hits)) if *k == c.change => {
                *n += 1;
                *hits += c.flow.hits;
            }
            _ => totals.push((c.change, 1, c.flow.hits)),
        }
    }
    let breaking = changed.iter().any(|c| c.change.breaks());
    Plan { flows: considered, changed, totals, breaking }
}

pub fn text(plan: &Plan) -> String {
    let mut out = String::new();
    if plan.changed.is_empty() {
        let _ = writeln!(out, "no decision changes across {} observed flow(s)", plan.flows);
        return out;
    }
    let _ = writeln!(out, "{} of {} observed flow(s) change:", plan.changed.len(), plan.flows);
    for (change, n, hits) in &plan.totals {
        let _ = writeln!(
            out,
            "  {:<20} {n} flow(s), {} request(s){}",
            change.as_str(),
            thousands(*hits),
            if change.breaks() { "  BREAKS TRAFFIC" } else { "" }
        );
    }
    out.push('\n');
    for c in &plan.changed {
        let subject = c.flow.service.as_deref().or(c.flow.identity.as_deref()).unwrap_or("");
        let _ = writeln!(
            out,
            "{:<20} {subject} -> {} ({} hits): {} => {}",
            c.change.as_str(),
            c.destination,
            thousands(c.flow.hits),
            c.base,
            c.head
        );
    }
    out
}
