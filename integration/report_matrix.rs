//! `egressd report matrix` as a user runs it: the real binary on `mesh-config/` (the example
//! policy) in each format, with and without an audit log, and its HTML page loaded by a real
//! headless Chromium: the script sorts and filters from the URL fragment, marks the page ready,
//! logs nothing to the console, and policy text stays text. Chromium is required: without it
//! the browser tests fail and say how to install it.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_egressd");
const MESH_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/mesh-config");
/// Compiled rules of `mesh-config/`: 3 mesh denies, checkout 3 + 1, ci-runners 5 (a group) + 3,
/// payments 3 + 1, search 5 (a group) + 1.
const RULES: usize = 25;
const PAY_API: &str = "spiffe://corp.example/ns/payments/sa/api";
const CHECKOUT_WEB: &str = "spiffe://corp.example/ns/checkout/sa/web";
const CHROMIUM: &str = "chromium";
const BROWSER_DEADLINE: Duration = Duration::from_secs(30);

fn egressd(args: &[&str]) -> Output {
    let output = Command::new(BIN).args(["report", "matrix"]).args(args).output().expect("run egressd");
    assert!(
        output.status.success(),
        "egressd report matrix {args:?}: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stdout(args: &[&str]) -> String {
    String::from_utf8(egressd(args).stdout).expect("UTF-8 output")
}

fn json(args: &[&str]) -> serde_json::Value {
    let text = stdout(&[args, &["--format", "json"]].concat());
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("--format json: {e}\n{text}"))
}

fn rule_ids(matrix: &serde_json::Value) -> Vec<String> {
    rows(matrix).iter().map(|r| r["ruleId"].as_str().unwrap_or("?").to_string()).collect()
}

fn rows(matrix: &serde_json::Value) -> &Vec<serde_json::Value> {
    matrix["rows"].as_array().expect("rows")
}

fn row<'a>(matrix: &'a serde_json::Value, rule: &str) -> &'a serde_json::Value {
    rows(matrix).iter().find(|r| r["ruleId"] == rule).unwrap_or_else(|| panic!("no row {rule}"))
}

/// An audit log of `serve --audit-log` records, `age` seconds old each.
fn audit_log(dir: &Path) -> PathBuf {
    let now = egressd::clock::unix_now();
    let time = |age: i64| egressd::flows::json::rfc3339((now - age) * 1000);
    let record = |age: i64, id: &str, service: &str, host: &str, port: u16, protocol: &str, rule: &str| {
        format!(
            r#"{{"time":"{}","egress.check":"http","egress.spiffe_id":"{id}","egress.service":"{service}","server.address":"{host}","egress.protocol":"{protocol}","egress.decision":"allow","egress.mode":"enforce","egress.rule.id":"{rule}","egress.reason":"allowed","server.port":{port},"egress.enforced":true}}"#,
            time(age)
        )
    };
    let lines = [
        record(3600, PAY_API, "payments", "api.stripe.com", 443, "https", "payments/allow/0"),
        record(3000, PAY_API, "payments", "api.stripe.com", 443, "https", "payments/allow/0"),
        record(60, PAY_API, "payments", "api.stripe.com", 443, "https", "payments/allow/0"),
        record(120, PAY_API, "payments", "intake.datadoghq.com", 443, "https", "payments/allow/1/observability-saas/0"),
        record(600, CHECKOUT_WEB, "checkout", "hooks.slack.com", 443, "https", "checkout/allow/2"),
        record(600, CHECKOUT_WEB, "checkout", "hooks.slack.com", 443, "https", "checkout/allow/2"),
        // Forty days ago: outside the 30-day window, so last seen but no hits.
        record(40 * 86_400, PAY_API, "payments", "10.20.3.4", 5432, "tcp", "payments/allow/2"),
    ];
    let path = dir.join("audit.log");
    std::fs::write(&path, lines.join("\n") + "\n").expect("write audit log");
    path
}

#[test]
fn markdown_has_the_header_every_rule_and_the_dependency_summary() {
    let md = stdout(&["--policy", MESH_CONFIG]);
    assert!(md.starts_with("# Egress allowlist matrix\n"), "{md}");
    assert!(md.contains("- Policy version: `sha256:"), "{md}");
    assert!(md.contains("- Generated: 20"), "{md}");
    assert!(md.contains("- Hits: not included"), "{md}");
    assert!(md.contains(&format!("- Rules: {RULES} (20 allow(s), 5 deny(s))")), "{md}");
    let rule_lines = md.lines().filter(|l| l.contains("mesh-config/") && l.starts_with("| ")).count();
    assert_eq!(rule_lines, RULES, "{md}");
    assert!(!md.contains("Last seen"), "no hit columns without flows");
    assert!(md.contains(
        "| (mesh) |  |  |  |  | deny | pastebin.com | host | any | any | paste sites are a common exfiltration channel (SEC-212) |"
    ));
    assert!(md.contains(
        "| payments | team-payments | canary | 3 | 1 | datadoghq.com (1), stripe.com (1) | 10.20.0.0/16 (1) |"
    ));
    assert!(md.contains("| checkout | team-checkout | enforce | 3 | 1 | partner.test (2), slack.com (1) |  |"), "{md}");
}

