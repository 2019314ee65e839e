//! The DNS decision, rule by rule (README "DNS firewall"), and DnsFirewall validation.

use std::net::IpAddr;

use crate::policy::dns::{DnsReason, QueryKind};
use crate::policy::{CompiledPolicy, Outcome, PolicySource, compile};

const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
unclaimedIdentities: deny
deny:
  - host: pastebin.com
  - host: smtp.example.com
    ports: [25]
  - ports: [22]
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    justification: cards
  - host: "*.pythonhosted.org"
    justification: packages
  - host: smtp.example.com
    ports: [587]
    justification: mail
  - cidr: 10.20.0.0/16
    justification: ledger
deny:
  - host: uploads.stripe.com
---
kind: ServicePolicy
service: search
identities: [spiffe://corp.example/ns/search/sa/api]
mode: dry-run
allow:
  - host: api.partner.test
    justification: partner
  - host: old.partner.test
    justification: gone
    expires: 2020-01-01
---
kind: DnsFirewall
name: mesh-dns
listen: 127.0.0.1:15053
upstreams: [10.0.0.2:53]
sources:
  - cidr: 10.1.0.0/16
    service: payments
  - cidr: 10.2.0.0/16
    service: search
"#;

const NOW: i64 = 1_800_000_000;

fn policy(text: &str) -> CompiledPolicy {
    compile(&PolicySource::from_text("dns.yaml", text), NOW).unwrap_or_else(|e| panic!("{e:?}"))
}

fn errors(text: &str) -> Vec<String> {
    match compile(&PolicySource::from_text("dns.yaml", text), NOW) {
        Ok(_) => panic!("the policy should be invalid"),
        Err(diags) => diags.iter().map(|d| d.to_string()).collect(),
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

const PAYMENTS: &str = "10.1.0.7";
const SEARCH: &str = "10.2.0.7";
const UNMAPPED: &str = "10.9.0.7";

fn decide(p: &CompiledPolicy, client: &str, name: &str, kind: QueryKind) -> (Outcome, DnsReason, Option<String>) {
    let d = p.decide_dns(ip(client), name, kind, NOW);
    (d.outcome, d.reason, d.rule.map(|r| r.id.clone()))
}

#[test]
fn a_mapped_service_resolves_its_own_allows_only() {
    let p = policy(POLICY);
    assert_eq!(
        decide(&p, PAYMENTS, "api.stripe.com", QueryKind::Name),
        (Outcome::Allow, DnsReason::Allowed, Some("payments/allow/0".into()))
    );
    assert_eq!(decide(&p, PAYMENTS, "api.partner.test", QueryKind::Name).0, Outcome::Deny, "search's allow");
    let d = p.decide_dns(ip(PAYMENTS), "api.stripe.com", QueryKind::Name, NOW);
    assert_eq!(d.service.map(|s| s.name.as_str()), Some("payments"));
}

#[test]
fn wildcards_admit_subdomains_not_the_apex() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, PAYMENTS, "files.pythonhosted.org", QueryKind::Name).0, Outcome::Allow);
    assert_eq!(decide(&p, PAYMENTS, "a.b.pythonhosted.org", QueryKind::Name).0, Outcome::Allow);
    assert_eq!(decide(&p, PAYMENTS, "pythonhosted.org", QueryKind::Name).0, Outcome::Deny);
}

#[test]
fn mesh_host_denies_never_resolve_in_any_mode_for_any_client() {
    let p = policy(POLICY);
    for client in [PAYMENTS, SEARCH, UNMAPPED] {
        assert_eq!(
            decide(&p, client, "pastebin.com", QueryKind::Name),
            (Outcome::Deny, DnsReason::MeshDeny, Some("mesh/deny/0".into())),
            "{client}"
        );
    }
}

#[test]
fn a_deny_limited_to_ports_does_not_block_the_name_and_a_port_limited_allow_admits_it() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, PAYMENTS, "smtp.example.com", QueryKind::Name).1, DnsReason::Allowed);
}

#[test]
fn service_host_denies_apply_to_the_mapped_service() {
    let p = policy(POLICY);
    assert_eq!(
        decide(&p, PAYMENTS, "uploads.stripe.com", QueryKind::Name),
        (Outcome::Deny, DnsReason::ServiceDeny, Some("payments/deny/0".into()))
    );
}

