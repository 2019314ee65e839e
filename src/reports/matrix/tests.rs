//! The matrix of a small policy (a group, a mesh deny, a wildcard, a CIDR, a deny) and its faces:
//! row order and content, the dependency summary, escaping in each format, hit columns only with
//! usage.

use super::*;
use crate::flows::{FlowTable, Observation, SubjectRef};
use crate::policy::{Outcome, PolicySource, compile};
use crate::reports::replay_all;

/// A justification that breaks every format that does not escape: a cell separator for Markdown,
/// a field separator, a quote and a line break for CSV, markup for HTML.
const NASTY: &str = "card | \"processing\", <script>alert(1)</script>\nsecond line";

fn policy() -> CompiledPolicy {
    let text = format!(
        r#"
kind: MeshDefaults
trustDomain: corp.example
deny:
  - host: pastebin.com
    justification: paste sites (SEC-212)
---
kind: DestinationGroup
name: mirrors
justification: package registries
destinations:
  - host: pypi.org
    ports: [443]
  - host: "*.pythonhosted.org"
    ports: [443]
---
kind: ServicePolicy
service: payments
owner: team-payments
identities: ["spiffe://corp.example/ns/payments/sa/*"]
deny:
  - host: uploads.stripe.com
    justification: not card processing
allow:
  - host: api.stripe.com
    ports: [443]
    protocols: [https]
    justification: {nasty}
    expires: 2099-01-31
  - host: "*.stripe.com"
    ports: [443]
    justification: stripe services
  - cidr: 10.20.0.0/16
    ports: [5432]
    justification: ledger database
---
kind: ServicePolicy
service: ci
identities: ["spiffe://corp.example/ns/ci/*"]
mode: dry-run
allow:
  - group: mirrors
"#,
        nasty = serde_json::to_string(NASTY).unwrap_or_default()
    );
    match compile(&PolicySource::from_text("p.yaml", &text), 0) {
        Ok(policy) => policy,
        Err(diags) => panic!("test policy: {diags:?}"),
    }
}

fn ids(m: &Matrix) -> Vec<&str> {
    m.rows.iter().map(|r| r.rule_id.as_str()).collect()
}

#[test]
fn rows_are_mesh_denies_then_each_service_allows_then_denies() {
    let m = build(&policy(), None);
    assert_eq!(
        ids(&m),
        [
            "mesh/deny/0",
            "payments/allow/0",
            "payments/allow/1",
            "payments/allow/2",
            "payments/deny/0",
            "ci/allow/0/mirrors/0",
            "ci/allow/0/mirrors/1"
        ]
    );
    let mesh = &m.rows[0];
    assert_eq!((mesh.service.as_str(), mesh.action, mesh.kind), (MESH, Action::Deny, DestinationKind::Host));
    assert_eq!((mesh.mode, mesh.identities.len()), (None, 0));

    let stripe = &m.rows[1];
    assert_eq!(stripe.service, "payments");
    assert_eq!(stripe.owner.as_deref(), Some("team-payments"));
    assert_eq!(stripe.identities, ["spiffe://corp.example/ns/payments/sa/*"]);
    assert_eq!(stripe.mode, Some(Mode::Enforce));
    assert_eq!((stripe.ports_text(), stripe.protocols_text()), ("443".to_string(), "https".to_string()));
    assert_eq!(stripe.justification.as_deref(), Some(NASTY));
    assert_eq!(stripe.expires.as_deref(), Some("2099-01-31"));
    assert!(stripe.location.starts_with("p.yaml:"), "{}", stripe.location);
    assert_eq!(stripe.usage, None);

    assert_eq!(m.rows[2].kind, DestinationKind::Wildcard);
    assert_eq!(m.rows[3].kind, DestinationKind::Cidr);
    assert_eq!(m.rows[3].destination, "10.20.0.0/16");
    let mirror = &m.rows[6];
    assert_eq!((mirror.group.as_deref(), mirror.destination.as_str()), (Some("mirrors"), "*.pythonhosted.org"));
    assert_eq!(
        (mirror.mode, mirror.ports_text(), mirror.protocols_text()),
        (Some(Mode::DryRun), "443".into(), "any".into())
    );
    assert_eq!(mirror.justification.as_deref(), Some("package registries"), "the group's justification");
    assert_eq!((m.allows(), m.denies()), (5, 2));
}

