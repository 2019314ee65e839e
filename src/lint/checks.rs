//! The checks, one function each, in id order.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{Finding, Level};
use crate::learn::is_multi_tenant;
use crate::policy::fqdn::HostPattern;
use crate::policy::{Action, CompiledPolicy, Mode, Protocol, RuleInfo, ServiceInfo, SourceLoc, UnclaimedIdentities};

const DAY: i64 = 86_400;
/// EGR008: an allow expiring within this many days is a warning.
pub const EXPIRY_WARN_DAYS: i64 = 14;
/// EGR012: a dry-run or canary `since:` older than this many days is a warning.
pub const OBSERVE_MAX_DAYS: i64 = 30;

/// EGR005: remote-admin and database ports.
pub const ADMIN_DB_PORTS: &[u16] = &[22, 23, 445, 1433, 1521, 3306, 3389, 5432, 5900, 6379, 9200, 11211, 27017];

pub(super) fn run(p: &CompiledPolicy, now: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    let idx = RuleIndex::new(p);
    let allows: Vec<&RuleInfo> = p.rules.iter().filter(|r| r.action == Action::Allow).collect();
    for r in &allows {
        egr001_egr004_cidr(r, &mut out);
    }
    for s in &p.services {
        egr002_portless_among_ported(&idx, s, &mut out);
    }
    for r in &allows {
        egr003_multi_tenant_wildcard(r, &mut out);
        egr005_admin_ports(&idx, r, &mut out);
    }
    egr006_mesh_floor(p, &mut out);
    for s in &p.services {
        egr007_owner(s, &mut out);
    }
    for r in &allows {
        egr008_expiry(r, now, &mut out);
    }
    for s in &p.services {
        egr009_shadowed(&idx, s, &mut out);
        egr010_duplicates(&idx, s, &mut out);
    }
    egr011_xfcc(p, &mut out);
    egr012_observe(p, now, &mut out);
    out
}

fn finding(id: &'static str, level: Level, loc: &SourceLoc, message: String) -> Finding {
    let hint = super::check(id).map(|c| c.help).unwrap_or_default().to_string();
    Finding { id, severity: level, loc: loc.clone(), message, hint }
}

/// The rules by service and action, built once: the checks look at a service's rules (and the
/// mesh denies) many times, and scanning every rule of the policy each time made lint quadratic
/// (20 s on 10,000 services).
struct RuleIndex<'p> {
    /// Per service (by index): allows, denies.
    services: Vec<[Vec<&'p RuleInfo>; 2]>,
    mesh_denies: Vec<&'p RuleInfo>,
}

impl<'p> RuleIndex<'p> {
    fn new(p: &'p CompiledPolicy) -> Self {
        let mut services = vec![[Vec::new(), Vec::new()]; p.services.len()];
        let mut mesh_denies = Vec::new();
        for r in &p.rules {
            match (r.service, r.action) {
                (Some(s), Action::Allow) => services[s.get()][0].push(r),
                (Some(s), Action::Deny) => services[s.get()][1].push(r),
                (None, Action::Deny) => mesh_denies.push(r),
                (None, Action::Allow) => {}
            }
        }
        RuleIndex { services, mesh_denies }
    }

    fn of(&self, service: crate::policy::ServiceIdx, action: Action) -> &[&'p RuleInfo] {
        &self.services[service.get()][if action == Action::Allow { 0 } else { 1 }]
    }

    /// The denies that apply to `service`'s requests: mesh-wide first, then its own.
    fn denies_for(&self, service: Option<crate::policy::ServiceIdx>) -> impl Iterator<Item = &&'p RuleInfo> {
        let own = service.map(|s| self.of(s, Action::Deny)).unwrap_or(&[]);
        self.mesh_denies.iter().chain(own.iter())
    }
}

fn rules_of<'p>(idx: &RuleIndex<'p>, s: &ServiceInfo, action: Action) -> impl Iterator<Item = &'p RuleInfo> {
    idx.of(s.index, action).iter().copied()
}

/// Where a service-specific finding about `r` goes: the `- group:` reference for a rule that came
/// from a group (that is what the service wrote), else the rule itself.
fn service_loc(r: &RuleInfo) -> &SourceLoc {
    r.group_ref_loc.as_ref().unwrap_or(&r.loc)
}

fn what(r: &RuleInfo) -> String {
    match &r.group {
        Some(g) => format!("`{}` (from group `{g}`)", r.target),
        None => format!("`{}`", r.target),
    }
}

fn ports_text(r: &RuleInfo) -> String {
    match &r.ports {
        Some(ports) => ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
        None => "any port".to_string(),
    }
}

// ---- addresses ----

