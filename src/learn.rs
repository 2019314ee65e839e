//! Allowlist learning (`egressd learn`): from observed flows the policy does not allow, propose
//! the allows that would, as reviewable edits of the policy files.
//!
//! Three steps, each a function the CLI can stop after: `propose` decides what to allow (domain
//! values: patterns, ports, evidence, and what it would not propose and why); `edits` turns that
//! into new texts of the service files, inserting lines and leaving every other byte as it was;
//! `unified_diff` and `apply` show or write them.
//!
//! Learning errs on the narrow side, because its output is a grant that reviewers tend to accept
//! as written: exact names and single addresses by default, the observed ports only, a wildcard
//! or subnet only over enough siblings and never over names other parties own, and every allow
//! justified `TODO: …`, which the compiler refuses to serve until a human writes the reason.

mod collapse;
mod diff;
mod edit;
pub mod multi_tenant;
mod naming;
#[cfg(test)]
mod proptests;
mod render;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::fmt;
use std::net::IpAddr;

use ipnet::IpNet;

pub use collapse::may_wildcard;
pub use diff::{apply, unified_diff};
pub use edit::{EditError, FileEdit, edits};
pub use multi_tenant::is_multi_tenant;

use crate::flows::replay::Replayed;
use crate::flows::{Flow, FlowStats, Subject};
use crate::policy::fqdn::{Host, HostPattern};
use crate::policy::{CompiledPolicy, Outcome, RuleInfo, SourceLoc};
use collapse::{AddressClass, classify, collapse_addresses, collapse_names};

/// How boldly to generalize.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LearnOptions {
    /// Distinct names under one parent (or addresses in one /24 or /64), for one service and
    /// one port set, before they become one `*.parent` (or CIDR). Values below 2 count as 2: a
    /// wildcard over a single observed name is a guess, not a pattern.
    pub min_siblings: usize,
    /// Propose allows without `ports` (any port) instead of the observed ones.
    pub any_port: bool,
}

impl Default for LearnOptions {
    fn default() -> Self {
        LearnOptions { min_siblings: 5, any_port: false }
    }
}

/// What a proposed allow names.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LearnedTarget {
    Host(HostPattern),
    Cidr(IpNet),
}

impl fmt::Display for LearnedTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LearnedTarget::Host(p) => p.fmt(f),
            LearnedTarget::Cidr(n) => n.fmt(f),
        }
    }
}

/// What was seen of the flows behind a proposed allow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evidence {
    pub hits: u64,
    /// Distinct SPIFFE IDs (each flow keeps at most `flows::MAX_WORKLOADS`).
    pub workloads: BTreeSet<String>,
    /// More workloads were seen than are kept.
    pub workloads_truncated: bool,
    /// Unix milliseconds.
    pub first_seen_ms: i64,
    pub last_seen_ms: i64,
    /// The observed names (addresses) a wildcard (subnet) stands for, sorted; empty for an exact
    /// name or a single address.
    pub collapsed: Vec<String>,
}

impl Evidence {
    fn of(stats: &FlowStats) -> Self {
        Evidence {
            hits: stats.hits,
            workloads: stats.workloads.iter().cloned().collect(),
            workloads_truncated: stats.workloads_truncated,
            first_seen_ms: stats.first_seen_ms,
            last_seen_ms: stats.last_seen_ms,
            collapsed: Vec::new(),
        }
    }

    fn merge(&mut self, other: &Evidence) {
        self.hits += other.hits;
        self.workloads.extend(other.workloads.iter().cloned());
        self.workloads_truncated |= other.workloads_truncated;
        self.first_seen_ms = self.first_seen_ms.min(other.first_seen_ms);
        self.last_seen_ms = self.last_seen_ms.max(other.last_seen_ms);
    }
}

/// One allow to add.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProposedAllow {
    pub target: LearnedTarget,
    /// The observed ports, sorted; `None` (any port) only with `LearnOptions::any_port`.
    pub ports: Option<Vec<u16>>,
    pub evidence: Evidence,
}

