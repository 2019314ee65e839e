//! Flows as JSON: what `GET /flows` serves and what `--server` reads back (and the commands'
//! `--format json`). Times are RFC 3339 UTC; a flow names either its `service` or, for an
//! unclaimed identity, its `identity`.

use serde::{Deserialize, Serialize};

use super::{DecisionCount, Flow, FlowKey, FlowStats, Subject};
use crate::policy::Protocol;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowJson {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// The SPIFFE ID of an unclaimed workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<String>,
    pub host: String,
    pub port: u16,
    pub protocol: Protocol,
    pub hits: u64,
    pub first_seen: String,
    pub last_seen: String,
    pub workloads: Vec<String>,
    #[serde(default)]
    pub workloads_truncated: bool,
    pub decisions: Vec<DecisionJson>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DecisionJson {
    pub decision: String,
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    pub count: u64,
}

/// The body of `GET /flows`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FlowsDocument {
    /// Flows the table holds at most.
    pub capacity: usize,
    /// Flows evicted (least recently seen first) to stay within `capacity`.
    pub evicted: u64,
    /// Observations the Check path dropped: more new flows between two drains than a thread holds.
    #[serde(default)]
    pub dropped: u64,
    pub flows: Vec<FlowJson>,
}

/// RFC 3339 for unix milliseconds.
pub fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.to_string()).unwrap_or_default()
}

fn parse_time(field: &str, text: &str) -> Result<i64, String> {
    text.parse::<jiff::Timestamp>()
        .map(|t| t.as_millisecond())
        .map_err(|e| format!("`{field}` {text:?} is not an RFC 3339 timestamp: {e}"))
}

impl From<&Flow> for FlowJson {
    fn from(flow: &Flow) -> Self {
        let (service, identity) = match &flow.key.subject {
            Subject::Service(s) => (Some(s.clone()), None),
            Subject::Unclaimed(id) => (None, Some(id.clone())),
        };
        let s = &flow.stats;
        FlowJson {
            service,
            identity,
            host: flow.key.host.clone(),
            port: flow.key.port,
            protocol: flow.key.protocol,
            hits: s.hits,
            first_seen: rfc3339(s.first_seen_ms),
            last_seen: rfc3339(s.last_seen_ms),
            workloads: s.workloads.to_vec(),
            workloads_truncated: s.workloads_truncated,
            decisions: s
                .decisions
                .iter()
                .map(|d| DecisionJson {
                    decision: d.decision.as_str().to_string(),
                    reason: d.reason.clone(),
                    rule: d.rule.clone(),
                    count: d.count,
                })
                .collect(),
        }
    }
}

impl TryFrom<FlowJson> for Flow {
    type Error = String;

    fn try_from(j: FlowJson) -> Result<Flow, String> {
        let subject = match (j.service, j.identity) {
            (Some(s), None) => Subject::Service(s),
            (None, Some(id)) => Subject::Unclaimed(id),
            _ => {
                return Err(format!("flow to {}:{} names neither or both of `service` and `identity`", j.host, j.port));
            }
        };
        let decisions = j
            .decisions
            .into_iter()
            .map(|d| {
                Ok(DecisionCount { decision: d.decision.parse()?, reason: d.reason, rule: d.rule, count: d.count })
            })
            .collect::<Result<_, String>>()?;
        // A flow's workloads are kept sorted and distinct (`FlowStats::workloads`), whatever the
        // server sent.
        let mut workloads = j.workloads;
        workloads.sort_unstable();
        workloads.dedup();
        Ok(Flow {
            key: FlowKey { subject, host: j.host, port: j.port, protocol: j.protocol },
            stats: FlowStats {
                hits: j.hits,
                first_seen_ms: parse_time("firstSeen", &j.first_seen)?,
                last_seen_ms: parse_time("lastSeen", &j.last_seen)?,
                workloads,
                workloads_truncated: j.workloads_truncated,
                decisions,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::{FlowTable, Observation, SubjectRef};
    use crate::policy::Outcome;

    #[test]
    fn flows_survive_the_round_trip() {
        let mut t = FlowTable::default();
        for (i, subject) in [SubjectRef::Service("payments"), SubjectRef::Unclaimed("spiffe://corp.example/ns/x/sa/y")]
            .into_iter()
            .enumerate()
        {
            t.record(&Observation {
                time_ms: 1_764_000_000_123 + i as i64,
                subject,
                workload: Some("spiffe://corp.example/ns/x/sa/y"),
                host: "2001:db8::1",
                port: 8443,
                protocol: Protocol::Tcp,
                decision: Outcome::WouldDeny,
                reason: "no-matching-allow",
                rule: Some("payments/deny/1"),
            });
        }
        for flow in t.into_sorted() {
            let text = serde_json::to_string(&FlowJson::from(&flow)).unwrap();
            let back: FlowJson = serde_json::from_str(&text).unwrap();
            assert_eq!(Flow::try_from(back).unwrap(), flow, "{text}");
        }
    }

    #[test]
    fn workloads_stay_sorted_and_distinct_from_any_order_and_from_a_servers_json() {
        let mut t = FlowTable::default();
        for w in ["spiffe://t/c", "spiffe://t/a", "spiffe://t/c", "spiffe://t/b", "spiffe://t/a"] {
            t.record(&Observation {
                time_ms: 0,
                subject: SubjectRef::Service("payments"),
                workload: Some(w),
                host: "a.test",
                port: 443,
                protocol: Protocol::Https,
                decision: Outcome::Allow,
                reason: "allowed",
                rule: None,
            });
        }
        let flow = t.into_sorted().remove(0);
        assert_eq!(flow.stats.workloads, ["spiffe://t/a", "spiffe://t/b", "spiffe://t/c"]);
        assert_eq!(flow.stats.hits, 5);
        let mut j = FlowJson::from(&flow);
        j.workloads = vec!["spiffe://t/z".into(), "spiffe://t/a".into(), "spiffe://t/z".into()];
        assert_eq!(Flow::try_from(j).unwrap().stats.workloads, ["spiffe://t/a", "spiffe://t/z"]);
    }

    #[test]
    fn a_flow_without_a_subject_is_refused() {
        let j = FlowJson {
            service: None,
            identity: None,
            host: "a.test".into(),
            port: 443,
            protocol: Protocol::Https,
            hits: 1,
            first_seen: rfc3339(0),
            last_seen: rfc3339(0),
            workloads: vec![],
            workloads_truncated: false,
            decisions: vec![],
        };
        assert!(Flow::try_from(j).unwrap_err().contains("neither or both"));
    }
}
