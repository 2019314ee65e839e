//! Each check against a policy that has the problem and one that does not.

use super::checks::{day_start, private, too_wide};
use super::*;
use crate::policy::{PolicySource, compile};

const MESH: &str = "kind: MeshDefaults
trustDomain: corp.example
deny:
  - cidr: 169.254.169.254/32
    justification: metadata
";

fn now() -> i64 {
    day_start("2026-12-01").unwrap()
}

/// MeshDefaults `mesh` (with `---` and documents after it in `rest`), linted at `now()`.
fn lint_docs(mesh: &str, rest: &str) -> Vec<Finding> {
    let text = format!("{mesh}---\n{rest}");
    let policy = compile(&PolicySource::from_text("p.yaml", &text), now()).unwrap_or_else(|d| panic!("{d:?}"));
    lint(&policy, now())
}

/// One service `s` owned by a team, with these extra lines (allow:, deny:, mode: ...).
fn service(body: &str) -> String {
    format!("kind: ServicePolicy\nservice: s\nowner: team\nidentities: [spiffe://corp.example/ns/s/sa/a]\n{body}")
}

fn lint_service(body: &str) -> Vec<Finding> {
    lint_docs(MESH, &service(body))
}

fn of<'f>(findings: &'f [Finding], id: &str) -> Vec<&'f Finding> {
    findings.iter().filter(|f| f.id == id).collect()
}

fn levels(findings: &[Finding], id: &str) -> Vec<Level> {
    of(findings, id).iter().map(|f| f.severity).collect()
}

#[test]
fn ids_are_in_order_and_unique() {
    let ids: Vec<&str> = CHECKS.iter().map(|c| c.id).collect();
    let expected: Vec<String> = (1..=CHECKS.len()).map(|i| format!("EGR{i:03}")).collect();
    assert_eq!(ids, expected);
}

#[test]
fn private_ranges() {
    for p in ["10.0.0.0/8", "10.20.0.0/16", "192.168.1.0/24", "172.16.0.0/12", "fd00::/8", "::ffff:10.0.0.0/104"] {
        assert!(private(p), "{p}");
    }
    for p in ["0.0.0.0/0", "8.8.8.8/32", "172.0.0.0/8", "2001:db8::/32", "::/0", "::ffff:0:0/96", "11.0.0.0/8"] {
        assert!(!private(p), "{p}");
    }
    for p in ["0.0.0.0/0", "::/0", "8.0.0.0/8", "52.0.0.0/15", "2600::/16", "::ffff:0:0/96", "64:ff9b::/96"] {
        assert!(too_wide(p), "{p}");
    }
    for p in ["10.0.0.0/8", "52.94.0.0/16", "203.0.113.0/24", "2600:1f00::/32", "fd00::/8"] {
        assert!(!too_wide(p), "{p}");
    }
}

#[test]
fn egr001_allow_all_cidr() {
    for cidr in ["0.0.0.0/0", "::/0", "52.0.0.0/8"] {
        let f = lint_service(&format!("allow:\n  - cidr: {cidr}\n    ports: [443]\n    justification: x\n"));
        assert_eq!(levels(&f, "EGR001"), [Level::Error], "{cidr}: {f:#?}");
        assert!(of(&f, "EGR004").is_empty(), "EGR001 subsumes EGR004");
        assert_eq!(of(&f, "EGR001")[0].loc.line, 12);
    }
    for cidr in ["10.0.0.0/8", "52.94.0.0/16"] {
        let f = lint_service(&format!("allow:\n  - cidr: {cidr}\n    ports: [443]\n    justification: x\n"));
        assert!(of(&f, "EGR001").is_empty(), "{cidr}: {f:#?}");
    }
}

#[test]
fn egr002_portless_host_among_ported() {
    let f = lint_service(
        "allow:\n  - host: a.vendor.test\n    ports: [443]\n    justification: x\n  - host: b.vendor.test\n    justification: y\n",
    );
    let found = of(&f, "EGR002");
    assert_eq!(found.len(), 1, "{f:#?}");
    assert!(found[0].message.contains("b.vendor.test"));
    assert_eq!((found[0].loc.line, found[0].loc.column), (15, 5));
    let f = lint_service(
        "allow:\n  - host: a.vendor.test\n    ports: [443]\n    justification: x\n  - host: b.vendor.test\n    ports: [8443]\n    justification: y\n",
    );
    assert!(of(&f, "EGR002").is_empty(), "{f:#?}");
    // A service whose allows are all portless is consistent (EGR005 speaks about it).
    let f = lint_service("allow:\n  - host: b.vendor.test\n    justification: y\n");
    assert!(of(&f, "EGR002").is_empty(), "{f:#?}");
}