impl ProposedAllow {
    /// The placeholder written as the allow's justification: a question for the reviewer, which
    /// the compiler refuses to serve until it is answered.
    pub fn placeholder_justification(&self, service: &str) -> String {
        format!("TODO: why does {service} need {}?", self.target)
    }
}

/// Allows to append to an existing service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAllows {
    pub service: String,
    /// Where the service's document starts (`ServiceInfo::loc`).
    pub loc: SourceLoc,
    /// The line of the service's last allow written in its own file (not through a group), if
    /// any: the allow list cannot end before it.
    pub last_allow_line: Option<u32>,
    pub allows: Vec<ProposedAllow>,
}

/// A new dry-run service for an identity no service claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewService {
    /// Derived from the SPIFFE path (`ns/batch/sa/etl` -> `batch-etl`), unique in the policy.
    pub name: String,
    pub identity: String,
    pub allows: Vec<ProposedAllow>,
}

/// Why a flow the policy does not allow gets no proposal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NotProposed {
    /// A mesh-wide deny: the floor no service allow can lift.
    MeshDeny { rule: Option<String> },
    /// The service's own deny: someone decided against this destination already.
    ServiceDeny { rule: Option<String> },
    /// The caller is unknown now: its service is gone from the policy.
    NoService,
    /// Identity failures and malformed requests: not a missing allow.
    NotAnAllowProblem { reason: &'static str, message: String },
    /// Loopback, link-local, unspecified, broadcast or multicast.
    LocalAddress,
    /// A public IP address: a name should be allowed instead.
    PublicAddress,
}

impl fmt::Display for NotProposed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rule = |r: &Option<String>| r.as_deref().map(|r| format!(" {r}")).unwrap_or_default();
        match self {
            NotProposed::MeshDeny { rule: r } => {
                write!(f, "denied by the mesh-wide rule{}; no service allow can change that; not proposed", rule(r))
            }
            NotProposed::ServiceDeny { rule: r } => {
                write!(f, "denied by the service's own rule{}; not proposed", rule(r))
            }
            NotProposed::NoService => f.write_str("no service claims this caller any more; not proposed"),
            NotProposed::NotAnAllowProblem { reason, message } => {
                write!(f, "{reason}: {message}; an allow would not change it; not proposed")
            }
            NotProposed::LocalAddress => {
                f.write_str("a loopback, link-local or multicast address is not an egress destination; not proposed")
            }
            NotProposed::PublicAddress => f.write_str(
                "a public IP address: name this destination (allow the DNS name the service uses) instead; \
                 an address may serve someone else tomorrow; not proposed",
            ),
        }
    }
}

/// A flow left out of the proposal, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    pub subject: Subject,
    /// `api.stripe.com:443/https`.
    pub destination: String,
    pub hits: u64,
    pub why: NotProposed,
}

/// Everything `egressd learn` would change, and what it left out.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proposal {
    /// By service name; only services with at least one allow.
    pub services: Vec<ServiceAllows>,
    /// By name; only identities with at least one allow.
    pub new_services: Vec<NewService>,
    /// In the order of the flows given.
    pub skipped: Vec<Skipped>,
}

impl Proposal {
    /// Whether nothing would be added.
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.new_services.is_empty()
    }
}

/// Who an allow would be added to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Owner {
    Service(String),
    /// A SPIFFE ID no service claims: it gets a service of its own.
    Unclaimed(String),
}

/// What to do with one replayed flow.
enum Triage {
    Allowed,
    Learn(Owner),
    Skip(NotProposed),
}

