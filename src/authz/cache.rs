//! Encoded answers for one policy version, filled on first use.
//!
//! Slots: per rule (the allow answer of an allow rule, the would-deny answer of a service deny
//! rule), per service (its would-deny for "no matching allow") and one for an unclaimed caller's
//! would-deny (`unclaimedIdentities: observe`: no rule, no service). Only the core of a permitted
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
    /// The would-deny of a caller no service claims: the same for every such caller.
    unclaimed: OnceLock<Bytes>,
}

impl ResponseCache {
    pub fn new(policy: Arc<CompiledPolicy>) -> Self {
        let by_rule = (0..policy.rules.len()).map(|_| OnceLock::new()).collect();
        let by_service = (0..policy.services.len()).map(|_| OnceLock::new()).collect();
        ResponseCache { policy, by_rule, by_service, unclaimed: OnceLock::new() }
    }

    /// The encoded core of a permitted answer (status and metadata, see `response::ok_core`) for
    /// `decision`, if it is one of the cacheable shapes.
    pub fn ok_core(&self, decision: &Decision<'_>) -> Option<Bytes> {
        let slot = match (decision.outcome, &decision.reason, decision.rule) {
            (Outcome::Allow, Reason::Allowed, Some(rule)) if rule.action == Action::Allow => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::ServiceDeny, Some(rule)) => &self.by_rule[rule.index],
            (Outcome::WouldDeny, Reason::NoMatchingAllow, None) => &self.by_service[decision.service?.index.get()],
            (Outcome::WouldDeny, Reason::UnknownService, None) if decision.service.is_none() => &self.unclaimed,
            _ => return None,
        };
        let bytes = slot.get_or_init(|| Bytes::from(response::ok_core(decision, &self.policy.version).encode_to_vec()));
        Some(bytes.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::authz::codec::CheckAnswer;
    use crate::policy::PolicySource;
    use crate::testing::{answer, authorize, http_check};

    /// An observed unclaimed caller's would-deny is served from its slot, and is the answer the
    /// reference path builds.
    #[test]
    fn an_unclaimed_would_deny_is_cached() {
        let fixture = include_str!("../../integration/fixtures/semantics.yaml");
        let text = fixture.replacen("mode: enforce\n", "mode: enforce\nunclaimedIdentities: observe\n", 1);
        let policy = Arc::new(crate::policy::compile(&PolicySource::from_text("f.yaml", &text), 0).unwrap());
        let cache = ResponseCache::new(policy.clone());
        for (i, to) in ["evil.example.org:443", "other.example.net:443"].into_iter().enumerate() {
            let req = http_check(&format!("spiffe://corp.example/ns/nobody/sa/{i}"), "CONNECT", to, &[]);
            let (got, verdict) = answer(&cache, &req, 0);
            assert_eq!((verdict.outcome, verdict.service), (Outcome::WouldDeny, None));
            assert!(matches!(got, CheckAnswer::Forwarded { .. }), "from the cache");
            assert_eq!(got.to_message(), authorize(&policy, &req, 0), "{to}");
        }
        assert!(cache.unclaimed.get().is_some());
    }
}
