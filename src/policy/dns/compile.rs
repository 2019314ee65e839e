//! `kind: DnsFirewall` -> `DnsFirewallSpec`: addresses, limits and `sources` checked, each problem
//! at FILE:LINE:COL; then the matcher tables the decision reads (the mesh-wide union of host
//! allows, and the zones of every allow table).

use std::net::SocketAddr;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::sources::SourceMap;
use super::spec::{BlockedAnswer, DnsCacheLimits, DnsFirewallSpec, DnsRateLimit, defaults};
use crate::policy::compiled::ServiceInfo;
use crate::policy::diagnostic::{Diagnostics, SourceLoc};
use crate::policy::load::Located;
use crate::policy::matcher::Matcher;
use crate::policy::model::{DnsFirewallDoc, DnsSourceDoc};

/// The policy's DnsFirewall (at most one), compiled against its services.
pub fn compile_dns_firewall(
    docs: Vec<Located<DnsFirewallDoc>>,
    services: &[ServiceInfo],
    matcher: &mut Matcher,
    diags: &mut Diagnostics,
) -> Option<DnsFirewallSpec> {
    let mut docs = docs.into_iter();
    let first = docs.next()?;
    for extra in docs {
        diags.error(
            extra.loc,
            format!("a second DnsFirewall document (the first is at {}): egressd serves one", first.loc),
        );
    }
    let (file, d) = (&first.file, &first.doc);
    let name = d.name.value.trim().to_string();
    if name.is_empty() {
        diags.error(SourceLoc::of(file, &d.name), "a DnsFirewall needs a name");
    }
    let listen = address(file, &d.listen, "listen", diags);
    if d.upstreams.is_empty() {
        diags.error(
            first.loc.clone(),
            "a DnsFirewall needs at least one upstream (IP:PORT) to forward allowed names to",
        );
    }
    let upstreams: Vec<SocketAddr> = d.upstreams.iter().filter_map(|u| address(file, u, "upstream", diags)).collect();
    let blocked = match d.blocked.as_ref().map(|b| (b, b.value.trim().to_ascii_lowercase())) {
        None => BlockedAnswer::Nxdomain,
        Some((_, v)) if v == "nxdomain" => BlockedAnswer::Nxdomain,
        Some((_, v)) if v == "refused" => BlockedAnswer::Refused,
        Some((b, _)) => {
            diags.error(SourceLoc::of(file, b), format!("blocked `{}`: expected nxdomain or refused", b.value));
            BlockedAnswer::Nxdomain
        }
    };
    let mut num = |v: Option<&Spanned<i64>>, default: u64, max: u64, what: &str| match v {
        None => default,
        Some(s) if s.value > 0 && s.value as u64 <= max => s.value as u64,
        Some(s) => {
            diags.error(SourceLoc::of(file, s), format!("{what} {} is outside 1..={max}", s.value));
            default
        }
    };
    let timeout_ms = num(d.timeout_ms.as_ref(), defaults::TIMEOUT_MS, 30_000, "timeoutMs");
    let attempts = num(d.attempts.as_ref(), defaults::ATTEMPTS.into(), 10, "attempts") as u32;
    let c = d.cache.as_ref();
    let cache = DnsCacheLimits {
        max_entries: num(
            c.and_then(|c| c.max_entries.as_ref()),
            defaults::CACHE_MAX_ENTRIES as u64,
            10_000_000,
            "cache.maxEntries",
        ) as usize,
        max_ttl_seconds: num(
            c.and_then(|c| c.max_ttl_seconds.as_ref()),
            defaults::CACHE_MAX_TTL_SECONDS.into(),
            604_800,
            "cache.maxTtlSeconds",
        ) as u32,
        negative_ttl_seconds: num(
            c.and_then(|c| c.negative_ttl_seconds.as_ref()),
            defaults::NEGATIVE_TTL_SECONDS.into(),
            86_400,
            "cache.negativeTtlSeconds",
        ) as u32,
    };
    let r = d.rate_limit.as_ref();
    let rate_limit = DnsRateLimit {
        queries_per_second: num(
            r.and_then(|r| r.queries_per_second.as_ref()),
            defaults::QUERIES_PER_SECOND.into(),
            1_000_000,
            "rateLimit.queriesPerSecond",
        ) as u32,
        burst: num(r.and_then(|r| r.burst.as_ref()), defaults::BURST.into(), 10_000_000, "rateLimit.burst") as u32,
        clients: num(
            r.and_then(|r| r.clients.as_ref()),
            defaults::RATE_LIMIT_CLIENTS as u64,
            10_000_000,
            "rateLimit.clients",
        ) as usize,
    };
    let sources = source_map(file, &d.sources, services, diags);

    let mut allow_tables: Vec<_> = services.iter().map(|s| s.allow_table).collect();
    let union_table = matcher.union_of_hosts(&allow_tables);
    allow_tables.push(union_table);
    matcher.index_zones(&allow_tables);
    Some(DnsFirewallSpec {
        name,
        listen: listen?,
        upstreams,
        timeout_ms,
        attempts,
        blocked,
        cache,
        rate_limit,
        sources,
        union_table,
        loc: first.loc.clone(),
    })
}

fn address(file: &Arc<str>, v: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<SocketAddr> {
    match v.value.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Some(a),
        _ => {
            diags.error(SourceLoc::of(file, v), format!("{what} `{}` is not IP:PORT (e.g. 10.0.0.2:53)", v.value));
            None
        }
    }
}

fn source_map(
    file: &Arc<str>,
    sources: &[Spanned<DnsSourceDoc>],
    services: &[ServiceInfo],
    diags: &mut Diagnostics,
) -> SourceMap {
    let mut map = SourceMap::default();
    for source in sources {
        let s = &source.value;
        let service_name = s.service.value.trim();
        let Some(service) = services.iter().find(|svc| svc.name == service_name) else {
            let mut known: Vec<&str> = services.iter().map(|s| s.name.as_str()).collect();
            known.sort_unstable();
            diags.error(
                SourceLoc::of(file, &s.service),
                format!("unknown service `{service_name}` (services: {})", known.join(", ")),
            );
            continue;
        };
        let raw = s.cidr.value.trim();
        let net = match raw.parse::<IpNet>().or_else(|_| raw.parse::<std::net::IpAddr>().map(IpNet::from)) {
            Ok(net) if net.trunc() == net => net,
            Ok(net) => {
                diags.error(
                    SourceLoc::of(file, &s.cidr),
                    format!("CIDR `{raw}` has host bits set: did you mean {}?", net.trunc()),
                );
                continue;
            }
            Err(_) => {
                diags.error(
                    SourceLoc::of(file, &s.cidr),
                    format!("invalid CIDR `{raw}`: expected ADDRESS/PREFIX such as 10.30.0.0/16"),
                );
                continue;
            }
        };
        if let Err(owner) = map.insert(net, service.index) {
            diags.error(
                SourceLoc::of(file, &s.cidr),
                format!("source `{net}` is already mapped to service `{}`", services[owner.get()].name),
            );
        }
    }
    map
}