/// Proposes allows for the flows (each replayed with `policy` at `now`, unix seconds) that no
/// allow lets through and an allow could: a service's `no-matching-allow`, and an unclaimed
/// identity's `unknown-service` unless the mesh floor denies its destination.
pub fn propose(flows: &[(Flow, Replayed)], policy: &CompiledPolicy, options: &LearnOptions, now: i64) -> Proposal {
    let mut observed: BTreeMap<Owner, Observed> = BTreeMap::new();
    let mut skipped = Vec::new();
    for (flow, replayed) in flows {
        let outcome = match triage(policy, flow, replayed, now) {
            Triage::Allowed => Ok(()),
            Triage::Skip(why) => Err(why),
            Triage::Learn(owner) => observed.entry(owner).or_default().add(flow),
        };
        if let Err(why) = outcome {
            let (subject, destination, hits) = (flow.key.subject.clone(), flow.key.destination(), flow.stats.hits);
            skipped.push(Skipped { subject, destination, hits, why });
        }
    }

    let mut proposal = Proposal { skipped, ..Proposal::default() };
    let mut taken: BTreeSet<String> = policy.services.iter().map(|s| s.name.clone()).collect();
    for (owner, seen) in observed {
        let allows = seen.allows(options);
        if allows.is_empty() {
            continue;
        }
        match owner {
            Owner::Service(name) => {
                // `triage` only learns for services of this policy, so this always finds it.
                proposal.services.extend(service_allows(policy, &name, allows));
            }
            Owner::Unclaimed(identity) => {
                let name = naming::service_name(&identity, &taken);
                taken.insert(name.clone());
                proposal.new_services.push(NewService { name, identity, allows });
            }
        }
    }
    proposal.new_services.sort_by(|a, b| a.name.cmp(&b.name));
    proposal
}

fn triage(policy: &CompiledPolicy, flow: &Flow, replayed: &Replayed, now: i64) -> Triage {
    if replayed.outcome == Outcome::Allow {
        return Triage::Allowed;
    }
    let rule = || replayed.rule.as_ref().map(|r| r.id.clone());
    match (replayed.reason, &flow.key.subject) {
        // The service that claims the workload now gets the allow, even if the flow was
        // recorded under another (a policy change moved the identity). A flow replayed with
        // another policy than this one may name a service this one lacks.
        ("no-matching-allow", _) => match replayed.service.as_deref().filter(|s| policy.service(s).is_some()) {
            Some(service) => Triage::Learn(Owner::Service(service.to_string())),
            None => Triage::Skip(NotProposed::NoService),
        },
        // Under `unclaimedIdentities: deny` the caller is turned away before the mesh floor is
        // looked at; its new service would be held to it, so ask the floor here.
        ("unknown-service", Subject::Unclaimed(id)) => match mesh_floor(policy, flow, now) {
            Some(rule) => Triage::Skip(NotProposed::MeshDeny { rule: Some(rule.id.clone()) }),
            None => Triage::Learn(Owner::Unclaimed(id.clone())),
        },
        ("unknown-service", Subject::Service(_)) => Triage::Skip(NotProposed::NoService),
        ("mesh-deny", _) => Triage::Skip(NotProposed::MeshDeny { rule: rule() }),
        ("service-deny", _) => Triage::Skip(NotProposed::ServiceDeny { rule: rule() }),
        (reason, _) => Triage::Skip(NotProposed::NotAnAllowProblem { reason, message: replayed.message.clone() }),
    }
}

/// One destination of one owner: the ports used and what was seen.
#[derive(Debug)]
struct Seen {
    ports: BTreeSet<u16>,
    evidence: Evidence,
}

/// The learnable destinations of one owner.
#[derive(Debug, Default)]
struct Observed {
    names: BTreeMap<String, Seen>,
    addrs: BTreeMap<IpAddr, Seen>,
}

impl Observed {
    /// Records a flow, or says why its destination is not proposed.
    fn add(&mut self, flow: &Flow) -> Result<(), NotProposed> {
        let (port, evidence) = (flow.key.port, Evidence::of(&flow.stats));
        match destination(&flow.key.host)? {
            Host::Ip(ip) => match classify(ip) {
                AddressClass::Private => record(self.addrs.entry(ip), port, evidence),
                AddressClass::Local => return Err(NotProposed::LocalAddress),
                AddressClass::Public => return Err(NotProposed::PublicAddress),
            },
            Host::Name(name) => record(self.names.entry(name.into_owned()), port, evidence),
        }
        Ok(())
    }

