use super::*;
use crate::flows::{FlowTable, Observation, SubjectRef};
use crate::policy::{Outcome, PolicySource, Protocol, compile};
use crate::reports::replay_all;

const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
---
kind: DestinationGroup
name: registries
justification: builds
destinations:
  - host: pypi.org
    ports: [443]
  - host: files.pythonhosted.org
    ports: [443]
---
kind: DestinationGroup
name: legacy-mirrors
justification: old builds
destinations:
  - host: mirror.legacy.test
    ports: [443]
---
kind: DestinationGroup
name: orphans
justification: nobody
destinations:
  - host: orphan.test
    ports: [443]
---
kind: ServicePolicy
service: payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
allow:
  - host: "*.stripe.com"
    ports: [443]
    justification: cards
  - host: api.adyen.com
    ports: [443]
    justification: second acquirer
  - host: api.never.test
    ports: [443]
    justification: planned
  - host: "*.wide.test"
    ports: [443]
    justification: many tenants of ours
  - host: reports.test
    ports: [443]
    justification: nightly report
  - group: registries
---
kind: ServicePolicy
service: search
identities: ["spiffe://corp.example/ns/search/sa/*"]
allow:
  - group: legacy-mirrors
"#;

const API: &str = "spiffe://corp.example/ns/payments/sa/api";
const WORKER: &str = "spiffe://corp.example/ns/payments/sa/worker";
const WINDOW_START: i64 = 5_000;

fn observe(table: &mut FlowTable, time_ms: i64, workload: &str, host: &str) {
    observe_as(table, time_ms, workload, host, "allowed", None);
}

fn observe_as(table: &mut FlowTable, time_ms: i64, workload: &str, host: &str, reason: &str, rule: Option<&str>) {
    table.record(&Observation {
        time_ms,
        subject: SubjectRef::Service("payments"),
        workload: Some(workload),
        host,
        port: 443,
        protocol: Protocol::Https,
        decision: Outcome::Allow,
        reason,
        rule,
    });
}

fn grant(id: &str, created_unix: i64) -> Grant {
    Grant {
        id: id.into(),
        service: "payments".into(),
        host: Some("api.partner.test".into()),
        port: Some(443),
        created_unix,
        expires_unix: created_unix + 3600,
        reason: "INC-1".into(),
        grantor: "alice".into(),
        revoked_unix: None,
        revoker: None,
    }
}

fn report(policy: &str, observations: impl Fn(&mut FlowTable), grants: &[Grant]) -> StaleReport {
    let policy = compile(&PolicySource::from_text("p.yaml", policy), 0).unwrap();
    let mut table = FlowTable::default();
    observations(&mut table);
    let flows = replay_all(&policy, table.into_sorted(), 0);
    let usage = Usage::of(&policy, &flows, Some(WINDOW_START));
    stale(&policy, &usage, grants, WINDOW_START)
}

fn busy_payments(t: &mut FlowTable) {
    for w in [API, WORKER] {
        observe(t, 10_000, w, "api.stripe.com");
        observe(t, 10_000, w, "a1.wide.test");
        observe(t, 10_000, w, "pypi.org");
    }
    observe(t, 11_000, API, "files.stripe.com");
    for n in 2..=6 {
        observe(t, 12_000, API, &format!("a{n}.wide.test"));
    }
    observe(t, 13_000, WORKER, "reports.test");
    observe(t, 1_000, API, "api.adyen.com");
    observe_as(t, 14_000, API, "api.partner.test", "break-glass", Some("bg-used"));
}

#[test]
fn every_kind_of_stale_allow_is_found_and_ordered() {
    let grants = [grant("bg-used", 10), grant("bg-idle", 12), grant("bg-before-window", 1)];
    let r = report(POLICY, busy_payments, &grants);

    let unused: Vec<(&str, Option<&str>)> =
        r.unused_allows.iter().map(|u| (u.rule.target.as_str(), u.last_seen.as_deref())).collect();
    assert_eq!(
        unused,
        [
            ("api.never.test ports [443]", None),
            ("files.pythonhosted.org ports [443]", None),
            ("mirror.legacy.test ports [443]", None),
            ("api.adyen.com ports [443]", Some("1970-01-01T00:00:01Z")),
        ],
        "never seen first (policy order), then the longest unused"
    );
    assert_eq!(r.unused_allows[1].rule.group.as_deref(), Some("registries"));
    assert!(
        r.unused_allows[1].rule.location.starts_with("p.yaml:11:"),
        "the group destination: {:?}",
        r.unused_allows[1]
    );

    assert_eq!(r.narrowable_wildcards.len(), 1, "{:?}", r.narrowable_wildcards);
    let n = &r.narrowable_wildcards[0];
    assert_eq!(n.rule.target, "*.stripe.com ports [443]");
    assert_eq!(n.names, [("api.stripe.com".to_string(), 2), ("files.stripe.com".to_string(), 1)]);

    let single: Vec<_> =
        r.single_workload_allows.iter().map(|s| (s.rule.target.as_str(), s.workload.as_str())).collect();
    assert_eq!(single, [("reports.test ports [443]", WORKER)]);
    assert_eq!(r.single_workload_allows[0].service_workloads, 2);

    let groups: Vec<_> = r.unused_groups.iter().map(|g| (g.group.as_str(), g.referenced_by.clone())).collect();
    assert_eq!(groups, [("legacy-mirrors", vec!["search".to_string()]), ("orphans", vec![])]);

    let idle: Vec<_> = r.unused_grants.iter().map(|g| g.id.as_str()).collect();
    assert_eq!(idle, ["bg-idle"], "used and pre-window grants are not reported");

    let text = text(&r);
    assert!(text.contains("p.yaml:") && text.contains("api.never.test ports [443] (never seen)"), "{text}");
    assert!(text.contains("allow exactly api.stripe.com (2 hits), files.stripe.com (1 hits)"), "{text}");
    assert!(text.contains("orphans (referenced by no service)"), "{text}");
}

#[test]
fn a_policy_whose_every_allow_is_used_broadly_has_nothing_stale() {
    const USED: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
---
kind: ServicePolicy
service: payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
allow:
  - host: "*.wide.test"
    ports: [443]
    justification: many tenants of ours
  - host: api.stripe.com
    ports: [443]
    justification: cards
"#;
    let r = report(
        USED,
        |t| {
            for w in [API, WORKER] {
                observe(t, 10_000, w, "api.stripe.com");
                for n in 1..=6 {
                    observe(t, 10_000, w, &format!("a{n}.wide.test"));
                }
            }
            observe_as(t, 14_000, API, "api.partner.test", "break-glass", Some("bg-used"));
        },
        &[grant("bg-used", 10)],
    );
    assert!(r.is_empty(), "{r:?}");
    assert!(text(&r).contains("nothing stale"));
}

#[test]
fn a_wildcard_with_one_workload_of_one_is_not_single_workload_stale() {
    const ONE: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
---
kind: ServicePolicy
service: payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
allow:
  - host: api.stripe.com
    ports: [443]
    justification: cards
"#;
    let r = report(ONE, |t| observe(t, 10_000, API, "api.stripe.com"), &[]);
    assert!(r.single_workload_allows.is_empty(), "a service seen with one workload: {r:?}");
    assert!(r.is_empty());
}