#[test]
fn csv_is_one_row_per_rule_under_a_header() {
    let text = stdout(&["--policy", MESH_CONFIG, "--format", "csv"]);
    let mut reader = csv::Reader::from_reader(text.as_bytes());
    let headers: Vec<String> = reader.headers().expect("header row").iter().map(String::from).collect();
    assert_eq!(
        headers,
        [
            "service",
            "owner",
            "mode",
            "identities",
            "group",
            "action",
            "destination",
            "kind",
            "ports",
            "protocols",
            "justification",
            "expires",
            "ruleId",
            "location"
        ]
    );
    let records: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().expect("RFC 4180 rows");
    assert_eq!(records.len(), RULES);
    let stripe = records.iter().find(|r| r.get(12) == Some("payments/allow/0")).expect("payments/allow/0");
    let fields: Vec<&str> = stripe.iter().collect();
    assert_eq!(
        fields,
        [
            "payments",
            "team-payments",
            "canary",
            "spiffe://corp.example/ns/payments/sa/api spiffe://corp.example/ns/payments/sa/worker",
            "",
            "allow",
            "api.stripe.com",
            "host",
            "443",
            "any",
            "card processing (PAY-123)",
            "2027-06-30",
            "payments/allow/0",
            "mesh-config/services/payments.yaml:11:5"
        ]
        .map(|f| f.replace("mesh-config/", &format!("{MESH_CONFIG}/")))
    );
    let metadata = records.iter().find(|r| r.get(12) == Some("mesh/deny/1")).expect("mesh/deny/1");
    assert_eq!(
        metadata.get(10),
        Some("cloud instance metadata is reachable only from the node, never through egress"),
        "a comma is quoted and comes back"
    );
}

#[test]
fn json_lists_rules_in_order_and_the_service_inventory() {
    let matrix = json(&["--policy", MESH_CONFIG]);
    let ids = rule_ids(&matrix);
    assert_eq!(ids.len(), RULES);
    assert_eq!(&ids[..5], ["mesh/deny/0", "mesh/deny/1", "mesh/deny/2", "checkout/allow/0", "checkout/allow/1"]);
    assert_eq!(ids[6], "checkout/deny/0", "a service's allows, then its denies");
    assert!(matrix.get("hits").is_none());
    let datadog = row(&matrix, "payments/allow/1/observability-saas/0");
    assert_eq!(datadog["group"], "observability-saas");
    assert_eq!(datadog["kind"], "wildcard");
    assert_eq!(datadog["protocols"], serde_json::json!(["https", "tls"]));
    assert_eq!(row(&matrix, "mesh/deny/0")["kind"], "any");
    assert_eq!(row(&matrix, "mesh/deny/0")["service"], "(mesh)");
    let services: Vec<&str> =
        matrix["services"].as_array().expect("services").iter().filter_map(|s| s["service"].as_str()).collect();
    assert_eq!(services, ["checkout", "ci-runners", "payments", "search"]);
}

#[test]
fn an_audit_log_gives_each_rule_its_hits_and_last_seen() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = audit_log(dir.path());
    let log = log.to_str().expect("UTF-8 path");
    let matrix = json(&["--policy", MESH_CONFIG, "--audit-log", log]);
    assert_eq!(matrix["hits"]["window"], "30d");
    assert_eq!((&matrix["hits"]["flows"], &matrix["hits"]["flowsInWindow"]), (&4.into(), &3.into()));
    assert_eq!(row(&matrix, "payments/allow/0")["hits"], 3);
    assert_eq!(row(&matrix, "checkout/allow/2")["hits"], 2);
    assert_eq!(row(&matrix, "payments/allow/1/observability-saas/0")["hits"], 1);
    let ledger = row(&matrix, "payments/allow/2");
    assert_eq!(ledger["hits"], 0, "seen before the window only");
    assert!(ledger["lastSeen"].as_str().is_some_and(|t| t.starts_with("20")), "{ledger}");
    assert_eq!(row(&matrix, "search/allow/1")["lastSeen"], serde_json::Value::Null);

    let md = stdout(&["--policy", MESH_CONFIG, "--audit-log", log]);
    assert!(md.contains("| Hits | Last seen |"), "{md}");
    assert!(md.contains("those last seen within 30d"), "{md}");
    let never = md.lines().find(|l| l.contains("| search/allow/1 |")).expect("search/allow/1");
    assert!(never.ends_with("| 0 | never |"), "{never}");

    let csv = stdout(&["--policy", MESH_CONFIG, "--audit-log", log, "--format", "csv"]);
    assert!(csv.lines().next().is_some_and(|h| h.ends_with(",hits,lastSeen")), "{csv}");
}

