//! Observe, then enforce, end to end: the real `egressd serve` (a subprocess, `--audit-log`,
//! stopped with SIGTERM) answers Envoy-shaped Checks over real gRPC in dry-run with unclaimed
//! callers observed; the real `egressd discover`, `learn --diff/--write`, `validate`,
//! `report impact` and `plan` read what it recorded; the learned policy, once its `TODO`
//! justifications are answered, is served again and enforced. The live flow table is learned from
//! too, with traffic that went through the real Envoy gateway. Every command runs as the binary
//! a user runs, and its exit code, standard output and standard error are what is asserted.

mod support {
    pub mod check;
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod otlp;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

use egressd::flows::live::LiveFlows;
use egressd::telemetry::{Telemetry, TelemetryConfig};
use egressd::testing::http_check;

use support::check::{CheckResponseExt, check, client};
use support::client::proxy_get;
use support::eventually::eventually;
use support::lab::{CHECKOUT, Lab, SEARCH, copy_mesh_config};
use support::otlp::Collector;
use support::server::{http_get, try_http_get};

const PAY_API: &str = "spiffe://corp.example/ns/payments/sa/api";
const PAY_WORKER: &str = "spiffe://corp.example/ns/payments/sa/worker";
/// In the trust domain, claimed by no service.
const ETL: &str = "spiffe://corp.example/ns/batch/sa/etl";
/// Another trust domain: never anyone's flow.
const FOREIGN: &str = "spiffe://other.example/ns/payments/sa/api";
/// Five names under one parent: the default `--min-siblings`.
const SIBLINGS: [&str; 5] =
    ["eu.api.vendor.test", "us.api.vendor.test", "ap.api.vendor.test", "sa.api.vendor.test", "af.api.vendor.test"];
const WAIT: Duration = Duration::from_secs(20);
/// The admin API token `Serve` starts egressd with.
const ADMIN_TOKEN: &str = "tests-0123456789abcdef";

const MESH: &str = "\
# Mesh-wide settings for the observe-learn test.
kind: MeshDefaults
trustDomain: corp.example
mode: dry-run
unclaimedIdentities: observe
deny:
  - cidr: 169.254.169.254/32
    justification: cloud instance metadata hands out the node's credentials
  - host: pastebin.com
    justification: paste sites are an exfiltration channel (SEC-212)
";

/// Comments, a trailing comment, an allow, and a deny list after the allows: learning must
/// insert between them and keep every byte of this.
const PAYMENTS: &str = "\
# Payments: card processing.
# Owned by team-payments; every change is reviewed in #payments-egress.
kind: ServicePolicy
service: payments
owner: team-payments   # on call: payments-oncall
identities:
  - spiffe://corp.example/ns/payments/sa/api
  - spiffe://corp.example/ns/payments/sa/worker
# Observe first.
mode: dry-run
allow:
  # The card processor.
  - host: api.stripe.com
    ports: [443]
    justification: card processing (PAY-123)

# Someone decided against these already.
deny:
  - host: uploads.stripe.com
    justification: file uploads are not card processing
";

// ---- running the binary ----

/// What one `egressd` command did.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "exit {}\n--- stdout\n{}--- stderr\n{}", self.code, self.stdout, self.stderr)
    }
}

fn bin() -> std::process::Command {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"));
    for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "EGRESSD_POLICY", "RUST_LOG"] {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs `egressd ARGS` in `cwd` (a test directory: nothing lands in the repository) to its end.
fn egressd(cwd: &Path, args: &[&str]) -> Run {
    let out = bin().current_dir(cwd).args(args).output().expect("the egressd binary runs");
    Run {
        code: out.status.code().expect("egressd exits, not killed by a signal"),
        stdout: String::from_utf8(out.stdout).expect("UTF-8 stdout"),
        stderr: String::from_utf8(out.stderr).expect("UTF-8 stderr"),
    }
}

/// As `egressd`, from async code whose runtime also serves (the Lab's egressd).
async fn egressd_async(cwd: &Path, args: &[&str]) -> Run {
    let cwd = cwd.to_path_buf();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || egressd(&cwd, &args.iter().map(String::as_str).collect::<Vec<_>>()))
        .await
        .unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

/// `egressd serve` as a subprocess; SIGTERM with `stop` (which must succeed), killed if dropped.
struct Serve {
    child: Option<std::process::Child>,
    grpc: SocketAddr,
    admin: SocketAddr,
    log: PathBuf,
}

impl Serve {
    async fn start(work: &Path, policy: &Path, audit: Option<&Path>) -> Serve {
        let (grpc, admin) = (free_addr(), free_addr());
        let log = work.join(format!("serve-{}.log", grpc.port()));
        let out = std::fs::File::create(&log).unwrap();
        let tokens = work.join("admin-tokens");
        write(&tokens, &format!("tests {ADMIN_TOKEN}\n"));
        let mut cmd = bin();
        cmd.current_dir(work)
            .args(["serve", "--policy", s(policy), "--grpc-listen", &grpc.to_string()])
            .args(["--admin-listen", &admin.to_string()])
            .args(["--break-glass-state", s(&work.join("break-glass.json"))])
            .args(["--admin-tokens", s(&tokens)])
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        if let Some(audit) = audit {
            cmd.args(["--audit-log", s(audit)]);
        }
        let child = cmd.spawn().expect("egressd serve starts");
        let mut serve = Serve { child: Some(child), grpc, admin, log };
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(status) = serve.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("egressd serve exited ({status}) before it was ready:\n{}", serve.log());
            }
            if matches!(try_http_get(admin, "/readyz").await, Ok((200, _))) {
                return serve;
            }
            assert!(tokio::time::Instant::now() < deadline, "egressd serve not ready in {WAIT:?}:\n{}", serve.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, as Kubernetes stops a pod: every decision answered is in the audit log after it.
    async fn stop(mut self) {
        let mut child = self.child.take().unwrap();
        // The shell's builtin kill: /bin/kill (procps) is not on every fresh machine.
        let killed = std::process::Command::new("sh").arg("-c").arg(format!("kill -TERM {}", child.id())).status();
        assert!(killed.unwrap().success());
        let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "egressd exits cleanly on SIGTERM: {status}\n{}", self.log());
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            if std::thread::panicking() {
                eprintln!("egressd serve log:\n{}", self.log());
            }
        }
    }
}

// ---- policies and traffic ----

fn write(path: &Path, text: &str) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// A policy directory: `mesh.yaml` and `services/<name>.yaml` for each (name, text).
fn policy_dir(dir: &Path, mesh: &str, services: &[(&str, &str)]) {
    write(&dir.join("mesh.yaml"), mesh);
    for (name, text) in services {
        write(&dir.join("services").join(format!("{name}.yaml")), text);
    }
}

/// (gRPC code, decision, reason) of an answer.
type Expect = (i32, &'static str, &'static str);

const ALLOWED: Expect = (0, "allow", "allowed");
const WOULD_DENY: Expect = (0, "would-deny", "no-matching-allow");
const UNCLAIMED: Expect = (0, "would-deny", "unknown-service");
const MESH_DENY: Expect = (7, "deny", "mesh-deny");
const UNAUTHENTICATED: Expect = (7, "deny", "unauthenticated");
const DENIED: Expect = (7, "deny", "no-matching-allow");

/// One request of the workloads, and what egressd answers before and after learning.
struct Case {
    from: &'static str,
    method: &'static str,
    authority: String,
    observed: Expect,
    learned: Expect,
    /// The service the learned policy decides it for ("" for none).
    learned_service: &'static str,
}

