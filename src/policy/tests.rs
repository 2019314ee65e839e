//! Semantics of the policy, one test per rule of the README's "Semantics" section, plus the
//! validation errors with their locations. gRPC-level coverage is in `integration/grpc_check.rs`.

use std::borrow::Cow;

use super::fqdn::Host;
use super::*;

pub(crate) const POLICY: &str = include_str!("../../integration/fixtures/semantics.yaml");

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const NOW: i64 = 1_800_000_000; // 2027-01-15

pub(crate) fn policy() -> CompiledPolicy {
    compile(&PolicySource::from_text("test.yaml", POLICY), NOW).unwrap_or_else(|d| panic!("{}", format_diagnostics(&d)))
}

fn dest(host: &str, port: u16, protocol: Protocol) -> Destination<'static> {
    let host = fqdn::parse_authority(host).unwrap().0.into_owned();
    Destination { host, port, protocol }
}

fn decide<'p>(p: &'p CompiledPolicy, from: &str, host: &str, port: u16, proto: Protocol) -> Decision<'p> {
    p.decide(Some(from), Ok(&dest(host, port, proto)), None, NOW)
}

fn outcome(p: &CompiledPolicy, from: &str, host: &str, port: u16, proto: Protocol) -> (Outcome, &'static str, String) {
    let d = decide(p, from, host, port, proto);
    (d.outcome, d.reason.code(), d.rule_id().to_string())
}

use Protocol::*;

#[test]
fn default_deny() {
    let p = policy();
    assert_eq!(outcome(&p, PAY, "evil.example.org", 443, Https), (Outcome::Deny, "no-matching-allow", String::new()));
}

#[test]
fn exact_host_allow_names_its_rule() {
    let p = policy();
    let d = decide(&p, PAY, "api.stripe.com", 443, Https);
    assert_eq!((d.outcome, d.rule_id()), (Outcome::Allow, "payments/allow/0"));
    assert_eq!(d.rule.unwrap().justification.as_deref(), Some("cards"));
    assert_eq!(d.rule.unwrap().loc.line, line_of("  - host: api.stripe.com"));
}

/// The line (1-based) of the fixture that starts with `text`: found, so an edit elsewhere in the
/// shared fixture does not break a test about locations.
fn line_of(text: &str) -> u32 {
    let index = POLICY.lines().position(|l| l.starts_with(text)).unwrap_or_else(|| panic!("`{text}` in the fixture"));
    index as u32 + 1
}

#[test]
fn hosts_are_case_insensitive_trailing_dot_and_idna() {
    let p = policy();
    assert_eq!(outcome(&p, PAY, "API.Stripe.COM.", 443, Https).0, Outcome::Allow);
    assert_eq!(outcome(&p, PAY, "BÜCHER.example", 443, Https).2, "payments/allow/2");
    assert_eq!(outcome(&p, PAY, "xn--bcher-kva.example", 443, Https).2, "payments/allow/2");
}

#[test]
fn wildcard_needs_a_label_and_most_specific_wins() {
    let p = policy();
    // api.stripe.com:80 misses the exact rule (port) but the wildcard allows any port.
    assert_eq!(outcome(&p, PAY, "api.stripe.com", 80, Http).2, "payments/allow/1");
    assert_eq!(outcome(&p, PAY, "a.b.stripe.com", 443, Https).2, "payments/allow/1");
    assert_eq!(outcome(&p, PAY, "stripe.com", 443, Https).1, "no-matching-allow");
    assert_eq!(outcome(&p, PAY, "notstripe.com", 443, Https).1, "no-matching-allow");
}

#[test]
fn ports_and_near_miss() {
    let p = policy();
    let d = decide(&p, PAY, "pypi.org", 80, Http);
    assert_eq!(d.reason, Reason::NoMatchingAllow);
    let (rule, miss) = d.near_miss.expect("pypi.org matched a rule on its host");
    assert_eq!((rule.id.as_str(), miss), ("payments/allow/3/mirrors/0", matcher::Miss::Port));
    assert_eq!(outcome(&p, PAY, "files.pythonhosted.org", 443, Https).2, "payments/allow/3/mirrors/1");
}

#[test]
fn group_justification_covers_its_destinations() {
    let p = policy();
    let d = decide(&p, PAY, "pypi.org", 443, Https);
    assert_eq!(d.rule.unwrap().justification.as_deref(), Some("package registries"));
    assert_eq!(d.rule.unwrap().group.as_deref(), Some("mirrors"));
}

#[test]
fn protocols_restrict_a_rule() {
    let p = policy();
    assert_eq!(outcome(&p, PAY, "tls-only.example.com", 443, Tls).0, Outcome::Allow);
    let d = decide(&p, PAY, "tls-only.example.com", 443, Https);
    assert_eq!((d.outcome, d.near_miss.map(|n| n.1)), (Outcome::Deny, Some(matcher::Miss::Protocol)));
}

#[test]
fn cidr_matches_ips_only_and_host_rules_never_match_ips() {
    let p = policy();
    assert_eq!(outcome(&p, PAY, "10.20.3.4", 5432, Tcp).2, "payments/allow/4");
    assert_eq!(outcome(&p, PAY, "10.21.0.1", 5432, Tcp).1, "no-matching-allow");
    assert_eq!(outcome(&p, PAY, "10.20.3.4", 80, Http).1, "no-matching-allow");
    // A name that resolves into the CIDR is still a name: CIDR rules do not see it.
    assert_eq!(outcome(&p, PAY, "ledger.internal.example", 5432, Tcp).1, "no-matching-allow");
}