#[test]
fn a_service_restricts_the_rows_but_keeps_the_mesh_denies() {
    let dir = tempfile::tempdir().expect("temp dir");
    let log = audit_log(dir.path());
    let matrix = json(&["--policy", MESH_CONFIG, "--audit-log", log.to_str().expect("UTF-8"), "--service", "payments"]);
    assert_eq!(
        rule_ids(&matrix),
        [
            "mesh/deny/0",
            "mesh/deny/1",
            "mesh/deny/2",
            "payments/allow/0",
            "payments/allow/1/observability-saas/0",
            "payments/allow/2",
            "payments/deny/0"
        ]
    );
    assert_eq!(matrix["services"].as_array().map(Vec::len), Some(1));

    let unknown = Command::new(BIN)
        .args(["report", "matrix", "--policy", MESH_CONFIG, "--service", "nope"])
        .output()
        .expect("run egressd");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("--service nope: no such service"));
}

#[test]
fn output_goes_to_the_named_file() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("matrix.md");
    let out = egressd(&["--policy", MESH_CONFIG, "-o", path.to_str().expect("UTF-8")]);
    assert!(out.stdout.is_empty());
    let md = std::fs::read_to_string(&path).expect("written");
    assert!(md.starts_with("# Egress allowlist matrix"));
}

/// What a headless Chromium made of a page: the DOM after its script ran, and its log.
struct Loaded {
    dom: String,
    stderr: String,
}

/// Loads `page#fragment` in headless Chromium (profile and output inside `dir`).
fn chromium(dir: &Path, page: &Path, fragment: &str) -> Loaded {
    let profile = dir.join("chromium-profile");
    let (dom_path, log_path) = (dir.join("dom.html"), dir.join("chromium.log"));
    let url = format!("file://{}#{fragment}", page.display());
    let child = Command::new(CHROMIUM)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0"])
        .args(["--virtual-time-budget=5000", "--no-first-run"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(["--dump-dom", &url])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&dom_path).expect("dom file"))
        .stderr(std::fs::File::create(&log_path).expect("log file"))
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "`{CHROMIUM}` is not on PATH: the HTML matrix is tested in a real headless browser. \
             Install it: apt-get install chromium"
        ),
        Err(e) => panic!("starting {CHROMIUM}: {e}"),
    };
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for chromium") {
            break status;
        }
        if started.elapsed() > BROWSER_DEADLINE {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{CHROMIUM} did not finish {url} within {BROWSER_DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let loaded = Loaded {
        dom: std::fs::read_to_string(&dom_path).expect("dumped DOM"),
        stderr: std::fs::read_to_string(&log_path).unwrap_or_default(),
    };
    assert!(status.success(), "{CHROMIUM} {url}: {status}\n{}", loaded.stderr);
    loaded
}

impl Loaded {
    /// The page logs nothing to the console: a line there is an uncaught exception, a refused
    /// fetch (the Content-Security-Policy) or a `console.error`, all faults.
    fn assert_clean_console(&self) {
        let console: Vec<&str> =
            self.stderr.lines().filter(|l| l.contains("CONSOLE") || l.contains("Uncaught")).collect();
        assert!(console.is_empty(), "console messages:\n{}", console.join("\n"));
    }

    /// An attribute of `<body>` after the script ran.
    fn body_attr(&self, name: &str) -> Option<&str> {
        let start = self.dom.find("<body")?;
        let tag = &self.dom[start..start + self.dom[start..].find('>')?];
        attr(tag, name)
    }

    /// The rule rows in DOM order: rule id, and whether the row is shown.
    fn rows(&self) -> Vec<(String, bool)> {
        self.dom
            .split("<tr ")
            .skip(1)
            .filter_map(|rest| {
                let tag = &rest[..rest.find('>')?];
                let rule = attr(tag, "data-rule")?;
                Some((rule.to_string(), !tag.split_whitespace().any(|a| a == "hidden" || a.starts_with("hidden="))))
            })
            .collect()
    }

    fn shown(&self) -> Vec<String> {
        self.rows().into_iter().filter(|(_, shown)| *shown).map(|(rule, _)| rule).collect()
    }
}

fn attr<'a>(tag: &'a str, name: &str) -> Option<&'a str> {
    let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
    Some(&tag[start..start + tag[start..].find('"')?])
}

