//! How a policy's rules were used by observed flows, replayed: hits, last hit, the names a
//! wildcard actually matched and the workloads that used each rule. `report stale` and
//! `report matrix` read it.
//!
//! Flows aggregate their requests, so the window is applied per flow: a flow counts in the window
//! when it was last seen in it (its hits are all counted), and the last hit of a rule is the
//! latest `last_seen` of the flows it decides, whether in the window or not.

use std::collections::{BTreeMap, BTreeSet};

use super::ReplayedFlow;
use crate::flows::Subject;
use crate::policy::CompiledPolicy;

/// Distinct names kept per rule: enough to suggest up to five exact names for a wildcard and
/// to say "more than that" beyond.
pub const MAX_NAMES: usize = 16;
/// Distinct workloads kept per rule and per service.
pub const MAX_WORKLOADS: usize = 64;

/// The use of one rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleUsage {
    /// Hits of the flows in the window that this rule decides now.
    pub hits: u64,
    /// Unix milliseconds of the latest flow this rule decides, in the window or before it.
    pub last_seen_ms: Option<i64>,
    /// Destination names (or addresses) of those flows in the window, with hits; at most
    /// `MAX_NAMES`, then `names_truncated`.
    pub names: BTreeMap<String, u64>,
    pub names_truncated: bool,
    /// Workloads (SPIFFE IDs) of those flows in the window; at most `MAX_WORKLOADS`.
    pub workloads: BTreeSet<String>,
    pub workloads_truncated: bool,
}

/// The use of every rule of a policy, and what each service was seen doing.
#[derive(Debug, Clone)]
pub struct Usage {
    /// Parallel to `CompiledPolicy::rules`.
    pub rules: Vec<RuleUsage>,
    /// Distinct workloads seen per service (parallel to `CompiledPolicy::services`) in the window.
    pub service_workloads: Vec<BTreeSet<String>>,
    /// Break-glass grant id -> requests it decided (as recorded: replay leaves grants out).
    pub grants: BTreeMap<String, u64>,
    /// Flows counted (last seen in the window) and flows read.
    pub flows_in_window: usize,
    pub flows: usize,
}

impl Usage {
    /// `window_start_ms`: flows last seen before it count for `last_seen_ms` only.
    pub fn of(policy: &CompiledPolicy, flows: &[ReplayedFlow], window_start_ms: Option<i64>) -> Usage {
        let mut usage = Usage {
            rules: vec![RuleUsage::default(); policy.rules.len()],
            service_workloads: vec![BTreeSet::new(); policy.services.len()],
            grants: BTreeMap::new(),
            flows_in_window: 0,
            flows: flows.len(),
        };
        for f in flows {
            let stats = &f.flow.stats;
            let in_window = window_start_ms.is_none_or(|start| stats.last_seen_ms >= start);
            if in_window {
                usage.flows_in_window += 1;
                usage.count_grants(f);
                usage.count_service_workloads(policy, f);
            }
            let Some(rule) = &f.now.rule else { continue };
            let Some(u) = usage.rules.get_mut(rule.index) else { continue };
            u.last_seen_ms = Some(u.last_seen_ms.map_or(stats.last_seen_ms, |l| l.max(stats.last_seen_ms)));
            if in_window {
                u.record(f);
            }
        }
        usage
    }

    fn count_grants(&mut self, f: &ReplayedFlow) {
        for d in f.flow.stats.decisions.iter().filter(|d| d.reason == "break-glass") {
            if let Some(grant) = &d.rule {
                *self.grants.entry(grant.clone()).or_default() += d.count;
            }
        }
    }

    fn count_service_workloads(&mut self, policy: &CompiledPolicy, f: &ReplayedFlow) {
        let name = match (&f.now.service, &f.flow.key.subject) {
            (Some(s), _) => s.as_str(),
            (None, Subject::Service(s)) => s.as_str(),
            (None, Subject::Unclaimed(_)) => return,
        };
        let Some(service) = policy.service(name) else { return };
        let seen = &mut self.service_workloads[service.index.get()];
        for w in &f.flow.stats.workloads {
            if seen.len() >= MAX_WORKLOADS {
                break;
            }
            seen.insert(w.clone());
        }
    }

    /// The use of `rule` (an index into the policy's rules).
    pub fn rule(&self, rule: usize) -> &RuleUsage {
        &self.rules[rule]
    }
}

impl RuleUsage {
    fn record(&mut self, f: &ReplayedFlow) {
        let stats = &f.flow.stats;
        self.hits += stats.hits;
        let room = self.names.len() < MAX_NAMES;
        match self.names.get_mut(&f.flow.key.host) {
            Some(hits) => *hits += stats.hits,
            None if room => {
                self.names.insert(f.flow.key.host.clone(), stats.hits);
            }
            None => self.names_truncated = true,
        }
        self.workloads_truncated |= stats.workloads_truncated;
        for w in &stats.workloads {
            if self.workloads.contains(w) {
                continue;
            }
            if self.workloads.len() < MAX_WORKLOADS {
                self.workloads.insert(w.clone());
            } else {
                self.workloads_truncated = true;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{FlowTable, Observation, SubjectRef};
    use crate::policy::{Outcome, PolicySource, Protocol, compile};
    use crate::reports::replay_all;

    const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
---
kind: ServicePolicy
service: payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
allow:
  - host: "*.stripe.com"
    ports: [443]
    justification: card payments
  - host: api.adyen.com
    ports: [443]
    justification: second acquirer
"#;

    fn observe(table: &mut FlowTable, time_ms: i64, workload: &str, host: &str, reason: &str, rule: Option<&str>) {
        table.record(&Observation {
            time_ms,
            subject: SubjectRef::Service("payments"),
            workload: Some(workload),
            host,
            port: 443,
            protocol: Protocol::Https,
            decision: Outcome::Allow,
            reason,
            rule,
        });
    }

    #[test]
    fn rules_count_the_flows_they_decide_now_and_the_window_limits_hits_not_last_seen() {
        let policy = compile(&PolicySource::from_text("p.yaml", POLICY), 0).unwrap();
        let mut table = FlowTable::default();
        let api = "spiffe://corp.example/ns/payments/sa/api";
        let worker = "spiffe://corp.example/ns/payments/sa/worker";
        observe(&mut table, 10_000, api, "api.stripe.com", "allowed", Some("old/id"));
        observe(&mut table, 11_000, api, "api.stripe.com", "allowed", None);
        observe(&mut table, 12_000, worker, "files.stripe.com", "allowed", None);
        observe(&mut table, 1_000, worker, "api.adyen.com", "allowed", None);
        observe(&mut table, 13_000, worker, "api.partner.test", "break-glass", Some("bg-7"));
        let flows = replay_all(&policy, table.into_sorted(), 0);

        let usage = Usage::of(&policy, &flows, Some(5_000));
        let stripe = usage.rule(0);
        assert_eq!(stripe.hits, 3);
        assert_eq!(stripe.last_seen_ms, Some(12_000));
        assert_eq!(stripe.names.keys().collect::<Vec<_>>(), ["api.stripe.com", "files.stripe.com"]);
        assert_eq!(stripe.workloads.len(), 2);
        let adyen = usage.rule(1);
        assert_eq!((adyen.hits, adyen.last_seen_ms), (0, Some(1_000)), "seen before the window only");
        assert_eq!(usage.grants.get("bg-7"), Some(&1));
        assert_eq!(usage.service_workloads[0].len(), 2);
        assert_eq!((usage.flows_in_window, usage.flows), (3, 4));
    }
}
