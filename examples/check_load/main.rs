//! Load tool for the Check service: N concurrent Check calls over loopback for T seconds, printing
//! throughput and p50/p99/p99.9 latency; optionally the same load against a no-op Check server this
//! tool hosts itself (in a child process, so both servers get the same treatment), with ratios.
//!
//! Closed loop (max throughput):   cargo run --release --example check_load -- --target 127.0.0.1:18000 --noop
//! Open loop (fixed rate, p99):    ... --rate 5000
//! One Check path at a time:       ... --case connect-verified (get-allow, network-allow, deny, deny-rule, mix)
//! Answers are decoded into CheckResponses, as Envoy decodes every answer (`--no-decode` to skip).
//! Against another running server (e.g. egressd without telemetry): ... --baseline 127.0.0.1:18100
//! Rounds alternate target / baseline (A B A B ...) and report medians, because this 2-core VM's
//! absolute numbers drift; only the ratios are meaningful.
//! `--serve-collector ADDR` hosts a minimal OTLP/gRPC trace collector (decodes and counts spans;
//! `--collector-decode wire|messages`, collector.rs),
//! for measuring egressd with span export on (benches/telemetry_load.sh).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use egressd::testing::http_check;
use envoy_types::pb::envoy::service::auth::v3::authorization_client::AuthorizationClient;
use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::rpc::Status;
use hdrhistogram::Histogram;
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::transport::Channel;

mod collector;

/// Client codec that sends CheckRequests and keeps answers as opaque bytes.
#[derive(Clone, Copy, Default)]
struct OpaqueAnswers;
#[derive(Clone, Copy, Default)]
struct RequestEncoder;
#[derive(Clone, Copy, Default)]
struct BytesDecoder;

impl Codec for OpaqueAnswers {
    type Encode = CheckRequest;
    type Decode = bytes::Bytes;
    type Encoder = RequestEncoder;
    type Decoder = BytesDecoder;
    fn encoder(&mut self) -> RequestEncoder {
        RequestEncoder
    }
    fn decoder(&mut self) -> BytesDecoder {
        BytesDecoder
    }
}