#[test]
fn expired_allow_no_longer_matches() {
    let p = policy();
    let d = decide(&p, PAY, "old.example.com", 443, Https);
    assert_eq!((d.outcome, d.near_miss.map(|n| n.1)), (Outcome::Deny, Some(matcher::Miss::Expired)));
    // Before its date it matched.
    let d = p.decide(Some(PAY), Ok(&dest("old.example.com", 443, Https)), None, 1_500_000_000);
    assert_eq!(d.outcome, Outcome::Allow);
    let expires = line_of("    expires: 2020-01-01");
    assert!(p.warnings.iter().any(|w| w.message.contains("expired on 2020-01-01") && w.loc.line == expires));
}

#[test]
fn precedence_mesh_deny_then_service_deny_then_allow() {
    let p = policy();
    // uploads.stripe.com matches the *.stripe.com allow, but the service deny wins.
    assert_eq!(
        outcome(&p, PAY, "uploads.stripe.com", 443, Https),
        (Outcome::Deny, "service-deny", "payments/deny/0".into())
    );
    // blocked.example.com is denied mesh-wide and by the service: the mesh rule is named.
    assert_eq!(outcome(&p, PAY, "blocked.example.com", 443, Https), (Outcome::Deny, "mesh-deny", "mesh/deny/1".into()));
    // Port 22 to an allowed host: mesh deny on ports alone.
    assert_eq!(outcome(&p, PAY, "api.stripe.com", 22, Tcp), (Outcome::Deny, "mesh-deny", "mesh/deny/0".into()));
}

#[test]
fn identity_failures() {
    let p = policy();
    let d = p.decide(None, Ok(&dest("api.stripe.com", 443, Https)), None, NOW);
    assert_eq!((d.outcome, d.reason.code()), (Outcome::Deny, "unauthenticated"));
    assert_eq!(decide(&p, "payments", "api.stripe.com", 443, Https).reason.code(), "unauthenticated");
    assert_eq!(
        decide(&p, "spiffe://evil.example/ns/payments/sa/api", "api.stripe.com", 443, Https).reason.code(),
        "unauthenticated"
    );
    assert_eq!(
        decide(&p, "spiffe://corp.example/ns/nobody/sa/x", "api.stripe.com", 443, Https).reason.code(),
        "unknown-service"
    );
}

#[test]
fn prefix_identities_match_whole_segments() {
    let p = policy();
    assert_eq!(decide(&p, "spiffe://corp.example/ns/ci/sa/x", "github.com", 443, Https).service_name(), "ci");
    assert_eq!(
        decide(&p, "spiffe://corp.example/ns/cicd/sa/x", "github.com", 443, Https).reason.code(),
        "unknown-service"
    );
}

#[test]
fn dry_run_allows_and_records_would_deny_but_mesh_denies_hold() {
    let p = policy();
    let ci = "spiffe://corp.example/ns/ci/sa/x";
    assert_eq!(outcome(&p, ci, "evil.example.org", 443, Https).0, Outcome::WouldDeny);
    assert_eq!(outcome(&p, ci, "github.com", 443, Https).0, Outcome::Allow);
    assert_eq!(outcome(&p, ci, "github.com", 22, Tcp).0, Outcome::Deny);
}

#[test]
fn canary_is_stable_per_request_id_and_near_its_share() {
    let p = policy();
    let from = "spiffe://corp.example/ns/canary/sa/x";
    let d = dest("evil.example.org", 443, Https);
    let mut denied = 0;
    for i in 0..2000 {
        let id = format!("req-{i}");
        let first = p.decide(Some(from), Ok(&d), Some(&id), NOW).outcome;
        assert_eq!(first, p.decide(Some(from), Ok(&d), Some(&id), NOW).outcome, "same id, same outcome");
        assert_ne!(first, Outcome::Allow);
        denied += usize::from(first == Outcome::Deny);
    }
    assert!((480..=720).contains(&denied), "{denied}/2000 enforced at 30%");
    // Mesh denies are enforced whatever the bucket.
    assert!((0..200).all(|i| {
        let id = i.to_string();
        p.decide(Some(from), Ok(&dest("x.example.org", 22, Tcp)), Some(&id), NOW).outcome == Outcome::Deny
    }));
}

#[test]
fn malformed_destination_is_denied_with_reason() {
    let p = policy();
    let d = p.decide(Some(PAY), Err(Malformed::Host(fqdn::HostError::Userinfo)), None, NOW);
    assert_eq!((d.outcome, d.reason.code(), d.service_name()), (Outcome::Deny, "malformed-request", "payments"));
}

#[test]
fn ip_destination_is_not_a_name() {
    let p = policy();
    let d = Destination { host: Host::Name(Cow::Borrowed("10.20.3.4.example")), port: 5432, protocol: Tcp };
    assert_eq!(p.decide(Some(PAY), Ok(&d), None, NOW).reason.code(), "no-matching-allow");
}

// ---- validation: every error carries FILE:LINE:COL ----

fn errors(yaml: &str) -> Vec<String> {
    let text = format!("kind: MeshDefaults\ntrustDomain: corp.example\n---\n{yaml}");
    match compile(&PolicySource::from_text("v.yaml", &text), NOW) {
        Ok(_) => vec![],
        Err(d) => d.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect(),
    }
}