const PRIVATE_V4: &[(Ipv4Addr, u8)] = &[
    (Ipv4Addr::new(10, 0, 0, 0), 8),
    (Ipv4Addr::new(172, 16, 0, 0), 12),
    (Ipv4Addr::new(192, 168, 0, 0), 16),
    (Ipv4Addr::new(100, 64, 0, 0), 10), // carrier-grade NAT, shared address space (RFC 6598)
    (Ipv4Addr::new(127, 0, 0, 0), 8),
    (Ipv4Addr::new(169, 254, 0, 0), 16), // link-local
];

const PRIVATE_V6: &[(Ipv6Addr, u8)] = &[
    (Ipv6Addr::new(0xfc00, 0, 0, 0, 0, 0, 0, 0), 7),  // unique local
    (Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 0), 10), // link-local
    (Ipv6Addr::LOCALHOST, 128),
];

/// Whether every address of `net` is private (RFC 1918, CGNAT, loopback, link-local, ULA). An
/// IPv6 network that holds embedded IPv4 addresses is judged by those too.
pub fn is_private(net: IpNet) -> bool {
    match net {
        IpNet::V4(n) => v4_private(n),
        IpNet::V6(n) => {
            let images = crate::policy::addr::ipv4_images(net);
            if !images.is_empty() {
                return images.iter().all(|i| v4_private(*i)) && n.prefix_len() > 96;
            }
            PRIVATE_V6.iter().any(|(a, l)| Ipv6Net::new(*a, *l).is_ok_and(|r| r.contains(&n)))
        }
    }
}

fn v4_private(n: Ipv4Net) -> bool {
    PRIVATE_V4.iter().any(|(a, l)| Ipv4Net::new(*a, *l).is_ok_and(|r| r.contains(&n)))
}

/// EGR001: wider than this prefix (and not private) is allow-all by another name.
const WIDE_V4: u8 = 16;
/// IPv6 has no /16 of one party; a /32 is a whole ISP's allocation.
const WIDE_V6: u8 = 32;

fn is_too_wide(net: IpNet) -> bool {
    if net.prefix_len() == 0 {
        return true;
    }
    if is_private(net) {
        return false;
    }
    match net {
        IpNet::V4(n) => n.prefix_len() < WIDE_V4,
        IpNet::V6(n) => {
            n.prefix_len() < WIDE_V6
                || crate::policy::addr::ipv4_images(net).iter().any(|i| i.prefix_len() < WIDE_V4 && !v4_private(*i))
        }
    }
}

/// EGR001 (too wide) and EGR004 (public addresses, when not already too wide).
fn egr001_egr004_cidr(r: &RuleInfo, out: &mut Vec<Finding>) {
    let Some(net) = r.cidr else { return };
    if is_too_wide(net) {
        let message = if net.prefix_len() == 0 {
            format!("allow of {} is allow-all by another name: every address", what(r))
        } else {
            format!(
                "allow of {} covers public address space wider than a /{WIDE_V4}: allow-all by another name",
                what(r)
            )
        };
        out.push(finding("EGR001", Level::Error, &r.loc, message));
    } else if !is_private(net) {
        out.push(finding(
            "EGR004",
            Level::Warning,
            &r.loc,
            format!("allow of public addresses {}: addresses move, names stay", what(r)),
        ));
    }
}

/// EGR002: a host allow without ports beside allows that name ports.
fn egr002_portless_among_ported(idx: &RuleIndex<'_>, s: &ServiceInfo, out: &mut Vec<Finding>) {
    let allows: Vec<&RuleInfo> = rules_of(idx, s, Action::Allow).collect();
    if !allows.iter().any(|r| r.ports.is_some()) {
        return;
    }
    for r in allows.iter().filter(|r| r.host.is_some() && r.ports.is_none()) {
        out.push(finding(
            "EGR002",
            Level::Warning,
            &r.loc,
            format!(
                "allow of {} has no ports (any port) while service `{}`'s other allows name their ports",
                what(r),
                s.name
            ),
        ));
    }
}

/// EGR003: `*.x` where `x` is, or is under, a multi-tenant suffix.
fn egr003_multi_tenant_wildcard(r: &RuleInfo, out: &mut Vec<Finding>) {
    let Some(HostPattern::Wildcard(anchor)) = &r.host else { return };
    if is_multi_tenant(anchor) {
        out.push(finding(
            "EGR003",
            Level::Error,
            &r.loc,
            format!(
                "wildcard {} is over the multi-tenant domain `{anchor}`: any of its tenants could receive the data",
                what(r)
            ),
        ));
    }
}

