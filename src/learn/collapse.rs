//! Which patterns cover a set of observed destinations: exact names and single addresses by
//! default; a wildcard or a /24 only over enough siblings, and never a wildcard over names that
//! other parties own (public suffixes, multi-tenant suffixes, a registrable domain's apex).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;

use super::multi_tenant::is_multi_tenant;
use crate::policy::fqdn::{HostPattern, is_public_suffix};

/// Whether `*.parent` may be proposed. `parent` must be strictly below its registrable domain
/// (`*.api.example.com` yes, `*.example.com` no: the apex wildcard is the whole organisation's
/// namespace, far more than a service's siblings show), must not be a public suffix (`co.uk`) and
/// must not be at or under a multi-tenant suffix, where siblings are other people's names.
pub fn may_wildcard(parent: &str) -> bool {
    let Some(registrable) = psl::domain_str(parent) else {
        return false; // a public suffix itself, or not a name the list can place
    };
    let strictly_below = parent.strip_suffix(registrable).is_some_and(|head| head.len() > 1 && head.ends_with('.'));
    strictly_below
        && !is_public_suffix(parent)
        && !is_multi_tenant(parent)
        && HostPattern::parse(&format!("*.{parent}")).is_ok()
}

/// Covers `names` (canonical, distinct) with patterns: the deepest parent allowed by
/// `may_wildcard` that has at least `min_siblings` remaining names strictly under it becomes
/// `*.parent`, then the next deepest, and so on; every name left over is exact. Deepest first,
/// because a narrower wildcard is the smaller grant. Returns each pattern with the names it
/// stands for, sorted by pattern.
///
/// One pass over the parents, deepest first, is the same as picking the deepest eligible parent
/// again after every collapse: a collapse only removes names from its ancestors' counts (a name
/// has one parent per depth), and every deeper parent was already found wanting.
pub fn collapse_names(names: &BTreeSet<String>, min_siblings: usize) -> Vec<(HostPattern, Vec<String>)> {
    let mut under: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for name in names {
        for parent in parents(name) {
            under.entry(parent).or_default().push(name);
        }
    }
    let mut by_depth: Vec<&str> = under.keys().copied().collect();
    by_depth.sort_by_key(|parent| std::cmp::Reverse(label_count(parent))); // stable: by name within a depth
    let mut taken: BTreeSet<&str> = BTreeSet::new();
    let mut out = Vec::new();
    for parent in by_depth {
        let members: Vec<&str> = under[parent].iter().copied().filter(|n| !taken.contains(n)).collect();
        if members.len() >= min_siblings && may_wildcard(parent) {
            taken.extend(&members);
            out.push((HostPattern::Wildcard(parent.to_string()), members.iter().map(|m| m.to_string()).collect()));
        }
    }
    out.extend(
        names.iter().filter(|n| !taken.contains(n.as_str())).map(|n| (HostPattern::Exact(n.clone()), vec![n.clone()])),
    );
    out.sort_by_cached_key(|(pattern, _)| pattern.to_string());
    out
}

/// Every proper suffix of `name` at a label boundary: `a.b.c` -> `b.c`, `c`.
fn parents(name: &str) -> impl Iterator<Item = &str> {
    name.match_indices('.').map(move |(i, _)| &name[i + 1..])
}

fn label_count(name: &str) -> usize {
    name.split('.').count()
}

/// What kind of address a flow went to, as far as learning is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// RFC 1918, CGNAT (100.64.0.0/10) or IPv6 ULA (fc00::/7): the mesh's own networks, which
    /// have no DNS name to allow instead; proposed as CIDRs.
    Private,
    /// Loopback, link-local, unspecified, broadcast or multicast: never a destination an egress
    /// gateway should send traffic to on a service's behalf.
    Local,
    /// Anything else: someone else's address, which may serve a different party tomorrow.
    Public,
}

