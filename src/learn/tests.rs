//! Learning end to end: flows -> proposal -> edited files -> a policy that allows those flows.

use std::path::Path;

use similar::{ChangeTag, TextDiff};

use super::*;
use crate::flows::replay::replay;
use crate::flows::{FlowTable, Observation, SubjectRef};
use crate::policy::{PolicySource, Protocol, compile};

/// 2026-11-18T11:06:40Z.
const T0: i64 = 1_795_000_000_000;
/// When learning runs (unix seconds): a day later.
const NOW: i64 = T0 / 1000 + 86_400;
const API: &str = "spiffe://corp.example/ns/payments/sa/api";
const WORKER: &str = "spiffe://corp.example/ns/payments/sa/worker";
const ETL: &str = "spiffe://corp.example/ns/batch/sa/etl";

const MESH: &str = "kind: MeshDefaults
trustDomain: corp.example
deny:
  - ports: [22]
    justification: no remote shells
  - host: pastebin.com
    justification: paste sites are an exfiltration channel
";

const PAYMENTS: &str = "kind: ServicePolicy
service: payments
identities:
  - spiffe://corp.example/ns/payments/sa/api
  - spiffe://corp.example/ns/payments/sa/worker
mode: dry-run
allow:
  - host: api.stripe.com
    ports: [443]
    justification: card processing
deny:
  - host: uploads.stripe.com
    justification: no file uploads to the processor
";

/// One observed request: (subject, workload, host, port).
type Seen<'a> = (SubjectRef<'a>, &'a str, &'a str, u16);

fn pay<'a>(host: &'a str, port: u16) -> Seen<'a> {
    (SubjectRef::Service("payments"), API, host, port)
}