fn svc(rules: &str) -> String {
    format!("kind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\n{rules}")
}

fn assert_error(yaml: &str, expect_prefix: &str, expect_text: &str) {
    let errs = errors(yaml);
    assert!(
        errs.iter().any(|e| e.starts_with(expect_prefix) && e.contains(expect_text)),
        "expected `{expect_prefix}…{expect_text}…` in {errs:#?}"
    );
}

#[test]
fn validation_errors_are_located() {
    assert_error(
        &svc("allow:\n  - host: a.example.com\n    colour: red\n    justification: j\n"),
        "v.yaml:9:5:",
        "unknown field `colour`",
    );
    assert_error(&svc("allow:\n  - host: a.example.com\n"), "v.yaml:8:5:", "no justification");
    assert_error(&svc("allow:\n  - cidr: 10.0.0.0/8\n"), "v.yaml:8:5:", "no justification");
    assert_error(
        "kind: DestinationGroup\nname: g\ndestinations:\n  - host: a.example.com\n",
        "v.yaml:4:1:",
        "no justification",
    );
    assert_error(&svc("allow:\n  - group: nope\n"), "v.yaml:8:12:", "unknown group `nope`");
    assert_error(&svc("allow:\n  - cidr: 10.0.0.300/8\n    justification: j\n"), "v.yaml:8:11:", "invalid CIDR");
    assert_error(
        &svc("allow:\n  - host: a.example.com\n    ports: [70000]\n    justification: j\n"),
        "v.yaml:9:13:",
        "out of range",
    );
    assert_error(&svc("allow:\n  - host: a..example.com\n    justification: j\n"), "v.yaml:8:11:", "empty label");
    assert_error(&svc("allow:\n  - host: \"*\"\n    justification: j\n"), "v.yaml:8:11:", "bare '*'");
    assert_error(&svc("allow:\n  - host: \"*.co.uk\"\n    justification: j\n"), "v.yaml:8:11:", "public suffix");
    assert_error(&svc("mode: canary\ncanaryPercent: 101\n"), "v.yaml:8:16:", "outside 0..=100");
    assert_error(&format!("{}\n---\n{}", svc(""), svc("")), "v.yaml:", "service `s` is already defined at v.yaml:5:10");
    assert_error(
        "kind: ServicePolicy\nservice: a\nidentities: [spiffe://corp.example/ns/x/sa/y]\n---\nkind: ServicePolicy\nservice: b\nidentities: [spiffe://corp.example/ns/x/sa/y]\n",
        "v.yaml:10:14:",
        "already claimed by service `a`",
    );
    assert_error(
        "kind: ServicePolicy\nservice: a\nidentities: [spiffe://other.example/ns/x]\n",
        "v.yaml:6:14:",
        "trust domain `other.example`",
    );
    assert_error(
        &svc("allow:\n  - host: a.example.com\n    expires: tomorrow\n    justification: j\n"),
        "v.yaml:9:14:",
        "invalid expires",
    );
}

#[test]
fn every_error_is_reported_not_just_the_first() {
    let errs =
        errors(&svc("allow:\n  - host: a.example.com\n  - cidr: bad\n    justification: j\n  - group: missing\n"));
    assert_eq!(errs.len(), 3, "{errs:#?}");
}

#[test]
fn mesh_defaults_exactly_once() {
    let none = compile(&PolicySource::from_text("v.yaml", &svc("")), NOW).unwrap_err();
    assert!(none[0].message.contains("no MeshDefaults"), "{none:?}");
    let two = errors("kind: MeshDefaults\ntrustDomain: corp.example\n");
    assert!(two.iter().any(|e| e.starts_with("v.yaml:4:1:") && e.contains("second MeshDefaults")), "{two:?}");
}

#[test]
fn example_mesh_config_is_valid() {
    let p = compile(&PolicySource::embedded(), NOW).unwrap_or_else(|d| panic!("{}", format_diagnostics(&d)));
    assert!(p.services.len() >= 4);
    assert!(p.services.iter().any(|s| s.mode == Mode::DryRun));
    assert!(p.services.iter().any(|s| s.mode == Mode::Canary));
    assert!(!p.groups.is_empty() && p.mesh_deny_rules > 0);
}

#[test]
fn exact_principal_fast_path_agrees_with_parsing() {
    let p = policy();
    // Canonical form: found without parsing.
    assert_eq!(decide(&p, PAY, "api.stripe.com", 443, Https).service_name(), "payments");
    // Trust domains compare case-insensitively (SPIFFE): the parsing path finds the same service.
    assert_eq!(
        decide(&p, "spiffe://CORP.example/ns/payments/sa/api", "api.stripe.com", 443, Https).service_name(),
        "payments"
    );
    // Paths are case-sensitive.
    assert_eq!(
        decide(&p, "spiffe://corp.example/ns/Payments/sa/api", "api.stripe.com", 443, Https).reason.code(),
        "unknown-service"
    );
}

// ---- kind: Gateway ----

