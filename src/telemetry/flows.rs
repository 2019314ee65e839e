//! Feeding the live flow table from the telemetry queue: a decision dequeued for spans or the
//! audit log becomes an observation of its flow. (When the table is all that records decisions,
//! the Check path counts them itself: `authz::checker`, `flows::pending`.)

use super::record::{CheckEvent, Fact};
use crate::flows::live::SharedFlows;
use crate::flows::{Observation, SubjectRef};

/// Records `event` in `table`, unless it is nobody's flow (no accepted identity, no destination)
/// or a tunnel check (the second decision of a CONNECT already recorded).
pub fn record(table: &SharedFlows, event: &CheckEvent) {
    if let Some(obs) = observation(event) {
        table.record(&obs);
    }
}

fn observation(event: &CheckEvent) -> Option<Observation<'_>> {
    let facts = &event.facts;
    let verdict = &event.verdict;
    if facts.tunnel_start.is_some() {
        return None;
    }
    let principal = facts.get(Fact::Principal);
    let service = verdict.service.map(|s| event.policy.services[s.get()].name.as_str());
    let subject = SubjectRef::of_decision(service, principal, &verdict.reason)?;
    Some(Observation {
        time_ms: event.start.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        subject,
        workload: principal,
        host: facts.get(Fact::Host)?,
        port: facts.port?,
        protocol: facts.protocol?,
        decision: verdict.outcome,
        reason: verdict.reason.code(),
        rule: crate::flows::rule_of_decision(
            &verdict.reason,
            verdict.rule.map(|r| event.policy.rules[r as usize].id.as_str()),
        ),
    })
}