impl Case {
    fn request(&self) -> CheckRequest {
        http_check(self.from, self.method, &self.authority, &[])
    }
}

/// The traffic of the first test: payments to an allowed host, a new host (three times, two
/// workloads), five siblings, a private and a public address, the mesh floor twice; an unclaimed
/// identity to two hosts; a caller of another trust domain.
fn traffic() -> Vec<Case> {
    let case = |from, method, authority: &str, observed, learned, learned_service| Case {
        from,
        method,
        authority: authority.to_string(),
        observed,
        learned,
        learned_service,
    };
    let mut cases = vec![
        case(PAY_API, "CONNECT", "api.stripe.com:443", ALLOWED, ALLOWED, "payments"),
        case(PAY_WORKER, "CONNECT", "api.stripe.com:443", ALLOWED, ALLOWED, "payments"),
        case(PAY_API, "CONNECT", "events.crm.test:443", WOULD_DENY, ALLOWED, "payments"),
        case(PAY_API, "CONNECT", "events.crm.test:443", WOULD_DENY, ALLOWED, "payments"),
        case(PAY_WORKER, "CONNECT", "events.crm.test:443", WOULD_DENY, ALLOWED, "payments"),
    ];
    for (i, name) in SIBLINGS.iter().enumerate() {
        let from = if i % 2 == 0 { PAY_API } else { PAY_WORKER };
        cases.push(case(from, "CONNECT", &format!("{name}:443"), WOULD_DENY, ALLOWED, "payments"));
    }
    cases.extend([
        case(PAY_WORKER, "CONNECT", "10.1.2.3:5432", WOULD_DENY, ALLOWED, "payments"),
        case(PAY_WORKER, "CONNECT", "[fd12::7]:8443", WOULD_DENY, ALLOWED, "payments"),
        case(PAY_API, "CONNECT", "8.8.8.8:443", WOULD_DENY, DENIED, "payments"),
        case(PAY_API, "CONNECT", "pastebin.com:443", MESH_DENY, MESH_DENY, "payments"),
        case(PAY_WORKER, "GET", "169.254.169.254", MESH_DENY, MESH_DENY, "payments"),
        case(ETL, "CONNECT", "warehouse.data.test:443", UNCLAIMED, ALLOWED, "batch-etl"),
        case(ETL, "GET", "metrics.data.test", UNCLAIMED, ALLOWED, "batch-etl"),
        case(ETL, "CONNECT", "pastebin.com:443", MESH_DENY, MESH_DENY, "batch-etl"),
        case(FOREIGN, "CONNECT", "events.crm.test:443", UNAUTHENTICATED, UNAUTHENTICATED, ""),
    ]);
    cases
}

fn summary(resp: &CheckResponse) -> (i32, String, String) {
    (resp.code(), resp.decision(), resp.reason())
}

fn expected(e: Expect) -> (i32, String, String) {
    (e.0, e.1.to_string(), e.2.to_string())
}

/// Sends `requests` to a served egressd over gRPC; the answers in order.
async fn send(grpc: SocketAddr, requests: impl IntoIterator<Item = CheckRequest>) -> Vec<CheckResponse> {
    let mut c = client(grpc).await;
    let mut answers = Vec::new();
    for req in requests {
        answers.push(check(&mut c, req).await);
    }
    answers
}

/// Serves `policy` with an audit log, sends `requests`, stops the server; the log and the answers.
async fn record(work: &Path, policy: &Path, requests: Vec<CheckRequest>) -> (PathBuf, Vec<CheckResponse>) {
    let audit = work.join("audit.jsonl");
    let server = Serve::start(work, policy, Some(&audit)).await;
    let answers = send(server.grpc, requests).await;
    server.stop().await;
    (audit, answers)
}

// ---- reading outputs ----

/// The lines a unified diff adds (without the `+`), and the lines it removes.
fn diff_lines(diff: &str) -> (Vec<&str>, Vec<&str>) {
    let added = diff.lines().filter(|l| !l.starts_with("+++")).filter_map(|l| l.strip_prefix('+')).collect();
    let removed = diff.lines().filter(|l| l.starts_with('-') && !l.starts_with("---")).collect();
    (added, removed)
}

/// Whether `sub`'s lines appear in `full`'s, in order, each byte for byte.
fn lines_kept_in_order(sub: &str, full: &str) -> bool {
    let mut rest = full.split_inclusive('\n');
    sub.split_inclusive('\n').all(|line| rest.any(|l| l == line))
}

/// The `FILE:LINE:COL` of every `justification: "TODO...` value in the files.
fn todo_locations(files: &[PathBuf]) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for file in files {
        for (i, line) in read(file).lines().enumerate() {
            if let Some(col) = line.find("justification: \"TODO").map(|c| c + "justification: ".len() + 1) {
                found.insert(format!("{}:{}:{col}", file.display(), i + 1));
            }
        }
    }
    found
}

/// Every `justification: "TODO: why does S need X?"` answered, as a reviewer would.
fn answer_todos(file: &Path) {
    let text = read(file);
    let mut out = String::new();
    for line in text.split_inclusive('\n') {
        match line.split_once("justification: \"TODO: why does ") {
            Some((indent, question)) => {
                let what = question.trim_end().trim_end_matches("?\"");
                out.push_str(&format!("{indent}justification: reviewed in SEC-901, {what} for its integrations\n"));
            }
            None => out.push_str(line),
        }
    }
    assert_ne!(out, text, "{} has TODO justifications to answer", file.display());
    std::fs::write(file, out).unwrap();
}

/// The `now:` line `discover` prints under the flow to `destination` (`host:port/protocol`), and
/// the flow's own line.
fn discovered<'t>(stdout: &'t str, destination: &str) -> (&'t str, &'t str) {
    let lines: Vec<&str> = stdout.lines().collect();
    let i = lines
        .iter()
        .position(|l| l.trim_start().starts_with(&format!("{destination} ")))
        .unwrap_or_else(|| panic!("discover lists no flow to {destination}:\n{stdout}"));
    (lines[i], lines[i + 1].trim())
}

fn words(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The audit log without the records to these hosts (and without bad lines).
fn audit_without(audit: &Path, hosts: &[&str], to: &Path) {
    let kept: String = read(audit)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok().map(|v| (l, v)))
        .filter(|(_, v)| !hosts.iter().any(|h| v["server.address"] == *h))
        .map(|(l, _)| format!("{l}\n"))
        .collect();
    std::fs::write(to, kept).unwrap();
}

