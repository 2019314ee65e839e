//! The DNS firewall through the real `serve` path: Debian's `dig` and hickory's client against
//! egressd's DNS on loopback, in front of an in-process authoritative server (zone `test.`) that
//! counts the queries it receives. Clients bind distinct 127.0.0.x addresses to be distinct
//! sources. No timing assertions: every wait is bounded by a generous timeout.

mod support {
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

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use egressd::policy::PolicySource;
use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
use egressd::telemetry::spans::parse_sampler;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use hickory_server::net::client::{Client, ClientHandle};
use hickory_server::net::runtime::TokioRuntimeProvider;
use hickory_server::net::udp::UdpClientStream;
use hickory_server::proto::rr::{DNSClass, Name, RData, RecordType};
use support::dns::{CountingDns, TestRecord, start_counting_dns};
use support::eventually::eventually;
use support::otlp::Collector;
use support::server::{TestServer, http_get};

const MESH: &str = "kind: MeshDefaults\ntrustDomain: corp.example\nmode: enforce\ndeny:\n  - host: leak.test\n";

/// ci-runners (127.0.0.5) may resolve allowed.test and *.big.test; payments (127.0.0.7) pay.test;
/// search (127.0.0.6) is in dry-run with no allows.
const SERVICES: &str = r#"kind: ServicePolicy
service: ci-runners
identities: [spiffe://corp.example/ns/ci/sa/runner]
allow:
  - host: allowed.test
    justification: the build's API
  - host: "*.big.test"
    justification: large answers
---
kind: ServicePolicy
service: search
identities: [spiffe://corp.example/ns/search/sa/indexer]
mode: dry-run
allow:
  - host: other.test
    justification: unused
"#;

const PAYMENTS: &str = "kind: ServicePolicy\nservice: payments\nidentities: [spiffe://corp.example/ns/payments/sa/api]\nallow:\n  - host: pay.test\n    justification: the processor\n";

const CI: &str = "127.0.0.5";
const SEARCH: &str = "127.0.0.6";
const PAY: &str = "127.0.0.7";

fn records() -> Vec<TestRecord> {
    vec![
        TestRecord::A("allowed.test", Ipv4Addr::new(192, 0, 2, 10)),
        TestRecord::A("sub.allowed.test", Ipv4Addr::new(192, 0, 2, 11)),
        TestRecord::A("pay.test", Ipv4Addr::new(192, 0, 2, 20)),
        TestRecord::A("dry.test", Ipv4Addr::new(192, 0, 2, 30)),
        TestRecord::A("leak.test", Ipv4Addr::new(192, 0, 2, 40)),
        TestRecord::A("blocked.test", Ipv4Addr::new(192, 0, 2, 50)),
        TestRecord::ManyTxt("many.big.test", 40),
    ]
}

fn firewall(upstream: SocketAddr, extra: &str) -> String {
    format!(
        "kind: DnsFirewall\nname: mesh-dns\nlisten: 127.0.0.1:15053\nupstreams: [{upstream}]\ntimeoutMs: 500\nattempts: 1\n{extra}sources:\n  - cidr: {CI}/32\n    service: ci-runners\n  - cidr: {SEARCH}/32\n    service: search\n  - cidr: {PAY}/32\n    service: payments\n"
    )
}

fn write_policy(dir: &Path, upstream: SocketAddr, extra: &str) {
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join("services.yaml"), SERVICES).unwrap();
    std::fs::write(dir.join("payments.yaml"), PAYMENTS).unwrap();
    std::fs::write(dir.join("dns.yaml"), firewall(upstream, extra)).unwrap();
}

struct Setup {
    egressd: TestServer,
    dns: SocketAddr,
    upstream: CountingDns,
    dir: tempfile::TempDir,
    audit: std::path::PathBuf,
    _telemetry: egressd::telemetry::TelemetryTasks,
}

/// egressd on a policy directory (watched), its DNS on a port the OS picks, an audit log.
async fn setup(extra: &str) -> Setup {
    let upstream = start_counting_dns(&records()).await;
    setup_with_upstream(upstream, extra).await
}

async fn setup_with_upstream(upstream: CountingDns, extra: &str) -> Setup {
    setup_with(upstream, extra, |_| {}).await
}

/// As `setup`, with the telemetry changed by `configure` (spans, samplers).
async fn setup_with(upstream: CountingDns, extra: &str, configure: impl FnOnce(&mut TelemetryConfig)) -> Setup {
    let dir = tempfile::tempdir().unwrap();
    write_policy(dir.path(), upstream.addr, extra);
    let audit = dir.path().join("audit.jsonl");
    let mut config = TelemetryConfig {
        audit: Some(AuditConfig { path: audit.clone(), max_bytes: 1 << 30, keep: 1, fsync: FsyncPolicy::Never }),
        // As `serve` runs by default: the detectors see every query.
        detect: Some(egressd::telemetry::signals::DetectSetup::default()),
        ..Default::default()
    };
    configure(&mut config);
    let (telemetry, tasks) = Telemetry::start(config).unwrap();
    let egressd = TestServer::builder(PolicySource::from_dir(dir.path()).unwrap())
        .watch(dir.path().to_path_buf())
        .telemetry(telemetry)
        .dns_listen("127.0.0.1:0".parse().unwrap())
        .start()
        .await;
    let dns = egressd.dns.expect("the policy has a DnsFirewall: DNS is served");
    Setup { egressd, dns, upstream, dir, audit, _telemetry: tasks }
}

/// `dig` against `server`, from `source`; its whole output.
async fn dig(server: SocketAddr, source: &str, args: &[&str]) -> String {
    let mut cmd = Command::new("dig");
    cmd.arg(format!("@{}", server.ip()))
        .args(["-p", &server.port().to_string(), "-b", source, "+tries=1", "+time=10"])
        .args(args);
    let out = tokio::task::spawn_blocking(move || cmd.output().expect("dig (Debian bind9-dnsutils) is installed"))
        .await
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
}

fn status(dig_output: &str) -> &str {
    let at = dig_output.find("status: ").unwrap_or_else(|| panic!("no status in {dig_output}")) + 8;
    dig_output[at..].split(',').next().unwrap()
}

/// The A addresses of the answer section of a `dig` output.
fn a_answers(dig_output: &str) -> Vec<String> {
    dig_output
        .lines()
        .filter(|l| !l.starts_with(';'))
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            (fields.len() == 5 && fields[3] == "A").then(|| fields[4].to_string())
        })
        .collect()
}