#[test]
fn cidr_allows_do_not_make_names_resolvable() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, PAYMENTS, "ledger.internal", QueryKind::Name).1, DnsReason::NoMatchingAllow);
    // ... nor a reverse name of their range that is public.
    assert_eq!(decide(&p, PAYMENTS, "8.8.8.8.in-addr.arpa", QueryKind::Ptr).0, Outcome::Deny);
}

#[test]
fn unmapped_clients_resolve_the_mesh_wide_union_of_allows() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, UNMAPPED, "api.stripe.com", QueryKind::Name).0, Outcome::Allow);
    assert_eq!(
        decide(&p, UNMAPPED, "api.partner.test", QueryKind::Name),
        (Outcome::Allow, DnsReason::Allowed, Some("search/allow/0".into()))
    );
    assert_eq!(decide(&p, UNMAPPED, "exfil.attacker.example", QueryKind::Name).0, Outcome::Deny);
    // A service's deny is that service's: the union does not hold it.
    assert_eq!(decide(&p, UNMAPPED, "uploads.stripe.com", QueryKind::Name).0, Outcome::Deny, "no allow either");
}

#[test]
fn dry_run_resolves_everything_as_would_deny_but_not_past_the_floor() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, SEARCH, "api.partner.test", QueryKind::Name).0, Outcome::Allow);
    assert_eq!(
        decide(&p, SEARCH, "tunnel.attacker.example", QueryKind::Name),
        (Outcome::WouldDeny, DnsReason::NoMatchingAllow, None)
    );
    assert_eq!(decide(&p, SEARCH, "pastebin.com", QueryKind::Name).0, Outcome::Deny);
}

#[test]
fn expired_allows_do_not_resolve() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, SEARCH, "old.partner.test", QueryKind::Name).0, Outcome::WouldDeny);
    assert_eq!(decide(&p, UNMAPPED, "old.partner.test", QueryKind::Name).0, Outcome::Deny);
}

#[test]
fn unclaimed_observe_makes_unmapped_clients_would_deny() {
    let p = policy(&POLICY.replace("unclaimedIdentities: deny", "unclaimedIdentities: observe"));
    assert_eq!(decide(&p, UNMAPPED, "exfil.attacker.example", QueryKind::Name).0, Outcome::WouldDeny);
    assert_eq!(decide(&p, UNMAPPED, "pastebin.com", QueryKind::Name).0, Outcome::Deny);
    assert_eq!(decide(&p, PAYMENTS, "exfil.attacker.example", QueryKind::Name).0, Outcome::Deny, "mapped: enforced");
}

#[test]
fn private_ptr_goes_upstream_public_ptr_follows_the_name_rule() {
    let p = policy(POLICY);
    for name in [
        "7.0.1.10.in-addr.arpa",
        "1.0.0.127.in-addr.arpa",
        "1.1.168.192.in-addr.arpa",
        "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa",
    ] {
        assert_eq!(decide(&p, PAYMENTS, name, QueryKind::Ptr).1, DnsReason::PrivatePtr, "{name}");
    }
    assert_eq!(
        decide(&p, PAYMENTS, "7.0.1.10.in-addr.arpa", QueryKind::Name).0,
        Outcome::Deny,
        "TXT of it: the name rule"
    );
    assert_eq!(decide(&p, PAYMENTS, "1.0.10.in-addr.arpa", QueryKind::Ptr).0, Outcome::Deny, "partial");
    assert_eq!(decide(&p, PAYMENTS, "a.0.1.10.in-addr.arpa", QueryKind::Ptr).0, Outcome::Deny, "not an address");
}

#[test]
fn soa_and_ns_of_an_allowed_names_zone_are_allowed() {
    let p = policy(POLICY);
    assert_eq!(decide(&p, PAYMENTS, "stripe.com", QueryKind::Zone).1, DnsReason::ZoneOfAllowed);
    assert_eq!(decide(&p, PAYMENTS, "com", QueryKind::Zone).1, DnsReason::ZoneOfAllowed);
    assert_eq!(decide(&p, PAYMENTS, "pythonhosted.org", QueryKind::Zone).1, DnsReason::ZoneOfAllowed);
    assert_eq!(decide(&p, PAYMENTS, "stripe.com", QueryKind::Name).0, Outcome::Deny, "A of the zone: name rule");
    assert_eq!(decide(&p, PAYMENTS, "partner.test", QueryKind::Zone).0, Outcome::Deny, "another service's zone");
    assert_eq!(decide(&p, UNMAPPED, "partner.test", QueryKind::Zone).0, Outcome::Allow, "union");
    assert_eq!(decide(&p, PAYMENTS, "x.stripe.com", QueryKind::Zone).0, Outcome::Deny, "below, not above");
}