    /// The allows that cover everything observed, hosts (by pattern) before CIDRs (by network).
    fn allows(&self, options: &LearnOptions) -> Vec<ProposedAllow> {
        let min = options.min_siblings.max(2);
        let mut hosts = Vec::new();
        for (ports, names) in by_port_set(&self.names, options.any_port) {
            for (pattern, members) in collapse_names(&names, min) {
                let collapsed = matches!(pattern, HostPattern::Wildcard(_));
                let evidence = merged(members.iter().map(|m| &self.names[m]), collapsed.then_some(&members));
                hosts.push(ProposedAllow { target: LearnedTarget::Host(pattern), ports: ports.clone(), evidence });
            }
        }
        hosts.sort_by_cached_key(|a| a.target.to_string());
        let mut cidrs = Vec::new();
        for (ports, addrs) in by_port_set(&self.addrs, options.any_port) {
            for (net, members) in collapse_addresses(&addrs, min) {
                let names: Vec<String> = members.iter().map(IpAddr::to_string).collect();
                let collapsed = members.len() > 1;
                let evidence = merged(members.iter().map(|m| &self.addrs[m]), collapsed.then_some(&names));
                cidrs.push((net, ProposedAllow { target: LearnedTarget::Cidr(net), ports: ports.clone(), evidence }));
            }
        }
        cidrs.sort_by_key(|(net, _)| *net);
        hosts.extend(cidrs.into_iter().map(|(_, a)| a));
        hosts
    }
}

/// Adds one flow's port and evidence to its destination's.
fn record<K: Ord>(entry: btree_map::Entry<'_, K, Seen>, port: u16, evidence: Evidence) {
    match entry {
        btree_map::Entry::Occupied(mut seen) => {
            let seen = seen.get_mut();
            seen.ports.insert(port);
            seen.evidence.merge(&evidence);
        }
        btree_map::Entry::Vacant(slot) => {
            slot.insert(Seen { ports: BTreeSet::from([port]), evidence });
        }
    }
}

/// Destinations grouped by the exact set of ports they were used on (all in one group, `None`,
/// with `any_port`): siblings are only collapsed when they are used alike.
fn by_port_set<K: Ord + Clone>(seen: &BTreeMap<K, Seen>, any_port: bool) -> BTreeMap<Option<Vec<u16>>, BTreeSet<K>> {
    let mut groups: BTreeMap<Option<Vec<u16>>, BTreeSet<K>> = BTreeMap::new();
    for (key, s) in seen {
        let ports = (!any_port).then(|| s.ports.iter().copied().collect());
        groups.entry(ports).or_default().insert(key.clone());
    }
    groups
}

/// The evidence of several destinations together, listing them when they were collapsed.
fn merged<'a>(mut seen: impl Iterator<Item = &'a Seen>, collapsed: Option<&Vec<String>>) -> Evidence {
    let mut evidence = seen.next().expect("a pattern covers at least one destination").evidence.clone();
    for s in seen {
        evidence.merge(&s.evidence);
    }
    evidence.collapsed = collapsed.cloned().unwrap_or_default();
    evidence
}

/// A flow's destination as a name or an address. Flows carry normalized hosts; one that does not
/// normalize would have been replayed as malformed.
fn destination(host: &str) -> Result<Host<'_>, NotProposed> {
    crate::flows::destination_host(host)
        .map_err(|e| NotProposed::NotAnAllowProblem { reason: "malformed-request", message: e.to_string() })
}

/// The mesh-wide deny that holds for the flow's destination, if any: what any service's request
/// there would meet first.
fn mesh_floor<'p>(policy: &'p CompiledPolicy, flow: &Flow, now: i64) -> Option<&'p RuleInfo> {
    let host = destination(&flow.key.host).ok()?;
    policy.mesh_deny(&crate::policy::Destination { host, port: flow.key.port, protocol: flow.key.protocol }, now)
}

/// The proposal for an existing service, with where its document and its last own allow are.
fn service_allows(policy: &CompiledPolicy, name: &str, allows: Vec<ProposedAllow>) -> Option<ServiceAllows> {
    let info = policy.service(name)?;
    let own_prefix = format!("{name}/allow/");
    let last_allow_line = policy
        .rules
        .iter()
        .filter(|r| r.group.is_none() && r.id.starts_with(&own_prefix) && r.loc.file == info.loc.file)
        .map(|r| r.loc.line)
        .max();
    Some(ServiceAllows { service: name.to_string(), loc: info.loc.clone(), last_allow_line, allows })
}
