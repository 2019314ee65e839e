//! Encoded answers for one policy version, filled on first use.
//!
//! Slots: per rule (the allow answer of an allow rule, the would-deny answer of a service deny
//! rule) and per service (its would-deny for "no matching allow"). HTTP variants only: network
//! checks are once per connection and answered without an HTTP part, so they are built per request.
//! A reload builds a new policy and the next check builds a new, empty cache for it.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use prost::Message;

use super::response;
use crate::policy::{Action, CompiledPolicy, Decision, Outcome, Reason};

pub struct ResponseCache {
    pub policy: Arc<CompiledPolicy>,
    by_rule: Vec<OnceLock<Bytes>>,
    by_service: Vec<OnceLock<Bytes>>,
}

impl ResponseCache {
    pub fn new(policy: Arc<CompiledPolicy>) -> Self {
        let by_rule = (0..policy.rules.len()).map(|_| OnceLock::new()).collect();
        let by_service = (0..policy.services.len()).map(|_| OnceLock::new()).collect();
        ResponseCache { policy, by_rule, by_service }
    }

    /// The encoded HTTP answer for `decision` if it is one of the cacheable shapes.
    pub fn http_answer(&self, decision: &Decision<'_>) -> Option<Bytes> {
        let slot = match (decision.outcome, &decision.reason, decision.rule) {
            (Outcome::Allow, Reason::Allowed, Some(rule)) if rule.action == Action::Allow => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::ServiceDeny, Some(rule)) => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::NoMatchingAllow, None) => &self.by_service[decision.service?.index],
            _ => return None,
        };
        let bytes = slot.get_or_init(|| {
            // These shapes never look at the destination: the deny body is not part of them.
            let resp =
                response::build(decision, Err(&crate::policy::Malformed::NoDestination), &self.policy.version, true);
            Bytes::from(resp.encode_to_vec())
        });
        Some(bytes.clone())
    }
}
