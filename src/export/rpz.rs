//! `egressd export rpz`: the policy's DNS rule as a Response Policy Zone, for resolvers egressd
//! does not run (unbound's `rpz:`, BIND's `response-policy`). Mesh-wide, as egressd answers a
//! client that no DnsFirewall `sources` entry maps: a name some service may reach resolves
//! (`CNAME rpz-passthru.`, wildcard allows as `*.name`), the mesh-wide host denies and every other
//! name get NXDOMAIN (`CNAME .`, the catch-all `*`), reverse names of private ranges pass.
//!
//! RPZ picks the most specific trigger (an exact name before the longest wildcard), where egressd
//! lets a mesh-wide deny win over any allow; so an allow that a mesh deny covers is left out, and
//! exact denies are listed. What RPZ cannot say is a warning: per-service answers (RPZ has no
//! notion of egressd's sources), SOA/NS of an allowed name's zone, and allows that expire.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::policy::fqdn::HostPattern;
use crate::policy::{Action, CompiledPolicy, RuleInfo};

pub const DEFAULT_ZONE: &str = "rpz.egressd.";

/// Reverse zones of the private ranges egressd sends upstream (README "DNS firewall").
const PRIVATE_REVERSE: &[&str] = &[
    "*.10.in-addr.arpa",
    "*.127.in-addr.arpa",
    "*.168.192.in-addr.arpa",
    "*.254.169.in-addr.arpa",
    "*.d.f.ip6.arpa",
    "*.c.f.ip6.arpa",
    "*.8.e.f.ip6.arpa",
    "*.9.e.f.ip6.arpa",
    "*.a.e.f.ip6.arpa",
    "*.b.e.f.ip6.arpa",
];

/// A zone file and the warnings about what it cannot express.
#[derive(Debug, Clone)]
pub struct Rpz {
    pub zone: String,
    pub text: String,
    pub warnings: Vec<String>,
}

/// The policy as an RPZ named `zone` (a trailing dot is added). `now` (unix seconds) leaves out
/// allows that have expired.
pub fn rpz(policy: &CompiledPolicy, zone: &str, now: i64) -> Rpz {
    let zone = if zone.ends_with('.') { zone.to_string() } else { format!("{zone}.") };
    let mut warnings = Vec::new();
    // Owner name -> (action text, the rule it came from); BTreeMap: a stable, sorted file.
    let mut entries: BTreeMap<String, (&'static str, String)> = BTreeMap::new();
    for rule in &policy.rules {
        let Some(host) = &rule.host else { continue };
        let owner = host.to_string();
        match rule.action {
            Action::Deny if rule.service.is_none() => {
                if rule.ports.is_none() && rule.protocols.is_empty() {
                    entries.insert(owner, ("CNAME .", describe(rule)));
                }
            }
            Action::Deny => {}
            Action::Allow => {
                if let Some(note) = allow_left_out(policy, rule, host, now) {
                    warnings.push(format!("{}: {} ({}) is not exported: {note}", rule.loc, owner, rule.id));
                    continue;
                }
                if let Some(expires) = &rule.expires {
                    warnings.push(format!("{}: {owner} expires {expires}: export again after that day", rule.loc));
                }
                entries.entry(owner).or_insert(("CNAME rpz-passthru.", describe(rule)));
            }
        }
    }
    if policy.services.iter().any(|s| s.deny_rules > 0) || policy.dns.as_ref().is_some_and(|d| !d.sources.is_empty()) {
        warnings.push(
            "per-service answers (DnsFirewall sources, service denies) are not in the zone: it answers every client as egressd answers an unmapped one".into(),
        );
    }
    warnings.push("SOA/NS queries of an allowed name's zone get NXDOMAIN from the zone (egressd allows them)".into());
    // 172.16.0.0/12 and 100.64.0.0/10 do not end on an octet boundary: one owner per /16.
    let split =
        (16..32).map(|b| format!("*.{b}.172.in-addr.arpa")).chain((64..128).map(|b| format!("*.{b}.100.in-addr.arpa")));
    for owner in PRIVATE_REVERSE.iter().map(|o| o.to_string()).chain(split) {
        entries.insert(owner, ("CNAME rpz-passthru.", "private reverse names go upstream".into()));
    }
    close_the_tree(&mut entries);
    Rpz { text: zone_text(policy, &zone, &entries), zone, warnings }
}

/// Why an allow stays out of the zone, if it does.
fn allow_left_out(policy: &CompiledPolicy, rule: &RuleInfo, host: &HostPattern, now: i64) -> Option<String> {
    if policy.matcher.constraints[rule.index].expires_at <= now {
        return Some("it has expired".into());
    }
    // A name under the pattern that a mesh deny blocks: for an exact allow the name itself, for a
    // wildcard any name below its anchor (a deny at or above the anchor covers them all).
    let probe = match host {
        HostPattern::Exact(name) => name.clone(),
        HostPattern::Wildcard(anchor) => format!("egressd-probe.{anchor}"),
    };
    let deny = policy.mesh_denied_name(&probe, now)?;
    Some(format!("the mesh-wide deny {} ({}) covers it", deny.id, deny.loc))
}

fn describe(rule: &RuleInfo) -> String {
    format!("{} {}", rule.id, rule.loc)
}

/// RPZ triggers follow DNS wildcard rules (RFC 4592): `*` applies only where no name of the zone
/// encloses the query closer. `allowed.test` makes `test` such a name, so `blocked.test` would
/// match nothing and pass. Every name in the zone's tree, and each name's `*.` child, therefore
/// gets an entry of its own: the default deny unless the policy says otherwise.
fn close_the_tree(entries: &mut BTreeMap<String, (&'static str, String)>) {
    let mut names: Vec<String> = Vec::new();
    for owner in entries.keys() {
        let mut name = owner.strip_prefix("*.").unwrap_or(owner);
        loop {
            names.push(name.to_string());
            match name.split_once('.') {
                Some((_, parent)) => name = parent,
                None => break,
            }
        }
    }
    for name in names {
        for owner in [format!("*.{name}"), name] {
            entries.entry(owner).or_insert(("CNAME .", "default deny".into()));
        }
    }
}

fn zone_text(policy: &CompiledPolicy, zone: &str, entries: &BTreeMap<String, (&'static str, String)>) -> String {
    let mut out = String::new();
    // A serial from the version's hash, so a changed policy is a changed zone to secondaries.
    let hash = policy.version.rsplit(':').next().unwrap_or_default();
    let serial = u32::from_str_radix(hash.get(..7).unwrap_or("1"), 16).unwrap_or(1);
    let _ = writeln!(out, "; egressd export rpz: policy {} ({})", policy.version, policy.origin);
    let _ = writeln!(out, "; allowed names pass (rpz-passthru.), everything else is NXDOMAIN (CNAME .)");
    let _ = writeln!(out, "$ORIGIN {zone}");
    let _ = writeln!(out, "$TTL 60");
    let _ = writeln!(out, "@ IN SOA localhost. hostmaster.localhost. {serial} 3600 600 86400 60");
    let _ = writeln!(out, "@ IN NS localhost.");
    for (owner, (action, from)) in entries {
        let _ = writeln!(out, "{owner} {action} ; {from}");
    }
    let _ = writeln!(out, "* CNAME . ; default deny");
    out
}