/// The order README "What a query gets" gives infrastructure queries: a mesh-wide deny is the floor
/// (a private PTR or a zone of an allowed name does not get past it), then the service's own
/// denies, then the private-PTR and zone-of-allowed allowances.
#[test]
fn infrastructure_queries_give_way_to_mesh_and_service_denies() {
    let p = policy(
        &POLICY
            .replace(
                "  - host: pastebin.com\n",
                "  - host: pastebin.com\n  - host: 9.0.0.127.in-addr.arpa\n  - host: \"*.168.192.in-addr.arpa\"\n  - host: stripe.com\n",
            )
            .replace("  - host: uploads.stripe.com\n", "  - host: uploads.stripe.com\n  - host: 7.0.1.10.in-addr.arpa\n"),
    );
    for client in [PAYMENTS, SEARCH, UNMAPPED] {
        assert_eq!(
            decide(&p, client, "9.0.0.127.in-addr.arpa", QueryKind::Ptr),
            (Outcome::Deny, DnsReason::MeshDeny, Some("mesh/deny/1".into())),
            "a private PTR under a mesh deny, from {client} (dry-run too)"
        );
        assert_eq!(decide(&p, client, "1.1.168.192.in-addr.arpa", QueryKind::Ptr).1, DnsReason::MeshDeny, "{client}");
        assert_eq!(decide(&p, client, "1.0.0.127.in-addr.arpa", QueryKind::Ptr).1, DnsReason::PrivatePtr, "{client}");
    }
    // SOA/NS of a zone of an allowed name, itself denied mesh-wide: the floor wins.
    assert_eq!(
        decide(&p, PAYMENTS, "stripe.com", QueryKind::Zone),
        (Outcome::Deny, DnsReason::MeshDeny, Some("mesh/deny/3".into()))
    );
    assert_eq!(decide(&p, PAYMENTS, "com", QueryKind::Zone).1, DnsReason::ZoneOfAllowed, "its parent is not denied");
    assert_eq!(decide(&p, PAYMENTS, "api.stripe.com", QueryKind::Name).1, DnsReason::Allowed, "an exact deny");
    // The service's own deny of a private reverse name holds for it, not for others.
    assert_eq!(
        decide(&p, PAYMENTS, "7.0.1.10.in-addr.arpa", QueryKind::Ptr),
        (Outcome::Deny, DnsReason::ServiceDeny, Some("payments/deny/1".into()))
    );
    assert_eq!(decide(&p, SEARCH, "7.0.1.10.in-addr.arpa", QueryKind::Ptr).1, DnsReason::PrivatePtr);
    assert_eq!(decide(&p, UNMAPPED, "7.0.1.10.in-addr.arpa", QueryKind::Ptr).1, DnsReason::PrivatePtr);
}

#[test]
fn longest_source_prefix_wins_and_mapped_ipv6_is_ipv4() {
    let text = POLICY.replace(
        "  - cidr: 10.2.0.0/16\n    service: search\n",
        "  - cidr: 10.2.0.0/16\n    service: search\n  - cidr: 10.1.5.0/24\n    service: search\n",
    );
    let p = policy(&text);
    assert_eq!(p.decide_dns(ip("10.1.5.1"), "x", QueryKind::Name, NOW).service.unwrap().name, "search");
    assert_eq!(p.decide_dns(ip("10.1.6.1"), "x", QueryKind::Name, NOW).service.unwrap().name, "payments");
    assert_eq!(p.decide_dns(ip("::ffff:10.1.6.1"), "x", QueryKind::Name, NOW).service.unwrap().name, "payments");
}