/// The admin/db ports that a deny of every destination (ports only, no protocols, no expiry)
/// already blocks for rules of `service` (`None`: mesh-wide only).
fn port_denied(idx: &RuleIndex<'_>, service: Option<crate::policy::ServiceIdx>, port: u16) -> bool {
    idx.denies_for(service).any(|d| {
        d.host.is_none()
            && d.cidr.is_none()
            && d.protocols.is_empty()
            && d.expires.is_none()
            && d.ports.as_ref().is_some_and(|ports| ports.contains(&port))
    })
}

/// EGR005: admin/db ports to hosts, public CIDRs or anything.
fn egr005_admin_ports(idx: &RuleIndex<'_>, r: &RuleInfo, out: &mut Vec<Finding>) {
    if r.cidr.is_some_and(is_private) {
        return;
    }
    let explicit = r.ports.is_some();
    let reached: Vec<u16> = ADMIN_DB_PORTS
        .iter()
        .copied()
        .filter(|port| r.ports.as_ref().is_none_or(|ports| ports.contains(port)))
        .filter(|port| !port_denied(idx, r.service, *port))
        .collect();
    if reached.is_empty() {
        return;
    }
    let list = reached.iter().map(u16::to_string).collect::<Vec<_>>().join(", ");
    let (level, message) = if explicit {
        (Level::Error, format!("allow of {} names admin/database port(s) {list} outside private ranges", what(r)))
    } else {
        (Level::Warning, format!("allow of {} has no ports, so it reaches admin/database port(s) {list}", what(r)))
    };
    out.push(finding("EGR005", level, &r.loc, message));
}

/// EGR006: no mesh-wide denies.
fn egr006_mesh_floor(p: &CompiledPolicy, out: &mut Vec<Finding>) {
    if p.mesh_deny_rules == 0 {
        out.push(finding(
            "EGR006",
            Level::Warning,
            &p.mesh_loc,
            "MeshDefaults has no `deny`: nothing is denied mesh-wide, below every service and grant".to_string(),
        ));
    }
}

/// EGR007: no owner.
fn egr007_owner(s: &ServiceInfo, out: &mut Vec<Finding>) {
    if s.owner.as_deref().is_none_or(|o| o.trim().is_empty()) {
        out.push(finding("EGR007", Level::Warning, &s.name_loc, format!("service `{}` has no owner", s.name)));
    }
}

/// `YYYY-MM-DD` -> the first second (UTC) of that day.
pub(super) fn day_start(raw: &str) -> Option<i64> {
    let date: jiff::civil::Date = raw.trim().parse().ok()?;
    Some(date.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second())
}

/// EGR008: expiring or expired allows (an allow is good through its `expires` day).
fn egr008_expiry(r: &RuleInfo, now: i64, out: &mut Vec<Finding>) {
    let Some(expires) = &r.expires else { return };
    let Some(deadline) = day_start(expires).map(|d| d + DAY) else { return };
    let loc = r.expires_loc.as_ref().unwrap_or(&r.loc);
    if deadline <= now {
        out.push(finding(
            "EGR008",
            Level::Error,
            loc,
            format!("allow of {} expired on {expires}: it no longer matches", what(r)),
        ));
    } else if deadline - now <= EXPIRY_WARN_DAYS * DAY {
        let days = (deadline - now + DAY - 1) / DAY;
        out.push(finding(
            "EGR008",
            Level::Warning,
            loc,
            format!("allow of {} expires on {expires}, in {days} day(s)", what(r)),
        ));
    }
}

/// Whether deny `d` matches every request allow `a` matches.
fn covers(d: &RuleInfo, a: &RuleInfo) -> bool {
    let dest = match (&d.host, &d.cidr) {
        (None, None) => true,
        (Some(dh), None) => a.host.as_ref().is_some_and(|ah| host_covers(dh, ah)),
        (None, Some(dn)) => a.cidr.is_some_and(|an| dn.contains(&an)),
        (Some(_), Some(_)) => false,
    };
    let ports = match (&d.ports, &a.ports) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(dp), Some(ap)) => ap.iter().all(|p| dp.contains(p)),
    };
    let protocols =
        d.protocols.is_empty() || (!a.protocols.is_empty() && a.protocols.iter().all(|p| d.protocols.contains(p)));
    let lasts = match (&d.expires, &a.expires) {
        (None, _) => true,
        (Some(_), None) => false,
        (Some(de), Some(ae)) => day_start(de) >= day_start(ae),
    };
    dest && ports && protocols && lasts
}

