//! Property tests: normalization is idempotent, and the compiled matcher (trie + CIDR maps) agrees
//! with a plain linear reference matcher on random policies and requests.

use ipnet::IpNet;
use proptest::prelude::*;

use super::fqdn::{Host, HostPattern, parse_authority};
use super::*;

proptest! {
    #[test]
    fn normalization_is_idempotent(raw in "[a-zA-Z0-9ÄäÜüß._\\-]{1,40}(:[0-9]{1,5})?") {
        if let Ok((host, _)) = parse_authority(&raw) {
            let once = host.to_string();
            let (again, port) = parse_authority(&once).expect("a normalized host parses");
            prop_assert_eq!(again.to_string(), once);
            prop_assert_eq!(port, None);
        }
    }

    #[test]
    fn ipv6_literals_round_trip(bits in any::<u128>(), port in 1u16..) {
        let ip = std::net::Ipv6Addr::from(bits);
        let authority = format!("[{ip}]:{port}");
        let (host, p) = parse_authority(&authority).unwrap();
        prop_assert_eq!(host.to_string(), format!("[{ip}]"));
        prop_assert_eq!(p, Some(port));
    }
}

#[derive(Debug, Clone)]
enum Target {
    Host(String),
    Cidr(String),
}

#[derive(Debug, Clone)]
struct RuleSpec {
    target: Target,
    ports: Option<Vec<u16>>,
}

const PORTS: [u16; 3] = [80, 443, 8443];

fn host_pattern() -> impl Strategy<Value = String> {
    (prop::collection::vec(prop::sample::select(vec!["a", "b", "c"]), 0..3), any::<bool>()).prop_map(
        |(labels, wild)| {
            let mut name = labels.join(".");
            name.push_str(if name.is_empty() { "ex.com" } else { ".ex.com" });
            if wild { format!("*.{name}") } else { name }
        },
    )
}

fn cidr() -> impl Strategy<Value = String> {
    (0u8..2, 0u8..2, 0u8..2, prop::sample::select(vec![8u8, 16, 24, 32])).prop_map(|(b, c, d, len)| {
        IpNet::new(format!("10.{b}.{c}.{d}").parse().unwrap(), len).unwrap().trunc().to_string()
    })
}

fn rule() -> impl Strategy<Value = RuleSpec> {
    let target = prop_oneof![host_pattern().prop_map(Target::Host), cidr().prop_map(Target::Cidr)];
    let ports = prop::option::of(prop::sample::subsequence(PORTS.to_vec(), 1..=3));
    (target, ports).prop_map(|(target, ports)| RuleSpec { target, ports })
}

fn yaml_rules(rules: &[RuleSpec]) -> String {
    let mut s = String::new();
    for r in rules {
        match &r.target {
            Target::Host(h) => s.push_str(&format!("  - host: \"{h}\"\n")),
            Target::Cidr(c) => s.push_str(&format!("  - cidr: {c}\n")),
        }
        if let Some(p) = &r.ports {
            s.push_str(&format!("    ports: {p:?}\n"));
        }
        s.push_str("    justification: generated\n");
    }
    s
}

fn reference_matches(rule: &RuleSpec, host: &Host<'_>, port: u16) -> bool {
    let port_ok = rule.ports.as_ref().is_none_or(|p| p.contains(&port));
    let dest_ok = match (&rule.target, host) {
        (Target::Host(h), Host::Name(n)) => HostPattern::parse(h).unwrap().matches(n),
        (Target::Cidr(c), Host::Ip(ip)) => c.parse::<IpNet>().unwrap().contains(ip),
        _ => false,
    };
    port_ok && dest_ok
}

fn request_host() -> impl Strategy<Value = String> {
    prop_oneof![
        (prop::collection::vec(prop::sample::select(vec!["a", "b", "c", "d"]), 0..4))
            .prop_map(|l| { if l.is_empty() { "ex.com".to_string() } else { format!("{}.ex.com", l.join(".")) } }),
        (0u8..2, 0u8..2, 0u8..2, 0u8..3).prop_map(|(b, c, d, e)| format!("10.{b}.{c}.{d}{e}")),
        Just("other.org".to_string()),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn compiled_matcher_agrees_with_linear_reference(
        allows in prop::collection::vec(rule(), 0..12),
        denies in prop::collection::vec(rule(), 0..4),
        requests in prop::collection::vec((request_host(), prop::sample::select(PORTS.to_vec())), 1..20),
    ) {
        let text = format!(
            "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\nallow:\n{}deny:\n{}",
            if allows.is_empty() { "  []\n".to_string() } else { yaml_rules(&allows) },
            if denies.is_empty() { "  []\n".to_string() } else { yaml_rules(&denies) },
        );
        let policy = compile(&PolicySource::from_text("p.yaml", &text), 0).map_err(|d| TestCaseError::fail(format_diagnostics(&d)))?;
        for (raw, port) in &requests {
            let Ok((host, _)) = parse_authority(raw) else { continue };
            let dest = Destination { host: host.clone(), port: *port, protocol: Protocol::Https };
            let got = policy.decide(Some("spiffe://corp.example/ns/s/sa/a"), Ok(&dest), None, 0);
            let want = if denies.iter().any(|r| reference_matches(r, &host, *port)) {
                "service-deny"
            } else if allows.iter().any(|r| reference_matches(r, &host, *port)) {
                "allowed"
            } else {
                "no-matching-allow"
            };
            prop_assert_eq!(got.reason.code(), want, "{} port {}", raw, port);
            // The rule it names must itself match, by the reference semantics.
            if let Some(rule) = got.rule {
                let (list, idx) = match rule.action {
                    Action::Allow => (&allows, rule.id.strip_prefix("s/allow/")),
                    Action::Deny => (&denies, rule.id.strip_prefix("s/deny/")),
                };
                let spec = &list[idx.unwrap().parse::<usize>().unwrap()];
                prop_assert!(reference_matches(spec, &host, *port), "{} named {} which does not match", raw, rule.id);
            }
        }
    }
}
