//! Observed flows: who went where, how often, and what was decided each time.
//!
//! A flow is (subject, destination host or IP, port, protocol), where the subject is the service
//! that made the request or, for a SPIFFE ID of the trust domain that no service claims, that
//! identity. Flows come from audit logs (`audit_log`) or from a running server's live table
//! (`live`, served at `GET /flows`); `replay` decides each flow again with a given policy, which is
//! what makes old observations meaningful against today's rule ids. Learning, impact and plan are
//! built on these three.
//!
//! This module knows policy vocabulary (outcomes, protocols) but neither telemetry nor the CLI: the
//! server feeds `live` from its telemetry thread, the commands read audit logs through
//! `audit_log`.

pub mod audit_log;
pub mod json;
pub mod live;
pub mod pending;
pub mod replay;
mod table;

pub use table::FlowTable;

use crate::policy::{Outcome, Protocol, Reason};

/// Distinct workloads kept per flow; more are counted as `workloads_truncated`, not stored (a
/// flow from a 5,000-pod deployment must not hold 5,000 strings).
pub const MAX_WORKLOADS: usize = 32;

/// Who made the requests of a flow.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    /// A service of the policy (by name).
    Service(String),
    /// A SPIFFE ID of the trust domain that no service claims.
    Unclaimed(String),
}

impl Subject {
    pub fn name(&self) -> &str {
        match self {
            Subject::Service(s) | Subject::Unclaimed(s) => s,
        }
    }

    /// `payments` or `unclaimed spiffe://corp.example/ns/batch/sa/etl`.
    pub fn describe(&self) -> String {
        match self {
            Subject::Service(s) => s.clone(),
            Subject::Unclaimed(id) => format!("unclaimed {id}"),
        }
    }
}

/// A subject as an observation names it, borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubjectRef<'a> {
    Service(&'a str),
    Unclaimed(&'a str),
}

impl<'a> SubjectRef<'a> {
    /// Whose flow a decision is: the service that claims the caller or, for an authenticated
    /// caller no service claims, that identity; `None` for a caller not known to be anyone
    /// (unauthenticated, malformed request).
    pub fn of_decision(service: Option<&'a str>, principal: Option<&'a str>, reason: &Reason) -> Option<Self> {
        match (service, principal) {
            (Some(s), _) => Some(SubjectRef::Service(s)),
            (None, Some(id)) if !matches!(reason, Reason::Unauthenticated(_) | Reason::Malformed(_)) => {
                Some(SubjectRef::Unclaimed(id))
            }
            _ => None,
        }
    }
}

/// What an observation names as its rule: the deciding rule's id or, for a break-glass decision,
/// the grant's (see `Observation::rule`).
pub fn rule_of_decision<'a>(reason: &'a Reason, rule_id: Option<&'a str>) -> Option<&'a str> {
    match reason {
        Reason::BreakGlass(grant) => Some(grant.id.as_str()),
        _ => rule_id,
    }
}

/// What makes two requests the same flow. Ordered by subject, host, port, then protocol name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub subject: Subject,
    /// The normalized destination: a DNS name or an IP address (IPv6 without brackets).
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
}

impl Ord for FlowKey {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (&self.subject, &self.host, self.port, self.protocol.as_str()).cmp(&(
            &other.subject,
            &other.host,
            other.port,
            other.protocol.as_str(),
        ))
    }
}

impl PartialOrd for FlowKey {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl FlowKey {
    /// `api.stripe.com:443/https`.
    pub fn destination(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}/{}", self.host, self.port, self.protocol.as_str())
        } else {
            format!("{}:{}/{}", self.host, self.port, self.protocol.as_str())
        }
    }
}

/// One decision of a request, as recorded when it was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation<'a> {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub subject: SubjectRef<'a>,
    /// The caller's SPIFFE ID.
    pub workload: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    pub protocol: Protocol,
    pub decision: Outcome,
    /// The reason code (`no-matching-allow`, ...).
    pub reason: &'a str,
    /// The rule id, as the policy of the time numbered it; for a break-glass decision (reason
    /// `break-glass`), the grant's id, so `report stale` can tell which grants were used.
    pub rule: Option<&'a str>,
}

/// How often a flow ended in one decision.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecisionCount {
    pub decision: Outcome,
    pub reason: String,
    pub rule: Option<String>,
    pub count: u64,
}

/// What was seen of one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowStats {
    pub hits: u64,
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// Distinct SPIFFE IDs, sorted, at most `MAX_WORKLOADS`. A sorted `Vec` rather than a
    /// `BTreeSet`: most flows have one or two workloads, and a set's first node costs ~280 bytes,
    /// a fifth of a flow's memory when learning from ~90,000 flows.
    pub workloads: Vec<String>,
    /// More distinct workloads were seen than are kept.
    pub workloads_truncated: bool,
    /// Distinct (decision, reason, rule) seen, with counts, in first-seen order.
    pub decisions: Vec<DecisionCount>,
}