fn host_covers(deny: &HostPattern, allow: &HostPattern) -> bool {
    match (deny, allow) {
        (HostPattern::Exact(d), HostPattern::Exact(a)) => d == a,
        (HostPattern::Wildcard(_), HostPattern::Exact(a)) => deny.matches(a),
        (HostPattern::Wildcard(d), HostPattern::Wildcard(a)) => a == d || a.ends_with(&format!(".{d}")),
        (HostPattern::Exact(_), HostPattern::Wildcard(_)) => false,
    }
}

/// EGR009: allows a deny always overrides.
fn egr009_shadowed(idx: &RuleIndex<'_>, s: &ServiceInfo, out: &mut Vec<Finding>) {
    for a in rules_of(idx, s, Action::Allow) {
        let shadow = idx.denies_for(Some(s.index)).find(|d| covers(d, a));
        if let Some(d) = shadow {
            let scope = if d.service.is_none() { "mesh-wide deny" } else { "deny" };
            out.push(finding(
                "EGR009",
                Level::Warning,
                service_loc(a),
                format!(
                    "allow of {} ({}) in service `{}` never decides: the {scope} of `{}` ({}, {}) always wins",
                    what(a),
                    ports_text(a),
                    s.name,
                    d.target,
                    ports_text(d),
                    d.loc
                ),
            ));
        }
    }
}

fn same_rule(a: &RuleInfo, b: &RuleInfo) -> bool {
    let protocols = |r: &RuleInfo| {
        let mut v: Vec<Protocol> = r.protocols.clone();
        v.sort_by_key(|p| p.bit());
        v.dedup();
        v
    };
    a.target == b.target && a.ports == b.ports && protocols(a) == protocols(b)
}

/// EGR010: the same rule twice in one service (allows with allows, denies with denies).
fn egr010_duplicates(idx: &RuleIndex<'_>, s: &ServiceInfo, out: &mut Vec<Finding>) {
    for action in [Action::Allow, Action::Deny] {
        let rules: Vec<&RuleInfo> = rules_of(idx, s, action).collect();
        for (i, later) in rules.iter().enumerate() {
            if let Some(first) = rules[..i].iter().find(|r| same_rule(r, later)) {
                out.push(finding(
                    "EGR010",
                    Level::Warning,
                    service_loc(later),
                    format!(
                        "{} {} ({}) repeats the one at {} in service `{}`",
                        later.action_str(),
                        what(later),
                        ports_text(later),
                        service_loc(first),
                        s.name
                    ),
                ));
            }
        }
    }
}

/// EGR011: identities taken from x-forwarded-client-cert.
fn egr011_xfcc(p: &CompiledPolicy, out: &mut Vec<Finding>) {
    if p.trust_forwarded_client_cert {
        out.push(finding(
            "EGR011",
            Level::Warning,
            p.trust_forwarded_client_cert_loc.as_ref().unwrap_or(&p.mesh_loc),
            "trustForwardedClientCert: true trusts any hop that can set x-forwarded-client-cert ahead of the gateway to name the caller"
                .to_string(),
        ));
    }
}

/// EGR012: observe phases that do not end.
fn egr012_observe(p: &CompiledPolicy, now: i64, out: &mut Vec<Finding>) {
    if p.unclaimed_identities == UnclaimedIdentities::Observe {
        out.push(finding(
            "EGR012",
            Level::Warning,
            p.unclaimed_identities_loc.as_ref().unwrap_or(&p.mesh_loc),
            "unclaimedIdentities: observe lets every unclaimed caller in the trust domain through (recorded only)"
                .to_string(),
        ));
    }
    for s in p.services.iter().filter(|s| matches!(s.mode, Mode::DryRun | Mode::Canary)) {
        match (&s.since, s.since.as_deref().and_then(day_start)) {
            (Some(since), Some(start)) => {
                let days = (now - start).div_euclid(DAY);
                if days > OBSERVE_MAX_DAYS {
                    out.push(finding(
                        "EGR012",
                        Level::Warning,
                        s.since_loc.as_ref().unwrap_or(&s.name_loc),
                        format!(
                            "service `{}` has been in {} since {since} ({days} days, more than {OBSERVE_MAX_DAYS})",
                            s.name, s.mode
                        ),
                    ));
                }
            }
            _ => {
                let mut f = finding(
                    "EGR012",
                    Level::Note,
                    s.mode_loc.as_ref().unwrap_or(&s.name_loc),
                    format!("service `{}` is in {} with no `since:` date", s.name, s.mode),
                );
                f.hint = "add since: YYYY-MM-DD to track how long it has been observing".to_string();
                out.push(f);
            }
        }
    }
}

#[cfg(test)]
pub(super) fn private(s: &str) -> bool {
    is_private(s.parse().unwrap())
}

#[cfg(test)]
pub(super) fn too_wide(s: &str) -> bool {
    is_too_wide(s.parse().unwrap())
}
