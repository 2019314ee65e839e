//! Decisions as OpenTelemetry spans, metrics and audit records, over real gRPC: egressd exports to
//! an OTLP collector running in the test (a tonic TraceService), the admin port serves /metrics,
//! and the real `egressd` binary writes its audit log and is stopped with SIGTERM.

use std::path::Path;
use std::time::Duration;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use tonic::transport::Channel;

use egressd::policy::PolicySource;
use egressd::telemetry::spans::parse_sampler;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig, TelemetryTasks};
use egressd::testing::{http_check, network_check};

mod support {
    pub mod check;
    pub mod eventually;
    pub mod otlp;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::eventually::eventually;
use support::otlp::{Collector, Received};
use support::server::{TestServer, http_get, try_http_get};

const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const WAIT: Duration = Duration::from_secs(10);

fn fixtures() -> PolicySource {
    PolicySource::from_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures")).unwrap()
}

fn otlp_config(collector: &Collector, sampler: &str, arg: Option<&str>) -> TelemetryConfig {
    TelemetryConfig {
        otlp: Some(OtlpConfig::new(collector.endpoint(), "egressd-test")),
        sampler: parse_sampler(sampler, arg).unwrap(),
        ..Default::default()
    }
}

async fn serve(config: TelemetryConfig) -> (TestServer, AuthorizationClient<Channel>, TelemetryTasks) {
    let (telemetry, tasks) = Telemetry::start(config).expect("telemetry starts");
    let server = TestServer::builder(fixtures()).telemetry(telemetry).start().await;
    let client = client(server.grpc).await;
    (server, client, tasks)
}

fn attr(span: &Received, key: &str) -> String {
    span.attr(key).unwrap_or_else(|| panic!("span lacks {key}: {:?}", span.span.attributes))
}

#[tokio::test]
async fn decision_span_is_a_child_of_the_callers_trace_with_its_attributes() {
    let collector = Collector::start().await;
    let (_server, mut client, _tasks) = serve(otlp_config(&collector, "parentbased_always_on", None)).await;
    let traceparent = format!("00-{TRACE}-00f067aa0ba902b7-01");
    let req =
        http_check(PAY, "CONNECT", "api.stripe.com:443", &[("traceparent", &traceparent), ("x-request-id", "req-42")]);
    assert_eq!(check(&mut client, req).await.code(), 0);

    let spans = collector.wait_for(WAIT, |s| !s.is_empty()).await;
    assert_eq!(spans.len(), 1, "{spans:?}");
    let span = &spans[0];
    assert_eq!(span.service, "egressd-test");
    assert_eq!(span.span.name, "egress check");
    assert_eq!(span.trace_id(), TRACE, "same trace as the caller");
    assert_eq!(span.parent_span_id(), "00f067aa0ba902b7", "child of the caller's span");
    assert_ne!(span.span_id(), "00f067aa0ba902b7");
    assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano && span.span.start_time_unix_nano > 0);
    assert_eq!(attr(span, "egress.spiffe_id"), PAY);
    assert_eq!(attr(span, "egress.service"), "payments");
    assert_eq!(attr(span, "server.address"), "api.stripe.com");
    assert_eq!(attr(span, "server.port"), "443");
    assert_eq!(attr(span, "egress.protocol"), "https");
    assert_eq!(attr(span, "http.request.method"), "CONNECT");
    assert_eq!(attr(span, "egress.decision"), "allow");
    assert_eq!(attr(span, "egress.mode"), "enforce");
    assert_eq!(attr(span, "egress.reason"), "allowed");
    assert!(!attr(span, "egress.rule.id").is_empty());
    let location = attr(span, "egress.rule.location");
    assert!(location.ends_with("semantics.yaml:25:5"), "{location}");
    assert_eq!(attr(span, "egress.policy.version"), fixtures().version());
    assert_eq!(attr(span, "egress.request_id"), "req-42");
    assert_eq!(attr(span, "rpc.system"), "grpc");
}