// ---- the tests ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn observe_then_learn_then_enforce_from_the_audit_log() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let dir = work.join("mesh-config");
    policy_dir(&dir, MESH, &[("payments", PAYMENTS)]);
    let payments = dir.join("services/payments.yaml");
    let etl_file = dir.join("services/batch-etl.yaml");
    assert_eq!(egressd(work, &["validate", s(&dir)]).code, 0);

    // Observe: dry-run lets everything through but the mesh floor and strangers.
    let cases = traffic();
    let audit = work.join("audit.jsonl");
    let server = Serve::start(work, &dir, Some(&audit)).await;
    let answers = send(server.grpc, cases.iter().map(Case::request)).await;
    // The server keeps the same flows in its live table; a stranger's request is nobody's flow.
    let attributed = cases.iter().filter(|c| c.from != FOREIGN).count() as u64;
    let live: serde_json::Value = eventually("the live flow table to hold every decision", WAIT, || async {
        let (status, body) = http_get(server.admin, "/flows").await;
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("GET /flows is JSON");
        let hits: u64 = doc["flows"].as_array().unwrap().iter().map(|f| f["hits"].as_u64().unwrap()).sum();
        (hits >= attributed).then_some(doc)
    })
    .await;
    server.stop().await;
    for (case, answer) in cases.iter().zip(&answers) {
        assert_eq!(summary(answer), expected(case.observed), "{} {} {}", case.from, case.method, case.authority);
    }
    let records = read(&audit).lines().count();
    assert_eq!(records, cases.len(), "one audit record per decision");
    // A crash tore the last record, and someone appended junk.
    let mut text = read(&audit);
    text.push_str("{\"time\":\"2026-11-21T20:1\n");
    text.push_str("not a record at all\n");
    std::fs::write(&audit, text).unwrap();
    let input = ["--policy", s(&dir), "--audit-log", s(&audit)];

    // Discover: the flows, with what today's policy does to each; bad lines named, not fatal.
    let discover = egressd(work, &[&["discover"][..], &input].concat());
    assert_eq!(discover.code, 0, "{discover:?}");
    let out = &discover.stdout;
    assert!(out.contains("payments: 12 destination(s), 15 request(s)"), "{discover:?}");
    assert!(out.contains(&format!("unclaimed {ETL}: 3 destination(s), 3 request(s)")), "{discover:?}");
    assert!(!out.contains("other.example"), "a stranger's requests are nobody's flow: {discover:?}");
    let (line, now) = discovered(out, "events.crm.test:443/https");
    assert_eq!(words(line)[1..5], ["3", "hits", "2", "workload(s)"], "{line}");
    assert_eq!(now, "now: would-deny: no-matching-allow");
    let (_, now) = discovered(out, "api.stripe.com:443/https");
    assert!(now.starts_with("now: allowed by payments/allow/0 ("), "{now}");
    assert!(now.ends_with("services/payments.yaml:13:5)"), "{now}");
    for dest in ["10.1.2.3:5432/tcp", "8.8.8.8:443/https", "eu.api.vendor.test:443/https"] {
        assert_eq!(discovered(out, dest).1, "now: would-deny: no-matching-allow", "{dest}");
    }
    let (_, now) = discovered(out, "pastebin.com:443/https");
    assert!(now.starts_with("now: deny: mesh-deny by mesh/deny/1 ("), "{now}");
    assert_eq!(discovered(out, "warehouse.data.test:443/https").1, "now: would-deny: unknown-service");
    assert_eq!(discovered(out, "metrics.data.test:80/http").1, "now: would-deny: unknown-service");
    let err = &discover.stderr;
    let audit_path = audit.display();
    assert!(err.contains(&format!("skipped {audit_path}:{}: not a decision record", records + 1)), "{err}");
    assert!(err.contains(&format!("skipped {audit_path}:{}: not a decision record", records + 2)), "{err}");
    assert!(
        err.contains(&format!("read {records} record(s) from 1 file(s): 15 flow(s); skipped 2 bad line(s)")),
        "{err}"
    );
    assert!(err.contains("1 without an accepted identity or destination"), "the stranger: {err}");

    // The same as JSON.
    let json = egressd(work, &[&["discover"][..], &input, &["--format", "json"]].concat());
    assert_eq!(json.code, 0, "{json:?}");
    let flows: Vec<serde_json::Value> = serde_json::from_str(&json.stdout).expect("discover --format json is JSON");
    assert_eq!(flows.len(), 15);
    let events = flows.iter().find(|f| f["host"] == "events.crm.test").unwrap();
    assert_eq!(events["service"], "payments");
    assert_eq!((events["port"].as_u64(), events["protocol"].as_str()), (Some(443), Some("https")));
    assert_eq!(events["hits"], 3);
    assert_eq!(events["workloads"], serde_json::json!([PAY_API, PAY_WORKER]));
    assert_eq!(
        events["decisions"],
        serde_json::json!([{"decision": "would-deny", "reason": "no-matching-allow", "count": 3}])
    );
    assert_eq!(events["policy"]["decision"], "would-deny");
    // The audit log and the live table saw the same flows.
    let key = |f: &serde_json::Value| {
        let who = if f["service"].is_string() { &f["service"] } else { &f["identity"] };
        (
            who.to_string(),
            f["host"].to_string(),
            f["port"].to_string(),
            f["protocol"].to_string(),
            f["hits"].to_string(),
            f["workloads"].to_string(),
            f["decisions"].to_string(),
        )
    };
    let from_log: Vec<_> = flows.iter().map(key).collect();
    let from_table: Vec<_> = live["flows"].as_array().unwrap().iter().map(key).collect();
    assert_eq!(from_log, from_table);
    let etl: Vec<_> = flows.iter().filter(|f| f["identity"] == ETL).collect();
    assert_eq!(etl.len(), 3);
    assert!(etl.iter().all(|f| f.get("service").is_none()), "{etl:?}");

    // Learn, as a diff.
    let learn_diff = [&["learn"][..], &input, &["--diff"]].concat();
    let diff = egressd(work, &learn_diff);
    assert_eq!(diff.code, 0, "{diff:?}");
    let patch = &diff.stdout;
    assert!(
        patch.contains("diff --git a/services/payments.yaml b/services/payments.yaml\n--- a/services/payments.yaml\n+++ b/services/payments.yaml\n"),
        "{diff:?}"
    );
    assert!(
        patch.contains("diff --git a/services/batch-etl.yaml b/services/batch-etl.yaml\nnew file mode 100644\n--- /dev/null\n+++ b/services/batch-etl.yaml\n"),
        "{diff:?}"
    );
    assert_eq!(patch.matches("diff --git").count(), 2, "{diff:?}");
    let (added, removed) = diff_lines(patch);
    assert!(removed.is_empty(), "learning only adds lines: {removed:?}");
    let position = |wanted: &str| {
        added.iter().position(|l| *l == wanted).unwrap_or_else(|| panic!("the diff does not add `{wanted}`:\n{patch}"))
    };
    // payments: the wildcard over the five siblings (hosts sort before it), the exact new host, the
    // private address as a /32, each with its observed ports; batch-etl's two hosts.
    let wildcard = position("  - host: \"*.api.vendor.test\"");
    assert_eq!(added[wildcard + 1], "    ports: [443]");
    assert_eq!(added[wildcard + 2], "    justification: \"TODO: why does payments need *.api.vendor.test?\"");
    assert_eq!(
        added[wildcard - 1],
        "  # names: af.api.vendor.test, ap.api.vendor.test, eu.api.vendor.test, sa.api.vendor.test, us.api.vendor.test"
    );
    assert!(added[wildcard - 2].starts_with("  # learned: 5 hits from 2 workloads, first seen "), "{patch}");
    let exact = position("  - host: events.crm.test");
    assert_eq!(added[exact + 1], "    ports: [443]");
    assert!(added[exact - 1].starts_with("  # learned: 3 hits from 2 workloads"), "{patch}");
    let cidr = position("  - cidr: 10.1.2.3/32");
    assert_eq!(added[cidr + 1], "    ports: [5432]");
    assert!(wildcard < exact && exact < cidr, "{patch}");
    // An IPv6 address is quoted (YAML would misread the colons otherwise).
    let v6 = position("  - cidr: \"fd12::7/128\"");
    assert_eq!(added[v6 + 1], "    ports: [8443]");
    assert!(cidr < v6, "{patch}");
    position(&format!("  - {ETL}"));
    let metrics = position("  - host: metrics.data.test");
    assert_eq!(added[metrics + 1], "    ports: [80]");
    let warehouse = position("  - host: warehouse.data.test");
    assert_eq!(added[warehouse + 1], "    ports: [443]");
    assert_eq!(added[warehouse + 2], "    justification: \"TODO: why does batch-etl need warehouse.data.test?\"");
    assert!(added.contains(&"service: batch-etl") && added.contains(&"mode: dry-run"), "{patch}");
    for never in ["8.8.8.8", "pastebin", "169.254", "other.example", "api.stripe.com"] {
        assert!(!added.iter().any(|l| l.contains(never)), "{never} is not learned:\n{patch}");
    }
    let err = &diff.stderr;
    assert!(err.contains("not proposed: payments -> 8.8.8.8:443/https (1 hits): a public IP address"), "{err}");
    assert!(
        err.contains(
            "not proposed: payments -> pastebin.com:443/https (1 hits): denied by the mesh-wide rule mesh/deny/1"
        ),
        "{err}"
    );
    assert!(
        err.contains(
            "not proposed: payments -> 169.254.169.254:80/http (1 hits): denied by the mesh-wide rule mesh/deny/0"
        ),
        "{err}"
    );
    assert!(
        err.contains(&format!(
            "not proposed: unclaimed {ETL} -> pastebin.com:443/https (1 hits): denied by the mesh-wide rule mesh/deny/1"
        )),
        "{err}"
    );
    // Nothing was written by --diff.
    assert_eq!(read(&payments), PAYMENTS);
    assert!(!etl_file.exists());

    // The diff is a patch: applied to a copy, it makes what --write makes.
    let applied = work.join("applied");
    policy_dir(&applied, MESH, &[("payments", PAYMENTS)]);
    std::fs::write(work.join("learned.patch"), patch).unwrap();
    let git = std::process::Command::new("git")
        .current_dir(&applied)
        .args(["apply", "--whitespace=nowarn", s(&work.join("learned.patch"))])
        .output()
        .expect("git runs");
    assert!(git.status.success(), "git apply: {}", String::from_utf8_lossy(&git.stderr));

    // Learn, written in place.
    let write = egressd(work, &[&["learn"][..], &input, &["--write"]].concat());
    assert_eq!(write.code, 0, "{write:?}");
    assert_eq!(
        write.stdout,
        format!(
            "created {}\nedited {}\nnext: answer every `TODO` justification, then egressd validate {}\n",
            etl_file.display(),
            payments.display(),
            dir.display()
        )
    );
    let learned = read(&payments);
    assert!(lines_kept_in_order(PAYMENTS, &learned), "every original line, in order, byte for byte:\n{learned}");
    assert_eq!(learned.lines().count(), PAYMENTS.lines().count() + 4 * 4 + 1, "{learned}");
    // The allows went into the allow list, before the deny list and its comment.
    let deny = learned.find("# Someone decided against these already.\ndeny:\n").unwrap();
    assert!(learned.find("10.1.2.3/32").unwrap() < deny, "{learned}");
    assert_eq!(learned, read(&applied.join("services/payments.yaml")), "--write writes exactly the diff");
    assert_eq!(read(&etl_file), read(&applied.join("services/batch-etl.yaml")));

    // Not servable until a human answers each TODO, reported where each one is written.
    let todos = todo_locations(&[payments.clone(), etl_file.clone()]);
    assert_eq!(todos.len(), 6, "{todos:?}");
    let invalid = egressd(work, &["validate", s(&dir)]);
    assert_eq!(invalid.code, 1, "{invalid:?}");
    let reported: BTreeSet<String> = invalid
        .stdout
        .lines()
        .filter(|l| l.contains("justification is a placeholder (`TODO...`)"))
        .map(|l| l.splitn(4, ':').take(3).collect::<Vec<_>>().join(":"))
        .collect();
    assert_eq!(reported, todos, "{invalid:?}");
    assert!(invalid.stderr.contains("6 error(s)"), "{invalid:?}");
    // The server refuses it too.
    let refused = bin()
        .current_dir(work)
        .args(["serve", "--policy", s(&dir), "--grpc-listen", &free_addr().to_string()])
        .args(["--admin-listen", &free_addr().to_string()])
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2), "serve refuses a policy with TODO justifications");

    for file in [&payments, &etl_file] {
        answer_todos(file);
    }
    let valid = egressd(work, &["validate", s(&dir)]);
    assert_eq!(valid.code, 0, "{valid:?}");
    assert!(valid.stderr.contains("valid (3 file(s)"), "{valid:?}");

    // Idempotent: the same flows teach nothing more.
    let again = egressd(work, &learn_diff);
    assert_eq!((again.code, again.stdout.as_str()), (0, ""), "{again:?}");
    let summary_run = egressd(work, &[&["learn"][..], &input].concat());
    assert_eq!(summary_run.code, 0, "{summary_run:?}");
    assert!(summary_run.stdout.starts_with("nothing to learn"), "{summary_run:?}");
    let rewrite = egressd(work, &[&["learn"][..], &input, &["--write"]].concat());
    assert!(rewrite.stdout.starts_with("nothing to learn"), "{rewrite:?}");

    // Ready to enforce? Not while payments still calls 8.8.8.8 and the mesh floor: enforcing
    // would deny those (the floor denies them already).
    let impact = ["report", "impact", "--service", "payments", "--policy", s(&dir)];
    let not_ready = egressd(work, &[&impact[..], &["--audit-log", s(&audit)]].concat());
    assert_eq!(not_ready.code, 1, "{not_ready:?}");
    let first = not_ready.stdout.lines().next().unwrap();
    assert_eq!(first, "payments (mode dry-run): not ready: enforcing would deny 3 of 12 flow(s) (3 of 15 request(s))");
    let denied: Vec<&str> = not_ready.stdout.lines().skip(1).collect();
    assert_eq!(denied.len(), 3, "{not_ready:?}");
    let line = |dest: &str| *denied.iter().find(|l| l.contains(dest)).unwrap_or_else(|| panic!("{dest}: {denied:?}"));
    assert!(line("8.8.8.8:443/https").ends_with("(no-matching-allow: default deny)"));
    assert!(line("pastebin.com:443/https").ends_with("(already denied, mesh-deny: mesh/deny/1)"));
    assert!(line("169.254.169.254:80/http").ends_with("(already denied, mesh-deny: mesh/deny/0)"));
    // Once that traffic stops (the log without it), everything payments does is allowed.
    let clean = work.join("audit-clean.jsonl");
    audit_without(&audit, &["8.8.8.8", "pastebin.com", "169.254.169.254"], &clean);
    let ready = egressd(work, &[&impact[..], &["--audit-log", s(&clean)]].concat());
    assert_eq!(ready.code, 0, "{ready:?}");
    assert_eq!(ready.stdout, "payments (mode dry-run): ready: 9 flow(s), 12 request(s), all allowed by its rules\n");

    // Enforce payments.
    let enforced = read(&payments).replacen("mode: dry-run\n", "mode: enforce\n", 1);
    std::fs::write(&payments, &enforced).unwrap();
    assert_eq!(egressd(work, &["validate", s(&dir)]).code, 0);
    let ready = egressd(work, &[&impact[..], &["--audit-log", s(&clean)]].concat());
    assert_eq!(ready.code, 0, "{ready:?}");
    assert!(ready.stdout.starts_with("payments (mode enforce): ready: "), "{ready:?}");

    // Served again: the same requests, decided by the learned rules.
    let server = Serve::start(work, &dir, None).await;
    let mut requests: Vec<CheckRequest> = cases.iter().map(Case::request).collect();
    // A sibling never seen is covered by the wildcard; the parent itself is not.
    requests.push(http_check(PAY_API, "CONNECT", "zz.api.vendor.test:443", &[]));
    requests.push(http_check(PAY_API, "CONNECT", "api.vendor.test:443", &[]));
    let answers = send(server.grpc, requests).await;
    for (case, answer) in cases.iter().zip(&answers) {
        let what = format!("{} {} {}", case.from, case.method, case.authority);
        assert_eq!(summary(answer), expected(case.learned), "{what}");
        assert_eq!(answer.meta("service"), case.learned_service, "{what}");
        if case.learned == ALLOWED {
            assert!(answer.meta("rule").starts_with(&format!("{}/allow/", case.learned_service)), "{what}");
        }
    }
    let n = cases.len();
    assert_eq!(summary(&answers[n]), expected(ALLOWED), "zz.api.vendor.test");
    assert_eq!(summary(&answers[n + 1]), expected(DENIED), "api.vendor.test");
    let mode_of = |authority: &str, from: &str| {
        let i = cases.iter().position(|c| c.authority == authority && c.from == from).unwrap();
        answers[i].meta("mode")
    };
    assert_eq!(mode_of("events.crm.test:443", PAY_API), "enforce");
    assert_eq!(mode_of("metrics.data.test", ETL), "dry-run", "the learned service starts in dry-run");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn learn_from_the_live_flow_table() {
    // egressd in-process with a live flow table (no audit log), behind the real Envoy gateway.
    let collector = Collector::start().await;
    let config = TelemetryConfig { flows: Some(LiveFlows::shared(1000)), ..Default::default() };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let mut builder = Lab::builder().traced(collector.addr, telemetry);
    let feeds: Vec<String> = (1..=5).map(|i| format!("n{i}.feed.partner.test")).collect();
    for name in &feeds {
        builder = builder.name(name, std::net::Ipv4Addr::LOCALHOST);
    }
    let lab = builder.start().await;
    let port = lab.http_upstream.port();
    let url = |host: &str| format!("http://{host}:{port}/");

    // search is in dry-run: what its rules do not allow goes through, recorded.
    let mut requests = vec![(&lab.search, "unknown.partner.test", 200), (&lab.search, "unknown.partner.test", 200)];
    requests.extend(feeds.iter().map(|n| (&lab.search, n.as_str(), 200)));
    // checkout is enforced: allowed, not allowed by its rules, denied by its own rule.
    requests.extend([
        (&lab.checkout, "api.partner.test", 200),
        (&lab.checkout, "unknown.partner.test", 403),
        (&lab.checkout, "admin.partner.test", 403),
    ]);
    for (svid, host, status) in &requests {
        let mut conn = lab.as_workload(svid).await;
        let (got, resp) = proxy_get(&mut conn, &url(host)).await.unwrap();
        assert_eq!(got, *status, "{host}: {resp}\n{}", lab.envoy.log());
    }
    // One more for search straight over gRPC: a private address.
    let mut c = client(lab.egressd.grpc).await;
    let resp = check(&mut c, http_check(SEARCH, "CONNECT", "10.20.30.40:5432", &[])).await;
    assert_eq!(summary(&resp), expected(WOULD_DENY));

    // GET /flows, a plain HTTP request: the telemetry thread records decisions as it drains them.
    let doc: serde_json::Value = eventually("every decision in the flow table", WAIT, || async {
        let (status, body) = http_get(lab.egressd.admin, "/flows").await;
        assert_eq!(status, 200, "{body}");
        let doc: serde_json::Value = serde_json::from_str(&body).expect("GET /flows is JSON");
        let hits: u64 = doc["flows"].as_array().unwrap().iter().map(|f| f["hits"].as_u64().unwrap()).sum();
        // The proxy requests and the gRPC Check.
        let expected = requests.len() as u64 + 1;
        (hits >= expected).then_some(doc)
    })
    .await;
    assert_eq!((doc["capacity"].as_u64(), doc["evicted"].as_u64()), (Some(1000), Some(0)));
    let all = doc["flows"].as_array().unwrap();
    assert_eq!(all.len(), 10, "{doc:#}");
    let flow = |service: &str, host: &str| {
        all.iter()
            .find(|f| f["service"] == service && f["host"] == host)
            .unwrap_or_else(|| panic!("no flow {service} -> {host}: {doc:#}"))
    };
    let unknown = flow("search", "unknown.partner.test");
    assert_eq!((unknown["port"].as_u64(), unknown["protocol"].as_str()), (Some(port as u64), Some("http")));
    assert_eq!(unknown["hits"], 2);
    assert_eq!(unknown["workloads"], serde_json::json!([SEARCH]));
    assert_eq!(
        unknown["decisions"],
        serde_json::json!([{"decision": "would-deny", "reason": "no-matching-allow", "count": 2}])
    );
    let denied = flow("checkout", "unknown.partner.test");
    assert_eq!(denied["workloads"], serde_json::json!([CHECKOUT]));
    assert_eq!(
        denied["decisions"],
        serde_json::json!([{"decision": "deny", "reason": "no-matching-allow", "count": 1}])
    );
    let allowed = flow("checkout", "api.partner.test");
    assert_eq!(
        allowed["decisions"],
        serde_json::json!([{"decision": "allow", "reason": "allowed", "rule": "checkout/allow/0", "count": 1}])
    );
    assert_eq!(flow("checkout", "admin.partner.test")["decisions"][0]["reason"], "service-deny");
    assert_eq!(flow("search", "10.20.30.40")["protocol"], "tcp");
    for f in all {
        for key in ["firstSeen", "lastSeen"] {
            f[key].as_str().unwrap().parse::<jiff::Timestamp>().unwrap_or_else(|e| panic!("{key} of {f}: {e}"));
        }
    }

    // Learn from the running server, into a copy of the policy it serves.
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mesh-config");
    copy_mesh_config(&dir);
    std::fs::remove_file(dir.join("gateway.yaml")).unwrap();
    let admin = lab.egressd.admin.to_string();
    let diff = egressd_async(tmp.path(), &["learn", "--server", &admin, "--policy", s(&dir), "--diff"]).await;
    assert_eq!(diff.code, 0, "{diff:?}");
    let patch = &diff.stdout;
    assert!(patch.contains("--- a/services/search.yaml\n+++ b/services/search.yaml\n"), "{diff:?}");
    assert!(patch.contains("--- a/services/checkout.yaml\n+++ b/services/checkout.yaml\n"), "{diff:?}");
    assert_eq!(patch.matches("diff --git").count(), 2, "{diff:?}");
    let (added, removed) = diff_lines(patch);
    assert!(removed.is_empty(), "{patch}");
    let ports = format!("    ports: [{port}]");
    let after = |wanted: &str| {
        let i = added.iter().position(|l| *l == wanted).unwrap_or_else(|| panic!("no `{wanted}` in:\n{patch}"));
        added[i + 1]
    };
    assert_eq!(after("  - host: \"*.feed.partner.test\""), ports);
    assert_eq!(after("  - cidr: 10.20.30.40/32"), "    ports: [5432]");
    assert_eq!(added.iter().filter(|l| **l == "  - host: unknown.partner.test").count(), 2, "search and checkout");
    assert!(added.contains(&"    justification: \"TODO: why does checkout need unknown.partner.test?\""), "{patch}");
    assert!(added.contains(&"    justification: \"TODO: why does search need unknown.partner.test?\""), "{patch}");
    assert!(!added.iter().any(|l| l.contains("admin.partner.test")), "the service's own deny stands: {patch}");
    assert!(
        diff.stderr.contains(&format!(
            "not proposed: checkout -> admin.partner.test:{port}/http (1 hits): denied by the service's own rule checkout/deny/0"
        )),
        "{diff:?}"
    );
    assert!(diff.stderr.contains(&format!("read 10 flow(s) from http://{admin}/flows")), "{diff:?}");

    // The summary as JSON, for one service, within an age.
    let summary = egressd_async(
        tmp.path(),
        &["learn", "--server", &admin, "--policy", s(&dir), "--service", "search", "--since", "1h", "--format", "json"],
    )
    .await;
    assert_eq!(summary.code, 0, "{summary:?}");
    let json: serde_json::Value = serde_json::from_str(&summary.stdout).expect("learn --format json is JSON");
    let services = json["services"].as_array().unwrap();
    assert_eq!(services.len(), 1, "{json:#}");
    assert_eq!(services[0]["service"], "search");
    let targets: Vec<&str> =
        services[0]["allows"].as_array().unwrap().iter().map(|a| a["target"].as_str().unwrap()).collect();
    assert_eq!(targets, ["*.feed.partner.test", "unknown.partner.test", "10.20.30.40/32"]);
    let wildcard = &services[0]["allows"][0];
    assert_eq!(wildcard["hits"], 5);
    assert_eq!(wildcard["names"].as_array().unwrap().len(), 5);
    assert_eq!(json["newServices"], serde_json::json!([]));
}