#[test]
fn an_authz_address_is_an_ip_or_a_dns_name_with_a_port() {
    use crate::policy::{AuthzAddress, parse_authz_address};
    assert_eq!(parse_authz_address("10.0.0.5:18000"), Ok(AuthzAddress::Ip("10.0.0.5:18000".parse().unwrap())));
    assert_eq!(parse_authz_address("[::1]:18000"), Ok(AuthzAddress::Ip("[::1]:18000".parse().unwrap())));
    let named = AuthzAddress::Name { host: "egressd.egressd.svc.cluster.local".into(), port: 18000 };
    assert_eq!(parse_authz_address(" Egressd.egressd.svc.cluster.local.:18000 "), Ok(named.clone()));
    assert_eq!(named.to_string(), "egressd.egressd.svc.cluster.local:18000");
    for bad in ["egressd", "egressd:0", "egressd:99999", "bad_name:1", "-x.example:1", "::1:18000", "a..b:1", ":18000"]
    {
        assert!(parse_authz_address(bad).is_err(), "{bad} must be refused");
    }
    let gateway = |address: &str| {
        format!("kind: Gateway\nname: x\nlisteners: {{http: 127.0.0.1:1}}\nauthz: {{address: \"{address}\"}}\n")
    };
    let p = compile(
        &PolicySource::from_text(
            "g.yaml",
            &format!("kind: MeshDefaults\ntrustDomain: corp.example\n---\n{}", gateway("egressd.svc:18000")),
        ),
        NOW,
    )
    .unwrap();
    assert_eq!(p.gateways[0].authz(), AuthzAddress::Name { host: "egressd.svc".into(), port: 18000 });
    assert_error(&gateway("egressd.svc"), "v.yaml:7:", "authz.address `egressd.svc` is not HOST:PORT (no `:PORT`");
    assert_error(&gateway("bad_name:1"), "v.yaml:7:", "is neither an IP address nor a DNS name");
}

#[test]
fn a_named_authz_address_cannot_lend_its_ip_to_a_firewall_listening_everywhere() {
    let with = |listen: &str, gateway_dns: &str| {
        errors(&format!(
            "kind: Gateway\nname: edge\nlisteners: {{http: 127.0.0.1:1}}\nauthz: {{address: egressd.svc:18000}}\n{gateway_dns}---\nkind: DnsFirewall\nname: d\nlisten: {listen}\nupstreams: [127.0.0.1:53]\n"
        ))
    };
    let errs = with("0.0.0.0:15053", "");
    assert!(
        errs.iter().any(|e| e.starts_with("v.yaml:4:1:")
            && e.contains("Gateway edge: authz.address names a host (egressd.svc)")
            && e.contains("set dns.resolvers")),
        "{errs:#?}"
    );
    assert!(with("10.0.0.9:15053", "").is_empty(), "a firewall on a named IP is reached there");
    assert!(with("0.0.0.0:15053", "dns: {resolvers: [10.0.0.9:15053]}\n").is_empty(), "explicit resolvers");
    assert!(with("0.0.0.0:15053", "dns: {useDnsFirewall: false}\n").is_empty(), "opted out");
}

#[test]
fn gateway_documents_compile_and_validate_with_locations() {
    let text = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: Gateway\nname: edge\nnodes: [egress-gateway]\nlisteners:\n  http: 127.0.0.1:10080\n  tls: 127.0.0.1:10443\ndns:\n  resolvers: [127.0.0.1:5353]\n";
    let p = compile(&PolicySource::from_text("g.yaml", text), NOW).unwrap();
    let g = &p.gateways[0];
    assert_eq!((g.name.as_str(), g.nodes.as_slice()), ("edge", &["egress-gateway".to_string()][..]));
    assert_eq!((g.tls_upstream_port, g.authz_timeout_ms, g.dns_host_ttl_ms), (443, 500, 300_000));
    assert_error("kind: Gateway\nname: x\nlisteners:\n  http: localhost\n", "v.yaml:7:9:", "is not IP:PORT");
    assert_error(
        "kind: Gateway\nname: x\nlisteners:\n  http: 127.0.0.1:1\n  tls: 127.0.0.1:1\n",
        "v.yaml:8:8:",
        "same address",
    );
    assert_error(
        "kind: Gateway\nname: x\nlisteners: {http: 127.0.0.1:1}\ntimeouts: {connectMs: 0}\n",
        "v.yaml:7:23:",
        "outside 1..=",
    );
    assert_error(
        "kind: Gateway\nname: x\nlisteners: {http: 127.0.0.1:1}\nport: 3\n",
        "v.yaml:7:1:",
        "unknown field `port`",
    );
    assert_error(
        "kind: Gateway\nname: x\nlisteners: {http: 127.0.0.1:1}\ntracing: {collector: nowhere}\n",
        "v.yaml:7:22:",
        "tracing.collector `nowhere` is not IP:PORT",
    );
    assert_error(
        "kind: Gateway\nname: x\nlisteners: {http: 127.0.0.1:1}\ntracing: {collector: 127.0.0.1:4317, samplingPercent: 101}\n",
        "v.yaml:7:55:",
        "samplingPercent 101 is outside 0..=100",
    );
    let traced = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: Gateway\nname: edge\nlisteners: {http: 127.0.0.1:1}\ntracing: {collector: 127.0.0.1:4317}\n";
    let t = compile(&PolicySource::from_text("g.yaml", traced), NOW).unwrap().gateways[0].tracing.clone().unwrap();
    assert_eq!((t.sampling_percent, t.service_name.as_str()), (100, "egress-gateway-edge"));
    let two_defaults = "kind: Gateway\nname: a\nlisteners: {http: 127.0.0.1:1}\n---\nkind: Gateway\nname: b\nlisteners: {http: 127.0.0.1:2}\n";
    assert!(errors(two_defaults).iter().any(|e| e.contains("second default Gateway")), "{:?}", errors(two_defaults));
    let node_twice = "kind: Gateway\nname: a\nnodes: [n]\nlisteners: {http: 127.0.0.1:1}\n---\nkind: Gateway\nname: b\nnodes: [n]\nlisteners: {http: 127.0.0.1:2}\n";
    assert!(errors(node_twice).iter().any(|e| e.contains("node `n` is already served by Gateway `a`")));
}