fn flows(seen: &[Seen<'_>]) -> Vec<Flow> {
    let mut table = FlowTable::default();
    for (i, &(subject, workload, host, port)) in seen.iter().enumerate() {
        table.record(&Observation {
            time_ms: T0 + 1000 * i as i64,
            subject,
            workload: Some(workload),
            host,
            port,
            protocol: if port == 443 { Protocol::Https } else { Protocol::Tcp },
            // What was decided then; replay decides again.
            decision: Outcome::WouldDeny,
            reason: "no-matching-allow",
            rule: None,
        });
    }
    table.into_sorted()
}

fn replayed(policy: &CompiledPolicy, flows: &[Flow]) -> Vec<(Flow, Replayed)> {
    flows.iter().map(|f| (f.clone(), replay(policy, f, NOW))).collect()
}

fn in_text_policy() -> CompiledPolicy {
    compile(&PolicySource::from_text("p.yaml", &format!("{MESH}---\n{PAYMENTS}")), 0).unwrap()
}

fn learn(seen: &[Seen<'_>], options: &LearnOptions) -> Proposal {
    let policy = in_text_policy();
    propose(&replayed(&policy, &flows(seen)), &policy, options, NOW)
}

/// `service: target [ports]` per proposed allow, new services as `new name: ...`.
fn summary(p: &Proposal) -> Vec<String> {
    let ports = |a: &ProposedAllow| a.ports.as_ref().map_or("any port".to_string(), |p| format!("{p:?}"));
    let mut out: Vec<String> = p
        .services
        .iter()
        .flat_map(|s| s.allows.iter().map(move |a| format!("{}: {} {}", s.service, a.target, ports(a))))
        .collect();
    out.extend(
        p.new_services
            .iter()
            .flat_map(|s| s.allows.iter().map(move |a| format!("new {}: {} {}", s.name, a.target, ports(a)))),
    );
    out
}

type HostPort = (String, u16);

fn names(prefix: &[&str], parent: &str) -> Vec<String> {
    prefix.iter().map(|p| format!("{p}.{parent}")).collect()
}

#[test]
fn proposals_for_a_table_of_flows() {
    let five = ["a", "b", "c", "d", "e"];
    // (what, hosts and ports seen, the allows expected)
    let cases: Vec<(&str, Vec<HostPort>, Vec<&str>)> = vec![
        ("already allowed", vec![("api.stripe.com".into(), 443)], vec![]),
        (
            "exact host, observed ports sorted",
            vec![("api.partner.test".into(), 8443), ("api.partner.test".into(), 443)],
            vec!["payments: api.partner.test [443, 8443]"],
        ),
        (
            "five siblings collapse",
            names(&five, "api.vendor.test").into_iter().map(|n| (n, 443)).collect(),
            vec!["payments: *.api.vendor.test [443]"],
        ),
        (
            "four siblings do not",
            names(&five[..4], "api.vendor.test").into_iter().map(|n| (n, 443)).collect(),
            vec![
                "payments: a.api.vendor.test [443]",
                "payments: b.api.vendor.test [443]",
                "payments: c.api.vendor.test [443]",
                "payments: d.api.vendor.test [443]",
            ],
        ),
        (
            "siblings on different ports are not alike",
            vec![
                ("a.api.vendor.test".into(), 443),
                ("b.api.vendor.test".into(), 443),
                ("c.api.vendor.test".into(), 443),
                ("d.api.vendor.test".into(), 443),
                ("e.api.vendor.test".into(), 8443),
            ],
            vec![
                "payments: a.api.vendor.test [443]",
                "payments: b.api.vendor.test [443]",
                "payments: c.api.vendor.test [443]",
                "payments: d.api.vendor.test [443]",
                "payments: e.api.vendor.test [8443]",
            ],
        ),
        (
            "private addresses: single ones and a full /24",
            vec![
                ("10.1.2.3".into(), 5432),
                ("10.1.2.4".into(), 5432),
                ("10.9.9.1".into(), 6379),
                ("10.9.9.2".into(), 6379),
                ("10.9.9.3".into(), 6379),
                ("10.9.9.4".into(), 6379),
                ("10.9.9.5".into(), 6379),
                ("100.64.0.7".into(), 443),
                ("fd00::1".into(), 443),
            ],
            vec![
                "payments: 10.1.2.3/32 [5432]",
                "payments: 10.1.2.4/32 [5432]",
                "payments: 10.9.9.0/24 [6379]",
                "payments: 100.64.0.7/32 [443]",
                "payments: fd00::1/128 [443]",
            ],
        ),
    ];
    for (what, seen, expected) in cases {
        let seen: Vec<Seen<'_>> = seen.iter().map(|(h, p)| pay(h, *p)).collect();
        let proposal = learn(&seen, &LearnOptions::default());
        assert_eq!(summary(&proposal), expected, "{what}");
        assert!(proposal.skipped.is_empty(), "{what}: {:?}", proposal.skipped);
    }
}

#[test]
fn no_wildcard_over_public_multi_tenant_suffixes_or_a_registrable_apex() {
    let five = ["a1", "b2", "c3", "d4", "e5"];
    for parent in
        ["s3.amazonaws.com", "s3.us-west-2.amazonaws.com", "github.io", "herokuapp.com", "co.uk", "example.com"]
    {
        let hosts = names(&five, parent);
        let seen: Vec<Seen<'_>> = hosts.iter().map(|h| pay(h, 443)).collect();
        let proposal = learn(&seen, &LearnOptions::default());
        let expected: Vec<String> = hosts.iter().map(|h| format!("payments: {h} [443]")).collect();
        assert_eq!(summary(&proposal), expected, "under {parent}");
    }
    // One level down from the apex is a service's own corner of it.
    let hosts = names(&five, "cdn.example.com");
    let seen: Vec<Seen<'_>> = hosts.iter().map(|h| pay(h, 443)).collect();
    assert_eq!(summary(&learn(&seen, &LearnOptions::default())), ["payments: *.cdn.example.com [443]"]);
}

#[test]
fn min_siblings_and_any_port_options() {
    let hosts = names(&["a", "b", "c"], "api.vendor.test");
    let mut seen: Vec<Seen<'_>> = hosts.iter().map(|h| pay(h, 443)).collect();
    seen.push(pay("a.api.vendor.test", 8443));
    let options = LearnOptions { min_siblings: 3, any_port: true };
    assert_eq!(summary(&learn(&seen, &options)), ["payments: *.api.vendor.test any port"]);
    // Below 2 is 2: one name never becomes a wildcard.
    let one = learn(&[pay("a.api.vendor.test", 443)], &LearnOptions { min_siblings: 0, any_port: false });
    assert_eq!(summary(&one), ["payments: a.api.vendor.test [443]"]);
}

#[test]
fn the_evidence_sums_the_flows_behind_an_allow() {
    let hosts = names(&["a", "b", "c", "d", "e", "f"], "api.vendor.test");
    let mut seen: Vec<Seen<'_>> = hosts.iter().map(|h| pay(h, 443)).collect();
    seen.push((SubjectRef::Service("payments"), WORKER, "a.api.vendor.test", 443));
    let proposal = learn(&seen, &LearnOptions::default());
    let allow = &proposal.services[0].allows[0];
    assert_eq!(allow.evidence.hits, 7);
    assert_eq!(allow.evidence.workloads.len(), 2);
    assert_eq!((allow.evidence.first_seen_ms, allow.evidence.last_seen_ms), (T0, T0 + 6000));
    assert_eq!(allow.evidence.collapsed, hosts);
}

#[test]
fn denied_and_unfixable_flows_are_reported_not_proposed() {
    let proposal = learn(
        &[
            pay("pastebin.com", 443),
            pay("shell.vendor.test", 22),
            pay("uploads.stripe.com", 443),
            pay("127.0.0.1", 8080),
            pay("169.254.1.1", 80),
            pay("8.8.8.8", 53),
            (SubjectRef::Service("ledger"), "spiffe://corp.example/ns/ledger/sa/db", "a.test", 443),
        ],
        &LearnOptions::default(),
    );
    assert!(proposal.is_empty(), "{:?}", summary(&proposal));
    let why: Vec<(String, String)> = proposal
        .skipped
        .iter()
        .map(|s| (format!("{} {}", s.subject.describe(), s.destination), s.why.to_string()))
        .collect();
    let find = |dest: &str| why.iter().find(|(d, _)| d.ends_with(dest)).map(|(_, w)| w.as_str()).unwrap_or("missing");
    assert!(find(" pastebin.com:443/https").starts_with("denied by the mesh-wide rule mesh/deny/1;"));
    assert!(find(" shell.vendor.test:22/tcp").starts_with("denied by the mesh-wide rule mesh/deny/0;"));
    assert_eq!(find(" uploads.stripe.com:443/https"), "denied by the service's own rule payments/deny/0; not proposed");
    assert!(find(" 127.0.0.1:8080/tcp").starts_with("a loopback, link-local"));
    assert!(find(" 169.254.1.1:80/tcp").starts_with("a loopback, link-local"));
    assert!(find(" 8.8.8.8:53/tcp").starts_with("a public IP address: name this destination"));
    assert!(find("ledger a.test:443/https").starts_with("no service claims this caller"));
    assert_eq!(proposal.skipped.len(), 7);
}

#[test]
fn an_unclaimed_identity_gets_a_new_dry_run_service() {
    let seen = [
        (SubjectRef::Unclaimed(ETL), ETL, "etl.vendor.test", 443),
        (SubjectRef::Unclaimed(ETL), ETL, "pastebin.com", 443),
        // Named like an existing service: the new one gets a suffix.
        (SubjectRef::Unclaimed("spiffe://corp.example/payments"), "spiffe://corp.example/payments", "x.test", 443),
    ];
    let proposal = learn(&seen, &LearnOptions::default());
    assert_eq!(summary(&proposal), ["new batch-etl: etl.vendor.test [443]", "new payments-2: x.test [443]"]);
    assert_eq!(proposal.new_services[0].identity, ETL);
    assert!(matches!(proposal.skipped[..], [Skipped { why: NotProposed::MeshDeny { .. }, .. }]));

    let dir = Path::new("/policy");
    let source = PolicySource::from_text("/policy/p.yaml", &format!("{MESH}---\n{PAYMENTS}"));
    let edits = edits(&proposal, &source, dir).unwrap();
    assert_eq!(edits.len(), 2);
    assert_eq!(edits[0].path, dir.join("services/batch-etl.yaml"));
    assert_eq!(edits[0].before, None);
    assert_eq!(
        edits[0].after,
        "# Learned by `egressd learn` from the traffic of spiffe://corp.example/ns/batch/sa/etl,
# which no service claimed. Review it: name the owner, answer each justification's
# question, and move it out of dry-run once it holds.
kind: ServicePolicy
service: batch-etl
owner: TODO
identities:
  - spiffe://corp.example/ns/batch/sa/etl
mode: dry-run
allow:
  # learned: 1 hit from 1 workload, first seen 2026-11-18T11:06:40Z, last seen 2026-11-18T11:06:40Z
  - host: etl.vendor.test
    ports: [443]
    justification: \"TODO: why does batch-etl need etl.vendor.test?\"
"
    );
    let diff = unified_diff(&edits, dir);
    assert!(diff.contains("--- /dev/null\n+++ b/services/batch-etl.yaml\n@@ -0,0 +1,14 @@\n+# Learned by"), "{diff}");
}

// ---- Editing files in place ----

/// A service file in a style of its own: flush list items, three spaces after a dash, block
/// `ports`, a folded justification with a `#` line in it, comments between and after items.
const PAYMENTS_ODD: &str = "# Payments: card processing.
kind: ServicePolicy
service: payments   # the API and its workers
identities:
- spiffe://corp.example/ns/payments/sa/api
- spiffe://corp.example/ns/payments/sa/worker
mode: dry-run
allow:
# the processor
-   host: api.stripe.com
    ports:
    - 443
    justification: >-
      card processing
      # not a comment: part of the folded text

# Denies below: keep them.
deny:
- host: uploads.stripe.com
  justification: 'no uploads'
";

/// Two services in one file, one with `allow: []`, one without `allow`; no final newline.
const TEAM: &str = "kind: ServicePolicy
service: search
identities: [\"spiffe://corp.example/ns/search/sa/indexer\"]
mode: dry-run
allow: []  # nothing yet
---
# The reporting jobs.
kind: ServicePolicy
service: reports
identities:
    - spiffe://corp.example/ns/reports/sa/cron
mode: dry-run
deny:
    - host: pastebin.com
      justification: never";

/// CRLF line endings, the example policy's layout.
const CI: &str = "kind: ServicePolicy\r\nservice: ci\r\nidentities:\r\n  - spiffe://corp.example/ns/ci/*\r\nmode: dry-run\r\nallow:\r\n  - host: github.com\r\n    ports: [443]\r\n    justification: source checkout\r\n";

fn policy_dir() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("services")).unwrap();
    for (name, text) in [
        ("mesh.yaml", MESH),
        ("services/payments.yaml", PAYMENTS_ODD),
        ("services/team.yaml", TEAM),
        ("services/ci.yaml", CI),
    ] {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    dir
}

fn mixed_traffic() -> Vec<Flow> {
    let vendor = names(&["a", "b", "c", "d", "e"], "api.vendor.test");
    let mut seen: Vec<Seen<'_>> = vendor.iter().map(|h| pay(h, 443)).collect();
    seen.extend([
        pay("api.partner.test", 443),
        pay("10.1.2.3", 5432),
        pay("uploads.stripe.com", 443),
        (SubjectRef::Service("search"), "spiffe://corp.example/ns/search/sa/indexer", "index.search.test", 443),
        (SubjectRef::Service("reports"), "spiffe://corp.example/ns/reports/sa/cron", "smtp.mail.test", 587),
        (SubjectRef::Service("ci"), "spiffe://corp.example/ns/ci/sa/builder", "proxy.golang.org", 443),
        (SubjectRef::Unclaimed(ETL), ETL, "etl.vendor.test", 443),
    ]);
    flows(&seen)
}

fn load(dir: &Path) -> (PolicySource, CompiledPolicy) {
    let source = PolicySource::from_dir(dir).unwrap();
    let policy = compile(&source, 0).unwrap_or_else(|e| panic!("{}", crate::policy::format_diagnostics(&e)));
    (source, policy)
}

/// What a reviewer does: answer every `TODO` question.
fn answer_todos(dir: &Path) {
    for file in PolicySource::from_dir(dir).unwrap().files {
        std::fs::write(&*file.name, file.text.replace("\"TODO: why", "\"reviewed: why")).unwrap();
    }
}

fn edits_for(dir: &Path) -> Vec<FileEdit> {
    let (source, policy) = load(dir);
    let proposal = propose(&replayed(&policy, &mixed_traffic()), &policy, &LearnOptions::default(), NOW);
    edits(&proposal, &source, dir).unwrap()
}

/// The lines `after` removed from `before`, and those it added (by a line diff).
fn changes(before: &str, after: &str) -> (Vec<String>, Vec<String>) {
    let (mut removed, mut added) = (Vec::new(), Vec::new());
    for change in TextDiff::from_lines(before, after).iter_all_changes() {
        match change.tag() {
            ChangeTag::Delete => removed.push(change.value().to_string()),
            ChangeTag::Insert => added.push(change.value().to_string()),
            ChangeTag::Equal => {}
        }
    }
    (removed, added)
}

#[test]
fn edits_only_insert_lines_and_match_each_files_layout() {
    let dir = policy_dir();
    let edits = edits_for(dir.path());
    let paths: Vec<String> =
        edits.iter().map(|e| e.path.strip_prefix(dir.path()).unwrap().display().to_string()).collect();
    assert_eq!(paths, ["services/batch-etl.yaml", "services/ci.yaml", "services/payments.yaml", "services/team.yaml"]);

    let payments = &edits[2];
    assert_eq!(payments.before.as_deref(), Some(PAYMENTS_ODD));
    assert_eq!(
        payments.after,
        PAYMENTS_ODD.replace(
            "      # not a comment: part of the folded text\n",
            "      # not a comment: part of the folded text
# learned: 5 hits from 1 workload, first seen 2026-11-18T11:06:40Z, last seen 2026-11-18T11:06:44Z
# names: a.api.vendor.test, b.api.vendor.test, c.api.vendor.test, d.api.vendor.test, e.api.vendor.test
-   host: \"*.api.vendor.test\"
    ports: [443]
    justification: \"TODO: why does payments need *.api.vendor.test?\"
# learned: 1 hit from 1 workload, first seen 2026-11-18T11:06:45Z, last seen 2026-11-18T11:06:45Z
-   host: api.partner.test
    ports: [443]
    justification: \"TODO: why does payments need api.partner.test?\"
# learned: 1 hit from 1 workload, first seen 2026-11-18T11:06:46Z, last seen 2026-11-18T11:06:46Z
-   cidr: 10.1.2.3/32
    ports: [5432]
    justification: \"TODO: why does payments need 10.1.2.3/32?\"
"
        )
    );
    let (removed, _) = changes(PAYMENTS_ODD, &payments.after);
    assert!(removed.is_empty(), "{removed:?}");

    let ci = &edits[1];
    let (removed, added) = changes(CI, &ci.after);
    assert!(removed.is_empty(), "{removed:?}");
    assert!(added.iter().all(|l| l.ends_with("\r\n")), "CRLF kept: {added:?}");
    assert!(ci.after.starts_with(CI), "appended at the end of the allow list, which ends the file");
    assert!(added[1].starts_with("  - host: proxy.golang.org\r\n"), "{added:?}");

    let team = &edits[3];
    let (removed, added) = changes(TEAM, &team.after);
    // Only `allow: []` gives way (to `allow:` and the items), and the unterminated last line
    // is the same line once it ends in a newline.
    assert_eq!(removed, ["allow: []  # nothing yet\n", "      justification: never"]);
    assert_eq!(added[0], "allow:  # nothing yet\n");
    assert_eq!(
        added[2], "  - host: index.search.test\n",
        "the file's first list style (flow) gives no layout: default"
    );
    assert!(
        team.after.ends_with(
            "      justification: never
allow:
    # learned: 1 hit from 1 workload, first seen 2026-11-18T11:06:49Z, last seen 2026-11-18T11:06:49Z
    - host: smtp.mail.test
      ports: [587]
      justification: \"TODO: why does reports need smtp.mail.test?\"
"
        ),
        "{}",
        team.after
    );
}

#[test]
fn the_edited_policy_needs_its_todos_answered_then_allows_the_flows_and_learns_nothing_more() {
    let dir = policy_dir();
    let edits = edits_for(dir.path());
    apply(&edits).unwrap();

    // As proposed, the policy does not load: a TODO is not a justification.
    let errors = compile(&PolicySource::from_dir(dir.path()).unwrap(), 0).unwrap_err();
    assert!(errors.iter().all(|d| d.message.contains("placeholder")), "{errors:?}");
    assert_eq!(errors.len(), 7);

    answer_todos(dir.path());
    let (_, policy) = load(dir.path());
    let again = replayed(&policy, &mixed_traffic());
    for (flow, r) in &again {
        let expected = if flow.key.host == "uploads.stripe.com" { Outcome::WouldDeny } else { Outcome::Allow };
        assert_eq!(r.outcome, expected, "{} {}: {}", flow.key.subject.describe(), flow.key.destination(), r.summary());
    }
    // Existing rules keep their ids: the new ones come after them.
    let stripe = again.iter().find(|(f, _)| f.key.host == "uploads.stripe.com").unwrap();
    assert_eq!(stripe.1.rule.as_ref().unwrap().id, "payments/deny/0");
    let search = again.iter().find(|(f, _)| f.key.host == "index.search.test").unwrap();
    assert_eq!(search.1.rule.as_ref().unwrap().id, "search/allow/0");
    let ci = policy.rules.iter().find(|r| r.id == "ci/allow/0").unwrap();
    assert_eq!(ci.target, "github.com");

    let proposal = propose(&again, &policy, &LearnOptions::default(), NOW);
    assert!(proposal.is_empty(), "{:?}", summary(&proposal));
}

#[test]
fn layouts_learn_cannot_edit_safely_are_errors() {
    let service = |body: &str| {
        let text = format!("{MESH}---\nkind: ServicePolicy\nservice: payments\nidentities: [\"{API}\"]\n{body}");
        let source = PolicySource::from_text("p.yaml", &text);
        let policy = compile(&source, 0).unwrap();
        let proposal =
            propose(&replayed(&policy, &flows(&[pay("a.test", 443)])), &policy, &LearnOptions::default(), NOW);
        edits(&proposal, &source, Path::new("."))
    };
    let flow_style = service("allow: [{host: b.test, justification: b}]\n").unwrap_err();
    assert!(matches!(&flow_style, EditError::NotABlockList { line: 12, .. }), "{flow_style}");
    assert!(flow_style.to_string().starts_with("p.yaml:12: `allow: [{host: b.test, justification: b}]` of service"));
    assert!(service("allow:\n  - host: b.test\n    justification: b\n").is_ok());

    // A source that changed since it was compiled: the document is not where the loader saw it.
    let source = PolicySource::from_text("p.yaml", &format!("{MESH}---\n{PAYMENTS}"));
    let policy = compile(&source, 0).unwrap();
    let proposal = propose(&replayed(&policy, &flows(&[pay("a.test", 443)])), &policy, &LearnOptions::default(), NOW);
    let shifted = PolicySource::from_text("p.yaml", &format!("# new header\n{MESH}---\n{PAYMENTS}"));
    let moved = edits(&proposal, &shifted, Path::new(".")).unwrap_err();
    assert!(matches!(moved, EditError::DocumentMoved { line: 9, .. }), "{moved}");
    let missing = edits(&proposal, &PolicySource::from_text("q.yaml", MESH), Path::new(".")).unwrap_err();
    assert!(matches!(missing, EditError::FileNotRead { .. }), "{missing}");
}
