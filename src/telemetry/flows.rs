//! Feeding the live flow table: a decision becomes an observation of its flow, on the telemetry
//! thread (the Check path only queued it).

use super::record::{CheckEvent, Fact};
use crate::flows::live::SharedFlows;
use crate::flows::{Observation, SubjectRef};
use crate::policy::Reason;

/// Records `event` in `table`, unless it is nobody's flow (no accepted identity, no destination)
/// or a tunnel check (the second decision of a CONNECT already recorded).
pub fn record(table: &SharedFlows, event: &CheckEvent) {
    if let Some(obs) = observation(event) {
        // The lock is shared with `GET /flows` only; a poisoned table (a panic while recording)
        // is still a table of counts.
        let mut table = table.lock().unwrap_or_else(|e| e.into_inner());
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
    let subject = match (verdict.service, principal) {
        (Some(s), _) => SubjectRef::Service(&event.policy.services[s.get()].name),
        (None, Some(id)) if !matches!(verdict.reason, Reason::Unauthenticated(_) | Reason::Malformed(_)) => {
            SubjectRef::Unclaimed(id)
        }
        _ => return None,
    };
    Some(Observation {
        time_ms: event.start.duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0),
        subject,
        workload: principal,
        host: facts.get(Fact::Host)?,
        port: facts.port?,
        protocol: facts.protocol?,
        decision: verdict.outcome,
        reason: verdict.reason.code(),
        rule: match &verdict.reason {
            Reason::BreakGlass(grant) => Some(grant.id.as_str()),
            _ => verdict.rule.map(|r| event.policy.rules[r as usize].id.as_str()),
        },
    })
}