#[test]
fn a_gateways_access_log_to_egressd_is_on_by_default_and_can_be_tuned_or_turned_off() {
    let gateway = |extra: &str| {
        let text = format!(
            "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: Gateway\nname: edge\nlisteners: {{http: 127.0.0.1:1}}\n{extra}"
        );
        compile(&PolicySource::from_text("g.yaml", &text), NOW).unwrap().gateways[0].access_log
    };
    let on = gateway("");
    assert_eq!((on.grpc, on.progress_interval_ms), (true, 300_000));
    let tuned = gateway("accessLog: {progressSeconds: 60}\n");
    assert_eq!((tuned.grpc, tuned.progress_interval_ms), (true, 60_000));
    let ends_only = gateway("accessLog: {progressSeconds: 0}\n");
    assert_eq!(ends_only.progress_interval_ms, 0);
    assert!(!gateway("accessLog: {grpc: false}\n").grpc);
    assert_error(
        "kind: Gateway\nname: x\nlisteners: {http: 127.0.0.1:1}\naccessLog: {progressSeconds: -1}\n",
        "v.yaml:7:30:",
        "accessLog.progressSeconds -1 is outside 1..=86400",
    );
}

/// IPv6 policy CIDRs match the canonical (IPv4) form of the IPv4 addresses they hold.
#[test]
fn ipv6_cidrs_holding_ipv4_addresses_match_them_as_ipv4() {
    let text = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - cidr: ::ffff:10.30.0.0/120\n    justification: x\n---\nkind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\nallow:\n  - cidr: ::/0\n    justification: everything\n";
    let p = compile(&PolicySource::from_text("v6.yaml", text), NOW).unwrap();
    let s = "spiffe://corp.example/ns/s/sa/a";
    assert_eq!(outcome(&p, s, "10.30.0.7", 443, Tcp).1, "mesh-deny", "::ffff:10.30.0.0/120 is 10.30.0.0/24");
    assert_eq!(outcome(&p, s, "[::ffff:10.30.0.7]", 443, Tcp).1, "mesh-deny");
    assert_eq!(outcome(&p, s, "10.31.0.7", 443, Tcp).1, "allowed", "::/0 holds all mapped addresses");
    assert_eq!(outcome(&p, s, "[2001:db8::1]", 443, Tcp).1, "allowed");
    let warning = p.warnings.iter().map(|w| w.to_string()).find(|w| w.contains("::/0")).expect("a warning for ::/0");
    assert!(warning.contains("v6.yaml:11:11") && warning.contains("0.0.0.0/0"), "{warning}");
}

// ---- MeshDefaults unclaimedIdentities ----

const NOBODY: &str = "spiffe://corp.example/ns/nobody/sa/x";

/// The semantics fixture, with unclaimed callers observed.
fn observing() -> CompiledPolicy {
    let text = POLICY.replacen("mode: enforce\n", "mode: enforce\nunclaimedIdentities: observe\n", 1);
    assert_ne!(text, POLICY, "the fixture's MeshDefaults says `mode: enforce`");
    compile(&PolicySource::from_text("observe.yaml", &text), NOW)
        .unwrap_or_else(|d| panic!("{}", format_diagnostics(&d)))
}

#[test]
fn unclaimed_callers_are_denied_by_default() {
    let p = policy();
    assert_eq!(p.unclaimed_identities, UnclaimedIdentities::Deny);
    let d = decide(&p, NOBODY, "evil.example.org", 443, Https);
    assert_eq!((d.outcome, d.reason.code(), d.enforced, d.mode), (Outcome::Deny, "unknown-service", true, None));
    assert!(!d.observes_unclaimed());
}

#[test]
fn observed_unclaimed_callers_get_through_as_would_deny() {
    let p = observing();
    assert_eq!(p.unclaimed_identities, UnclaimedIdentities::Observe);
    let d = decide(&p, NOBODY, "evil.example.org", 443, Https);
    assert_eq!((d.outcome, &d.reason, d.enforced), (Outcome::WouldDeny, &Reason::UnknownService, false));
    assert!(d.outcome.permits());
    assert_eq!((d.service.is_none(), d.rule.is_none(), d.mode), (true, true, Some(Mode::DryRun)));
    assert!(d.observes_unclaimed());
    // The principal is parsed, not matched exactly: another spelling of the trust domain is observed too.
    assert_eq!(decide(&p, "spiffe://CORP.example/ns/nobody/sa/x", "a.example", 80, Http).outcome, Outcome::WouldDeny);
}