#[test]
fn a_policy_without_dns_firewall_denies_every_query() {
    let text = POLICY.split("---\nkind: DnsFirewall").next().unwrap();
    let p = policy(text);
    assert!(p.dns.is_none());
    assert_eq!(decide(&p, PAYMENTS, "api.stripe.com", QueryKind::Name).0, Outcome::Deny);
}

#[test]
fn check_decisions_are_unchanged_by_the_dns_tables() {
    // The same policy with and without a DnsFirewall decides every Check alike.
    let with = policy(POLICY);
    let without = policy(POLICY.split("---\nkind: DnsFirewall").next().unwrap());
    let dest = |host| crate::policy::Destination {
        host: crate::policy::fqdn::Host::Name(std::borrow::Cow::Borrowed(host)),
        port: 443,
        protocol: crate::policy::Protocol::Https,
    };
    for host in ["api.stripe.com", "uploads.stripe.com", "files.pythonhosted.org", "pastebin.com", "x.test"] {
        for principal in ["spiffe://corp.example/ns/payments/sa/api", "spiffe://corp.example/ns/search/sa/api"] {
            let d = dest(host);
            let a = with.decide(Some(principal), Ok(&d), None, NOW);
            let b = without.decide(Some(principal), Ok(&d), None, NOW);
            assert_eq!(
                (a.outcome, a.reason.code(), a.rule.map(|r| &r.id)),
                (b.outcome, b.reason.code(), b.rule.map(|r| &r.id))
            );
        }
    }
}

#[test]
fn a_malformed_dns_firewall_is_reported_at_its_location() {
    let bad = POLICY
        .replace("    service: search\n", "    service: nobody\n")
        .replace("listen: 127.0.0.1:15053", "listen: localhost")
        .replace("upstreams: [10.0.0.2:53]", "upstreams: [10.0.0.2:53]\nblocked: silently\ntimeoutMs: 0");
    let errs = errors(&bad);
    assert!(errs.iter().any(|e| e.starts_with("dns.yaml:40:9: listen `localhost` is not IP:PORT")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.starts_with("dns.yaml:42:10: blocked `silently`")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.starts_with("dns.yaml:43:12: timeoutMs 0")), "{errs:#?}");
    assert!(errs.iter().any(|e| e.starts_with("dns.yaml:48:14: unknown service `nobody`")), "{errs:#?}");
    let unknown_key = errors(&POLICY.replace("upstreams: [10.0.0.2:53]", "upstreams: [10.0.0.2:53]\nforwarders: []"));
    assert!(unknown_key.iter().any(|e| e.starts_with("dns.yaml:42:1: unknown field `forwarders`")), "{unknown_key:?}");
    let two =
        errors(&format!("{POLICY}---\nkind: DnsFirewall\nname: b\nlisten: 127.0.0.1:53\nupstreams: [10.0.0.2:53]\n"));
    assert!(two.iter().any(|e| e.contains("a second DnsFirewall document")), "{two:?}");
}

#[test]
fn the_gateway_resolves_through_the_firewall_unless_it_names_resolvers_or_opts_out() {
    let p = policy(POLICY);
    let dns = p.dns.as_ref();
    let local = crate::policy::GatewaySpec::local("10.0.0.5:18000".parse().unwrap());
    assert_eq!(local.clone().with_dns_firewall(dns).dns_resolvers, vec!["127.0.0.1:15053".parse().unwrap()]);
    let bound =
        crate::policy::GatewaySpec { dns_firewall_address: Some("0.0.0.0:5353".parse().unwrap()), ..local.clone() };
    assert_eq!(
        bound.with_dns_firewall(dns).dns_resolvers,
        vec!["10.0.0.5:5353".parse().unwrap()],
        "unspecified: egressd's IP"
    );
    let own = crate::policy::GatewaySpec { dns_resolvers: vec!["10.9.9.9:53".parse().unwrap()], ..local.clone() };
    assert_eq!(own.with_dns_firewall(dns).dns_resolvers, vec!["10.9.9.9:53".parse().unwrap()], "explicit wins");
    let out = crate::policy::GatewaySpec { use_dns_firewall: Some(false), ..local.clone() };
    assert!(out.with_dns_firewall(dns).dns_resolvers.is_empty(), "opted out");
    assert!(local.with_dns_firewall(None).dns_resolvers.is_empty(), "no firewall");
}