impl Encoder for RequestEncoder {
    type Item = CheckRequest;
    type Error = tonic::Status;
    fn encode(&mut self, item: CheckRequest, buf: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        item.encode(buf).map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

impl Decoder for BytesDecoder {
    type Item = bytes::Bytes;
    type Error = tonic::Status;
    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<bytes::Bytes>, tonic::Status> {
        use bytes::Buf;
        Ok(Some(buf.copy_to_bytes(buf.remaining())))
    }
}

/// One Check call, decoding the answer or not.
async fn call(
    client: &mut AuthorizationClient<Channel>,
    raw: &mut tonic::client::Grpc<Channel>,
    decode: bool,
    generated_gateway: bool,
    req: CheckRequest,
) -> bool {
    let mut req = tonic::Request::new(req);
    if generated_gateway {
        // What egressd's generated gateway sends with every HTTP check (see egressd::contract).
        req.metadata_mut().insert("x-egressd-gateway", tonic::metadata::MetadataValue::from_static("generated"));
    }
    if decode {
        return client.check(req).await.is_ok();
    }
    if raw.ready().await.is_err() {
        return false;
    }
    let path = tonic::codegen::http::uri::PathAndQuery::from_static("/envoy.service.auth.v3.Authorization/Check");
    raw.unary(req, path, OpaqueAnswers).await.is_ok()
}

#[derive(Parser, Debug, Clone)]
#[command(about = "Drive ext_authz Check load and compare against a no-op server")]
struct Args {
    /// egressd's gRPC address.
    #[arg(long, default_value = "127.0.0.1:18000")]
    target: SocketAddr,
    /// Also run the load against a no-op Check server (child process) and print ratios.
    #[arg(long)]
    noop: bool,
    /// Concurrent in-flight requests.
    #[arg(long, short = 'c', default_value_t = 64)]
    concurrency: usize,
    /// Seconds per round.
    #[arg(long, short = 'd', default_value_t = 5.0)]
    duration: f64,
    /// Rounds per server (interleaved A B A B; medians reported).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Open loop: total requests per second (latency measured from the scheduled send time, so a
    /// stalled server is not hidden by coordinated omission).
    #[arg(long)]
    rate: Option<u64>,
    /// HTTP/2 connections (Envoy opens one per worker).
    #[arg(long, default_value_t = 2)]
    connections: usize,
    /// Client runtime worker threads.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Keep answers as opaque bytes instead of decoding them into CheckResponses. Envoy decodes
    /// every answer, so decoding (the default) is the honest comparison; a larger answer costs the
    /// caller more, and that cost belongs to the server's answer. Either way gRPC errors are counted.
    #[arg(long)]
    no_decode: bool,
    /// Send checks as another gateway would (without the generated gateway's metadata), so
    /// egressd's answers carry the header removal lists.
    #[arg(long)]
    foreign_gateway: bool,
    /// Which Check path to drive (against the example policy).
    #[arg(long, value_enum, default_value = "mix")]
    case: Case,
    /// Compare against this already running Check server instead of a no-op child.
    #[arg(long, conflicts_with = "noop")]
    baseline: Option<SocketAddr>,
    /// The target server's pid, to report its CPU per check.
    #[arg(long)]
    target_pid: Option<u32>,
    /// The baseline server's pid (with --baseline), likewise.
    #[arg(long)]
    baseline_pid: Option<u32>,
    /// Label of the target in the output.
    #[arg(long, default_value = "egressd")]
    name: String,
    /// Label of the baseline in the output.
    #[arg(long, default_value = "no-op")]
    baseline_name: String,
    /// Serve a minimal OTLP/gRPC trace collector on this address and never return.
    #[arg(long)]
    serve_collector: Option<SocketAddr>,
    /// How that collector decodes exports: `wire` checks every field of the wire format without
    /// building messages, `messages` decodes into the generated OTLP types (collector.rs).
    #[arg(long, value_enum, default_value = "wire")]
    collector_decode: collector::CollectorDecode,
    /// Internal: serve the no-op Check on this address and never return.
    #[arg(long, hide = true)]
    serve_noop: Option<SocketAddr>,
    /// With --serve-noop: answer with egressd's answer shape (decision metadata, XFCC removal)
    /// instead of a bare OK, to measure what processing that answer costs the caller.
    #[arg(long, hide = true)]
    noop_shaped: bool,
    /// With --noop-shaped: the HOST:PORT its answers forward to (`x-egress-host`/`-port`, which
    /// the generated gateway routes by).
    #[arg(long, hide = true, default_value = "api.partner.test:80", requires = "noop_shaped")]
    noop_forward: String,
    /// With --noop-shaped: which parts the answer carries, comma-separated: `meta` (the decision
    /// metadata), `meta1` (the same in one field), `headers` (x-egress-host/-port), `remove` (a
    /// removal list of XFCC and the internal headers). The default is what egressd answers the
    /// generated gateway.
    #[arg(long, hide = true, default_value = "meta,headers", requires = "noop_shaped")]
    noop_parts: String,
}

/// Answers every Check with OK and nothing else (the floor for any ext_authz server), or with a
/// fixed answer shaped like egressd's allow.
struct Noop(CheckResponse);

impl Noop {
    fn bare() -> Self {
        Noop(CheckResponse { status: Some(Status { code: 0, ..Default::default() }), ..Default::default() })
    }

    fn shaped(forward: &str, parts: &str) -> Self {
        let (host, port) = forward.rsplit_once(':').expect("--noop-forward is HOST:PORT");
        use envoy_types::pb::envoy::service::auth::v3::{OkHttpResponse, check_response};
        use envoy_types::pb::google::protobuf::{Struct, Value, value};
        let s = |v: &str| Value { kind: Some(value::Kind::StringValue(v.to_string())) };
        let fields = [
            ("decision", "allow"),
            ("reason", "allowed"),
            ("rule", "bench/allow/0"),
            ("service", "bench"),
            ("mode", "enforce"),
            ("policy_version", "sha256:0123456789abcdef"),
        ];
        let has = |p: &str| parts.split(',').any(|x| x == p);
        let mut r = Noop(CheckResponse {
            status: Some(Status { code: 0, ..Default::default() }),
            dynamic_metadata: Some(Struct { fields: fields.iter().map(|(k, v)| (k.to_string(), s(v))).collect() }),
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse {
                headers_to_remove: ["x-forwarded-client-cert", "x-egress-tunnel", "x-egress-tls-name"]
                    .map(str::to_string)
                    .to_vec(),
                headers: [("x-egress-host", host), ("x-egress-port", port)].map(|(k, v)| egressd_header(k, v)).to_vec(),
                ..Default::default()
            })),
        });
        if !has("meta") {
            r.0.dynamic_metadata = None;
        }
        if has("meta1") {
            let one = "decision=allow reason=allowed rule=bench/allow/0 service=bench mode=enforce policy=sha256:0123456789abcdef";
            r.0.dynamic_metadata = Some(Struct { fields: [("egress".to_string(), s(one))].into_iter().collect() });
        }
        if let Some(check_response::HttpResponse::OkResponse(ok)) = r.0.http_response.as_mut() {
            if !has("remove") {
                ok.headers_to_remove.clear();
            }
            if !has("headers") {
                ok.headers.clear();
            }
        }
        r
    }
}