/// The matrix of `mesh-config/` with the audit log's hits, as HTML in `dir`, and as JSON.
fn html_with_hits(dir: &Path) -> (PathBuf, serde_json::Value) {
    let log = audit_log(dir);
    let log = log.to_str().expect("UTF-8");
    let page = dir.join("matrix.html");
    egressd(&["--policy", MESH_CONFIG, "--audit-log", log, "--format", "html", "-o", page.to_str().expect("UTF-8")]);
    (page, json(&["--policy", MESH_CONFIG, "--audit-log", log]))
}

#[test]
fn the_html_page_sorts_by_the_fragment_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, matrix) = html_with_hits(dir.path());
    let loaded = chromium(dir.path(), &page, "sort=-hits");
    loaded.assert_clean_console();
    assert_eq!(loaded.body_attr("data-ready"), Some("true"), "the script ran to the end");
    assert_eq!(loaded.body_attr("data-rows"), Some(RULES.to_string().as_str()));

    // Descending hits, ties in matrix order (the sort is stable).
    let mut expected: Vec<(i64, usize, String)> = rows(&matrix)
        .iter()
        .enumerate()
        .map(|(i, r)| (-r["hits"].as_i64().unwrap_or(-1), i, r["ruleId"].as_str().unwrap_or("?").to_string()))
        .collect();
    expected.sort();
    let expected: Vec<String> = expected.into_iter().map(|(_, _, id)| id).collect();
    assert_eq!(&expected[..3], ["payments/allow/0", "checkout/allow/2", "payments/allow/1/observability-saas/0"]);
    let rows = loaded.rows();
    assert_eq!(rows.len(), RULES);
    assert_eq!(rows.into_iter().map(|(id, _)| id).collect::<Vec<_>>(), expected);
    assert!(
        loaded.dom.contains("data-key=\"hits\" data-type=\"num\" aria-sort=\"descending\""),
        "the header shows the sort"
    );

    let ascending = chromium(dir.path(), &page, "sort=destination");
    ascending.assert_clean_console();
    let first: Vec<String> = ascending.rows().into_iter().take(2).map(|(id, _)| id).collect();
    assert_eq!(
        first,
        ["checkout/allow/1", "payments/allow/1/observability-saas/0"],
        "*.cdn.partner.test, *.datadoghq.com"
    );
}

#[test]
fn the_html_page_filters_by_the_fragment_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (page, _) = html_with_hits(dir.path());
    let loaded = chromium(dir.path(), &page, "filter=stripe");
    loaded.assert_clean_console();
    assert_eq!(loaded.body_attr("data-ready"), Some("true"));
    assert_eq!(loaded.shown(), ["payments/allow/0", "payments/deny/0"]);
    assert_eq!(loaded.body_attr("data-rows"), Some("2"));
    assert_eq!(loaded.rows().len(), RULES, "the others are hidden, not removed");
    assert!(loaded.dom.contains("value=\"stripe\"") || loaded.dom.contains("2 of 25 rule(s)"), "the box shows it");

    let both = chromium(dir.path(), &page, "sort=-hits&filter=package%20registries");
    both.assert_clean_console();
    assert_eq!(both.body_attr("data-rows"), Some("10"), "the package-mirrors rows of ci-runners and search");
}

/// A policy whose text is markup: the page must show it, not run it.
#[test]
fn policy_text_is_text_in_a_real_browser() {
    let dir = tempfile::tempdir().expect("temp dir");
    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).expect("policy dir");
    std::fs::write(policy.join("mesh.yaml"), "kind: MeshDefaults\ntrustDomain: corp.example\n").expect("mesh");
    std::fs::write(
        policy.join("svc.yaml"),
        "kind: ServicePolicy\nservice: \"<i>x\"\n\
         identities: [\"spiffe://corp.example/ns/x/sa/y\"]\nallow:\n  - host: api.example.com\n    ports: [443]\n    \
         justification: \"<script>alert(1)</script> & <img src=x onerror=alert(3)>\"\n",
    )
    .expect("service");
    let page = dir.path().join("matrix.html");
    egressd(&["--policy", policy.to_str().expect("UTF-8"), "--format", "html", "-o", page.to_str().expect("UTF-8")]);
    let loaded = chromium(dir.path(), &page, "");
    loaded.assert_clean_console();
    assert_eq!(loaded.body_attr("data-ready"), Some("true"));
    assert_eq!(loaded.dom.matches("<script").count(), 1, "only the page's own script");
    assert!(!loaded.dom.contains("<img"), "{}", loaded.dom);
    // The service name is in attributes too (where a serializer may leave `<` as is): an element
    // made of it would have a closing tag, and the page has no `<i>` of its own.
    assert!(!loaded.dom.contains("</i>"), "{}", loaded.dom);
    assert!(loaded.dom.contains("&lt;script&gt;alert(1)&lt;/script&gt; &amp; &lt;img src=x onerror=alert(3)&gt;"));
    assert!(loaded.dom.contains("<td>&lt;i&gt;x</td>"), "the service cell");
}
