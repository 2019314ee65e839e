//! Property: whatever names a service was seen reaching, learning never proposes a wildcard over
//! a public suffix, a multi-tenant suffix or a registrable apex, proposes nothing that matches
//! none of them, and leaves none of them uncovered.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use super::*;
use crate::flows::replay::replay;
use crate::flows::{FlowTable, Observation, SubjectRef};
use crate::policy::fqdn::is_public_suffix;
use crate::policy::{PolicySource, Protocol, compile};

const POLICY: &str = "kind: MeshDefaults
trustDomain: corp.example
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    justification: card processing
";

/// Public suffixes (ICANN and private), multi-tenant suffixes, and ordinary domains.
const SUFFIXES: &[&str] = &[
    "com",
    "co.uk",
    "org",
    "github.io",
    "herokuapp.com",
    "s3.amazonaws.com",
    "s3.us-west-2.amazonaws.com",
    "amazonaws.com",
    "blob.core.windows.net",
    "googleapis.com",
    "appspot.com",
    "vendor.test",
    "example.com",
    "example.co.uk",
    "corp.internal",
];

const LABELS: &[&str] = &["a", "b", "c", "api", "eu", "cdn", "x1"];

/// A name: one to three labels over one of the suffixes, and the port it was used on.
fn observed_host() -> impl Strategy<Value = (String, u16)> {
    (
        prop::collection::vec(prop::sample::select(LABELS), 1..4),
        prop::sample::select(SUFFIXES),
        prop::sample::select(&[443u16, 8443][..]),
    )
        .prop_map(|(labels, suffix, port)| (format!("{}.{suffix}", labels.join(".")), port))
}

fn flows(hosts: &[(String, u16)]) -> Vec<Flow> {
    let mut table = FlowTable::default();
    for (host, port) in hosts {
        table.record(&Observation {
            time_ms: 0,
            subject: SubjectRef::Service("payments"),
            workload: Some("spiffe://corp.example/ns/payments/sa/api"),
            host,
            port: *port,
            protocol: Protocol::Https,
            decision: Outcome::Deny,
            reason: "no-matching-allow",
            rule: None,
        });
    }
    table.into_sorted()
}

fn check(policy: &CompiledPolicy, hosts: &[(String, u16)], options: &LearnOptions) -> Result<(), TestCaseError> {
    let replayed: Vec<(Flow, Replayed)> =
        flows(hosts).into_iter().map(|f| (f.clone(), replay(policy, &f, 0))).collect();
    let proposal = propose(&replayed, policy, options, 0);
    let allows: Vec<&ProposedAllow> = proposal.services.iter().flat_map(|s| &s.allows).collect();
    for allow in &allows {
        let LearnedTarget::Host(pattern) = &allow.target else {
            return Err(TestCaseError::fail(format!("a CIDR from names: {}", allow.target)));
        };
        if let HostPattern::Wildcard(parent) = pattern {
            prop_assert!(!is_public_suffix(parent), "*.{parent}: a public suffix");
            prop_assert!(!is_multi_tenant(parent), "*.{parent}: a multi-tenant suffix");
            prop_assert!(psl::domain_str(parent) != Some(parent.as_str()), "*.{parent}: a registrable apex");
            prop_assert!(allow.evidence.collapsed.len() >= options.min_siblings.max(2), "*.{parent}: too few siblings");
        }
        let parsed = HostPattern::parse(&pattern.to_string()).expect("a proposed pattern is valid policy");
        prop_assert!(hosts.iter().any(|(h, _)| parsed.matches(h)), "{pattern} matches no observed host");
    }
    for (host, port) in hosts {
        let covered = allows.iter().any(|a| {
            matches!(&a.target, LearnedTarget::Host(p) if p.matches(host))
                && a.ports.as_ref().is_none_or(|ports| ports.contains(port))
        });
        prop_assert!(covered, "{host}:{port} is left uncovered");
    }
    Ok(())
}

#[test]
fn wildcards_stay_within_what_one_party_owns_and_cover_what_was_seen() {
    let policy = compile(&PolicySource::from_text("p.yaml", POLICY), 0).unwrap();
    let strategy = (prop::collection::vec(observed_host(), 1..40), 2usize..7, any::<bool>());
    TestRunner::new(Config::with_cases(256))
        .run(&strategy, |(hosts, min_siblings, any_port)| {
            check(&policy, &hosts, &LearnOptions { min_siblings, any_port })
        })
        .unwrap();
}