/// hickory's client, from `source`: the A records of `name`, or the error it reports.
async fn hickory_a(server: SocketAddr, source: &str, name: &str) -> Result<Vec<Ipv4Addr>, String> {
    let bind: SocketAddr = format!("{source}:0").parse().unwrap();
    let stream = UdpClientStream::builder(server, TokioRuntimeProvider::default())
        .with_bind_addr(Some(bind))
        .with_timeout(Some(Duration::from_secs(10)))
        .build();
    let (mut client, bg) = Client::<TokioRuntimeProvider>::from_sender(stream);
    tokio::spawn(bg);
    let response = client.query(Name::from_ascii(name).unwrap(), DNSClass::IN, RecordType::A).await;
    let response = response.map_err(|e| e.to_string())?;
    if response.metadata.response_code != hickory_server::proto::op::ResponseCode::NoError {
        return Err(response.metadata.response_code.to_string());
    }
    Ok(response.answers.iter().filter_map(|r| if let RData::A(a) = &r.data { Some(a.0) } else { None }).collect())
}

/// The audit records of DNS queries for `qname`, once at least one is written.
async fn audit_records(path: &Path, qname: &str) -> Vec<serde_json::Value> {
    eventually(&format!("an audit record for {qname}"), Duration::from_secs(10), || async {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let found: Vec<serde_json::Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["egress.check"] == "dns" && v["dns.question.name"] == qname)
            .collect();
        (!found.is_empty()).then_some(found)
    })
    .await
}

