//! What observed flows mean for a policy: the review commands' results, as domain values with a
//! text and a JSON face. `discover` lists the flows and what today's policy does to each,
//! `impact` what enforcing a service would deny, `plan` which decisions a policy change moves.
//! All three stand on `flows::replay`, the Check path's own `decide`.

pub mod discover;
pub mod impact;
pub mod matrix;
pub mod plan;
pub mod stale;
pub mod usage;

use crate::flows::Flow;
use crate::flows::replay::{Replayed, replay};
use crate::policy::CompiledPolicy;

/// A flow and what a policy decides for it now.
#[derive(Debug, Clone)]
pub struct ReplayedFlow {
    pub flow: Flow,
    pub now: Replayed,
}

/// Replays every flow with `policy` at `now` (unix seconds).
pub fn replay_all(policy: &CompiledPolicy, flows: Vec<Flow>, now: i64) -> Vec<ReplayedFlow> {
    flows
        .into_iter()
        .map(|flow| {
            let now = replay(policy, &flow, now);
            ReplayedFlow { flow, now }
        })
        .collect()
}

/// Keeps the flows of `service`: those it made (or the unclaimed identity of that SPIFFE ID
/// made) and those the policy now gives to it (an unclaimed identity a new service claims).
pub fn only_service(flows: Vec<ReplayedFlow>, service: Option<&str>) -> Vec<ReplayedFlow> {
    match service {
        None => flows,
        Some(s) => flows
            .into_iter()
            .filter(|f| f.flow.key.subject.name() == s || f.now.service.as_deref() == Some(s))
            .collect(),
    }
}

/// `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// `2026-11-21 20:10Z`: minutes are what a person reading a flow report needs.
pub fn short_time(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms).map(|t| t.strftime("%Y-%m-%d %H:%MZ").to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    #[test]
    fn thousands_are_grouped() {
        assert_eq!(super::thousands(0), "0");
        assert_eq!(super::thousands(999), "999");
        assert_eq!(super::thousands(1000), "1,000");
        assert_eq!(super::thousands(1234567), "1,234,567");
    }
}