const PSL_REFUSED: &[&str] = &[
    "*.github.io",
    "*.herokuapp.com",
    "*.s3.amazonaws.com",
    "*.googleapis.com",
    "*.cloudfront.net",
    "*.blob.core.windows.net",
];
const LINTED: &[&str] = &[
    "*.amazonaws.com",
    "*.storage.googleapis.com",
    "*.logs.s3.amazonaws.com",
    "*.mybucket.s3.us-west-2.amazonaws.com",
    "*.acct.blob.core.windows.net",
    "*.team.github.io",
];

#[test]
fn egr003_multi_tenant_wildcard() {
    // `validate` already refuses a wildcard directly over a public suffix, private section
    // included (`*.github.io`, `*.herokuapp.com`, `*.s3.amazonaws.com`); lint adds the curated
    // suffixes the PSL does not list and wildcards anchored below a multi-tenant suffix.
    for host in PSL_REFUSED {
        let text = format!(
            "{MESH}---\n{}",
            service(&format!("allow:\n  - host: \"{host}\"\n    ports: [443]\n    justification: x\n"))
        );
        assert!(compile(&PolicySource::from_text("p.yaml", &text), now()).is_err(), "{host} compiles");
    }
    for host in LINTED {
        let f = lint_service(&format!("allow:\n  - host: \"{host}\"\n    ports: [443]\n    justification: x\n"));
        assert_eq!(levels(&f, "EGR003"), [Level::Error], "{host}: {f:#?}");
    }
    // An exact name under such a suffix is the fix; an ordinary wildcard is not multi-tenant.
    for host in ["mybucket.s3.amazonaws.com", "*.datadoghq.com", "*.vendor.test"] {
        let f = lint_service(&format!("allow:\n  - host: \"{host}\"\n    ports: [443]\n    justification: x\n"));
        assert!(of(&f, "EGR003").is_empty(), "{host}: {f:#?}");
    }
}

#[test]
fn egr004_public_ip_allow() {
    let f = lint_service("allow:\n  - cidr: 203.0.113.7/32\n    ports: [443]\n    justification: x\n");
    assert_eq!(levels(&f, "EGR004"), [Level::Warning], "{f:#?}");
    let f = lint_service("allow:\n  - cidr: 10.1.2.0/24\n    ports: [443]\n    justification: x\n");
    assert!(of(&f, "EGR004").is_empty(), "{f:#?}");
}

#[test]
fn egr005_admin_and_database_ports() {
    // Explicit db port to a host or a public CIDR: error.
    for dest in ["host: db.vendor.test", "cidr: 203.0.113.0/24"] {
        let f = lint_service(&format!("allow:\n  - {dest}\n    ports: [5432]\n    justification: x\n"));
        assert_eq!(levels(&f, "EGR005"), [Level::Error], "{dest}: {f:#?}");
    }
    // To a private CIDR: fine, with or without ports.
    for ports in ["    ports: [5432]\n", ""] {
        let f = lint_service(&format!("allow:\n  - cidr: 10.20.0.0/16\n{ports}    justification: x\n"));
        assert!(of(&f, "EGR005").is_empty(), "{f:#?}");
    }
    // A portless host reaches them: warning, naming the ports a port deny does not already block.
    let f = lint_service("allow:\n  - host: api.vendor.test\n    justification: x\n");
    assert_eq!(levels(&f, "EGR005"), [Level::Warning], "{f:#?}");
    assert!(of(&f, "EGR005")[0].message.contains("22, 23"), "{f:#?}");
    let floor = format!(
        "{MESH}  - ports: [{}]\n    justification: admin and db ports\n",
        super::checks::ADMIN_DB_PORTS.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
    );
    let f = lint_docs(&floor, &service("allow:\n  - host: api.vendor.test\n    justification: x\n"));
    assert!(of(&f, "EGR005").is_empty(), "{f:#?}");
    // Ordinary ports: fine.
    let f = lint_service("allow:\n  - host: api.vendor.test\n    ports: [443]\n    justification: x\n");
    assert!(of(&f, "EGR005").is_empty(), "{f:#?}");
}

#[test]
fn egr006_mesh_deny_floor() {
    let f = lint_docs("kind: MeshDefaults\ntrustDomain: corp.example\n", &service(""));
    assert_eq!(levels(&f, "EGR006"), [Level::Warning], "{f:#?}");
    assert!(of(&lint_service(""), "EGR006").is_empty());
}

#[test]
fn egr007_owner() {
    let f = lint_docs(MESH, "kind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\n");
    let found = of(&f, "EGR007");
    assert_eq!(found.len(), 1, "{f:#?}");
    assert_eq!((found[0].loc.line, found[0].loc.column), (8, 10), "at the service name");
    assert!(of(&lint_service(""), "EGR007").is_empty());
}