#[test]
fn observed_unclaimed_callers_are_held_by_mesh_denies() {
    let p = observing();
    let d = decide(&p, NOBODY, "api.stripe.com", 22, Tcp);
    assert_eq!(
        (d.outcome, d.reason.code(), d.rule_id(), d.enforced),
        (Outcome::Deny, "mesh-deny", "mesh/deny/0", true)
    );
    assert_eq!((d.service.is_none(), d.mode), (true, Some(Mode::DryRun)));
    assert_eq!(
        outcome(&p, NOBODY, "blocked.example.com", 443, Https),
        (Outcome::Deny, "mesh-deny", "mesh/deny/1".into())
    );
}

#[test]
fn observing_unclaimed_callers_changes_nothing_else() {
    let p = observing();
    // Not in the trust domain, or no identity at all: still unauthenticated.
    let foreign = decide(&p, "spiffe://evil.example/ns/nobody/sa/x", "evil.example.org", 443, Https);
    assert_eq!((foreign.outcome, foreign.reason.code(), foreign.mode), (Outcome::Deny, "unauthenticated", None));
    assert_eq!(decide(&p, "nobody", "evil.example.org", 443, Https).reason.code(), "unauthenticated");
    let anonymous = p.decide(None, Ok(&dest("evil.example.org", 443, Https)), None, NOW);
    assert_eq!((anonymous.outcome, anonymous.reason.code()), (Outcome::Deny, "unauthenticated"));
    // A request that names nowhere cannot be let through, observed or not.
    let malformed = p.decide(Some(NOBODY), Err(Malformed::NoDestination), None, NOW);
    assert_eq!((malformed.outcome, malformed.reason.code()), (Outcome::Deny, "malformed-request"));
    assert!(malformed.observes_unclaimed() && !anonymous.observes_unclaimed());
    // Claimed callers keep their service's mode.
    assert_eq!(outcome(&p, PAY, "evil.example.org", 443, Https), (Outcome::Deny, "no-matching-allow", String::new()));
    assert_eq!(outcome(&p, PAY, "api.stripe.com", 443, Https).0, Outcome::Allow);
}

#[test]
fn explanations_say_an_unclaimed_caller_is_observed() {
    let p = observing();
    let to = dest("evil.example.org", 443, Https);
    let d = p.decide(Some(NOBODY), Ok(&to), None, NOW);
    let text = crate::explain::text(&p, NOBODY, &to, &d, None);
    assert!(text.starts_with("WOULD-DENY"), "{text}");
    assert!(
        text.contains("  identity: claimed by no service") && text.contains("unclaimedIdentities: observe"),
        "{text}"
    );
    assert!(text.contains("  mode:     dry-run\n") && text.contains("unknown-service"), "{text}");
    let json = crate::explain::json(&p, NOBODY, &to, &d, None);
    assert_eq!(
        (json["decision"].as_str(), json["unclaimedIdentity"]["observed"].as_bool()),
        (Some("would-deny"), Some(true))
    );
    // A denied unclaimed caller's explanation does not claim it is observed.
    let denied = policy();
    let d = denied.decide(Some(NOBODY), Ok(&to), None, NOW);
    assert!(!crate::explain::text(&denied, NOBODY, &to, &d, None).contains("observed"));
    assert!(crate::explain::json(&denied, NOBODY, &to, &d, None).get("unclaimedIdentity").is_none());
}

#[test]
fn unclaimed_identities_values_are_checked_where_written() {
    let text = "kind: MeshDefaults\ntrustDomain: corp.example\nunclaimedIdentities: allow\n";
    let errs = compile(&PolicySource::from_text("v.yaml", text), NOW).unwrap_err();
    let first = errs[0].to_string();
    assert!(first.starts_with("v.yaml:3:22:") && first.contains("allow") && first.contains("observe"), "{errs:#?}");
}

#[test]
fn admin_identities_are_exact_spiffe_ids_checked_where_written() {
    let ok = "kind: MeshDefaults\ntrustDomain: corp.example\nadminIdentities:\n  - spiffe://corp.example/ns/ops/sa/oncall\n  - spiffe://ops.example/sa/breakglass\n";
    let p = compile(&PolicySource::from_text("v.yaml", ok), NOW).unwrap();
    assert_eq!(p.admin_identities, ["spiffe://corp.example/ns/ops/sa/oncall", "spiffe://ops.example/sa/breakglass"]);
    let pattern = "kind: MeshDefaults\ntrustDomain: corp.example\nadminIdentities: [spiffe://corp.example/ns/ops/*]\n";
    let errs = compile(&PolicySource::from_text("v.yaml", pattern), NOW).unwrap_err();
    assert!(errs[0].to_string().starts_with("v.yaml:3:19:") && errs[0].message.contains("not a pattern"), "{errs:#?}");
    let junk = "kind: MeshDefaults\ntrustDomain: corp.example\nadminIdentities:\n  - alice\n";
    let errs = compile(&PolicySource::from_text("v.yaml", junk), NOW).unwrap_err();
    assert!(
        errs[0].to_string().starts_with("v.yaml:4:5:") && errs[0].message.contains("invalid SPIFFE ID"),
        "{errs:#?}"
    );
}