#[test]
fn the_summary_counts_registrable_domains_and_lists_cidrs_apart() {
    let m = build(&policy(), None);
    let payments = &m.services[0];
    assert_eq!((payments.service.as_str(), payments.allows, payments.denies), ("payments", 3, 1));
    assert_eq!(payments.domains, [Dependency { name: "stripe.com".into(), rules: 2 }]);
    assert_eq!(payments.cidrs, [Dependency { name: "10.20.0.0/16".into(), rules: 1 }]);
    let ci = &m.services[1];
    let names: Vec<_> = ci.domains.iter().map(|d| (d.name.as_str(), d.rules)).collect();
    assert_eq!(names, [("pypi.org", 1), ("pythonhosted.org", 1)]);
    assert!(ci.cidrs.is_empty());
}

#[test]
fn a_service_keeps_its_rows_and_the_mesh_denies() {
    let mut m = build(&policy(), None);
    m.retain_service("ci");
    assert_eq!(ids(&m), ["mesh/deny/0", "ci/allow/0/mirrors/0", "ci/allow/0/mirrors/1"]);
    assert_eq!(m.services.len(), 1);
}

fn usage(policy: &CompiledPolicy) -> Usage {
    let mut table = FlowTable::default();
    let observe = |table: &mut FlowTable, time_ms: i64, host: &str| {
        table.record(&Observation {
            time_ms,
            subject: SubjectRef::Service("payments"),
            workload: Some("spiffe://corp.example/ns/payments/sa/api"),
            host,
            port: 443,
            protocol: Protocol::Https,
            decision: Outcome::Allow,
            reason: "allowed",
            rule: None,
        });
    };
    observe(&mut table, 10_000, "api.stripe.com");
    observe(&mut table, 11_000, "api.stripe.com");
    observe(&mut table, 12_000, "files.stripe.com");
    observe(&mut table, 1_000, "checkout.stripe.com");
    Usage::of(policy, &replay_all(policy, table.into_sorted(), 0), Some(5_000))
}

#[test]
fn usage_gives_hits_and_last_seen_and_their_columns() {
    let policy = policy();
    let m = build(&policy, Some(&usage(&policy))).with_window("30d");
    assert_eq!(m.hits, Some(HitsScope { window: Some("30d".into()), flows_in_window: 2, flows: 3 }));
    let hits: Vec<_> = m.rows.iter().map(|r| r.usage.as_ref().map(|u| u.hits)).collect();
    assert_eq!(hits, [Some(0), Some(2), Some(1), Some(0), Some(0), Some(0), Some(0)]);
    let wildcard = m.rows[2].usage.as_ref().map(|u| u.last_seen_text());
    assert_eq!(wildcard.as_deref(), Some("1970-01-01T00:00:12Z"), "the latest, in the window or not");
    assert_eq!(m.rows[3].usage.as_ref().map(|u| u.last_seen_text()).as_deref(), Some("never"));

    let md = markdown(&m);
    assert!(md.contains("| Hits | Last seen |"), "{md}");
    assert!(md.contains("within 30d"), "{md}");
    assert!(csv(&m).starts_with("service,owner,mode,identities,group,action,destination,kind,ports,protocols,justification,expires,ruleId,location,hits,lastSeen\r\n"));
    assert!(html(&m).contains("data-key=\"hits\" data-type=\"num\""));
    let json = serde_json::to_value(&m).unwrap_or_default();
    assert_eq!(json["rows"][1]["hits"], 2);
    assert_eq!(json["rows"][3]["lastSeen"], serde_json::Value::Null);
    assert_eq!(json["hits"]["window"], "30d");
}

#[test]
fn without_usage_there_are_no_hit_columns() {
    let m = build(&policy(), None).with_window("30d");
    assert_eq!(m.hits, None);
    let md = markdown(&m);
    assert!(!md.contains("Hits |") && !md.contains("Last seen"), "{md}");
    assert!(md.contains("- Hits: not included"), "{md}");
    assert!(csv(&m).lines().next().is_some_and(|h| h.ends_with(",ruleId,location")));
    assert!(!html(&m).contains("data-key=\"hits\""));
    let json = serde_json::to_value(&m).unwrap_or_default();
    assert!(
        json.get("hits").is_none()
            && json["rows"][0].get("hits").is_none()
            && json["rows"][0].get("lastSeen").is_none()
    );
    assert_eq!(json["rows"][1]["ruleId"], "payments/allow/0");
    assert_eq!(json["services"][0]["domains"][0]["name"], "stripe.com");
}