impl FlowStats {
    fn new(time_ms: i64) -> Self {
        FlowStats {
            hits: 0,
            first_seen_ms: time_ms,
            last_seen_ms: time_ms,
            workloads: Vec::new(),
            workloads_truncated: false,
            decisions: Vec::new(),
        }
    }

    /// Adds one observation of this flow.
    pub fn record(&mut self, obs: &Observation<'_>) {
        self.record_counted(obs, 1, obs.time_ms, obs.time_ms);
    }

    /// Adds `hits` observations like `obs`, made between `first_ms` and `last_ms`.
    pub fn record_counted(&mut self, obs: &Observation<'_>, hits: u64, first_ms: i64, last_ms: i64) {
        self.hits += hits;
        self.first_seen_ms = self.first_seen_ms.min(first_ms);
        self.last_seen_ms = self.last_seen_ms.max(last_ms);
        if let Some(w) = obs.workload {
            self.add_workload(w);
        }
        self.add_decision(obs.decision, obs.reason, obs.rule, hits);
    }

    fn add_workload(&mut self, w: &str) {
        if let Err(at) = self.workloads.binary_search_by(|x| x.as_str().cmp(w)) {
            if self.workloads.len() < MAX_WORKLOADS {
                self.workloads.reserve_exact(1);
                self.workloads.insert(at, w.to_string());
            } else {
                self.workloads_truncated = true;
            }
        }
    }

    fn add_decision(&mut self, decision: Outcome, reason: &str, rule: Option<&str>, count: u64) {
        match self
            .decisions
            .iter_mut()
            .find(|d| d.decision == decision && d.reason == reason && d.rule.as_deref() == rule)
        {
            Some(d) => d.count += count,
            None => {
                // Most flows see one decision: no room for four (a Vec's first growth).
                self.decisions.reserve_exact(1);
                self.decisions.push(DecisionCount {
                    decision,
                    reason: reason.to_string(),
                    rule: rule.map(str::to_string),
                    count,
                })
            }
        }
    }

    /// Folds another source's stats of the same flow into these.
    pub fn merge(&mut self, other: &FlowStats) {
        self.hits += other.hits;
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
        for w in &other.workloads {
            self.add_workload(w);
        }
        self.workloads_truncated |= other.workloads_truncated;
        for d in &other.decisions {
            self.add_decision(d.decision, &d.reason, d.rule.as_deref(), d.count);
        }
    }
}

/// A flow and what was seen of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub key: FlowKey,
    pub stats: FlowStats,
}

/// A flow's recorded destination as the policy reads it: an IP address in canonical form (an
/// IPv4-mapped IPv6 address is its IPv4), else a normalized DNS name. Replay and learning both
/// read hosts this way, so what one decides is what the other proposes for.
pub fn destination_host(host: &str) -> Result<crate::policy::fqdn::Host<'_>, crate::policy::fqdn::HostError> {
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => Ok(crate::policy::fqdn::Host::Ip(crate::policy::addr::canonical(ip))),
        Err(_) => crate::policy::fqdn::normalize_host(host),
    }
}

/// `7d`, `12h`, `30m`: an age in seconds (defined with the policy, which reads windows too).
pub use crate::policy::detection::parse_age;

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(t: i64, w: &'a str, decision: Outcome, reason: &'a str) -> Observation<'a> {
        Observation {
            time_ms: t,
            subject: SubjectRef::Service("payments"),
            workload: Some(w),
            host: "api.stripe.com",
            port: 443,
            protocol: Protocol::Https,
            decision,
            reason,
            rule: None,
        }
    }

    #[test]
    fn stats_count_hits_times_workloads_and_decisions() {
        let mut s = FlowStats::new(50);
        s.record(&obs(50, "a", Outcome::WouldDeny, "no-matching-allow"));
        s.record(&obs(20, "b", Outcome::WouldDeny, "no-matching-allow"));
        s.record(&obs(90, "a", Outcome::Allow, "allowed"));
        assert_eq!(s.hits, 3);
        assert_eq!((s.first_seen_ms, s.last_seen_ms), (20, 90));
        assert_eq!(s.workloads.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(s.decisions.len(), 2);
        assert_eq!(s.decisions[0].count, 2);
    }

    #[test]
    fn workloads_beyond_the_cap_are_flagged_not_kept() {
        let mut s = FlowStats::new(0);
        let names: Vec<String> = (0..MAX_WORKLOADS + 3).map(|i| format!("spiffe://d/w{i}")).collect();
        for n in &names {
            s.record(&obs(0, n, Outcome::Allow, "allowed"));
        }
        assert_eq!(s.workloads.len(), MAX_WORKLOADS);
        assert!(s.workloads_truncated);
        assert_eq!(s.hits, names.len() as u64);
    }

    #[test]
    fn ages() {
        assert_eq!(parse_age("7d"), Ok(7 * 86_400));
        assert_eq!(parse_age("90s"), Ok(90));
        assert_eq!(parse_age("2w"), Ok(14 * 86_400));
        assert!(parse_age("7").unwrap_err().contains("unit"));
        assert!(parse_age("d").unwrap_err().contains("not an age"));
        assert!(parse_age("99999999999999999w").is_err());
    }
}