#[test]
fn egr008_expiry() {
    let rule = |date: &str| {
        format!("allow:\n  - host: a.vendor.test\n    ports: [443]\n    justification: x\n    expires: {date}\n")
    };
    // The fixture's now is 2026-12-01T00:00Z; an allow is good through its expiry day.
    assert_eq!(levels(&lint_service(&rule("2026-11-30")), "EGR008"), [Level::Error]);
    let soon = lint_service(&rule("2026-12-10"));
    assert_eq!(levels(&soon, "EGR008"), [Level::Warning]);
    assert!(of(&soon, "EGR008")[0].message.contains("in 10 day(s)"), "{soon:#?}");
    assert_eq!(of(&soon, "EGR008")[0].loc.line, 15, "at the expires value");
    assert!(of(&lint_service(&rule("2027-06-30")), "EGR008").is_empty());
    assert!(of(&lint_service(&rule("2026-12-16")), "EGR008").is_empty(), "16 days left");
}

#[test]
fn egr009_shadowed() {
    // A service deny of a broader wildcard, any port.
    let f = lint_service(
        "allow:\n  - host: api.vendor.test\n    ports: [443]\n    justification: x\ndeny:\n  - host: \"*.vendor.test\"\n    justification: no\n",
    );
    assert_eq!(levels(&f, "EGR009"), [Level::Warning], "{f:#?}");
    // A mesh-wide deny of the same CIDR.
    let f = lint_service("allow:\n  - cidr: 169.254.169.254/32\n    ports: [80]\n    justification: x\n");
    assert_eq!(levels(&f, "EGR009"), [Level::Warning], "{f:#?}");
    // A narrower deny (one port of several, another host) does not shadow.
    let f = lint_service(
        "allow:\n  - host: api.vendor.test\n    ports: [443, 8443]\n    justification: x\ndeny:\n  - host: api.vendor.test\n    ports: [8443]\n    justification: no\n  - host: other.vendor.test\n    justification: no\n",
    );
    assert!(of(&f, "EGR009").is_empty(), "{f:#?}");
}

#[test]
fn egr010_duplicates() {
    let group = "kind: DestinationGroup\nname: g\njustification: vendor\ndestinations:\n  - host: api.vendor.test\n    ports: [443]\n---\n";
    // Once directly, once through the group.
    let body = "allow:\n  - group: g\n  - host: api.vendor.test\n    ports: [443]\n    justification: x\n";
    let f = lint_docs(MESH, &format!("{group}{}", service(body)));
    assert_eq!(levels(&f, "EGR010"), [Level::Warning], "{f:#?}");
    // Written twice.
    let body = "allow:\n  - host: a.vendor.test\n    ports: [443]\n    justification: x\n  - host: a.vendor.test\n    ports: [443]\n    justification: y\n";
    assert_eq!(levels(&lint_service(body), "EGR010"), [Level::Warning]);
    // Other ports: not a duplicate.
    let body = "allow:\n  - host: a.vendor.test\n    ports: [443]\n    justification: x\n  - host: a.vendor.test\n    ports: [8443]\n    justification: y\n";
    assert!(of(&lint_service(body), "EGR010").is_empty());
}

#[test]
fn egr011_forwarded_client_cert() {
    let f = lint_docs(&format!("{MESH}trustForwardedClientCert: true\n"), &service(""));
    assert_eq!(levels(&f, "EGR011"), [Level::Warning], "{f:#?}");
    assert!(of(&f, "EGR011")[0].message.contains("any hop"));
    let f = lint_docs(&format!("{MESH}trustForwardedClientCert: false\n"), &service(""));
    assert!(of(&f, "EGR011").is_empty());
}

#[test]
fn egr012_observe_forever() {
    let f = lint_docs(&format!("{MESH}unclaimedIdentities: observe\n"), &service(""));
    assert_eq!(levels(&f, "EGR012"), [Level::Warning], "{f:#?}");
    assert!(of(&lint_service(""), "EGR012").is_empty(), "enforce, unclaimed denied");
    // dry-run for 61 days: warning; for 10 days: nothing; without since: a note.
    assert_eq!(levels(&lint_service("mode: dry-run\nsince: 2026-10-01\n"), "EGR012"), [Level::Warning]);
    assert!(of(&lint_service("mode: dry-run\nsince: 2026-11-21\n"), "EGR012").is_empty());
    assert_eq!(levels(&lint_service("mode: canary\ncanaryPercent: 5\n"), "EGR012"), [Level::Note]);
    assert!(of(&lint_service("mode: enforce\nsince: 2020-01-01\n"), "EGR012").is_empty());
}

