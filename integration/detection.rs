//! The detectors in the server, over real gRPC: Checks in, signals out on the admin port's
//! `GET /signals`, `/metrics`, the audit log (`egress.signal` records, in the raising decision's
//! trace) and OTLP (a span of its own in that trace); the first-seen history saved to the state
//! file at shutdown and loaded by the next server.

use std::time::Duration;

use egressd::policy::PolicySource;
use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
use egressd::telemetry::signals::DetectSetup;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use egressd::testing::http_check;

mod support {
    pub mod check;
    pub mod envoy;
    pub mod eventually;
    pub mod otlp;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::otlp::Collector;
use support::server::{TestServer, http_get};

const PROBER: &str = "spiffe://corp.example/ns/web/sa/frontend";
const WAIT: Duration = Duration::from_secs(10);

/// `web` may reach one partner API; first-seen learns for one second only.
const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
detection:
  firstSeen:
    learning: 1s
  denyBurst:
    destinations: 20
    window: 10m
---
kind: ServicePolicy
service: web
identities: ["spiffe://corp.example/ns/web/sa/*"]
allow:
  - host: api.partner.test
    ports: [443]
    justification: partner API
  - host: "*.cdn.test"
    ports: [443]
    justification: images
"#;

fn telemetry(dir: &std::path::Path, collector: &Collector) -> TelemetryConfig {
    TelemetryConfig {
        otlp: Some(OtlpConfig::new(collector.endpoint(), "egressd-test")),
        audit: Some(AuditConfig {
            path: dir.join("audit.log"),
            max_bytes: 1 << 30,
            keep: 1,
            fsync: FsyncPolicy::Batch,
        }),
        detect: Some(DetectSetup { state_path: Some(dir.join("detect.json")), ..Default::default() }),
        ..Default::default()
    }
}

fn audit_lines(dir: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(dir.join("audit.log"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probing_denied_destinations_raises_a_deny_burst_on_signals_metrics_audit_and_otlp() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let (t, tasks) = Telemetry::start(telemetry(dir.path(), &collector)).unwrap();
    let server = TestServer::builder(PolicySource::from_text("p.yaml", POLICY)).telemetry(t).start().await;
    let mut c = client(server.grpc).await;

    // Nothing yet: the list is empty, not missing.
    let (status, body) = http_get(server.admin, "/signals").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(serde_json::from_str::<serde_json::Value>(&body).unwrap()["signals"], serde_json::json!([]));

    let allowed = http_check(PROBER, "CONNECT", "api.partner.test:443", &[]);
    assert_eq!(check(&mut c, allowed).await.code(), 0);
    for i in 0..25 {
        let req = http_check(PROBER, "CONNECT", &format!("10.0.0.{i}:22"), &[]);
        assert_eq!(check(&mut c, req).await.code(), 7, "denied");
    }

    let signals = support::eventually::eventually("a deny-burst signal", WAIT, || async {
        let (_, body) = http_get(server.admin, "/signals?kind=deny-burst").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (!v["signals"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    let s = &signals["signals"][0];
    assert_eq!(s["kind"], "deny-burst");
    assert_eq!(s["service"], "web");
    assert_eq!(s["spiffe_id"], PROBER);
    assert_eq!(s["evidence"]["distinct_denied"], 20);
    assert!(s["summary"].as_str().unwrap().contains("20 distinct destinations denied in 10 min"), "{s}");

    let (_, metrics) = http_get(server.admin, "/metrics").await;
    assert!(metrics.contains(r#"egressd_signals_total{kind="deny-burst",service="web"} 1"#), "{metrics}");

    // The signal span is in the trace of the decision that raised it, a child of its span.
    let spans = collector.wait_for(WAIT, |s| s.iter().any(|s| s.span.name == "egress signal")).await;
    let signal_span = spans.iter().find(|s| s.span.name == "egress signal").unwrap();
    assert_eq!(signal_span.attr("egress.signal.kind").as_deref(), Some("deny-burst"));
    let raising = spans
        .iter()
        .find(|s| s.span.name == "egress check" && s.span_id() == signal_span.parent_span_id())
        .expect("the raising decision's span");
    assert_eq!(raising.trace_id(), signal_span.trace_id());
    assert_eq!(raising.attr("server.address").as_deref(), Some("10.0.0.19"), "the 20th denied destination");

    drop(server);
    tasks.shutdown(WAIT).await;

    // The audit log has the signal, in the same trace as its decision record.
    let lines = audit_lines(dir.path());
    let record = lines.iter().find(|l| l.get("egress.signal").is_some()).expect("a signal record");
    assert_eq!(record["egress.signal"]["kind"], "deny-burst");
    let decision = lines
        .iter()
        .find(|l| l["span_id"] == record["parent_span_id"] && l.get("egress.decision").is_some())
        .expect("the raising decision's record");
    assert_eq!(decision["trace_id"], record["trace_id"]);
    // The flows reader and `egressd detect` skip signal records instead of calling them bad lines.
    let mut table = egressd::flows::FlowTable::default();
    let report = egressd::flows::audit_log::read_paths(&[dir.path().join("audit.log")], None, &mut table).unwrap();
    assert_eq!(report.bad_lines, 0, "{report:?}");

    // The state file names what web reached.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("detect.json")).unwrap()).unwrap();
    let web = state["subjects"].as_array().unwrap().iter().find(|s| s["name"] == "web").expect("web's history");
    let domains: Vec<&str> = web["domains"].as_array().unwrap().iter().map(|d| d[0].as_str().unwrap()).collect();
    assert!(domains.contains(&"partner.test") && domains.contains(&"10.0.0.3"), "{domains:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_server_remembers_what_services_reached_and_signals_only_new_domains() {
    let dir = tempfile::tempdir().unwrap();
    let collector = Collector::start().await;
    let cdn = |name: &str| http_check(PROBER, "CONNECT", &format!("{name}:443"), &[]);
    {
        let (t, tasks) = Telemetry::start(telemetry(dir.path(), &collector)).unwrap();
        let server = TestServer::builder(PolicySource::from_text("p.yaml", POLICY)).telemetry(t).start().await;
        let mut c = client(server.grpc).await;
        assert_eq!(check(&mut c, cdn("img.cdn.test")).await.code(), 0);
        drop(server);
        tasks.shutdown(WAIT).await;
    }
    // Past the (one second) learning period, with the history of the first run.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (t, tasks) = Telemetry::start(telemetry(dir.path(), &collector)).unwrap();
    let server = TestServer::builder(PolicySource::from_text("p.yaml", POLICY)).telemetry(t).start().await;
    let mut c = client(server.grpc).await;
    assert_eq!(check(&mut c, cdn("other.cdn.test")).await.code(), 0, "cdn.test: known from the first run");
    assert_eq!(check(&mut c, http_check(PROBER, "CONNECT", "paste.example:443", &[])).await.code(), 7);
    let v = support::eventually::eventually("a first-seen signal", WAIT, || async {
        let (_, body) = http_get(server.admin, "/signals?kind=first-seen").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        (!v["signals"].as_array().unwrap().is_empty()).then_some(v)
    })
    .await;
    let firsts: Vec<&str> =
        v["signals"].as_array().unwrap().iter().map(|s| s["destination"].as_str().unwrap()).collect();
    assert_eq!(firsts, vec!["paste.example"], "only the new domain");
    let (status, _) = http_get(server.admin, "/signals?kind=nonsense").await;
    assert_eq!(status, 400);
    drop(server);
    tasks.shutdown(WAIT).await;
}

/// `egressd serve` as the binary runs by default (no audit log, no OTLP): decisions are not
/// queued; the Check path notes each flow's seconds and bodies in the flow table, and the
/// detectors read them there.
struct DefaultServe {
    child: std::process::Child,
    grpc: std::net::SocketAddr,
    admin: std::net::SocketAddr,
}

impl Drop for DefaultServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn serve_default(dir: &std::path::Path, policy: &str) -> DefaultServe {
    std::fs::create_dir_all(dir.join("policy")).unwrap();
    std::fs::write(dir.join("policy/p.yaml"), policy).unwrap();
    let port = || std::net::SocketAddr::from(([127, 0, 0, 1], support::envoy::free_port()));
    let (grpc, admin) = (port(), port());
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"))
        .current_dir(dir)
        .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
        .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .args(["serve", "--policy", dir.join("policy").to_str().unwrap()])
        .args(["--grpc-listen", &grpc.to_string(), "--admin-listen", &admin.to_string()])
        .args(["--break-glass-state", dir.join("grants.json").to_str().unwrap()])
        .stdout(std::fs::File::create(dir.join("serve.log")).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("egressd serve starts");
    let serve = DefaultServe { child, grpc, admin };
    support::eventually::eventually("egressd ready", WAIT, || async {
        matches!(support::server::try_http_get(admin, "/readyz").await, Ok((200, _))).then_some(())
    })
    .await;
    serve
}

async fn signal_of(admin: std::net::SocketAddr, kind: &str) -> serde_json::Value {
    support::eventually::eventually(&format!("a {kind} signal"), WAIT, || async {
        let (_, body) = http_get(admin, &format!("/signals?kind={kind}")).await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["signals"].as_array().unwrap().first().cloned()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_server_detects_from_the_flow_tables_timelines() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        format!("{POLICY}  - host: upload.partner.test\n    ports: [80]\n    justification: partner uploads\n");
    let serve = serve_default(dir.path(), &policy).await;
    let mut c = client(serve.grpc).await;

    // Probes, with a read of the flow table between them: that read takes the flows in and holds
    // their timelines for the detectors.
    for i in 0..10 {
        assert_eq!(check(&mut c, http_check(PROBER, "CONNECT", &format!("10.0.0.{i}:22"), &[])).await.code(), 7);
    }
    let (status, flows) = http_get(serve.admin, "/flows").await;
    assert_eq!(status, 200);
    assert!(flows.contains("10.0.0.9"), "{flows}");
    for i in 10..25 {
        assert_eq!(check(&mut c, http_check(PROBER, "CONNECT", &format!("10.0.0.{i}:22"), &[])).await.code(), 7);
    }
    let burst = signal_of(serve.admin, "deny-burst").await;
    assert_eq!(burst["spiffe_id"], PROBER);
    assert_eq!(burst["evidence"]["distinct_denied"], 20);

    // Two 600 MiB bodies to one allowed host in the same second: one flow, their bytes summed.
    let post = || http_check(PROBER, "POST", "upload.partner.test", &[("content-length", "629145600")]);
    assert_eq!(check(&mut c, post()).await.code(), 0);
    assert_eq!(check(&mut c, post()).await.code(), 0);
    let upload = signal_of(serve.admin, "large-upload").await;
    assert_eq!(upload["destination"], "upload.partner.test");
    assert_eq!(upload["service"], "web");
    let (_, metrics) = http_get(serve.admin, "/metrics").await;
    assert!(metrics.contains(r#"egressd_signals_total{kind="large-upload",service="web"} 1"#), "{metrics}");
    let (_, body) = http_get(serve.admin, "/signals").await;
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(v["detector"]["observations"].as_u64().unwrap() >= 27, "every check observed: {v}");
}