#[test]
fn markdown_escapes_cells_and_keeps_rows_on_one_line() {
    let md = markdown(&build(&policy(), None));
    let line = md.lines().find(|l| l.contains("payments/allow/0")).unwrap_or_default();
    assert!(line.contains(r#"card \| "processing", \<script\>alert(1)\</script\><br>second line"#), "{line}");
    // Unescaped pipes are the cell borders only: 14 columns.
    let borders = line.replace("\\|", "").matches('|').count();
    assert_eq!(borders, 15, "{line}");
    assert!(md.contains("| payments | team-payments | enforce | 3 | 1 | stripe.com (2) | 10.20.0.0/16 (1) |"), "{md}");
    assert!(md.contains("\\*.pythonhosted.org"), "a wildcard does not start emphasis");
}

#[test]
fn csv_round_trips_quotes_commas_and_line_breaks() {
    let m = build(&policy(), None);
    let text = csv(&m);
    let mut reader = ::csv::Reader::from_reader(text.as_bytes());
    let headers = reader.headers().map(|h| h.iter().map(String::from).collect::<Vec<_>>()).unwrap_or_default();
    let records: Vec<::csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap_or_default();
    assert_eq!(records.len(), m.rows.len());
    let field = |record: &::csv::StringRecord, key: &str| {
        headers.iter().position(|h| h == key).and_then(|i| record.get(i)).unwrap_or("?").to_string()
    };
    assert_eq!(field(&records[1], "justification"), NASTY);
    assert_eq!(field(&records[1], "ruleId"), "payments/allow/0");
    assert_eq!(field(&records[0], "service"), MESH);
    assert_eq!(field(&records[0], "ports"), "any");
    assert_eq!(field(&records[3], "kind"), "cidr");
    assert_eq!(field(&records[6], "group"), "mirrors");
}

#[test]
fn html_shows_policy_text_as_text() {
    let page = html(&build(&policy(), None));
    assert!(!page.contains("<script>alert(1)"), "policy text is escaped");
    assert!(page.contains("card | &quot;processing&quot;, &lt;script&gt;alert(1)&lt;/script&gt;\nsecond line"));
    assert_eq!(page.matches("<script>").count(), 1, "only the page's own script");
    assert_eq!(page.matches("<tr data-index=").count(), 7);
    assert!(page.contains("data-rule=\"payments/allow/0\""));
    // The SVG namespace is a name, not a fetch; nothing else names a place to fetch from.
    let fetchable = page.replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
    for external in ["http://", "https://", "src=", "href=", "@import", "url(", "<link", "<img"] {
        assert!(!fetchable.contains(external), "{external}");
    }
}

#[test]
fn the_diagram_draws_a_line_per_allowed_dependency() {
    let page = html(&build(&policy(), None));
    let svg = &page[page.find("<svg").unwrap_or(0)..page.find("</svg>").unwrap_or(page.len())];
    assert_eq!(svg.matches("<path class=\"edge").count(), 4, "payments: stripe.com, 10.20.0.0/16; ci: 2 domains");
    assert_eq!(svg.matches("class=\"node service\"").count(), 2);
    assert_eq!(svg.matches("class=\"node domain\"").count(), 3);
    assert_eq!(svg.matches("class=\"node cidr\"").count(), 1);
    assert!(!svg.contains("uploads.stripe.com"), "denies are not drawn");
}

#[test]
fn the_diagram_grows_with_the_services() {
    let many: Vec<ServiceSummary> = (0..50)
        .map(|i| ServiceSummary {
            service: format!("service-{i:02}"),
            owner: None,
            mode: Mode::Enforce,
            allows: 1,
            denies: 0,
            domains: vec![Dependency { name: format!("vendor-{i}.example"), rules: 1 }],
            cidrs: vec![],
        })
        .collect();
    let svg = html::diagram_svg(&many);
    let height: usize =
        svg.split("height=\"").nth(1).and_then(|s| s.split('"').next()).and_then(|h| h.parse().ok()).unwrap_or(0);
    assert!(height >= 50 * 20, "a row per service: {height}");
}

#[test]
fn the_stylesheet_names_the_columns_where_they_are() {
    assert_eq!((COLUMNS[5].key, COLUMNS[10].key), ("action", "justification"), "matrix.css styles them by position");
}