fn egressd_header(key: &str, value: &str) -> envoy_types::pb::envoy::config::core::v3::HeaderValueOption {
    use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        append_action: 2, // OVERWRITE_IF_EXISTS_OR_ADD
        ..Default::default()
    }
}

#[tonic::async_trait]
impl Authorization for Noop {
    async fn check(&self, _: tonic::Request<CheckRequest>) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        Ok(tonic::Response::new(self.0.clone()))
    }
}

/// One Check path of egressd, on the example policy.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
enum Case {
    /// Allows, denies, dry-run, canary, CONNECTs and plain requests.
    Mix,
    /// A plain proxied GET, allowed (the answer's core comes from the cache).
    GetAllow,
    /// A CONNECT to 443 of a service whose tunnels are verified: the answer carries the tunnel
    /// filter's order (`x-egress-tunnel: require-matching-sni enforce`).
    ConnectVerified,
    /// A TLS-by-SNI network check, allowed.
    NetworkAllow,
    /// A request without an identity: denied `unauthenticated`.
    Deny,
    /// A default deny of an identified service (a 403 whose body names the destination).
    DenyRule,
}

const CHECKOUT: &str = "spiffe://corp.example/ns/checkout/sa/web";
const PAYMENTS: &str = "spiffe://corp.example/ns/payments/sa/api";

/// 64 requests of `case`, each with its own request id.
fn requests_of(case: Case) -> Vec<CheckRequest> {
    let id = |i: usize| format!("4bf92f35-77b3-4da6-a3ce-{i:012}");
    let http = |principal: &str, method: &str, host: &str, i: usize| {
        http_check(
            principal,
            method,
            host,
            &[("x-request-id", &id(i)), ("user-agent", "curl/8.5.0"), ("accept", "*/*")],
        )
    };
    (0..64)
        .map(|i| match case {
            Case::Mix => requests()[i].clone(),
            Case::GetAllow => http(CHECKOUT, "GET", "api.partner.test", i),
            Case::ConnectVerified => http(PAYMENTS, "CONNECT", "api.stripe.com:443", i),
            Case::NetworkAllow => egressd::testing::network_check(CHECKOUT, "api.partner.test", "127.0.0.1", 10443),
            Case::Deny => http("", "CONNECT", "api.partner.test:443", i),
            Case::DenyRule => http(CHECKOUT, "CONNECT", "evil.example.org:443", i),
        })
        .collect()
}