#[tokio::test]
async fn the_check_calls_own_trace_context_is_preferred_and_b3_is_understood() {
    let collector = Collector::start().await;
    let (_server, mut client, _tasks) = serve(otlp_config(&collector, "parentbased_always_on", None)).await;
    // What Envoy does when it traces: its ext_authz client span travels in the gRPC metadata.
    let headers = [("traceparent", format!("00-{TRACE}-00f067aa0ba902b7-01"))];
    let mut req = tonic::Request::new(http_check(PAY, "GET", "api.stripe.com", &[("traceparent", &headers[0].1)]));
    let envoy_span = format!("00-{TRACE}-b7ad6b7169203331-01");
    req.metadata_mut().insert("traceparent", envoy_span.parse().unwrap());
    check(&mut client, req).await;
    // Envoy's Zipkin tracer speaks B3.
    let b3 = "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1";
    check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[("b3", b3)])).await;

    let spans = collector.wait_for(WAIT, |s| s.len() >= 2).await;
    let by_parent = |p: &str| spans.iter().find(|s| s.parent_span_id() == p);
    let grpc = by_parent("b7ad6b7169203331").expect("parent from gRPC metadata");
    assert_eq!(grpc.trace_id(), TRACE);
    let b3_child = by_parent("e457b5a2e4d86bd1").expect("parent from b3");
    assert_eq!(b3_child.trace_id(), "80f198ee56343ba864fe8b2a57d3eff7");
}

#[tokio::test]
async fn denies_are_always_recorded_under_a_one_percent_sampler() {
    let collector = Collector::start().await;
    let (_server, mut client, _tasks) = serve(otlp_config(&collector, "traceidratio", Some("0.01"))).await;
    for i in 0..200 {
        let id = format!("allow-{i}");
        check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[("x-request-id", &id)])).await;
    }
    for i in 0..20 {
        let id = format!("deny-{i}");
        assert_eq!(
            check(&mut client, http_check(PAY, "GET", "evil.example.org", &[("x-request-id", &id)])).await.code(),
            7
        );
    }
    let count =
        |spans: &[Received], d: &str| spans.iter().filter(|s| s.attr("egress.decision").as_deref() == Some(d)).count();
    let spans = collector.wait_for(WAIT, |s| count(s, "deny") >= 20).await;
    assert_eq!(count(&spans, "deny"), 20, "every deny is exported");
    // 200 allows at 1%: about 2; 20 or more has a probability far below 1e-12.
    assert!(count(&spans, "allow") < 20, "allows are sampled: {}", count(&spans, "allow"));
}

#[tokio::test]
async fn export_calls_carry_the_configured_headers_and_resource() {
    let collector = Collector::start().await;
    let mut otlp = OtlpConfig::new(collector.endpoint(), "egressd-headers");
    otlp.headers = egressd::telemetry::otlp::parse_headers("x-api-key=s3cr%3Dt,x-tenant=blue").unwrap();
    let (_server, mut client, _tasks) = serve(TelemetryConfig { otlp: Some(otlp), ..Default::default() }).await;
    check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[])).await;
    let spans = collector.wait_for(WAIT, |s| !s.is_empty()).await;
    assert_eq!(spans[0].service, "egressd-headers");
    let md = collector.metadata();
    assert_eq!(md[0].get("x-api-key").unwrap(), "s3cr=t");
    assert_eq!(md[0].get("x-tenant").unwrap(), "blue");
}

#[tokio::test]
async fn a_network_check_without_context_starts_a_new_trace() {
    let collector = Collector::start().await;
    let (_server, mut client, _tasks) = serve(otlp_config(&collector, "parentbased_always_on", None)).await;
    check(&mut client, network_check(PAY, "api.stripe.com", "127.0.0.1", 443)).await;
    check(&mut client, network_check(PAY, "api.stripe.com", "127.0.0.1", 443)).await;
    let spans = collector.wait_for(WAIT, |s| s.len() >= 2).await;
    assert_eq!(spans.len(), 2);
    for s in &spans {
        assert!(s.span.parent_span_id.is_empty(), "a root span");
        assert_eq!(attr(s, "egress.sni"), "api.stripe.com");
        assert_eq!(attr(s, "egress.check"), "network");
        assert_eq!(s.trace_id().len(), 32);
    }
    assert_ne!(spans[0].trace_id(), spans[1].trace_id(), "each connection its own trace");
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{text}"))
}