/// The value of the metric sample `line_start` (name and labels) on `/metrics`, 0 when absent.
async fn metric(admin: SocketAddr, line_start: &str) -> u64 {
    let (_, metrics) = http_get(admin, "/metrics").await;
    metrics.lines().find_map(|l| l.strip_prefix(line_start)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_allowed_name_answers_with_the_upstreams_records_for_dig_and_hickory() {
    let s = setup("").await;
    let out = dig(s.dns, CI, &["allowed.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(a_answers(&out), vec!["192.0.2.10"], "{out}");
    assert!(s.upstream.queries() >= 1, "asked the upstream");
    assert_eq!(hickory_a(s.dns, CI, "allowed.test.").await, Ok(vec![Ipv4Addr::new(192, 0, 2, 10)]));
    let record = &audit_records(&s.audit, "allowed.test").await[0];
    assert_eq!(record["egress.decision"], "allow");
    assert_eq!(record["egress.service"], "ci-runners");
    assert_eq!(record["egress.rule.id"], "ci-runners/allow/0");
    assert_eq!(record["client.address"], CI);
    assert_eq!(record["dns.question.type"], "A");
    assert_eq!(record["dns.response_code"], "NOERROR");
    assert_eq!(record["egress.policy.version"], s.egressd.policy.load().version.as_str());
    let (_, metrics) = http_get(s.egressd.admin, "/metrics").await;
    assert!(metrics.contains("egressd_dns_queries_total{decision=\"allow\",qtype=\"A\"}"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_name_gets_nxdomain_with_its_extended_error_and_is_never_forwarded() {
    let s = setup("").await;
    let before = s.upstream.queries();
    let out = dig(s.dns, CI, &["blocked.test", "A"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("EDE: 18 (Prohibited)"), "default deny: {out}");
    let out = dig(s.dns, CI, &["leak.test", "TXT"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    assert!(out.contains("EDE: 15 (Blocked)") && out.contains("mesh/deny/0"), "mesh deny: {out}");
    assert_eq!(
        hickory_a(s.dns, CI, "exfil-4a6f686e.blocked.test.")
            .await
            .err()
            .as_deref()
            .map(|e| e.contains("NXDomain") || e.contains("Non-Existent")),
        Some(true)
    );
    assert_eq!(s.upstream.queries(), before, "no blocked name reached the upstream");
    let record = &audit_records(&s.audit, "leak.test").await[0];
    assert_eq!((&record["egress.decision"], &record["egress.reason"]), (&"deny".into(), &"mesh-deny".into()));
    assert_eq!(record["dns.response_code"], "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_refused_answers_refused_with_the_extended_error() {
    let s = setup("blocked: refused\n").await;
    let before = s.upstream.queries();
    let out = dig(s.dns, CI, &["blocked.test", "A"]).await;
    assert_eq!(status(&out), "REFUSED", "{out}");
    assert!(out.contains("EDE: 18 (Prohibited)"), "{out}");
    assert_eq!(s.upstream.queries(), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_service_resolves_and_the_audit_log_says_would_deny() {
    let s = setup("").await;
    let out = dig(s.dns, SEARCH, &["dry.test", "A"]).await;
    assert_eq!(status(&out), "NOERROR", "{out}");
    assert_eq!(a_answers(&out), vec!["192.0.2.30"], "{out}");
    let record = &audit_records(&s.audit, "dry.test").await[0];
    assert_eq!(record["egress.decision"], "would-deny");
    assert_eq!(record["egress.reason"], "no-matching-allow");
    assert_eq!(record["egress.service"], "search");
    // The floor holds in dry-run too.
    assert_eq!(status(&dig(s.dns, SEARCH, &["leak.test"]).await), "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_source_address_resolves_its_own_services_names() {
    let s = setup("").await;
    assert_eq!(status(&dig(s.dns, CI, &["pay.test"]).await), "NXDOMAIN", "ci-runners may not");
    let out = dig(s.dns, PAY, &["pay.test"]).await;
    assert_eq!(a_answers(&out), vec!["192.0.2.20"], "{out}");
    assert_eq!(status(&dig(s.dns, PAY, &["allowed.test"]).await), "NXDOMAIN", "payments may not");
    assert_eq!(hickory_a(s.dns, PAY, "pay.test.").await, Ok(vec![Ipv4Addr::new(192, 0, 2, 20)]));
    // An unmapped client (127.0.0.1) resolves what some service may reach, and nothing else.
    assert_eq!(a_answers(&dig(s.dns, "127.0.0.1", &["pay.test"]).await), vec!["192.0.2.20"]);
    assert_eq!(a_answers(&dig(s.dns, "127.0.0.1", &["allowed.test"]).await), vec!["192.0.2.10"]);
    assert_eq!(status(&dig(s.dns, "127.0.0.1", &["dry.test"]).await), "NXDOMAIN");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_answer_is_truncated_over_udp_and_dig_retries_over_tcp() {
    let s = setup("").await;
    let out = dig(s.dns, CI, &["many.big.test", "TXT"]).await;
    assert!(out.contains("Truncated, retrying in TCP mode"), "the UDP answer had TC set: {out}");
    assert_eq!(status(&out), "NOERROR", "{out}");
    let txt = out.lines().filter(|l| !l.starts_with(';') && l.contains("\tTXT\t")).count();
    assert_eq!(txt, 40, "the whole answer over TCP: {out}");
    let records = audit_records(&s.audit, "many.big.test").await;
    assert!(records.iter().any(|r| r["network.transport"] == "udp" && r["dns.truncated"] == true), "{records:?}");
    let tcp = eventually("the TCP query's record", Duration::from_secs(10), || async {
        let all = audit_records(&s.audit, "many.big.test").await;
        all.into_iter().find(|r| r["network.transport"] == "tcp")
    })
    .await;
    assert_eq!(tcp["dns.answers"], 40);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_gives_servfail_not_a_hang() {
    // A port with nothing behind it: bind, learn it, close.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let upstream = start_counting_dns(&records()).await;
    let s = setup_with_upstream(upstream, "").await;
    let text = firewall(dead, "").replace("attempts: 1", "attempts: 2");
    // Served from the start with the dead upstream: rewrite before the first query and wait.
    std::fs::write(s.dir.path().join("dns.yaml"), &text).unwrap();
    eventually("the dead upstream in the live policy", Duration::from_secs(10), || async {
        s.egressd.policy.load().dns.as_ref().is_some_and(|d| d.upstreams == vec![dead]).then_some(())
    })
    .await;
    let out = dig(s.dns, CI, &["allowed.test"]).await;
    assert_eq!(status(&out), "SERVFAIL", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_packets_are_dropped_and_the_server_answers_afterwards() {
    let s = setup("").await;
    let socket = tokio::net::UdpSocket::bind("127.0.0.8:0").await.unwrap();
    let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    for i in 0..500 {
        let len = (next() % 600) as usize;
        let mut packet: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        if i % 2 == 0 && packet.len() > 2 {
            packet[2] &= 0x7f; // a query's QR bit: gets past the first check more often
        }
        socket.send_to(&packet, s.dns).await.unwrap();
    }
    let out = dig(s.dns, CI, &["allowed.test"]).await;
    assert_eq!(a_answers(&out), vec!["192.0.2.10"], "{out}");
    assert!(metric(s.egressd.admin, "egressd_dns_packets_dropped_total").await > 0, "garbage was dropped, counted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_reload_changes_the_answers() {
    let s = setup("").await;
    assert_eq!(a_answers(&dig(s.dns, PAY, &["pay.test"]).await), vec!["192.0.2.20"]);
    let without = PAYMENTS.replace("pay.test", "elsewhere.test");
    let tmp = s.dir.path().join("payments.yaml.tmp~");
    std::fs::write(&tmp, without).unwrap();
    std::fs::rename(&tmp, s.dir.path().join("payments.yaml")).unwrap();
    eventually("pay.test to be blocked after the reload", Duration::from_secs(15), || async {
        (status(&dig(s.dns, PAY, &["pay.test"]).await) == "NXDOMAIN").then_some(())
    })
    .await;
    // A malformed DnsFirewall is rejected; the running policy keeps answering.
    let version = s.egressd.policy.load().version.clone();
    std::fs::write(s.dir.path().join("dns.yaml"), "kind: DnsFirewall\nname: x\nlisten: nowhere\nupstreams: []\n")
        .unwrap();
    let error = eventually("the reload to be rejected", Duration::from_secs(15), || async {
        let (_, body) = http_get(s.egressd.admin, "/policy").await;
        let policy: serde_json::Value = serde_json::from_str(&body).unwrap();
        policy["lastReloadError"]["errors"].as_array().map(|e| format!("{e:?}"))
    })
    .await;
    assert!(error.contains("dns.yaml:3:9: listen `nowhere` is not IP:PORT"), "{error}");
    assert_eq!(s.egressd.policy.load().version, version, "the invalid set was not swapped in");
    assert_eq!(a_answers(&dig(s.dns, CI, &["allowed.test"]).await), vec!["192.0.2.10"]);
}

/// `egressd export rpz` loaded into a real unbound (rpz module) that forwards to the same
/// authoritative server: an allowed name resolves, another gets NXDOMAIN from the zone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rpz_export_makes_unbound_answer_as_egressd_does() {
    let upstream = start_counting_dns(&records()).await;
    let dir = tempfile::tempdir().unwrap();
    let policy_dir = dir.path().join("policy");
    std::fs::create_dir(&policy_dir).unwrap();
    write_policy(&policy_dir, upstream.addr, "");
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(["export", "rpz", "--zone", "rpz.test-mesh", "--policy"])
        .arg(&policy_dir)
        .arg("--out")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zone_file = dir.path().join("rpz.test-mesh.rpz");
    let zone = std::fs::read_to_string(&zone_file).unwrap();
    assert!(zone.contains("allowed.test CNAME rpz-passthru."), "{zone}");
    assert!(zone.contains("leak.test CNAME ."), "{zone}");

    let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let conf = dir.path().join("unbound.conf");
    std::fs::write(
        &conf,
        format!(
            "server:\n  interface: 127.0.0.1@{port}\n  port: {port}\n  do-daemonize: no\n  username: \"\"\n  chroot: \"\"\n  directory: \"{d}\"\n  pidfile: \"\"\n  use-syslog: no\n  logfile: \"\"\n  do-not-query-localhost: no\n  module-config: \"respip iterator\"\n  domain-insecure: \"test\"\n  local-zone: \"test.\" nodefault\n  qname-minimisation: no\n  do-ip6: no\nrpz:\n  name: rpz.test-mesh\n  zonefile: \"{zone}\"\nforward-zone:\n  name: \"test.\"\n  forward-addr: 127.0.0.1@{up}\n",
            d = dir.path().display(),
            zone = zone_file.display(),
            up = upstream.addr.port()
        ),
    )
    .unwrap();
    // unbound serves `test.` as NXDOMAIN by default (RFC 6761): `nodefault` lets it forward.
    let unbound = Command::new("unbound")
        .arg("-d")
        .arg("-c")
        .arg(&conf)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("unbound (Debian) is installed");
    let _unbound = KillOnDrop(unbound);
    let server: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let allowed = eventually("unbound to answer", Duration::from_secs(20), || async {
        let out = dig(server, "127.0.0.1", &["allowed.test", "A"]).await;
        out.contains("status: NOERROR").then_some(out)
    })
    .await;
    let blocked = dig(server, "127.0.0.1", &["blocked.test", "A"]).await;
    let denied = dig(server, "127.0.0.1", &["leak.test", "A"]).await;
    let below = dig(server, "127.0.0.1", &["sub.allowed.test", "A"]).await;
    assert_eq!(a_answers(&allowed), vec!["192.0.2.10"], "{allowed}");
    assert_eq!(status(&blocked), "NXDOMAIN", "{blocked}");
    assert_eq!(status(&denied), "NXDOMAIN", "{denied}");
    assert_eq!(status(&below), "NXDOMAIN", "an exact allow does not pass its subdomains: {below}");
}

/// A child process killed when the test ends, passed or not.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Real Envoy, configured by egressd's ADS: with a DnsFirewall in the policy, the gateway's
/// dynamic forward proxy resolves destination names through egressd's DNS (the generated c-ares
/// resolver), so an allowed name works through the gateway and the lookup is in the audit log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateways_forward_proxy_resolves_through_egressd_dns() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit.jsonl");
    let config = TelemetryConfig {
        audit: Some(AuditConfig { path: audit.clone(), max_bytes: 1 << 30, keep: 1, fsync: FsyncPolicy::Never }),
        ..Default::default()
    };
    let (telemetry, _tasks) = Telemetry::start(config).unwrap();
    let lab = support::lab::Lab::builder().dns_firewall().telemetry(telemetry).start().await;
    let dns = lab.egressd.dns.expect("DNS served");
    let (_, xds) = http_get(lab.egressd.admin, "/policy").await;
    assert!(xds.contains("dnsFirewall"), "{xds}");
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://api.partner.test:{}/v1/prices", lab.http_upstream.port());
    let (status, resp) = support::client::proxy_get(&mut conn, &url).await.unwrap();
    assert_eq!(status, 200, "{resp}\n{}", lab.envoy.log());
    assert!(resp.contains("upstream http host api.partner.test"), "{resp}");
    let record = &audit_records(&audit, "api.partner.test").await[0];
    assert_eq!(record["egress.decision"], "allow", "{record}");
    assert_eq!(record["dns.question.type"], "A");
    assert_eq!(record["client.address"], "127.0.0.1", "the gateway asked egressd ({dns})");
}

/// Data in query names, where tunnels really live: 16 distinct names with a 55-character label
/// under one registrable domain in a minute raise a `dns-tunnel` signal for the querying service
/// (and, from an unmapped client, for its address); none of the blocked names left egressd.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tunnel_like_query_names_raise_a_dns_tunnel_signal_per_querier() {
    let s = setup("").await;
    let before = s.upstream.queries();
    for (source, n) in [(CI, 16), ("127.0.0.9", 16)] {
        for i in 0..n {
            let label =
                format!("{i:02}{}", "mzxw6ytboi4dqmrtgq2tmnzygezdgnbvgy3tqojqgezdgnbvgy3t".repeat(2))[..55].to_string();
            let out = dig(s.dns, source, &[&format!("{label}.x.exfil.test"), "TXT"]).await;
            assert_eq!(status(&out), "NXDOMAIN", "{out}");
        }
    }
    let signals = eventually("two dns-tunnel signals", Duration::from_secs(10), || async {
        let (_, body) = http_get(s.egressd.admin, "/signals?kind=dns-tunnel").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        let list = v["signals"].as_array().unwrap().clone();
        (list.len() == 2).then_some(list)
    })
    .await;
    let ci = signals.iter().find(|x| x["service"] == "ci-runners").expect("the mapped service's signal");
    assert_eq!(ci["destination"], "exfil.test");
    assert!(ci["summary"].as_str().unwrap().contains("label of 50+ characters"), "{ci}");
    let unmapped = signals.iter().find(|x| x.get("service").is_none()).expect("the unmapped client's signal");
    assert_eq!(unmapped["source"], "127.0.0.9", "{unmapped}");
    assert_eq!(s.upstream.queries(), before, "no blocked name was forwarded");
}

/// Short names, too few for the distinct-names rule, but asked as TXT: the record type tunnels
/// carry data in, making most of the domain's queries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_txt_heavy_query_mix_under_one_domain_raises_a_dns_tunnel_signal() {
    let s = setup("").await;
    let names: Vec<String> = (0..30).map(|i| format!("c{i}.mix.test")).collect();
    let mut args: Vec<&str> = Vec::new();
    for i in 0..55 {
        args.extend([names[i % names.len()].as_str(), "TXT"]);
    }
    args.extend(["a0.mix.test", "A"]);
    let out = dig(s.dns, CI, &args).await;
    assert_eq!(out.matches("status: NXDOMAIN").count(), 56, "{out}");
    let signal = eventually("a dns-tunnel signal", Duration::from_secs(10), || async {
        let (_, body) = http_get(s.egressd.admin, "/signals?kind=dns-tunnel").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        v["signals"].as_array().unwrap().first().cloned()
    })
    .await;
    assert_eq!(signal["destination"], "mix.test");
    assert_eq!(signal["service"], "ci-runners");
    let summary = signal["summary"].as_str().unwrap();
    assert!(summary.contains("50 of 50 DNS queries under mix.test") && summary.contains("TXT or NULL"), "{signal}");
    assert_eq!(signal["evidence"]["txt_null_queries"], 50);
}

/// With an OTLP endpoint, every query is a span `egress dns` (kind SERVER, the audit line's
/// fields), sampled as Checks are: under `always_off` an allow is not exported and a deny is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_query_is_an_otlp_span_and_denies_are_kept_by_the_sampler() {
    use opentelemetry_proto::tonic::trace::v1::{span::SpanKind, status::StatusCode};
    let collector = Collector::start().await;
    let s = setup_with(start_counting_dns(&records()).await, "", |c| {
        c.otlp = Some(OtlpConfig::new(collector.endpoint(), "egressd-dns"));
        c.sampler = parse_sampler("always_off", None).unwrap();
    })
    .await;
    assert_eq!(a_answers(&dig(s.dns, CI, &["allowed.test"]).await), vec!["192.0.2.10"]);
    // The telemetry thread writes a query's audit record and samples its span in one step, and
    // exports batches in order: once this record is written, the allow's span, had it been
    // sampled, would reach the collector before the deny's.
    audit_records(&s.audit, "allowed.test").await;
    let out = dig(s.dns, CI, &["leak.test", "TXT"]).await;
    assert_eq!(status(&out), "NXDOMAIN", "{out}");
    let is_leak = |r: &support::otlp::Received| r.attr("dns.question.name").as_deref() == Some("leak.test");
    let spans = collector.wait_for(Duration::from_secs(15), |spans| spans.iter().any(is_leak)).await;
    let dns: Vec<_> = spans.iter().filter(|r| r.span.name == "egress dns").collect();
    assert_eq!(dns.len(), 1, "the deny's span only, not the allow's: {dns:?}");
    let span = dns[0];
    assert!(is_leak(span), "{span:?}");
    assert_eq!(span.service, "egressd-dns");
    assert_eq!(span.span.kind, SpanKind::Server as i32);
    assert!(span.parent_span_id().is_empty(), "a query starts its trace");
    assert_eq!(span.trace_id().len(), 32);
    // The query's audit line names the same span.
    let record = audit_records(&s.audit, "leak.test").await.remove(0);
    assert_eq!(record["trace_id"].as_str().map(str::len), Some(32), "{record}");
    assert_eq!(span.trace_id(), record["trace_id"].as_str().unwrap());
    assert_eq!(span.span_id(), record["span_id"].as_str().unwrap());
    let status = span.span.status.clone().expect("a deny has a status");
    assert_eq!((status.code, status.message.as_str()), (StatusCode::Error as i32, "mesh-deny"));
    for (key, value) in [
        ("dns.question.type", "TXT"),
        ("dns.response_code", "NXDOMAIN"),
        ("client.address", CI),
        ("network.transport", "udp"),
        ("egress.service", "ci-runners"),
        ("egress.rule.id", "mesh/deny/0"),
        ("egress.decision", "deny"),
        ("egress.reason", "mesh-deny"),
        ("egress.policy.version", s.egressd.policy.load().version.as_str()),
        ("dns.cached", "false"),
        ("dns.truncated", "false"),
    ] {
        assert_eq!(span.attr(key).as_deref(), Some(value), "{key} of {span:?}");
    }
    assert!(span.span.end_time_unix_nano >= span.span.start_time_unix_nano);
}

/// `rateLimit` is a token bucket per client address: one dig process asking 12 names in a row
/// from one address gets the burst answered and then REFUSED (never forwarded), counted on
/// `/metrics` and audited as `rate-limited`; another address has its own bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queries_past_a_sources_rate_limit_are_refused_counted_and_other_sources_unaffected() {
    let s = setup("rateLimit:\n  queriesPerSecond: 1\n  burst: 3\n").await;
    let before = s.upstream.queries();
    // Distinct allowed names (under *.big.test, absent from the zone): none is in the cache, so
    // every query that passes the limit is forwarded.
    let names: Vec<String> = (0..12).map(|i| format!("n{i}.big.test")).collect();
    let args: Vec<&str> = names.iter().map(String::as_str).collect();
    let started = Instant::now();
    let out = dig(s.dns, CI, &args).await;
    let elapsed = started.elapsed();
    let statuses: Vec<&str> = out.match_indices("status: ").map(|(i, _)| status(&out[i..])).collect();
    assert_eq!(statuses.len(), 12, "{out}");
    assert_eq!(statuses[..3], ["NXDOMAIN"; 3], "the burst is answered (by the upstream): {out}");
    let refused = statuses.iter().filter(|s| **s == "REFUSED").count();
    let answered = statuses.len() - refused;
    // The bucket refills one token a second: no more than that was answered past the burst.
    let refills = elapsed.as_secs() as usize + 1;
    assert!(answered <= 3 + refills, "{answered} answered in {elapsed:?}: {out}");
    assert!(refused >= 12 - 3 - refills && refused > 0, "{out}");
    assert_eq!(s.upstream.queries() - before, answered, "refused queries were not forwarded");
    // Another source is not limited by the first one's bucket.
    let pay = dig(s.dns, PAY, &["pay.test"]).await;
    assert_eq!(a_answers(&pay), vec!["192.0.2.20"], "{pay}");
    assert_eq!(hickory_a(s.dns, PAY, "pay.test.").await, Ok(vec![Ipv4Addr::new(192, 0, 2, 20)]));
    // Counted and audited.
    assert_eq!(metric(s.egressd.admin, "egressd_dns_rate_limited_total").await, refused as u64);
    let mut limited = 0;
    for name in &names {
        let records = audit_records(&s.audit, name).await;
        let r = &records[0];
        if r["egress.reason"] == "rate-limited" {
            limited += 1;
            assert_eq!((&r["egress.decision"], &r["dns.response_code"]), (&"deny".into(), &"REFUSED".into()));
            assert_eq!(r["client.address"], CI);
        }
    }
    assert_eq!(limited, refused, "one rate-limited record per refused query");
}

/// Spans alone (no audit log, no detectors) are reason enough to queue a query: an allowed TCP
/// query under the default sampler is a span without an error status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_spans_alone_an_allowed_query_is_a_span_too() {
    let collector = Collector::start().await;
    let s = setup_with(start_counting_dns(&records()).await, "", |c| {
        c.otlp = Some(OtlpConfig::new(collector.endpoint(), "egressd-dns"));
        (c.audit, c.detect) = (None, None);
    })
    .await;
    assert_eq!(a_answers(&dig(s.dns, CI, &["+tcp", "allowed.test"]).await), vec!["192.0.2.10"]);
    let is_dns = |r: &support::otlp::Received| r.span.name == "egress dns";
    let spans = collector.wait_for(Duration::from_secs(15), |spans| spans.iter().any(is_dns)).await;
    let span = spans.iter().find(|r| is_dns(r)).unwrap_or_else(|| panic!("no DNS span in {spans:?}"));
    assert_eq!(span.attr("dns.question.name").as_deref(), Some("allowed.test"));
    assert_eq!(span.attr("network.transport").as_deref(), Some("tcp"));
    assert_eq!(span.attr("egress.decision").as_deref(), Some("allow"));
    assert_eq!(span.attr("egress.rule.id").as_deref(), Some("ci-runners/allow/0"));
    assert_eq!(span.span.status, None, "an allow is not an error");
}

/// PTR, SOA and NS through dig, in the order README "What a query gets" gives: a mesh-wide deny is
/// the floor (a private PTR under it is blocked, never forwarded); a private PTR otherwise goes
/// upstream (`private-ptr`); SOA and NS of an allowed name's zone go upstream (`zone-of-allowed`);
/// the zone of a name only another service may reach does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infrastructure_queries_follow_the_documented_order() {
    let s = setup("").await;
    // An operator adds a mesh-wide deny of one private reverse name.
    std::fs::write(s.dir.path().join("mesh.yaml"), format!("{MESH}  - host: 9.0.0.127.in-addr.arpa\n")).unwrap();
    eventually("the reverse-name deny in the live policy", Duration::from_secs(15), || async {
        let now = egressd::clock::coarse_unix_now();
        s.egressd.policy.load().mesh_denied_name("9.0.0.127.in-addr.arpa", now).map(|_| ())
    })
    .await;
    // (dig arguments, audited name, reason, forwarded)
    let cases: [(&[&str], &str, &str, bool); 6] = [
        (&["-x", "127.0.0.9"], "9.0.0.127.in-addr.arpa", "mesh-deny", false),
        (&["-x", "127.0.0.1"], "1.0.0.127.in-addr.arpa", "private-ptr", true),
        (&["test", "SOA"], "test", "zone-of-allowed", true),
        (&["big.test", "NS"], "big.test", "zone-of-allowed", true),
        (&["pay.test", "SOA"], "pay.test", "no-matching-allow", false),
        (&["leak.test", "NS"], "leak.test", "mesh-deny", false),
    ];
    for (args, name, reason, forwarded) in cases {
        let before = s.upstream.queries();
        let out = dig(s.dns, CI, args).await;
        let record = &audit_records(&s.audit, name).await[0];
        assert_eq!(record["egress.reason"], reason, "{args:?}: {record}\n{out}");
        assert_eq!(s.upstream.queries() > before, forwarded, "{args:?} forwarded: {out}");
        if !forwarded {
            assert_eq!(status(&out), "NXDOMAIN", "{out}");
            let ede = if reason == "mesh-deny" { "EDE: 15 (Blocked)" } else { "EDE: 18 (Prohibited)" };
            assert!(out.contains(ede), "{out}");
        }
    }
    let soa = dig(s.dns, CI, &["test", "SOA"]).await;
    assert_eq!(status(&soa), "NOERROR", "the upstream's SOA of the allowed zone: {soa}");
    assert!(soa.lines().any(|l| !l.starts_with(';') && l.contains("\tSOA\t")), "{soa}");
}