/// A realistic mix against the example mesh-config: allows, denies, dry-run, canary.
fn requests() -> Vec<CheckRequest> {
    let mix = [
        ("spiffe://corp.example/ns/payments/sa/api", "CONNECT", "api.stripe.com:443"),
        ("spiffe://corp.example/ns/ci/sa/builder", "CONNECT", "files.pythonhosted.org:443"),
        ("spiffe://corp.example/ns/checkout/sa/web", "GET", "api.partner.test"),
        ("spiffe://corp.example/ns/checkout/sa/web", "CONNECT", "evil.example.org:443"),
        ("spiffe://corp.example/ns/search/sa/indexer", "CONNECT", "unknown.example.net:443"),
        ("spiffe://corp.example/ns/payments/sa/worker", "CONNECT", "uploads.stripe.com:443"),
        ("spiffe://corp.example/ns/ci/sa/builder", "CONNECT", "github.com:443"),
        ("spiffe://corp.example/ns/payments/sa/api", "CONNECT", "10.20.4.4:5432"),
    ];
    (0..64)
        .map(|i| {
            let (principal, method, host) = mix[i % mix.len()];
            let id = format!("4bf92f35-77b3-4da6-a3ce-{i:012}");
            http_check(
                principal,
                method,
                host,
                &[("x-request-id", &id), ("user-agent", "curl/8.5.0"), ("accept", "*/*")],
            )
        })
        .collect()
}

struct RoundResult {
    rps: f64,
    /// CPU microseconds per answered check: this client's, and the server's (when its pid is known).
    client_us: f64,
    server_us: Option<f64>,
    hist: Histogram<u64>,
    errors: u64,
}

/// CPU time (utime + stime) of a process, in microseconds (Linux /proc; clock ticks are 10 ms).
fn cpu_us(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks * 10_000.0)
}

async fn round(addr: SocketAddr, args: &Args, server_pid: Option<u32>) -> RoundResult {
    let (client0, server0) = (cpu_us(std::process::id()), server_pid.and_then(cpu_us));
    let mut clients = Vec::new();
    for _ in 0..args.connections.max(1) {
        let ch =
            Channel::from_shared(format!("http://{addr}")).unwrap().tcp_nodelay(true).connect().await.expect("connect");
        clients.push((AuthorizationClient::new(ch.clone()), tonic::client::Grpc::new(ch)));
    }
    let reqs = Arc::new(requests_of(args.case));
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(args.duration);
    let interval = args.rate.map(|r| Duration::from_secs_f64(args.concurrency as f64 / r as f64));
    let mut tasks = Vec::new();
    for t in 0..args.concurrency {
        let (mut client, mut raw) = clients[t % clients.len()].clone();
        let decode = !args.no_decode;
        let generated = !args.foreign_gateway;
        let reqs = reqs.clone();
        // Open loop: task t sends at start + (t + k * concurrency) / rate.
        let offset = args.rate.map(|r| Duration::from_secs_f64(t as f64 / r as f64)).unwrap_or_default();
        tasks.push(tokio::spawn(async move {
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let (mut n, mut errors) = (0usize, 0u64);
            let mut next = start + offset;
            loop {
                let sent_at = match interval {
                    Some(iv) => {
                        tokio::time::sleep_until(next.into()).await;
                        let at = next;
                        next += iv;
                        at
                    }
                    None => Instant::now(),
                };
                if sent_at >= deadline {
                    break;
                }
                let req = reqs[(t + n) % reqs.len()].clone();
                if call(&mut client, &mut raw, decode, generated, req).await {
                    hist.record(sent_at.elapsed().as_micros().max(1) as u64).unwrap();
                } else {
                    errors += 1;
                }
                n += 1;
            }
            (hist, errors)
        }));
    }
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    let mut errors = 0;
    for t in tasks {
        let (h, e) = t.await.unwrap();
        hist.add(h).unwrap();
        errors += e;
    }
    let elapsed = start.elapsed().as_secs_f64().max(args.duration);
    let n = hist.len().max(1) as f64;
    let per = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / n);
    let client_us = per(client0, cpu_us(std::process::id())).unwrap_or(0.0);
    let server_us = per(server0, server_pid.and_then(cpu_us));
    RoundResult { rps: hist.len() as f64 / elapsed, client_us, server_us, hist, errors }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Summary {
    rps: f64,
    client_us: f64,
    server_us: Option<f64>,
    p50: f64,
    p99: f64,
    p999: f64,
    errors: u64,
}