#[test]
fn a_gateway_client_certificate_for_egressd_needs_its_key() {
    let gw = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: Gateway\nname: default\nlisteners: {http: 127.0.0.1:10080}\nauthz:\n  tls:\n    trustBundle: /etc/egressd/ca.pem\n    certificateChain: /etc/gw/cert.pem\n";
    let errs = compile(&PolicySource::from_text("g.yaml", gw), NOW).unwrap_err();
    assert!(errs[0].to_string().starts_with("g.yaml:10:23:") && errs[0].message.contains("go together"), "{errs:#?}");
    let ok = gw.replace("certificateChain: /etc/gw/cert.pem\n", "serverName: egressd.corp.example\n");
    let p = compile(&PolicySource::from_text("g.yaml", &ok), NOW).unwrap();
    let tls = p.gateways[0].authz_tls.as_ref().unwrap();
    assert_eq!(
        (tls.trust_bundle.as_str(), tls.server_name.as_deref()),
        ("/etc/egressd/ca.pem", Some("egressd.corp.example"))
    );
}

// ---- placeholder justifications ----

#[test]
fn todo_justifications_are_errors_at_the_value() {
    const PLACEHOLDER: &str = "justification is a placeholder (`TODO...`)";
    // An allow (as `egressd learn` proposes them).
    assert_error(
        &svc("allow:\n  - host: a.example.com\n    justification: \"TODO: why\"\n"),
        "v.yaml:9:20:",
        PLACEHOLDER,
    );
    // A service deny, in any case, after blanks.
    assert_error(&svc("deny:\n  - host: a.example.com\n    justification: '  todo'\n"), "v.yaml:9:20:", PLACEHOLDER);
    // A group, and one of its destinations.
    assert_error(
        "kind: DestinationGroup\nname: g\njustification: TODO\ndestinations:\n  - host: a.example.com\n",
        "v.yaml:6:16:",
        PLACEHOLDER,
    );
    assert_error(
        "kind: DestinationGroup\nname: g\njustification: mirrors\ndestinations:\n  - host: a.example.com\n    justification: TODO(alice)\n",
        "v.yaml:9:20:",
        PLACEHOLDER,
    );
    // A mesh-wide deny.
    let mesh = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - ports: [22]\n    justification: TODO ssh\n";
    let errs = compile(&PolicySource::from_text("m.yaml", mesh), NOW).unwrap_err();
    assert!(
        errs.iter().any(|e| e.to_string().starts_with("m.yaml:5:20:") && e.message.contains(PLACEHOLDER)),
        "{errs:#?}"
    );
    // A reason that only starts with the letters is a reason.
    assert!(errors(&svc("allow:\n  - host: a.example.com\n    justification: Todoist webhooks\n")).is_empty());
}

#[test]
fn a_claim_inside_another_services_wildcard_claim_is_warned_and_a_sibling_prefix_is_not() {
    let service = |name: &str, ids: &str| {
        format!(
            "---\nkind: ServicePolicy\nservice: {name}\nidentities: [{ids}]\nallow:\n  - host: {name}.test\n    justification: x\n"
        )
    };
    let text = [
        "kind: MeshDefaults\ntrustDomain: corp.example\n".to_string(),
        service("ci", "\"spiffe://corp.example/ns/ci/*\""),
        service("runners", "\"spiffe://corp.example/ns/ci/sa/*\""),
        service("builder", "spiffe://corp.example/ns/ci/sa/builder"),
        service("cicd", "spiffe://corp.example/ns/cicd/sa/deployer"),
    ]
    .concat();
    let p = compile(&PolicySource::from_text("claims.yaml", &text), NOW).unwrap();
    let mut inside: Vec<(String, String)> = p
        .warnings
        .iter()
        .filter(|w| w.message.contains("the more specific claim wins"))
        .map(|w| {
            let names: Vec<&str> = w.message.split("service `").skip(1).map(|s| s.split('`').next().unwrap()).collect();
            (names[0].to_string(), names[1].to_string())
        })
        .collect();
    inside.sort();
    let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
    assert_eq!(inside, pairs(&[("builder", "ci"), ("builder", "runners"), ("runners", "ci")]), "{:?}", p.warnings);
}

#[test]
fn detection_thresholds_are_read_and_bad_ones_located() {
    let mesh = |block: &str| format!("kind: MeshDefaults\ntrustDomain: corp.example\ndetection:\n{block}");
    let located = |block: &str, prefix: &str, text: &str| {
        let errs = match compile(&PolicySource::from_text("v.yaml", &mesh(block)), NOW) {
            Ok(_) => vec![],
            Err(d) => d.iter().map(|d| d.to_string()).collect::<Vec<_>>(),
        };
        assert!(errs.iter().any(|e| e.starts_with(prefix) && e.contains(text)), "`{prefix}…{text}` in {errs:#?}");
    };
    located("  beaconing:\n    threshold: 1.5\n", "v.yaml:5:16:", "between 0 and 1");
    located("  largeUpload:\n    bytes: lots\n", "v.yaml:5:12:", "not a size");
    located("  denyBurst:\n    window: 10 parsecs\n", "v.yaml:5:13:", "unit");
    located("  rare:\n    maxServicePercent: 200\n", "v.yaml:5:24:", "between 0 and 100");
    located("  beaconing:\n    jitter: 3\n", "v.yaml:5:5:", "unknown field `jitter`");
    located("  tunnelNames:\n    txtNullShare: 1.5\n", "v.yaml:5:19:", "fraction above 0");
    located("  tunnelNames:\n    largeAnswer: huge\n", "v.yaml:5:18:", "not a size");
    let text = mesh(
        "  beaconing:\n    window: 12h\n    threshold: 0.8\n  largeUpload:\n    bytes: 500MiB\n  tunnelNames:\n    txtNullQueries: 30\n    largeAnswer: 2KiB\n",
    );
    let p = compile(&PolicySource::from_text("v.yaml", &text), 0).expect("valid");
    assert_eq!((p.detection.beacon_window_ms, p.detection.beacon_threshold), (12 * 3_600_000, 0.8));
    assert_eq!(p.detection.upload_bytes, 500 << 20);
    assert_eq!((p.detection.names_txt_null, p.detection.names_large_answer_bytes), (30, 2048));
    assert_eq!(p.detection.deny_burst_destinations, 20, "defaults where nothing is written");
}