/// Base: payments (dry-run) and checkout (enforce). Head: payments' second allow replaced by
/// another, checkout's last allow removed, in files of the same length otherwise.
const PLAN_MESH: &str = "\
kind: MeshDefaults
trustDomain: corp.example
mode: enforce
deny:
  - host: pastebin.com
    justification: paste sites are an exfiltration channel
";

fn plan_payments(second: &str) -> String {
    format!(
        "kind: ServicePolicy\nservice: payments\nidentities: [{PAY_API}]\nmode: dry-run\nallow:\n  - host: api.stripe.com\n    ports: [443]\n    justification: card processing\n  - host: {second}\n    ports: [443]\n    justification: a partner\n"
    )
}

fn plan_checkout(with_partner: bool) -> String {
    let partner = if with_partner { "  - host: api.partner.test\n    justification: prices\n" } else { "" };
    format!(
        "kind: ServicePolicy\nservice: checkout\nidentities: [{CHECKOUT}]\nallow:\n  - host: cdn.partner.test\n    justification: images\n{partner}"
    )
}

fn plan_traffic() -> Vec<CheckRequest> {
    vec![
        http_check(PAY_API, "CONNECT", "api.stripe.com:443", &[]),
        http_check(PAY_API, "CONNECT", "hooks.slack.com:443", &[]),
        http_check(PAY_API, "CONNECT", "hooks.slack.com:443", &[]),
        http_check(PAY_API, "CONNECT", "new.vendor.test:443", &[]),
        http_check(PAY_API, "CONNECT", "10.9.9.9:8080", &[]),
        http_check(PAY_API, "CONNECT", "pastebin.com:443", &[]),
        http_check(CHECKOUT, "GET", "api.partner.test", &[]),
        http_check(CHECKOUT, "GET", "cdn.partner.test", &[]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_detects_a_removed_allow() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (base, head) = (work.join("base"), work.join("head"));
    let base_payments = plan_payments("hooks.slack.com");
    let base_checkout = plan_checkout(true);
    policy_dir(&base, PLAN_MESH, &[("payments", &base_payments), ("checkout", &base_checkout)]);
    policy_dir(
        &head,
        PLAN_MESH,
        &[("payments", &plan_payments("new.vendor.test")), ("checkout", &plan_checkout(false))],
    );
    let (audit, answers) = record(work, &base, plan_traffic()).await;
    let decisions: Vec<String> = answers.iter().map(|a| a.decision()).collect();
    assert_eq!(decisions, ["allow", "allow", "allow", "would-deny", "would-deny", "deny", "allow", "allow"]);

    let plan = |head: &Path, format: &str| {
        egressd(work, &["plan", "--base", s(&base), "--head", s(head), "--audit-log", s(&audit), "--format", format])
    };
    let breaking = plan(&head, "text");
    assert_eq!(breaking.code, 3, "{breaking:?}");
    let out = &breaking.stdout;
    let line = |prefix: &str, subject: &str, dest: &str| {
        let wanted = format!("{prefix:<20} {subject} -> {dest} ");
        out.lines().find(|l| l.starts_with(&wanted)).unwrap_or_else(|| panic!("no `{wanted}` in:\n{out}")).to_string()
    };
    let removed_enforced = line("allow -> deny", "checkout", "api.partner.test:80/http");
    assert!(
        removed_enforced.ends_with("(1 hits): allow (allowed by checkout/allow/1) => deny (no-matching-allow)"),
        "{removed_enforced}"
    );
    let removed_dry_run = line("allow -> would-deny", "payments", "hooks.slack.com:443/https");
    assert!(
        removed_dry_run.contains("(2 hits): allow (allowed by payments/allow/1) => would-deny (no-matching-allow)"),
        "{removed_dry_run}"
    );
    let added = line("would-deny -> allow", "payments", "new.vendor.test:443/https");
    assert!(
        added.ends_with("(1 hits): would-deny (no-matching-allow) => allow (allowed by payments/allow/1)"),
        "{added}"
    );
    let total = |change: &str, tail: &str| format!("\n  {change:<20} {tail}\n");
    assert!(out.contains(&total("allow -> deny", "1 flow(s), 1 request(s)  BREAKS TRAFFIC")), "{out}");
    assert!(out.contains(&total("allow -> would-deny", "1 flow(s), 2 request(s)  BREAKS TRAFFIC")), "{out}");
    assert!(out.contains(&total("would-deny -> allow", "1 flow(s), 1 request(s)")), "{out}");
    // Exactly these three flows change decision. (Flows whose rule is the same are listed as
    // `rule changed` / `reason changed` too, because base and head are in two directories: see
    // plan_between_two_checkouts_lists_only_what_changed.)
    let moved: Vec<&str> =
        out.lines().filter(|l| ["allow -> ", "would-deny -> ", "deny -> "].iter().any(|p| l.starts_with(p))).collect();
    assert_eq!(moved.len(), 3, "{out}");
    assert!(!out.contains("10.9.9.9"), "a would-deny in both is no change:\n{out}");
    let json = plan(&head, "json");
    assert_eq!(json.code, 3, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("plan --format json is JSON");
    assert_eq!(doc["flows"], 7);
    assert_eq!(doc["breaking"], true);
    let change = |host: &str| {
        let c = doc["changed"].as_array().unwrap().iter().find(|c| c["host"] == host);
        c.unwrap_or_else(|| panic!("{host} unchanged: {doc:#}"))["change"].as_str().unwrap().to_string()
    };
    assert_eq!(change("api.partner.test"), "allow-to-deny");
    assert_eq!(change("hooks.slack.com"), "allow-to-would-deny");
    assert_eq!(change("new.vendor.test"), "would-deny-to-allow");
    let decision_changes = doc["changed"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| !matches!(c["change"].as_str(), Some("rule-changed" | "reason-changed")))
        .count();
    assert_eq!(decision_changes, 3, "{doc:#}");

    // Head the same as base: nothing moves.
    let same = plan(&base, "text");
    assert_eq!(same.code, 0, "{same:?}");
    assert_eq!(same.stdout, "no decision changes across 7 observed flow(s)\n");
    let same = plan(&base, "json");
    assert_eq!(same.code, 0, "{same:?}");
    let doc: serde_json::Value = serde_json::from_str(&same.stdout).unwrap();
    assert_eq!((doc["breaking"].as_bool(), doc["changed"].as_array().map(Vec::len)), (Some(false), Some(0)));

    // Only adding allows breaks nothing: exit 0, the added one listed.
    let additive = work.join("additive");
    let more = format!("{base_payments}  - host: new.vendor.test\n    ports: [443]\n    justification: a vendor\n");
    policy_dir(&additive, PLAN_MESH, &[("payments", &more), ("checkout", &base_checkout)]);
    let ok = plan(&additive, "text");
    assert_eq!(ok.code, 0, "{ok:?}");
    assert!(ok.stdout.contains("would-deny -> allow"), "{ok:?}");
}

/// The comparison a pull request check makes: base and head are two checkouts, in two
/// directories. A file that did not change must not move any of its flows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_between_two_checkouts_lists_only_what_changed() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let (base, head) = (work.join("main"), work.join("pr"));
    let payments = plan_payments("hooks.slack.com");
    policy_dir(&base, PLAN_MESH, &[("payments", &payments), ("checkout", &plan_checkout(true))]);
    policy_dir(&head, PLAN_MESH, &[("payments", &payments), ("checkout", &plan_checkout(true))]);
    let (audit, _) = record(work, &base, plan_traffic()).await;
    let plan = egressd(work, &["plan", "--base", s(&base), "--head", s(&head), "--audit-log", s(&audit)]);
    assert_eq!(plan.code, 0, "{plan:?}");
    assert_eq!(plan.stdout, "no decision changes across 7 observed flow(s)\n", "identical policies: {plan:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_impact_not_ready_lists_what_enforcing_would_deny() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let dir = work.join("mesh-config");
    policy_dir(&dir, MESH, &[("payments", PAYMENTS)]);
    let requests = vec![
        http_check(PAY_API, "CONNECT", "api.stripe.com:443", &[]),
        http_check(PAY_API, "CONNECT", "api.stripe.com:443", &[]),
        http_check(PAY_API, "CONNECT", "events.crm.test:443", &[]),
        http_check(PAY_WORKER, "CONNECT", "events.crm.test:443", &[]),
        http_check(PAY_API, "CONNECT", "events.crm.test:443", &[]),
        http_check(PAY_WORKER, "CONNECT", "10.1.2.3:5432", &[]),
        http_check(PAY_API, "CONNECT", "pastebin.com:443", &[]),
        http_check(ETL, "CONNECT", "warehouse.data.test:443", &[]),
    ];
    let (audit, _) = record(work, &dir, requests).await;
    let impact = |service: &str, format: &str| {
        egressd(
            work,
            &[
                "report",
                "impact",
                "--service",
                service,
                "--policy",
                s(&dir),
                "--audit-log",
                s(&audit),
                "--format",
                format,
            ],
        )
    };

    let report = impact("payments", "text");
    assert_eq!(report.code, 1, "{report:?}");
    let lines: Vec<&str> = report.stdout.lines().collect();
    assert_eq!(lines[0], "payments (mode dry-run): not ready: enforcing would deny 3 of 4 flow(s) (5 of 7 request(s))");
    assert_eq!(lines.len(), 4, "{report:?}");
    let private = words(lines[1]);
    assert_eq!(private[..7], ["would", "deny", "10.1.2.3:5432/tcp", "1", "hits", "1", "workload(s)"], "{report:?}");
    assert!(lines[1].ends_with("(no-matching-allow: default deny)"), "{report:?}");
    let events = words(lines[2]);
    assert_eq!(events[2..7], ["events.crm.test:443/https", "3", "hits", "2", "workload(s)"], "{report:?}");
    assert!(
        lines[3].contains("pastebin.com:443/https") && lines[3].ends_with("(already denied, mesh-deny: mesh/deny/1)")
    );
    assert!(!report.stdout.contains("api.stripe.com") && !report.stdout.contains("warehouse"), "{report:?}");

    let json = impact("payments", "json");
    assert_eq!(json.code, 1, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).expect("report impact --format json is JSON");
    assert_eq!((doc["ready"].as_bool(), doc["mode"].as_str()), (Some(false), Some("dry-run")));
    assert_eq!((doc["flows"].as_u64(), doc["hits"].as_u64(), doc["deniedHits"].as_u64()), (Some(4), Some(7), Some(5)));
    let denied: Vec<(String, u64, String)> = doc["denied"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| (d["host"].as_str().unwrap().into(), d["hits"].as_u64().unwrap(), d["today"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        denied,
        [
            ("10.1.2.3".into(), 1, "would-deny".into()),
            ("events.crm.test".into(), 3, "would-deny".into()),
            ("pastebin.com".into(), 1, "deny".into())
        ]
    );

    // A service without traffic is not ready either; an unknown one is an error naming the known.
    let quiet = work.join("quiet");
    let ledger = "kind: ServicePolicy\nservice: ledger\nidentities: [spiffe://corp.example/ns/ledger/sa/db]\n";
    policy_dir(&quiet, MESH, &[("payments", PAYMENTS), ("ledger", ledger)]);
    let none =
        egressd(work, &["report", "impact", "--service", "ledger", "--policy", s(&quiet), "--audit-log", s(&audit)]);
    assert_eq!(none.code, 1, "{none:?}");
    assert_eq!(none.stdout, "ledger (mode dry-run): no traffic observed: nothing says enforcing is safe yet\n");
    let unknown = impact("nosuch", "text");
    assert_eq!(unknown.code, 2, "{unknown:?}");
    assert!(unknown.stderr.contains("no service `nosuch` in the policy (services: payments)"), "{unknown:?}");
}

#[test]
fn bad_inputs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let dir = work.join("mesh-config");
    policy_dir(&dir, MESH, &[("payments", PAYMENTS)]);
    let audit = work.join("audit.jsonl");
    std::fs::write(&audit, "").unwrap();

    let neither = egressd(work, &["discover", "--policy", s(&dir)]);
    assert_eq!(neither.code, 2, "{neither:?}");
    assert!(neither.stderr.contains("--audit-log") && neither.stderr.contains("--server"), "{neither:?}");
    assert!(neither.stdout.is_empty());
    let both = egressd(work, &["learn", "--policy", s(&dir), "--audit-log", s(&audit), "--server", "127.0.0.1:1"]);
    assert_eq!(both.code, 2, "{both:?}");
    assert!(both.stderr.contains("--audit-log and --server are alternatives"), "{both:?}");

    let missing = work.join("no-such-dir/audit.log");
    let run = egressd(work, &["discover", "--policy", s(&dir), "--audit-log", s(&missing)]);
    assert_eq!(run.code, 2, "{run:?}");
    assert!(run.stderr.contains(&format!("audit log {}: ", missing.display())), "{run:?}");

    for since in ["7x", "d", "7"] {
        let run = egressd(work, &["discover", "--policy", s(&dir), "--audit-log", s(&audit), "--since", since]);
        assert_eq!(run.code, 2, "--since {since}: {run:?}");
        assert!(run.stderr.contains(&format!("--since: `{since}`")), "{run:?}");
    }
    let ok = egressd(work, &["discover", "--policy", s(&dir), "--audit-log", s(&audit), "--since", "7d"]);
    assert_eq!((ok.code, ok.stdout.as_str()), (0, "no flows observed\n"), "{ok:?}");

    let unreachable = egressd(work, &["learn", "--policy", s(&dir), "--server", "127.0.0.1:1", "--diff"]);
    assert_eq!(unreachable.code, 2, "{unreachable:?}");
    assert!(
        unreachable.stderr.contains("cannot reach egressd's admin port at http://127.0.0.1:1/flows"),
        "{unreachable:?}"
    );
    let no_dir = egressd(work, &["learn", "--policy", s(&work.join("nope")), "--audit-log", s(&audit), "--write"]);
    assert_eq!(no_dir.code, 2, "{no_dir:?}");
    assert!(no_dir.stderr.contains("not a policy directory"), "{no_dir:?}");

    // init refuses a directory with policy files, and writes nothing into it.
    let snapshot = |d: &Path| -> Vec<(PathBuf, Vec<u8>)> {
        let mut files = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(p) = stack.pop() {
            for e in std::fs::read_dir(&p).unwrap().flatten() {
                if e.path().is_dir() {
                    stack.push(e.path());
                } else {
                    files.push((e.path(), std::fs::read(e.path()).unwrap()));
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&dir);
    let refused = egressd(work, &["init", s(&dir), "--trust-domain", "corp.example"]);
    assert_ne!(refused.code, 0, "{refused:?}");
    assert!(refused.stderr.contains("already exists") && refused.stderr.contains("nothing was written"), "{refused:?}");
    assert_eq!(snapshot(&dir), before, "init wrote nothing");

    // init into an empty directory: a policy validate accepts, even strictly.
    let fresh = work.join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    let init = egressd(work, &["init", s(&fresh), "--trust-domain", "corp.example"]);
    assert_eq!(init.code, 0, "{init:?}");
    assert!(init.stdout.contains(&format!("wrote {}", fresh.join("mesh.yaml").display())), "{init:?}");
    let valid = egressd(work, &["validate", "--strict", s(&fresh)]);
    assert_eq!(valid.code, 0, "{valid:?}");
    assert!(read(&fresh.join("mesh.yaml")).contains("trustDomain: corp.example"));
    let again = egressd(work, &["init", s(&fresh)]);
    assert_ne!(again.code, 0, "a second init refuses: {again:?}");
    let bad_td = egressd(work, &["init", s(&work.join("other")), "--trust-domain", "Not A Domain"]);
    assert_eq!(bad_td.code, 2, "{bad_td:?}");
    assert!(bad_td.stderr.contains("invalid trust domain"), "{bad_td:?}");
    assert!(
        !work.join("other").exists() || snapshot(&work.join("other")).is_empty(),
        "nothing written for a bad trust domain"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_stale_names_unused_narrowable_and_single_workload_allows_and_idle_grants() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path();
    let dir = work.join("policy");
    let mesh = "kind: MeshDefaults\ntrustDomain: corp.example\n";
    let payments = "\
kind: ServicePolicy
service: payments
owner: team-payments
identities:
  - spiffe://corp.example/ns/payments/sa/api
  - spiffe://corp.example/ns/payments/sa/worker
allow:
  - host: api.stripe.com
    ports: [443]
    justification: card processing (PAY-123)
  - host: \"*.vendor.test\"
    ports: [443]
    justification: vendor APIs (PAY-7)
  - host: api.old-acquirer.test
    ports: [443]
    justification: the acquirer we left (PAY-9)
  - host: reports.test
    ports: [443]
    justification: nightly report (PAY-11)
";
    policy_dir(&dir, mesh, &[("payments", payments)]);

    // Real decisions: served with an audit log, then a break-glass grant used once and one never.
    let audit = work.join("audit.jsonl");
    let server = Serve::start(work, &dir, Some(&audit)).await;
    let connect = |from, host: &str| http_check(from, "CONNECT", &format!("{host}:443"), &[]);
    let answers = send(
        server.grpc,
        [
            connect(PAY_API, "api.stripe.com"),
            connect(PAY_WORKER, "api.stripe.com"),
            connect(PAY_API, "eu.vendor.test"),
            connect(PAY_WORKER, "us.vendor.test"),
            connect(PAY_WORKER, "reports.test"),
        ],
    )
    .await;
    assert!(answers.iter().all(|a| a.code() == 0), "{answers:?}");
    let admin = server.grpc.to_string();
    for (to, reason) in
        [("incident.partner.test:443", "INC-1 failover"), ("idle.partner.test:443", "INC-2 just in case")]
    {
        let granted = egressd_async(
            work,
            &[
                "break-glass",
                "grant",
                "--service",
                "payments",
                "--to",
                to,
                "--for",
                "30m",
                "--reason",
                reason,
                "--server",
                &admin,
                "--token",
                ADMIN_TOKEN,
            ],
        )
        .await;
        assert_eq!(granted.code, 0, "{granted:?}");
    }
    let used = send(server.grpc, [connect(PAY_API, "incident.partner.test")]).await;
    assert_eq!((used[0].code(), used[0].reason()), (0, "break-glass".to_string()));
    server.stop().await;

    let stale = ["report", "stale", "--policy", s(&dir), "--audit-log", s(&audit)];
    let state = work.join("break-glass.json");
    let grants = ["--break-glass-state", s(&state)];
    let text = egressd(work, &[&stale[..], &grants].concat());
    assert_eq!(text.code, 0, "findings alone do not fail without --fail-on-stale: {text:?}");
    let out = &text.stdout;
    assert!(out.contains("allows without hits in the window (longest unused first): 1"), "{text:?}");
    let line_of =
        |needle: &str| out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("{needle}: {text:?}"));
    let unused = line_of("api.old-acquirer.test");
    assert!(unused.contains("services/payments.yaml:14:5") && unused.ends_with("(never seen)"), "{unused}");
    assert!(line_of("*.vendor.test").contains("allow exactly eu.vendor.test (1 hits), us.vendor.test (1 hits)"));
    assert!(line_of("reports.test").contains(&format!("only {PAY_WORKER} (2 workloads of the service seen)")));
    assert!(out.contains("break-glass grants never used: 1"), "{text:?}");
    assert!(line_of("idle.partner.test").contains("INC-2 just in case"));
    assert!(!out.contains("incident.partner.test"), "a used grant is not stale: {text:?}");

    let json = egressd(work, &[&stale[..], &grants, &["--format", "json", "--fail-on-stale"]].concat());
    assert_eq!(json.code, 3, "{json:?}");
    let doc: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert_eq!(doc["unusedAllows"][0]["rule"], "payments/allow/2");
    assert_eq!(doc["narrowableWildcards"][0]["names"][0][0], "eu.vendor.test");
    assert_eq!(doc["unusedGrants"].as_array().unwrap().len(), 1);

    // A policy without those problems, replayed over the flows both workloads make: nothing
    // stale, exit 0.
    let tidy = work.join("tidy");
    let tidy_payments = "\
kind: ServicePolicy
service: payments
owner: team-payments
identities:
  - spiffe://corp.example/ns/payments/sa/api
  - spiffe://corp.example/ns/payments/sa/worker
allow:
  - host: api.stripe.com
    ports: [443]
    justification: card processing (PAY-123)
";
    policy_dir(&tidy, mesh, &[("payments", tidy_payments)]);
    let shared_flows = work.join("audit-shared.jsonl");
    audit_without(&audit, &["reports.test", "vendor.test", "partner.test"], &shared_flows);
    let clean =
        egressd(work, &["report", "stale", "--policy", s(&tidy), "--audit-log", s(&shared_flows), "--fail-on-stale"]);
    assert_eq!(clean.code, 0, "{clean:?}");
    assert!(clean.stdout.contains("nothing stale"), "{clean:?}");

    let bad = egressd(work, &[&stale[..], &["--window", "forever"]].concat());
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("--window"), "{bad:?}");
}
