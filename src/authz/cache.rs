//! Encoded answers for one policy version, filled on first use.
//!
//! Slots: per rule (the allow answer of an allow rule, the would-deny answer of a service deny
//! rule) and per service (its would-deny for "no matching allow"). Only the core of a permitted
//! answer (status and metadata) is cached: where the request goes is written per request after
//! it (`forward`). Network checks are once per connection, so they are built per request.
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

    /// The encoded core of a permitted answer (status and metadata, see `response::ok_core`) for
    /// `decision`, if it is one of the cacheable shapes.
    pub fn ok_core(&self, decision: &Decision<'_>) -> Option<Bytes> {
        let slot = match (decision.outcome, &decision.reason, decision.rule) {
            (Outcome::Allow, Reason::Allowed, Some(rule)) if rule.action == Action::Allow => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::ServiceDeny, Some(rule)) => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::NoMatchingAllow, None) => &self.by_service[decision.service?.index.get()],
            _ => return None,
        };
        let bytes = slot.get_or_init(|| Bytes::from(response::ok_core(decision, &self.policy.version).encode_to_vec()));
        Some(bytes.clone())
    }
}
