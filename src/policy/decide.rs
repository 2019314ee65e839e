//! The decision itself: identity -> service, then mesh denies > service denies > service allows >
//! default deny, then the service's mode. Lock-free and allocation-free for the common cases.
//! A caller in the trust domain that no service claims is denied, or, under MeshDefaults
//! `unclaimedIdentities: observe`, held to the mesh-wide denies alone and otherwise recorded as a
//! would-deny (as if it were a service in dry-run with no rules).

use super::compiled::{CompiledPolicy, ServiceIdx};
use super::decision::{Decision, Malformed, Outcome, Reason};
use super::fqdn::Host;
use super::matcher::{Target, TargetPath};
use super::terms::{Mode, Protocol, UnclaimedIdentities};
use crate::identity::{AuthnError, WorkloadId, authenticate};

/// Where a request is going, normalized.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination<'a> {
    pub host: Host<'a>,
    pub port: u16,
    pub protocol: Protocol,
}

impl CompiledPolicy {
    /// Maps a caller's principal to the service that claims it, and the accepted identity.
    pub fn identify<'r>(&self, principal: Option<&'r str>) -> Result<(ServiceIdx, WorkloadId<'r>), Reason> {
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
        let accepted = WorkloadId::accepted(principal);
        if let Some(&service) = self.exact_principals.get(principal) {
            return Ok((ServiceIdx::new(service as usize), accepted));
        }
        let id = authenticate(principal, &self.trust_domain).map_err(Reason::Unauthenticated)?;
        let service = self.identities.lookup(id.path()).ok_or(Reason::UnknownService)?;
        Ok((ServiceIdx::new(service as usize), accepted))
    }

    /// Decides a request of service `service` from `workload` (both from `identify`). The
    /// workload and `request_id` place the request in or out of a canary's enforced share; `now`
    /// is unix seconds (for `expires`).
    pub fn evaluate(
        &self,
        service: ServiceIdx,
        workload: WorkloadId<'_>,
        dest: &Destination<'_>,
        request_id: Option<&str>,
        now: i64,
    ) -> Decision<'_> {
        let svc = &self.services[service.get()];
        let path = self.target_path(dest);
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
            let enforced = super::canary::enforces(svc, workload, request_id);
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

    /// The destination's trie walk, done once for every table a decision looks in.
    fn target_path(&self, dest: &Destination<'_>) -> TargetPath {
        let target = match &dest.host {
            Host::Name(name) => Target::Name(name),
            Host::Ip(ip) => Target::Ip(*ip),
        };
        self.matcher.target_path(target)
    }

    /// The mesh-wide deny that holds for `dest`, if any: the floor every caller's request meets
    /// first, whichever service (or none) it belongs to.
    pub fn mesh_deny(&self, dest: &Destination<'_>, now: i64) -> Option<&super::compiled::RuleInfo> {
        let path = self.target_path(dest);
        let hit = self.matcher.lookup(self.mesh_deny_table, &path, dest.port, dest.protocol.bit(), now).hit?;
        Some(&self.rules[hit as usize])
    }

    /// A caller that authenticated but that no service claims, under `unclaimedIdentities:
    /// observe`. There are no service rules to apply, so it is treated as a service in dry-run
    /// with none: the floor (mesh-wide denies) is enforced, a malformed request is denied (it could
    /// not be sent anywhere), and everything else goes through as a would-deny whose reason,
    /// `unknown-service`, says what enforcement would do. `service` stays `None`: what is keyed
    /// by service (answer cache slots, tallies, grants, guards) skips these decisions.
    fn evaluate_unclaimed(&self, destination: Result<&Destination<'_>, Malformed>, now: i64) -> Decision<'_> {
        let mut decision = match destination {
            Err(m) => Decision::hard_deny(Reason::Malformed(m)),
            Ok(dest) => match self.mesh_deny(dest, now) {
                Some(rule) => Decision { rule: Some(rule), ..Decision::hard_deny(Reason::MeshDeny) },
                None => Decision {
                    outcome: Outcome::WouldDeny,
                    enforced: false,
                    ..Decision::hard_deny(Reason::UnknownService)
                },
            },
        };
        decision.mode = Some(Mode::DryRun);
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
        self.decide_identified(self.identify(principal), destination, request_id, now)
    }

    /// As `decide`, for a caller `identify` already placed (callers that keep the accepted
    /// identity, such as the Check path's tunnel pairing).
    pub fn decide_identified(
        &self,
        identified: Result<(ServiceIdx, WorkloadId<'_>), Reason>,
        destination: Result<&Destination<'_>, Malformed>,
        request_id: Option<&str>,
        now: i64,
    ) -> Decision<'_> {
        let (service, workload) = match identified {
            Ok(identified) => identified,
            // `identify` says UnknownService only for a caller that authenticated (in the trust
            // domain): other identity failures stay hard denies in every setting.
            Err(Reason::UnknownService) if self.unclaimed_identities == UnclaimedIdentities::Observe => {
                return self.evaluate_unclaimed(destination, now);
            }
            Err(reason) => return Decision::hard_deny(reason),
        };
        match destination {
            Ok(dest) => self.evaluate(service, workload, dest, request_id, now),
            Err(m) => {
                let mut d = Decision::hard_deny(Reason::Malformed(m));
                d.service = Some(&self.services[service.get()]);
                d.mode = Some(self.services[service.get()].mode);
                d
            }
        }
    }
}
