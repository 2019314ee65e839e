//! Deciding an observed flow again with a given policy: the same `decide` the Check path runs, for
//! a request from one of the flow's workloads to its destination. Rule ids move when a file is
//! edited; replay is what says which rule decides an old observation now.
//!
//! Break-glass grants and rollback guards are runtime state, not policy: replay leaves them out.

use super::{Flow, Subject};
use crate::policy::{Action, CompiledPolicy, Decision, Destination, Outcome, Reason, ServiceIdx};

/// The rule that decided a replayed flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayedRule {
    /// Position in the replaying policy's `rules` (meaningless in another version).
    pub index: usize,
    pub id: String,
    pub action: Action,
    /// `FILE:LINE:COL`.
    pub location: String,
    /// What the rule matches: `api.stripe.com ports [443]`. Two policy sets in two directories
    /// compare rules by id and this, never by location (which names the directory).
    pub matches: String,
}

/// What a policy decides for a flow now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replayed {
    pub outcome: Outcome,
    /// The outcome were the service enforced: a would-deny becomes a deny.
    pub enforced_outcome: Outcome,
    /// The reason code (`allowed`, `no-matching-allow`, ...).
    pub reason: &'static str,
    pub message: String,
    pub rule: Option<ReplayedRule>,
    /// The service that claims the flow's workload now (a policy change may move it).
    pub service: Option<String>,
}

impl Replayed {
    fn of(decision: &Decision<'_>) -> Self {
        Replayed {
            outcome: decision.outcome,
            enforced_outcome: match decision.outcome {
                Outcome::WouldDeny => Outcome::Deny,
                o => o,
            },
            reason: decision.reason.code(),
            message: decision.reason.to_string(),
            rule: decision.rule.map(|r| ReplayedRule {
                index: r.index,
                id: r.id.clone(),
                action: r.action,
                location: r.loc.to_string(),
                matches: r.content_key(),
            }),
            service: decision.service.map(|s| s.name.clone()),
        }
    }

    /// `allow (payments/allow/0)`, `would-deny (no-matching-allow)`.
    pub fn summary(&self) -> String {
        match &self.rule {
            Some(r) => format!("{} ({} by {})", self.outcome.as_str(), self.reason, r.id),
            None => format!("{} ({})", self.outcome.as_str(), self.reason),
        }
    }
}

/// Decides `flow` with `policy` at `now` (unix seconds). The request is one of the flow's
/// workloads' (the first, by name); a service flow recorded without any workload is decided for
/// the service by name.
pub fn replay(policy: &CompiledPolicy, flow: &Flow, now: i64) -> Replayed {
    let host = match super::destination_host(&flow.key.host) {
        Ok(h) => h,
        Err(e) => return Replayed::of(&Decision::hard_deny(Reason::Malformed(e.into()))),
    };
    let dest = Destination { host, port: flow.key.port, protocol: flow.key.protocol };
    let principal = match &flow.key.subject {
        Subject::Unclaimed(id) => Some(id.as_str()),
        Subject::Service(_) => flow.stats.workloads.first().map(String::as_str),
    };
    match (principal, &flow.key.subject) {
        (Some(p), _) => Replayed::of(&policy.decide(Some(p), Ok(&dest), None, now)),
        (None, Subject::Service(name)) => match policy.services.iter().position(|s| &s.name == name) {
            Some(i) => {
                let workload = crate::identity::WorkloadId::accepted(name);
                Replayed::of(&policy.evaluate(ServiceIdx::new(i), workload, &dest, None, now))
            }
            None => Replayed::of(&Decision::hard_deny(Reason::UnknownService)),
        },
        (None, Subject::Unclaimed(_)) => unreachable!("an unclaimed flow's principal is its subject"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{FlowTable, Observation, SubjectRef};
    use crate::policy::{PolicySource, Protocol, compile};

    const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
deny:
  - cidr: 169.254.169.254/32
    justification: metadata
---
kind: ServicePolicy
service: payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
mode: dry-run
allow:
  - host: api.stripe.com
    ports: [443]
    justification: card payments
"#;

    fn flow(subject: SubjectRef<'_>, workload: Option<&str>, host: &str, port: u16) -> Flow {
        let mut t = FlowTable::default();
        t.record(&Observation {
            time_ms: 0,
            subject,
            workload,
            host,
            port,
            protocol: Protocol::Https,
            decision: Outcome::WouldDeny,
            reason: "no-matching-allow",
            rule: Some("payments/allow/7"),
        });
        t.into_sorted().remove(0)
    }

    #[test]
    fn replay_names_the_rule_deciding_now() {
        let policy = compile(&PolicySource::from_text("p.yaml", POLICY), 0).unwrap();
        let w = Some("spiffe://corp.example/ns/payments/sa/api");
        let allowed = replay(&policy, &flow(SubjectRef::Service("payments"), w, "api.stripe.com", 443), 0);
        assert_eq!(allowed.outcome, Outcome::Allow);
        assert_eq!(allowed.rule.as_ref().unwrap().id, "payments/allow/0");
        assert!(allowed.rule.unwrap().location.starts_with("p.yaml:"));

        let other_port = replay(&policy, &flow(SubjectRef::Service("payments"), w, "api.stripe.com", 8443), 0);
        assert_eq!((other_port.outcome, other_port.enforced_outcome), (Outcome::WouldDeny, Outcome::Deny));
        assert_eq!(other_port.reason, "no-matching-allow");

        let metadata = replay(&policy, &flow(SubjectRef::Service("payments"), w, "169.254.169.254", 443), 0);
        assert_eq!((metadata.outcome, metadata.reason), (Outcome::Deny, "mesh-deny"));
    }

    #[test]
    fn a_flow_without_workloads_is_decided_for_its_service_and_a_removed_service_is_unknown() {
        let policy = compile(&PolicySource::from_text("p.yaml", POLICY), 0).unwrap();
        let by_name = replay(&policy, &flow(SubjectRef::Service("payments"), None, "API.stripe.com", 443), 0);
        assert_eq!(by_name.outcome, Outcome::Allow);
        let gone = replay(&policy, &flow(SubjectRef::Service("ledger"), None, "a.test", 443), 0);
        assert_eq!((gone.outcome, gone.reason), (Outcome::Deny, "unknown-service"));
    }

    #[test]
    fn an_unclaimed_identity_is_replayed_as_itself() {
        let policy = compile(&PolicySource::from_text("p.yaml", POLICY), 0).unwrap();
        let id = "spiffe://corp.example/ns/batch/sa/etl";
        let r = replay(&policy, &flow(SubjectRef::Unclaimed(id), Some(id), "a.test", 443), 0);
        assert_eq!((r.outcome, r.reason, r.service), (Outcome::Deny, "unknown-service", None));
        let ipv6 = replay(&policy, &flow(SubjectRef::Service("payments"), None, "::ffff:169.254.169.254", 443), 0);
        assert_eq!(ipv6.reason, "mesh-deny", "IPv4-mapped addresses replay as their IPv4 image");
    }
}