#[tokio::test]
async fn a_collector_that_is_down_never_fails_a_check_and_lost_spans_are_counted() {
    // A port nobody listens on.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let config = TelemetryConfig { otlp: Some(OtlpConfig::new(format!("http://{closed}"), "x")), ..Default::default() };
    let (server, mut client, _tasks) = serve(config).await;
    for _ in 0..50 {
        assert_eq!(check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[])).await.code(), 0);
    }
    let series = r#"egressd_spans_dropped_total{reason="export-failed"}"#;
    let text = eventually("spans counted as dropped", WAIT, || async {
        let (_, text) = http_get(server.admin, "/metrics").await;
        (text.contains(series) && metric(&text, series) >= 50.0).then_some(text)
    })
    .await;
    assert_eq!(metric(&text, "egressd_spans_exported_total"), 0.0);
}

#[tokio::test]
async fn metrics_count_decisions_by_service_decision_and_mode_and_time_checks() {
    let (server, mut client, _tasks) = serve(TelemetryConfig::default()).await;
    for _ in 0..3 {
        check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[])).await;
    }
    check(&mut client, http_check(PAY, "GET", "evil.example.org", &[])).await;
    check(&mut client, CheckRequest::default()).await;
    let (status, text) = http_get(server.admin, "/metrics").await;
    assert_eq!(status, 200);
    let decisions = |service: &str, decision: &str, mode: &str| {
        metric(&text, &format!(r#"egressd_decisions_total{{service="{service}",decision="{decision}",mode="{mode}"}}"#))
    };
    assert_eq!(decisions("payments", "allow", "enforce"), 3.0);
    assert_eq!(decisions("payments", "deny", "enforce"), 1.0);
    assert_eq!(decisions("", "deny", "none"), 1.0, "malformed requests are counted too");
    assert_eq!(metric(&text, "egressd_check_duration_seconds_count"), 5.0);
    assert_eq!(metric(&text, "egressd_xds_connected_nodes"), 0.0);
    assert_eq!(metric(&text, "egressd_policy_reload_failures_total"), 0.0);
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_decision_answered_before_sigterm_is_in_the_audit_log() {
    const TASKS: usize = 16;
    const PER_TASK: usize = 125;
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let (grpc, admin) = (free_port(), free_port());
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/fixtures");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"))
        .arg("serve")
        .arg("--policy")
        .arg(&fixtures)
        .args(["--grpc-listen", &format!("127.0.0.1:{grpc}"), "--admin-listen", &format!("127.0.0.1:{admin}")])
        .arg("--audit-log")
        .arg(&audit)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .spawn()
        .expect("egressd binary starts");
    let admin_addr: std::net::SocketAddr = format!("127.0.0.1:{admin}").parse().unwrap();
    eventually("egressd to become ready", WAIT, || async {
        matches!(try_http_get(admin_addr, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;

    let client = client(format!("127.0.0.1:{grpc}").parse().unwrap()).await;
    let mut tasks = tokio::task::JoinSet::new();
    for t in 0..TASKS {
        let mut client = client.clone();
        tasks.spawn(async move {
            for i in 0..PER_TASK {
                let id = format!("t{t}-{i}");
                let host = if i % 5 == 0 { "evil.example.org" } else { "api.stripe.com" };
                check(&mut client, http_check(PAY, "GET", host, &[("x-request-id", &id)])).await;
            }
        });
    }
    tasks.join_all().await;
    // Every check has its answer; now stop the process the way Kubernetes does.
    // The shell's builtin kill: /bin/kill (procps) is not on every fresh machine.
    let killed = std::process::Command::new("sh").arg("-c").arg(format!("kill -TERM {}", child.id())).status().unwrap();
    assert!(killed.success());
    let status = tokio::task::spawn_blocking(move || child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "egressd exits cleanly on SIGTERM: {status}");

    let text = std::fs::read_to_string(&audit).unwrap();
    let records: Vec<serde_json::Value> =
        text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON object")).collect();
    assert_eq!(records.len(), TASKS * PER_TASK, "exactly one record per decision");
    let mut ids: Vec<&str> = records.iter().map(|r| r["egress.request_id"].as_str().unwrap()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), TASKS * PER_TASK, "no record twice");
    let denies = records.iter().filter(|r| r["egress.decision"] == "deny").count();
    assert_eq!(denies, TASKS * PER_TASK / 5);
    let r = &records[0];
    for key in ["time", "trace_id", "span_id", "sampled", "duration_us", "egress.service", "server.address"] {
        assert!(r.get(key).is_some(), "record lacks {key}: {r}");
    }
    assert_eq!(r["trace_id"].as_str().unwrap().len(), 32);
}

/// A tmpfs of the test's own, unmounted when dropped.
struct SmallDisk(std::path::PathBuf);

impl SmallDisk {
    fn mount(at: &Path, size: &str) -> SmallDisk {
        std::fs::create_dir_all(at).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs", at.to_str().unwrap()])
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a tmpfs (the test runs as root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk(at.to_path_buf())
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

/// The audit log's disk fills up: Checks go on, the records that do not fit are counted as
/// `write-failed`, writing resumes when there is room again, and no line is torn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_audit_disk_never_fails_a_check_and_writing_resumes_with_no_torn_line() {
    use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
    let tmp = tempfile::tempdir().unwrap();
    let disk = SmallDisk::mount(&tmp.path().join("disk"), "256k");
    // Room for a few records only.
    let filler = disk.0.join("filler");
    std::fs::write(&filler, vec![0u8; 240 * 1024]).unwrap();
    let log = disk.0.join("audit.log");
    let audit = AuditConfig { path: log.clone(), max_bytes: 1 << 30, keep: 1, fsync: FsyncPolicy::Batch };
    let (server, mut client, _tasks) = serve(TelemetryConfig { audit: Some(audit), ..Default::default() }).await;
    for _ in 0..300 {
        assert_eq!(check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[])).await.code(), 0);
    }
    let failed = r#"egressd_audit_records_dropped_total{reason="write-failed"}"#;
    eventually("records counted as write-failed", WAIT, || async {
        let (_, text) = http_get(server.admin, "/metrics").await;
        (text.contains(failed) && metric(&text, failed) > 0.0).then_some(())
    })
    .await;

    // Room again: what comes next is written.
    std::fs::remove_file(&filler).unwrap();
    let marker = "after.stripe.com";
    eventually("a record written after the disk had room again", WAIT, || async {
        let _ = check(&mut client.clone(), http_check(PAY, "GET", marker, &[])).await;
        std::fs::read_to_string(&log).unwrap_or_default().contains(marker).then_some(())
    })
    .await;
    let text = std::fs::read_to_string(&log).unwrap();
    for (n, line) in text.lines().enumerate() {
        assert!(serde_json::from_str::<serde_json::Value>(line).is_ok(), "line {} is torn: {line:?}", n + 1);
    }
    drop(server);
    drop(disk);
}

/// A collector that accepts connections and never answers (stalled), then a working one on the
/// same port: no Check waits on either, what could not be exported is counted, and export resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_collector_never_slows_a_check_and_export_resumes_when_it_answers() {
    let stall = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = stall.local_addr().unwrap();
    let held = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let holder = held.clone();
    let stalling = tokio::spawn(async move {
        while let Ok((conn, _)) = stall.accept().await {
            holder.lock().unwrap().push(conn); // accepted, never read
        }
    });
    let mut otlp = OtlpConfig::new(format!("http://{addr}"), "egressd-test");
    otlp.timeout = Duration::from_millis(300);
    let (server, mut client, _tasks) = serve(TelemetryConfig { otlp: Some(otlp), ..Default::default() }).await;
    let started = std::time::Instant::now();
    for _ in 0..200 {
        assert_eq!(check(&mut client, http_check(PAY, "GET", "api.stripe.com", &[])).await.code(), 0);
    }
    let checks = started.elapsed();
    let dropped = r#"egressd_spans_dropped_total{reason="export-failed"}"#;
    eventually("spans counted as not exported", WAIT, || async {
        let (_, text) = http_get(server.admin, "/metrics").await;
        (text.contains(dropped) && metric(&text, dropped) > 0.0).then_some(())
    })
    .await;

    // The stalled collector goes; a working one takes its port. Export resumes.
    stalling.abort();
    held.lock().unwrap().clear();
    let collector =
        eventually("the port free again", WAIT, || async { Collector::try_start_at(addr).await.ok() }).await;
    eventually("spans exported again", Duration::from_secs(30), || async {
        let _ = check(&mut client.clone(), http_check(PAY, "GET", "resumed.stripe.com", &[])).await;
        collector
            .spans()
            .iter()
            .any(|s| s.attr("server.address").as_deref() == Some("resumed.stripe.com"))
            .then_some(())
    })
    .await;
    eprintln!("200 checks against a stalled collector took {checks:?}");
}