#[test]
fn policies_past_the_size_and_document_limits_are_errors_at_the_file() {
    use super::load::limits::{MAX_DOCUMENTS_PER_FILE, MAX_FILE_BYTES};
    let errors = |source: &PolicySource| match compile(source, NOW) {
        Ok(_) => vec![],
        Err(d) => d.iter().filter(|d| d.severity == Severity::Error).map(|d| d.to_string()).collect::<Vec<_>>(),
    };
    let group = "kind: DestinationGroup\nname: g\ndestinations: [{host: a.test}]\njustification: test\n";
    let mut many = String::from("kind: MeshDefaults\ntrustDomain: corp.example\n");
    for _ in 0..MAX_DOCUMENTS_PER_FILE {
        many.push_str("---\n");
        many.push_str(group);
    }
    // The mesh document (lines 1-2), then group i's `---` at line 5i - 2 and its text from 5i - 1:
    // the 1,001st document is group 1,000.
    let first_extra = 5 * MAX_DOCUMENTS_PER_FILE - 1;
    let errs = errors(&PolicySource::from_text("many.yaml", &many));
    assert_eq!(errs.len(), 2, "{errs:#?}");
    let limit = format!("many.yaml:{first_extra}:1: more than 1000 documents in one file: split it");
    assert!(errs.contains(&limit), "{errs:#?}");
    assert!(errs.iter().any(|e| e.contains("no MeshDefaults")), "the file was not read: {errs:#?}");

    let mut big = PolicySource::from_text("mesh.yaml", "kind: MeshDefaults\ntrustDomain: corp.example\n");
    big.files.push(super::source::SourceFile {
        name: "big.yaml".into(),
        text: format!("# {}\n", "x".repeat(MAX_FILE_BYTES)),
    });
    let errs = errors(&big);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert!(errs[0].starts_with("big.yaml:1:1: the file is 4194307 bytes, more than the 4194304"), "{errs:#?}");
}

#[test]
fn an_external_gateway_is_described_not_served() {
    let istio = "kind: Gateway\nname: istio\nexternal: true\nlisteners: {http: 0.0.0.0:8080, tls: 0.0.0.0:8443}\nhttpUpstream: {protocol: https, port: 443}\n";
    // Beside a default gateway of egressd's own: the external one is not a second default.
    let own = "kind: Gateway\nname: own\nlisteners: {http: 127.0.0.1:10080}\n";
    let text = format!("kind: MeshDefaults\ntrustDomain: corp.example\n---\n{istio}---\n{own}");
    let p = compile(&PolicySource::from_text("g.yaml", &text), NOW).unwrap();
    assert_eq!(p.gateways.iter().map(|g| g.name.as_str()).collect::<Vec<_>>(), ["own"]);
    let g = &p.external_gateways[0];
    assert_eq!((g.name.as_str(), g.tls_upstream_port), ("istio", 443));
    let upstream = g.http_upstream.unwrap();
    assert_eq!((upstream.protocol, upstream.port), (Protocol::Https, Some(443)));
    let pod: std::net::SocketAddr = "10.244.2.7:8080".parse().unwrap();
    assert_eq!(p.external_gateway_at(pod).map(|g| g.name.as_str()), Some("istio"));
    assert_eq!(p.external_gateway_at("10.244.2.7:15001".parse().unwrap()), None);
    assert_eq!(p.tls_upstream_port("10.244.2.7:8443".parse().unwrap()), Some(443));
}

#[test]
fn an_external_gateway_rejects_what_only_egressds_gateways_use() {
    let external =
        |extra: &str| format!("kind: Gateway\nname: istio\nexternal: true\nlisteners: {{http: 0.0.0.0:8080}}\n{extra}");
    assert_error(
        &external("nodes: [istio-egressgateway]\nauthz: {address: 127.0.0.1:18000}\n"),
        "v.yaml:4:1:",
        "Gateway `istio` is external (its own control plane configures it; egressd serves it no xDS), so nodes, authz cannot be set: remove them",
    );
    assert_error(
        &external("httpUpstream: {protocol: ftp}\n"),
        "v.yaml:8:",
        "httpUpstream.protocol `ftp` is not `http` or `https`",
    );
    assert_error(
        &external("httpUpstream: {protocol: http, port: 0}\n"),
        "v.yaml:8:",
        "httpUpstream.port 0 is outside 1..=65535",
    );
    assert_error(
        "kind: Gateway\nname: own\nlisteners: {http: 127.0.0.1:1}\nhttpUpstream: {protocol: http}\n",
        "v.yaml:7:",
        "httpUpstream describes a gateway egressd does not configure: it needs `external: true`",
    );
    assert!(errors(&external("httpUpstream: {protocol: http}\n")).is_empty());
}
