//! One DNS query, decided: may this client learn the addresses of this name?
//!
//! The name rule follows the Check rules for names, without ports or protocols (a query has
//! neither): mesh-wide host denies > the service's host denies > its host allows > default deny.
//! A deny counts only when it holds for the whole name (no `ports`, no `protocols`: a deny of
//! port 25 leaves the name reachable on 443); any unexpired host allow makes the name resolvable,
//! whatever its ports. CIDR rules never make a name resolvable, and destination-less denies never
//! block one. A client no `sources` entry maps may resolve what some service may reach.
//!
//! Infrastructure queries: a PTR query for a private address (`reverse::is_private`) goes to the
//! upstream; SOA, NS and DS of a name at or above an allowed name (its zone) are allowed, since
//! resolvers and TLS libraries ask them and they carry no data. Both come after the denies (mesh,
//! then the service's): a denied name stays denied whatever the query type. Everything else
//! follows the name rule.

use std::net::IpAddr;

use super::reverse;
use crate::policy::compiled::{CompiledPolicy, RuleInfo, ServiceInfo};
use crate::policy::matcher::{HostPath, RuleConstraints, TableId};
use crate::policy::terms::{Mode, UnclaimedIdentities};
use crate::policy::{Outcome, ServiceIdx};

/// What the query asks, as far as the decision cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueryKind {
    /// PTR: a reverse lookup.
    Ptr,
    /// SOA, NS, DS: questions about a zone rather than a name's data.
    Zone,
    /// A, AAAA, TXT, and every other type.
    Name,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DnsReason {
    Allowed,
    PrivatePtr,
    ZoneOfAllowed,
    MeshDeny,
    ServiceDeny,
    NoMatchingAllow,
}

impl DnsReason {
    pub fn as_str(self) -> &'static str {
        match self {
            DnsReason::Allowed => "allowed",
            DnsReason::PrivatePtr => "private-ptr",
            DnsReason::ZoneOfAllowed => "zone-of-allowed",
            DnsReason::MeshDeny => "mesh-deny",
            DnsReason::ServiceDeny => "service-deny",
            DnsReason::NoMatchingAllow => "no-matching-allow",
        }
    }

    /// An explicit deny (RFC 8914 code 15, Blocked) rather than the default deny (18, Prohibited).
    pub fn is_explicit_deny(self) -> bool {
        matches!(self, DnsReason::MeshDeny | DnsReason::ServiceDeny)
    }
}

/// The decision on one query.
#[derive(Debug, Clone, Copy)]
pub struct DnsDecision<'p> {
    /// `Allow` and `WouldDeny` are forwarded; `Deny` is answered by egressd, never forwarded.
    pub outcome: Outcome,
    pub reason: DnsReason,
    pub rule: Option<&'p RuleInfo>,
    /// The client's service, when a `sources` entry maps its address.
    pub service: Option<&'p ServiceInfo>,
}

impl DnsDecision<'_> {
    pub fn forwards(&self) -> bool {
        self.outcome != Outcome::Deny
    }
}

/// A deny that holds for every port and protocol, and has not expired.
fn whole_name(c: &RuleConstraints, now: i64) -> bool {
    c.ports.is_none() && c.protocols == 0 && now < c.expires_at
}

fn unexpired(c: &RuleConstraints, now: i64) -> bool {
    now < c.expires_at
}

impl CompiledPolicy {
    /// Decides a query for `qname` (lowercase ASCII, no trailing dot) from `client`. `now` is unix
    /// seconds (for `expires`). Without a DnsFirewall every query is denied.
    pub fn decide_dns(&self, client: IpAddr, qname: &str, kind: QueryKind, now: i64) -> DnsDecision<'_> {
        let Some(fw) = &self.dns else {
            return DnsDecision {
                outcome: Outcome::Deny,
                reason: DnsReason::NoMatchingAllow,
                rule: None,
                service: None,
            };
        };
        let service = fw.sources.lookup(client).map(|i| &self.services[i.get()]);
        let decided = |outcome, reason, rule: Option<u32>| DnsDecision {
            outcome,
            reason,
            rule: rule.map(|r| &self.rules[r as usize]),
            service,
        };
        let path = self.matcher.host_path(qname);
        let denied = |table| self.matcher.lookup_name(table, &path, |c| whole_name(c, now));
        // The floor holds in every mode, for every client.
        if let Some(rule) = denied(self.mesh_deny_table) {
            return decided(Outcome::Deny, DnsReason::MeshDeny, Some(rule));
        }
        // What the client may resolve, and whether a deny of it is enforced.
        let (allow_table, enforced) = match service {
            Some(svc) => {
                let enforced = svc.mode != Mode::DryRun;
                if let Some(rule) = denied(svc.deny_table) {
                    return decided(refusal(enforced), DnsReason::ServiceDeny, Some(rule));
                }
                (svc.allow_table, enforced)
            }
            None => (fw.union_table, self.unclaimed_identities != UnclaimedIdentities::Observe),
        };
        // After the service's denies: an operator who denies a reverse name means it.
        if kind == QueryKind::Ptr && reverse::reverse_address(qname).is_some_and(reverse::is_private) {
            return decided(Outcome::Allow, DnsReason::PrivatePtr, None);
        }
        if let Some(rule) = self.allowed(allow_table, &path, now) {
            return decided(Outcome::Allow, DnsReason::Allowed, Some(rule));
        }
        if kind == QueryKind::Zone && self.matcher.is_zone(allow_table, &path) {
            return decided(Outcome::Allow, DnsReason::ZoneOfAllowed, None);
        }
        decided(refusal(enforced), DnsReason::NoMatchingAllow, None)
    }

    fn allowed(&self, table: TableId, path: &HostPath, now: i64) -> Option<u32> {
        self.matcher.lookup_name(table, path, |c| unexpired(c, now))
    }

    /// The mesh-wide deny that blocks the name `qname` whole (no ports, no protocols), if any:
    /// the floor of every DNS answer, with or without a DnsFirewall (the RPZ export reads it).
    pub fn mesh_denied_name(&self, qname: &str, now: i64) -> Option<&RuleInfo> {
        let path = self.matcher.host_path(qname);
        let rule = self.matcher.lookup_name(self.mesh_deny_table, &path, |c| whole_name(c, now))?;
        Some(&self.rules[rule as usize])
    }

    /// The service a DNS client address maps to, if any (`sources`).
    pub fn dns_service_of(&self, client: IpAddr) -> Option<ServiceIdx> {
        self.dns.as_ref()?.sources.lookup(client)
    }
}

/// A canary has no request id to place a query in or out of its share: it is enforced, as network
/// checks are (fail closed).
fn refusal(enforced: bool) -> Outcome {
    if enforced { Outcome::Deny } else { Outcome::WouldDeny }
}