/// Classifies `ip` in its canonical form (IPv4 inside IPv6 is IPv4, as the Check path sees it).
pub fn classify(ip: IpAddr) -> AddressClass {
    match crate::policy::addr::canonical(ip) {
        IpAddr::V4(v4) => {
            let [a, b, ..] = v4.octets();
            if v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.is_broadcast() || v4.is_multicast() {
                AddressClass::Local
            } else if v4.is_private() || (a == 100 && (64..128).contains(&b)) {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
        IpAddr::V6(v6) => {
            let first = v6.segments()[0];
            if v6.is_loopback() || v6.is_unspecified() || v6.is_multicast() || (first & 0xffc0) == 0xfe80 {
                AddressClass::Local
            } else if (first & 0xfe00) == 0xfc00 {
                AddressClass::Private
            } else {
                AddressClass::Public
            }
        }
    }
}

/// Covers `addrs` (canonical, distinct) with CIDRs: a /24 (IPv4) or /64 (IPv6) when at least
/// `min_siblings` of the addresses are in it, each address alone (/32, /128) otherwise. Returns
/// each CIDR with the addresses it stands for, sorted by network.
pub fn collapse_addresses(addrs: &BTreeSet<IpAddr>, min_siblings: usize) -> Vec<(IpNet, Vec<IpAddr>)> {
    let mut by_subnet: BTreeMap<IpNet, Vec<IpAddr>> = BTreeMap::new();
    for &ip in addrs {
        by_subnet.entry(subnet_of(ip)).or_default().push(ip);
    }
    let mut out = Vec::new();
    for (subnet, members) in by_subnet {
        if members.len() >= min_siblings {
            out.push((subnet, members));
        } else {
            out.extend(members.into_iter().map(|ip| (IpNet::from(ip), vec![ip])));
        }
    }
    out.sort_by_key(|(net, _)| *net);
    out
}

/// The /24 or /64 that holds `ip`.
fn subnet_of(ip: IpAddr) -> IpNet {
    let len = if ip.is_ipv4() { 24 } else { 64 };
    IpNet::new(ip, len).expect("24 and 64 are valid prefix lengths").trunc()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn patterns(found: &[(HostPattern, Vec<String>)]) -> Vec<String> {
        found.iter().map(|(p, _)| p.to_string()).collect()
    }

    #[test]
    fn wildcards_only_strictly_below_a_registrable_domain_and_not_over_others_names() {
        assert!(may_wildcard("api.vendor.test"));
        assert!(may_wildcard("cdn.example.co.uk"));
        for refused in ["vendor.test", "example.com", "example.co.uk", "co.uk", "com", "github.io", "s3.amazonaws.com"]
        {
            assert!(!may_wildcard(refused), "{refused}");
        }
        // Under a multi-tenant suffix even a deep parent is someone else's.
        assert!(!may_wildcard("logs.s3.us-west-2.amazonaws.com"));
        assert!(!may_wildcard("docs.team.github.io"));
    }

    #[test]
    fn the_deepest_parent_with_enough_siblings_wins_and_the_rest_stay_exact() {
        let names = set(&[
            "a.eu.api.vendor.test",
            "b.eu.api.vendor.test",
            "c.eu.api.vendor.test",
            "x.api.vendor.test",
            "api.vendor.test",
        ]);
        let found = collapse_names(&names, 3);
        assert_eq!(patterns(&found), ["*.eu.api.vendor.test", "api.vendor.test", "x.api.vendor.test"]);
        assert_eq!(found[0].1.len(), 3);
        // With the threshold at 4, eu's three are not enough, but api's four (x and eu's) are; the
        // apex itself is never matched by its wildcard, so it stays exact.
        let found = collapse_names(&names, 4);
        assert_eq!(patterns(&found), ["*.api.vendor.test", "api.vendor.test"]);
    }

    #[test]
    fn addresses() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(classify(ip("10.1.2.3")), AddressClass::Private);
        assert_eq!(classify(ip("172.16.0.1")), AddressClass::Private);
        assert_eq!(classify(ip("192.168.1.1")), AddressClass::Private);
        assert_eq!(classify(ip("100.64.0.1")), AddressClass::Private);
        assert_eq!(classify(ip("100.128.0.1")), AddressClass::Public);
        assert_eq!(classify(ip("fd12::1")), AddressClass::Private);
        assert_eq!(classify(ip("::ffff:10.0.0.1")), AddressClass::Private);
        for local in ["127.0.0.1", "169.254.169.254", "::1", "fe80::1", "0.0.0.0", "224.0.0.1"] {
            assert_eq!(classify(ip(local)), AddressClass::Local, "{local}");
        }
        assert_eq!(classify(ip("8.8.8.8")), AddressClass::Public);
        assert_eq!(classify(ip("2001:4860::8888")), AddressClass::Public);

        let addrs: BTreeSet<IpAddr> =
            ["10.9.9.1", "10.9.9.2", "10.9.9.3", "10.1.2.3", "fd00::1"].iter().map(|s| ip(s)).collect();
        let found: Vec<String> = collapse_addresses(&addrs, 3).iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(found, ["10.1.2.3/32", "10.9.9.0/24", "fd00::1/128"]);
        let found: Vec<String> = collapse_addresses(&addrs, 4).iter().map(|(n, _)| n.to_string()).collect();
        assert_eq!(found, ["10.1.2.3/32", "10.9.9.1/32", "10.9.9.2/32", "10.9.9.3/32", "fd00::1/128"]);
    }
}