#[test]
fn since_is_a_date_checked_where_written() {
    let text = format!("{MESH}---\n{}", service("mode: dry-run\nsince: next week\n"));
    let diags = compile(&PolicySource::from_text("p.yaml", &text), now()).unwrap_err();
    assert_eq!(diags.len(), 1, "{diags:?}");
    assert_eq!((diags[0].loc.line, diags[0].loc.column), (12, 8));
    assert!(diags[0].message.contains("invalid since"), "{diags:?}");
}

#[test]
fn the_example_policy_has_no_errors() {
    let policy = compile(&PolicySource::embedded(), now()).unwrap();
    let findings = lint(&policy, now());
    assert!(!fails(&findings, Level::Error), "{}", text(&findings));
}

#[test]
fn fail_on_thresholds() {
    let f = lint_service("mode: dry-run\n");
    assert_eq!(levels(&f, "EGR012"), [Level::Note]);
    assert!(!fails(&f, Level::Warning), "a note never fails");
    let f = lint_docs("kind: MeshDefaults\ntrustDomain: corp.example\n", &service(""));
    assert!(fails(&f, Level::Warning) && !fails(&f, Level::Error));
}

#[test]
fn text_and_json_shapes() {
    let f = lint_docs(MESH, "kind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\n");
    assert_eq!(text(&f), "p.yaml:8:10: warning[EGR007]: service `s` has no owner\n  hint: Add `owner: TEAM`.\n");
    let j = json(&f);
    assert_eq!(j[0]["id"], "EGR007");
    assert_eq!(j[0]["severity"], "warning");
    assert_eq!(j[0]["line"], 8);
}

/// `integration/lint/anti-patterns`: a policy that compiles and shows every check.
fn fixture() -> Vec<Finding> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/lint/anti-patterns");
    let policy = compile(&PolicySource::from_dir(&dir).unwrap(), now()).unwrap();
    lint(&policy, now())
}

#[test]
fn the_fixture_shows_every_check() {
    let findings = fixture();
    for c in CHECKS {
        assert!(findings.iter().any(|f| f.id == c.id), "{} missing:\n{}", c.id, text(&findings));
    }
    let sorted = findings.windows(2).all(|w| w[0].loc <= w[1].loc);
    assert!(sorted, "sorted by file and line");
}

fn sarif_validator() -> jsonschema::Validator {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/integration/lint/sarif-schema-2.1.0.json");
    let schema: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    jsonschema::validator_for(&schema).expect("the SARIF 2.1.0 schema compiles")
}

#[test]
fn sarif_output_is_valid_sarif_2_1_0() {
    let validator = sarif_validator();
    for findings in [fixture(), Vec::new()] {
        let log = sarif(&findings, None);
        let errors: Vec<String> =
            validator.iter_errors(&log).map(|e| format!("{} at {}", e, e.instance_path())).collect();
        assert!(errors.is_empty(), "{errors:#?}\n{log:#}");
        assert_eq!(log["version"], "2.1.0");
        let run = &log["runs"][0];
        assert_eq!(run["tool"]["driver"]["name"], "egressd");
        assert_eq!(run["tool"]["driver"]["rules"].as_array().unwrap().len(), CHECKS.len());
        assert_eq!(run["results"].as_array().unwrap().len(), findings.len());
    }
    let log = sarif(&fixture(), Some(std::path::Path::new(env!("CARGO_MANIFEST_DIR"))));
    let result = &log["runs"][0]["results"][0];
    let uri = result["locations"][0]["physicalLocation"]["artifactLocation"]["uri"].as_str().unwrap();
    assert_eq!(uri, "integration/lint/anti-patterns/mesh.yaml");
    assert!(
        sarif(&fixture(), None)["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["artifactLocation"]["uri"]
            .as_str()
            .unwrap()
            .starts_with("file:///")
    );
    let rule = &log["runs"][0]["tool"]["driver"]["rules"][result["ruleIndex"].as_u64().unwrap() as usize];
    assert_eq!(rule["id"], result["ruleId"]);
}

#[test]
fn the_sarif_schema_rejects_what_is_not_sarif() {
    // So that the test above can fail: the validator does bite.
    let validator = sarif_validator();
    let mut log = sarif(&fixture(), None);
    log["version"] = "2.0.0".into();
    assert!(!validator.is_valid(&log));
    let mut log = sarif(&fixture(), None);
    log["runs"][0]["results"][0]["level"] = "fatal".into();
    assert!(!validator.is_valid(&log));
    let mut log = sarif(&fixture(), None);
    log["runs"][0]["results"][0]["locations"][0]["physicalLocation"]["region"]["startLine"] = 0.into();
    assert!(!validator.is_valid(&log));
}
