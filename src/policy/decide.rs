//! The decision itself: identity -> service, then mesh denies > service denies > service allows >
//! default deny, then the service's mode. Lock-free and allocation-free for the common cases.

use super::compiled::{CompiledPolicy, ServiceIdx};
use super::decision::{Decision, Malformed, Outcome, Reason};
use super::fqdn::Host;
use super::matcher::Target;
use super::terms::Protocol;
use crate::identity::{AuthnError, authenticate};

/// Where a request is going, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    pub host: Host<'a>,
    pub port: u16,
    pub protocol: Protocol,
}

impl CompiledPolicy {
    /// Maps a caller's principal to the index of the service that claims it.
    pub fn identify(&self, principal: Option<&str>) -> Result<ServiceIdx, Reason> {
        let principal = match principal {
            Some(p) if !p.is_empty() => p,
            _ => {
                let xfcc = if self.trust_forwarded_client_cert {
                    " and no URI in x-forwarded-client-cert"
                } else {
                    " (x-forwarded-client-cert is not trusted: trustForwardedClientCert is off)"
                };
                return Err(Reason::Unauthenticated(AuthnError::Missing { xfcc }));
            }
        };
        if let Some(&service) = self.exact_principals.get(principal) {
            return Ok(ServiceIdx::new(service as usize));
        }
        let id = authenticate(principal, &self.trust_domain).map_err(Reason::Unauthenticated)?;
        self.identities.lookup(id.path()).map(|s| ServiceIdx::new(s as usize)).ok_or(Reason::UnknownService)
    }

    /// Decides a request of service `service` (an index from `identify`) from `principal`. The
    /// principal and `request_id` place the request in or out of a canary's enforced share; `now`
    /// is unix seconds (for `expires`).
    pub fn evaluate(
        &self,
        service: ServiceIdx,
        principal: &str,
        dest: &Destination<'_>,
        request_id: Option<&str>,
        now: i64,
    ) -> Decision<'_> {
        let svc = &self.services[service.get()];
        let target = match &dest.host {
            Host::Name(name) => Target::Name(name),
            Host::Ip(ip) => Target::Ip(*ip),
        };
        let path = self.matcher.target_path(target);
        let bit = dest.protocol.bit();
        let lookup = |table| self.matcher.lookup(table, &path, dest.port, bit, now);
        let decided = |outcome, reason, rule: Option<u32>, enforced| Decision {
            outcome,
            reason,
            rule: rule.map(|r| &self.rules[r as usize]),
            service: Some(svc),
            mode: Some(svc.mode),
            enforced,
            near_miss: None,
            rolled_back: false,
        };

        // The floor: mesh-wide denies hold in every mode.
        if let Some(rule) = lookup(self.mesh_deny_table).hit {
            return decided(Outcome::Deny, Reason::MeshDeny, Some(rule), true);
        }
        let deny = |reason, rule| {
            let enforced = super::canary::enforces(svc, principal, request_id);
            let outcome = if enforced { Outcome::Deny } else { Outcome::WouldDeny };
            decided(outcome, reason, rule, enforced)
        };
        if let Some(rule) = lookup(svc.deny_table).hit {
            return deny(Reason::ServiceDeny, Some(rule));
        }
        let allow = lookup(svc.allow_table);
        if let Some(rule) = allow.hit {
            return decided(Outcome::Allow, Reason::Allowed, Some(rule), true);
        }
        let mut decision = deny(Reason::NoMatchingAllow, None);
        decision.near_miss = allow.near_miss.map(|(r, miss)| (&self.rules[r as usize], miss));
        decision
    }

    /// The whole pipeline for one request: identity first (who), then destination (where).
    pub fn decide(
        &self,
        principal: Option<&str>,
        destination: Result<&Destination<'_>, Malformed>,
        request_id: Option<&str>,
        now: i64,
    ) -> Decision<'_> {
        let service = match self.identify(principal) {
            Ok(s) => s,
            Err(reason) => return Decision::hard_deny(reason),
        };
        match destination {
            Ok(dest) => self.evaluate(service, principal.unwrap_or(""), dest, request_id, now),
            Err(m) => {
                let mut d = Decision::hard_deny(Reason::Malformed(m));
                d.service = Some(&self.services[service.get()]);
                d.mode = Some(self.services[service.get()].mode);
                d
            }
        }
    }
}