fn summarize(rounds: &[RoundResult]) -> Summary {
    let q = |p: f64| median(rounds.iter().map(|r| r.hist.value_at_quantile(p) as f64).collect());
    let server: Vec<f64> = rounds.iter().filter_map(|r| r.server_us).collect();
    Summary {
        rps: median(rounds.iter().map(|r| r.rps).collect()),
        client_us: median(rounds.iter().map(|r| r.client_us).collect()),
        server_us: (!server.is_empty()).then(|| median(server)),
        p50: q(0.50),
        p99: q(0.99),
        p999: q(0.999),
        errors: rounds.iter().map(|r| r.errors).sum(),
    }
}

fn print(name: &str, s: &Summary) {
    let server = s.server_us.map(|u| format!("{u:.1}")).unwrap_or_else(|| "?".into());
    println!(
        "{name:<12} {:>10.0} req/s   p50 {:>7.0} us   p99 {:>7.0} us   p99.9 {:>7.0} us   errors {}   CPU/check: client {:.1} us, server {server} us",
        s.rps, s.p50, s.p99, s.p999, s.errors, s.client_us
    );
}

fn spawn_noop() -> (Child, SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let child = Command::new(std::env::current_exe().unwrap())
        .args(["--serve-noop", &addr.to_string()])
        .stdout(Stdio::null())
        .spawn()
        .expect("spawn no-op server");
    (child, addr)
}

fn main() {
    let args = Args::parse();
    if let Some(addr) = args.serve_collector {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(collector::serve(addr, args.collector_decode));
        return;
    }
    if let Some(addr) = args.serve_noop {
        let rt = tokio::runtime::Runtime::new().unwrap();
        let noop = if args.noop_shaped { Noop::shaped(&args.noop_forward, &args.noop_parts) } else { Noop::bare() };
        rt.block_on(async move {
            tonic::transport::Server::builder()
                .tcp_nodelay(true)
                .add_service(AuthorizationServer::new(noop))
                .serve(addr)
                .await
                .unwrap();
        });
        return;
    }
    let rt =
        tokio::runtime::Builder::new_multi_thread().worker_threads(args.client_threads).enable_all().build().unwrap();
    let noop = args.noop.then(spawn_noop).map(|(child, addr)| (Some(child), addr));
    let noop = noop.or(args.baseline.map(|addr| (None, addr)));
    let baseline_pid = noop.as_ref().and_then(|(c, _)| c.as_ref().map(Child::id)).or(args.baseline_pid);
    std::thread::sleep(Duration::from_millis(300));
    let mode = match args.rate {
        Some(r) => format!("open loop at {r} req/s"),
        None => "closed loop".to_string(),
    };
    println!(
        "Check load ({:?}): {mode}, concurrency {}, {} connection(s), {} x {:.1}s rounds per server, interleaved, answers {}",
        args.case,
        args.concurrency,
        args.connections,
        args.rounds,
        args.duration,
        if args.no_decode { "not decoded" } else { "decoded" }
    );
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    rt.block_on(async {
        let warm = Args { duration: 1.0, ..args.clone() };
        round(args.target, &warm, None).await;
        if let Some((_, addr)) = &noop {
            round(*addr, &warm, None).await;
        }
        for _ in 0..args.rounds {
            ours.push(round(args.target, &args, args.target_pid).await);
            if let Some((_, addr)) = &noop {
                theirs.push(round(*addr, &args, baseline_pid).await);
            }
        }
    });
    let a = summarize(&ours);
    print(&args.name, &a);
    if let Some((child, _)) = noop {
        let b = summarize(&theirs);
        print(&args.baseline_name, &b);
        println!(
            "ratio {}/{}: throughput {:.3}   p50 {:.2}x   p99 {:.2}x   p99.9 {:.2}x",
            args.name,
            args.baseline_name,
            a.rps / b.rps,
            a.p50 / b.p50,
            a.p99 / b.p99,
            a.p999 / b.p999
        );
        if let Some(mut child) = child {
            let _ = child.kill();
        }
    }
}
