//! Throughput and latency through the real gateway, four ways, in one run with rounds interleaved:
//! (a) no authorization, (b) Envoy's in-proxy RBAC with the same allowlist (what Istio does),
//! (c) ext_authz to a no-op Check server, (d) ext_authz to egressd. Plain HTTP proxy requests are
//! driven by wrk (absolute-form, keep-alive); CONNECT tunnels (one check per tunnel, a new tunnel
//! per request) by this tool. Every gateway is egressd's own generated listener and clusters,
//! differing only in the authorization filter; Envoy runs with --concurrency 1. Besides throughput
//! and latency, each variant's CPU per request is read from /proc for its Envoy and its ext_authz
//! server: it says where a difference comes from (Envoy's handling of an answer, or the server).
//!
//!   bash benches/gateway_bench.sh      (needs wrk and nginx: apt-get install wrk nginx-light)
//!
//! Identity: wrk cannot present a client certificate, so the bench policy trusts
//! x-forwarded-client-cert (the sidecar deployment shape) and the load carries one.
//!
//! (a)-(c') have no tunnel filter (their answers carry no tunnel order); (d) is the product's
//! listener, with it on the CONNECT route.
//!
//! Then, through (d), CONNECT tunnels carrying TLS to an nginx TLS upstream: plain (the caller's
//! service has `tunnelTls: off`: the filter lets the tunnel through unread) versus verified (the
//! tunnel filter holds the first bytes until the ClientHello is whole and checks its SNI), and a
//! sixth Envoy, "no filter": (d) without the tunnel filter at all (what plain would cost if the
//! filter were free), keep-alive tunnels (one tunnel, many requests) and a new tunnel per request,
//! rounds interleaved.

#[path = "../integration/support/dns.rs"]
mod dns;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::rbac::v3::{
    Permission, Policy, Principal, Rbac as RbacRules, permission, principal,
};
use envoy_types::pb::envoy::config::route::v3::{HeaderMatcher, RouteConfiguration, header_matcher};
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
use envoy_types::util::pack_any;
use hdrhistogram::Histogram;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use egressd::policy::GatewaySpec;
use egressd::xds::resources;

const IDENTITY: &str = "spiffe://corp.example/ns/bench/sa/load";
/// A service whose tunnels are verified (the default `tunnelTls`).
const IDENTITY_VERIFIED: &str = "spiffe://corp.example/ns/bench-verified/sa/load";
const FQDN: &str = "bench.test";

#[derive(Parser)]
struct Args {
    #[arg(long, default_value_t = 5)]
    duration: u64,
    #[arg(long, default_value_t = 4)]
    rounds: usize,
    /// Concurrent connections (wrk -c) and concurrent tunnels.
    #[arg(long, default_value_t = 64)]
    connections: usize,
    #[arg(long, default_value = "target/release/egressd")]
    egressd: PathBuf,
    #[arg(long, default_value = "target/release/examples/check_load")]
    noop: PathBuf,
    #[arg(long, env = "ENVOY_BIN", default_value = "target/envoy/envoy/_bin/envoy")]
    envoy: PathBuf,
    /// What (c') answers, comma-separated (`meta`, `meta1`, `headers`, `remove`; see check_load's
    /// --noop-parts). The default is egressd's answer to the generated gateway: decision metadata
    /// and x-egress-host/-port.
    #[arg(long, env = "SHAPE", default_value = "meta,headers")]
    shape: String,
    /// Plain HTTP only: skip the CONNECT and TLS-in-CONNECT tables (quick experiments on the shape).
    #[arg(long, env = "HTTP_ONLY")]
    http_only: bool,
    /// A candidate tunnel filter module (.wasm): a seventh Envoy, (d) with this module instead of
    /// the embedded one, carries verified tunnels beside (d)'s in the TLS table.
    #[arg(long, env = "CANDIDATE_MODULE")]
    candidate_module: Option<PathBuf>,
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Distinct free ports: all bound at once, then released, so no two callers get the same one.
fn ports(n: usize) -> std::vec::IntoIter<u16> {
    let held: Vec<std::net::TcpListener> =
        (0..n).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    held.iter().map(|l| l.local_addr().unwrap().port()).collect::<Vec<_>>().into_iter()
}

fn addr(port: u16) -> SocketAddr {
    format!("127.0.0.1:{port}").parse().unwrap()
}

#[derive(Clone, Copy, PartialEq)]
enum Variant {
    NoAuthz,
    Rbac,
    NoopExtAuthz,
    ShapedNoop,
    Egressd,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::NoAuthz => "(a) no authz",
            Variant::Rbac => "(b) RBAC",
            Variant::NoopExtAuthz => "(c) ext_authz no-op",
            Variant::ShapedNoop => "(c') no-op, egressd-shaped",
            Variant::Egressd => "(d) ext_authz egressd",
        }
    }
}

/// egressd's generated gateway as a static bootstrap, with the authorization filter varied.
fn bootstrap(spec: &GatewaySpec, variant: Variant, admin: u16, upstream_authority: &str) -> Bootstrap {
    let decode_cluster = |r: resources::Resource| Cluster::decode(r.any.value.as_slice()).unwrap();
    let clusters = vec![decode_cluster(resources::authz_cluster(spec)), decode_cluster(resources::dfp_cluster(spec))];
    let mut listener = Listener::decode(resources::http_listener(spec).any.value.as_slice()).unwrap();
    let mut route = RouteConfiguration::decode(resources::http_route(spec).any.value.as_slice()).unwrap();
    let f = &mut listener.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { unreachable!() };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    if variant != Variant::Egressd {
        // Only egressd's answers carry the tunnel order the filter needs.
        without_tunnel_filter(&mut hcm, &mut route);
    }
    hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(route));
    hcm.access_log.clear(); // measured without logging, in all four
    match variant {
        Variant::NoAuthz => {
            hcm.http_filters.remove(0);
        }
        Variant::Rbac => {
            let allow = Policy {
                permissions: vec![Permission {
                    rule: Some(permission::Rule::Header(HeaderMatcher {
                        name: ":authority".into(),
                        header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                            StringMatcher {
                                match_pattern: Some(string_matcher::MatchPattern::Exact(upstream_authority.into())),
                                ..Default::default()
                            },
                        )),
                        ..Default::default()
                    })),
                }],
                principals: vec![Principal { identifier: Some(principal::Identifier::Any(true)) }],
                ..Default::default()
            };
            let rbac = Rbac {
                rules: Some(RbacRules {
                    action: 0,
                    policies: [("allowlist".to_string(), allow)].into_iter().collect(),
                    ..Default::default()
                }),
                ..Default::default()
            };
            hcm.http_filters[0] = HttpFilter {
                name: "envoy.filters.http.rbac".into(),
                config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(rbac))),
                ..Default::default()
            };
        }
        Variant::NoopExtAuthz | Variant::ShapedNoop | Variant::Egressd => {}
    }
    f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
    Bootstrap {
        node: Some(Node { id: "bench".into(), cluster: "bench".into(), ..Default::default() }),
        admin: Some(envoy_types::pb::envoy::config::bootstrap::v3::Admin {
            address: Some(resources_socket(addr(admin))),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources {
            listeners: vec![listener],
            clusters,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Takes the tunnel filter out of a listener and its routes.
fn without_tunnel_filter(hcm: &mut HttpConnectionManager, route: &mut RouteConfiguration) {
    let before = hcm.http_filters.len();
    hcm.http_filters.retain(|f| f.name != egressd::xds::tunnel::TUNNEL_FILTER);
    assert_eq!(hcm.http_filters.len(), before - 1, "the generated listener has the tunnel filter");
    for r in route.virtual_hosts.iter_mut().flat_map(|v| v.routes.iter_mut()) {
        r.typed_per_filter_config.clear();
    }
}

/// (d) without the tunnel filter: every tunnel goes straight to the destination, unread.
fn unfiltered_bootstrap(spec: &GatewaySpec, admin: u16, upstream_authority: &str) -> Bootstrap {
    let mut b = bootstrap(spec, Variant::Egressd, admin, upstream_authority);
    let listener = &mut b.static_resources.as_mut().unwrap().listeners[0];
    let f = &mut listener.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { unreachable!() };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let Some(http_connection_manager::RouteSpecifier::RouteConfig(mut route)) = hcm.route_specifier.take() else {
        unreachable!("bootstrap inlines the route")
    };
    without_tunnel_filter(&mut hcm, &mut route);
    hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(route));
    f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
    b
}

/// (d) with another tunnel filter module inline.
fn candidate_bootstrap(spec: &GatewaySpec, admin: u16, upstream_authority: &str, module: &[u8]) -> Bootstrap {
    use envoy_types::pb::envoy::config::core::v3::{async_data_source, data_source};
    use envoy_types::pb::envoy::extensions::filters::http::wasm::v3::Wasm;
    use envoy_types::pb::envoy::extensions::wasm::v3::plugin_config;
    let mut b = bootstrap(spec, Variant::Egressd, admin, upstream_authority);
    let listener = &mut b.static_resources.as_mut().unwrap().listeners[0];
    let f = &mut listener.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { unreachable!() };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    let tunnel = hcm.http_filters.iter_mut().find(|f| f.name == egressd::xds::tunnel::TUNNEL_FILTER).unwrap();
    let Some(http_filter::ConfigType::TypedConfig(any)) = &tunnel.config_type else { unreachable!() };
    let mut wasm = Wasm::decode(any.value.as_slice()).unwrap();
    let Some(plugin_config::Vm::VmConfig(vm)) = wasm.config.as_mut().and_then(|c| c.vm.as_mut()) else {
        unreachable!()
    };
    vm.vm_id = "egressd.tunnel.candidate".into();
    let Some(async_data_source::Specifier::Local(local)) = vm.code.as_mut().and_then(|c| c.specifier.as_mut()) else {
        unreachable!()
    };
    local.specifier = Some(data_source::Specifier::InlineBytes(module.to_vec()));
    tunnel.config_type = Some(http_filter::ConfigType::TypedConfig(pack_any(wasm)));
    f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
    b
}

/// What a tunnel's ClientHello got.
#[derive(Debug, PartialEq)]
enum HelloFate {
    /// TLS bytes from the upstream.
    Answered,
    /// The tunnel closed or reset without any.
    Refused,
    /// Nothing within 3 s.
    Silent,
}

/// Opens a tunnel as `identity` and sends a ClientHello for `sni`.
async fn hello_fate(proxy: SocketAddr, authority: &str, identity: &str, sni: &str) -> HelloFate {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let connect =
        format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\nx-forwarded-client-cert: URI={identity}\r\n\r\n");
    s.write_all(connect.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).await.unwrap(), 1, "CONNECT answered");
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"), "{}", String::from_utf8_lossy(&head));
    let config =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name).unwrap();
    let mut hello = Vec::new();
    conn.write_tls(&mut hello).unwrap();
    s.write_all(&hello).await.unwrap();
    let mut buf = [0u8; 64];
    match tokio::time::timeout(Duration::from_secs(3), s.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 && buf[0] == 0x16 => HelloFate::Answered,
        Ok(Ok(0) | Err(_)) => HelloFate::Refused,
        Ok(Ok(_)) => panic!("a tunnel answered a ClientHello with non-TLS bytes"),
        Err(_) => HelloFate::Silent,
    }
}

/// The generated gateway of one Envoy: its ext_authz server, its HTTP listener, the bench's DNS.
fn bench_spec(authz: u16, http_listen: u16, dns: SocketAddr) -> GatewaySpec {
    let mut spec = GatewaySpec::local(addr(authz));
    spec.http_listen = addr(http_listen);
    spec.tls_listen = None;
    spec.dns_resolvers = vec![dns];
    spec.trust_forwarded_client_cert = true; // the bench policy's identity source
    spec
}

/// Writes `bootstrap` to `path` and runs Envoy on it (one worker thread).
fn start_envoy(envoy: &Path, path: &Path, bootstrap: &Bootstrap) -> Proc {
    std::fs::write(path, bootstrap.encode_to_vec()).unwrap();
    Proc(
        Command::new(envoy)
            .args(["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "error", "-c"])
            .arg(path)
            .stdout(Stdio::null())
            .spawn()
            .expect("envoy"),
    )
}

fn resources_socket(a: SocketAddr) -> envoy_types::pb::envoy::config::core::v3::Address {
    use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address};
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: a.ip().to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(a.port().into())),
            ..Default::default()
        })),
    }
}

/// nginx answering `ok` on `port` (plain) and `tls_port` (TLS with `cert`/`key` files).
fn start_nginx(dir: &Path, port: u16, tls_port: u16) -> Proc {
    let conf = format!(
        "worker_processes 1;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  keepalive_requests 1000000;\n  server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\\n\"; }} }}\n  server {{ listen 127.0.0.1:{tls_port} ssl; ssl_certificate {d}/upstream.pem; ssl_certificate_key {d}/upstream.key; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n",
        d = dir.display()
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    Proc(
        Command::new("nginx")
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            .arg("-p")
            .arg(dir)
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx (apt-get install nginx-light)"),
    )
}

async fn wait_port(a: SocketAddr) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(a).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{a} never listened");
}

/// One proxied request with the bench identity; returns the status and the response.
async fn probe(proxy: SocketAddr, authority: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(proxy).await.unwrap();
    let req = format!(
        "GET http://{authority}/ HTTP/1.1\r\nhost: {authority}\r\nx-forwarded-client-cert: URI={IDENTITY}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.unwrap();
    let text = String::from_utf8_lossy(&raw).to_string();
    (text.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0), text)
}

struct Sample {
    rps: f64,
    p50_us: f64,
    p99_us: f64,
    /// CPU microseconds per request of the gateway's Envoy and of its ext_authz server (0 without
    /// one): on two shared cores these are steadier than throughput, which every neighbour moves.
    envoy_us: f64,
    authz_us: f64,
}

/// CPU time (utime + stime) of a process, in microseconds (Linux /proc; clock ticks are 10 ms).
fn cpu_us(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) * 10_000.0
}

/// The processes one gateway variant's requests cost: its Envoy and its ext_authz server.
#[derive(Clone, Copy)]
struct Pids {
    envoy: u32,
    authz: Option<u32>,
}

/// Runs one load round and charges the CPU the variant's processes spent to its requests.
async fn metered<F: std::future::Future<Output = Sample>>(pids: Pids, duration: u64, load: F) -> Sample {
    let cpu = |p: Pids| (cpu_us(p.envoy), p.authz.map_or(0.0, cpu_us));
    let (envoy0, authz0) = cpu(pids);
    let mut sample = load.await;
    let (envoy1, authz1) = cpu(pids);
    let requests = (sample.rps * duration as f64).max(1.0);
    sample.envoy_us = (envoy1 - envoy0) / requests;
    sample.authz_us = (authz1 - authz0) / requests;
    sample
}

fn parse_wrk(out: &str) -> Sample {
    let rps =
        out.lines().find_map(|l| l.strip_prefix("Requests/sec:")).map(|v| v.trim().parse().unwrap()).unwrap_or(0.0);
    let pct = |p: &str| {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(p).map(str::trim))
            .map(|v| {
                let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
                let n: f64 = num.parse().unwrap_or(0.0);
                match unit {
                    "us" => n,
                    "ms" => n * 1e3,
                    "s" => n * 1e6,
                    _ => n,
                }
            })
            .unwrap_or(0.0)
    };
    Sample { rps, p50_us: pct("50%"), p99_us: pct("99%"), envoy_us: 0.0, authz_us: 0.0 }
}

fn wrk(proxy: SocketAddr, script: &Path, args: &Args) -> Sample {
    let out = Command::new("wrk")
        .args(["-t1", &format!("-c{}", args.connections), &format!("-d{}s", args.duration), "--latency", "-s"])
        .arg(script)
        .arg(format!("http://{proxy}"))
        .output()
        .expect("wrk (apt-get install wrk)");
    parse_wrk(&String::from_utf8_lossy(&out.stdout))
}

/// New tunnel per request: CONNECT, then one HTTP request inside, then close.
async fn connect_load(proxy: SocketAddr, authority: String, args: &Args) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let authority = authority.clone();
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            while Instant::now() < deadline {
                let t = Instant::now();
                let Ok(mut s) = tokio::net::TcpStream::connect(proxy).await else { continue };
                let _ = s.set_nodelay(true);
                let connect = format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\nx-forwarded-client-cert: URI={IDENTITY}\r\n\r\n");
                if s.write_all(connect.as_bytes()).await.is_err() {
                    continue;
                }
                let mut head = Vec::with_capacity(128);
                let mut buf = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                if !head.starts_with(b"HTTP/1.1 200") {
                    continue;
                }
                let get = format!("GET / HTTP/1.1\r\nhost: {authority}\r\nconnection: close\r\n\r\n");
                if s.write_all(get.as_bytes()).await.is_err() {
                    continue;
                }
                // Read the response by its Content-Length, then close the tunnel ourselves (waiting
                // for EOF would measure Envoy's delayed-close timer, not the request).
                if read_response(&mut s).await == Some(200) {
                    h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                }
            }
            h
        }));
    }
    merged(tasks, args.duration).await
}

/// CONNECT as `identity`, then TLS to the upstream inside the tunnel. `None` if any step fails.
async fn tls_tunnel(
    proxy: SocketAddr,
    authority: &str,
    identity: &str,
    tls: &tokio_rustls::TlsConnector,
) -> Option<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut s = tokio::net::TcpStream::connect(proxy).await.ok()?;
    let _ = s.set_nodelay(true);
    let connect =
        format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\nx-forwarded-client-cert: URI={identity}\r\n\r\n");
    s.write_all(connect.as_bytes()).await.ok()?;
    let mut head = Vec::with_capacity(128);
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await.ok()? == 0 {
            return None;
        }
        head.push(byte[0]);
    }
    if !head.starts_with(b"HTTP/1.1 200") {
        return None;
    }
    let name = rustls::pki_types::ServerName::try_from(FQDN).unwrap();
    tls.connect(name, s).await.ok()
}

/// TLS inside CONNECT tunnels as `identity`: with `keepalive`, one tunnel per connection carrying
/// request after request; else a new tunnel (CONNECT, TLS handshake, one request) per request.
async fn tls_tunnel_load(
    proxy: SocketAddr,
    authority: String,
    identity: &'static str,
    keepalive: bool,
    tls: tokio_rustls::TlsConnector,
    args: &Args,
) -> Sample {
    let deadline = Instant::now() + Duration::from_secs(args.duration);
    let mut tasks = Vec::new();
    for _ in 0..args.connections {
        let (authority, tls) = (authority.clone(), tls.clone());
        tasks.push(tokio::spawn(async move {
            let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
            let mut tunnel = None;
            while Instant::now() < deadline {
                let t = Instant::now();
                if tunnel.is_none() {
                    tunnel = tls_tunnel(proxy, &authority, identity, &tls).await;
                }
                let Some(s) = tunnel.as_mut() else { continue };
                let close = if keepalive { "" } else { "connection: close\r\n" };
                let get = format!("GET / HTTP/1.1\r\nhost: {authority}\r\n{close}\r\n");
                let ok = s.write_all(get.as_bytes()).await.is_ok() && read_response(s).await == Some(200);
                if ok {
                    h.record(t.elapsed().as_micros().max(1) as u64).unwrap();
                }
                if !ok || !keepalive {
                    tunnel = None;
                }
            }
            h
        }));
    }
    merged(tasks, args.duration).await
}

/// Merges the latency histograms of load tasks into one sample over `seconds`.
async fn merged(tasks: Vec<tokio::task::JoinHandle<Histogram<u64>>>, seconds: u64) -> Sample {
    let mut all = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).unwrap();
    for t in tasks {
        all.add(t.await.unwrap()).unwrap();
    }
    Sample {
        rps: all.len() as f64 / seconds as f64,
        p50_us: all.value_at_quantile(0.5) as f64,
        p99_us: all.value_at_quantile(0.99) as f64,
        envoy_us: 0.0,
        authz_us: 0.0,
    }
}

/// Reads one HTTP/1.1 response with a Content-Length body; returns its status.
async fn read_response<S: AsyncRead + Unpin>(s: &mut S) -> Option<u16> {
    let mut raw = Vec::with_capacity(256);
    let mut buf = [0u8; 1024];
    loop {
        let n = s.read(&mut buf).await.ok()?;
        if n == 0 {
            return None;
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        if let Some(end) = text.find("\r\n\r\n") {
            let len: usize = text[..end]
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap_or(0))
                })
                .unwrap_or(0);
            if raw.len() >= end + 4 + len {
                return text.get(9..12).and_then(|c| c.parse().ok());
            }
        }
    }
}

/// The median of per-round throughput ratios: each round runs every variant back to back, so a
/// round's pair shares the machine's state of that minute, and a slow stretch (five processes
/// on two cores) moves both sides of a pair instead of one side's median.
fn paired(this: &[Sample], other: &[Sample]) -> f64 {
    median(this.iter().zip(other).map(|(t, o)| t.rps / o.rps).collect())
}

/// NaN for no samples (a variant not run).
fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let args = Args::parse();
    let dir = tempfile::tempdir().unwrap();
    let mut free = ports(32);
    let mut port = move || free.next().expect("enough ports");
    let (upstream_port, tls_port) = (port(), port());
    let upstream_cert = rcgen::generate_simple_self_signed(vec![FQDN.to_string()]).unwrap();
    std::fs::write(dir.path().join("upstream.pem"), upstream_cert.cert.pem()).unwrap();
    std::fs::write(dir.path().join("upstream.key"), upstream_cert.signing_key.serialize_pem()).unwrap();
    let _nginx = start_nginx(dir.path(), upstream_port, tls_port);
    let dns = dns::start_dns(&[FQDN]).await;
    let authority = format!("{FQDN}:{upstream_port}");

    let policy = dir.path().join("policy");
    std::fs::create_dir_all(&policy).unwrap();
    std::fs::write(
        policy.join("bench.yaml"),
        format!("kind: MeshDefaults\ntrustDomain: corp.example\ntrustForwardedClientCert: true\n---\nkind: ServicePolicy\nservice: bench\nidentities: [{IDENTITY}]\ntunnelTls: off\nallow:\n  - host: {FQDN}\n    ports: [{upstream_port}, {tls_port}]\n    justification: benchmark upstream\n---\nkind: ServicePolicy\nservice: bench-verified\nidentities: [{IDENTITY_VERIFIED}]\nallow:\n  - host: {FQDN}\n    ports: [{tls_port}]\n    justification: benchmark upstream\n"),
    )
    .unwrap();
    let (egressd_port, noop_port, shaped_port) = (port(), port(), port());
    let _egressd = Proc(
        Command::new(&args.egressd)
            .args(["serve", "--policy"])
            .arg(&policy)
            .args(["--grpc-listen", &addr(egressd_port).to_string(), "--admin-listen", &addr(port()).to_string()])
            .env("RUST_LOG", "warn")
            .spawn()
            .expect("egressd binary (cargo build --release)"),
    );
    let _noop = Proc(
        Command::new(&args.noop)
            .args(["--serve-noop", &addr(noop_port).to_string()])
            .spawn()
            .expect("check_load binary"),
    );
    wait_port(addr(upstream_port)).await;
    let _shaped = Proc(
        Command::new(&args.noop)
            .args([
                "--serve-noop",
                &addr(shaped_port).to_string(),
                "--noop-shaped",
                "--noop-forward",
                &authority,
                "--noop-parts",
                &args.shape,
            ])
            .spawn()
            .expect("check_load binary"),
    );
    wait_port(addr(egressd_port)).await;
    wait_port(addr(noop_port)).await;
    wait_port(addr(shaped_port)).await;

    let variants = [Variant::NoAuthz, Variant::Rbac, Variant::NoopExtAuthz, Variant::ShapedNoop, Variant::Egressd];
    let mut envoys = Vec::new();
    let mut proxies = Vec::new();
    let mut pids = Vec::new();
    for v in variants {
        let authz = match v {
            Variant::Egressd => egressd_port,
            Variant::ShapedNoop => shaped_port,
            _ => noop_port,
        };
        let spec = bench_spec(authz, port(), dns.addr);
        let path = dir.path().join(format!("envoy-{}.pb", proxies.len()));
        envoys.push(start_envoy(&args.envoy, &path, &bootstrap(&spec, v, port(), &authority)));
        proxies.push(spec.http_listen);
        let authz_pid = match v {
            Variant::NoAuthz | Variant::Rbac => None,
            Variant::NoopExtAuthz => Some(_noop.0.id()),
            Variant::ShapedNoop => Some(_shaped.0.id()),
            Variant::Egressd => Some(_egressd.0.id()),
        };
        pids.push(Pids { envoy: envoys.last().map_or(0, |e: &Proc| e.0.id()), authz: authz_pid });
    }
    // The sixth Envoy: (d) without the tunnel filter (see `unfiltered_bootstrap`).
    let bare_spec = bench_spec(egressd_port, port(), dns.addr);
    let bare_path = dir.path().join("envoy-bare.pb");
    let bare_envoy = start_envoy(&args.envoy, &bare_path, &unfiltered_bootstrap(&bare_spec, port(), &authority));
    let (bare, bare_pids) = (bare_spec.http_listen, Pids { envoy: bare_envoy.0.id(), authz: Some(_egressd.0.id()) });
    wait_port(bare).await;
    // The seventh Envoy, with a candidate module (see `candidate_bootstrap`).
    let candidate = args.candidate_module.as_ref().map(|path| {
        let module = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let spec = bench_spec(egressd_port, port(), dns.addr);
        let bootstrap = candidate_bootstrap(&spec, port(), &authority, &module);
        let envoy = start_envoy(&args.envoy, &dir.path().join("envoy-candidate.pb"), &bootstrap);
        (spec.http_listen, Pids { envoy: envoy.0.id(), authz: Some(_egressd.0.id()) }, envoy)
    });
    if let Some((proxy, _, _)) = &candidate {
        wait_port(*proxy).await;
    }
    for (v, p) in variants.iter().zip(&proxies) {
        wait_port(*p).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let (status, resp) = probe(*p, &authority).await;
        assert_eq!(status, 200, "{} does not pass a request through:\n{resp}", v.label());
    }
    let script = dir.path().join("abs.lua");
    std::fs::write(
        &script,
        format!("wrk.path = \"http://{authority}/\"\nwrk.headers[\"Host\"] = \"{authority}\"\nwrk.headers[\"x-forwarded-client-cert\"] = \"URI={IDENTITY}\"\n"),
    )
    .unwrap();

    println!(
        "gateway bench: Envoy --concurrency 1, {} connections, {} x {} s rounds, interleaved a b c c' d; medians (paired: median of per-round ratios)",
        args.connections, args.rounds, args.duration
    );
    let mut http: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    let mut tunnels: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for _ in 0..args.rounds {
        for (i, p) in proxies.iter().enumerate() {
            http[i].push(metered(pids[i], args.duration, async { wrk(*p, &script, &args) }).await);
        }
        if args.http_only {
            continue;
        }
        for (i, p) in proxies.iter().enumerate() {
            tunnels[i].push(metered(pids[i], args.duration, connect_load(*p, authority.clone(), &args)).await);
        }
    }
    // Tunnels carrying TLS, through (d): plain (tunnelTls off) versus verified.
    let d = proxies[4];
    wait_port(addr(tls_port)).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(upstream_cert.cert.der().clone()).unwrap();
    let client =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tls_authority = format!("{FQDN}:{tls_port}");
    if !args.http_only {
        // What is measured is what the product does: the filter passes the authorized SNI on a
        // verified tunnel and closes one with another, and passes an `off` tunnel unread.
        let gateways = std::iter::once(("(d)", d)).chain(candidate.as_ref().map(|(p, _, _)| ("candidate", *p)));
        for (name, proxy) in gateways {
            let fate = |identity, sni| hello_fate(proxy, &tls_authority, identity, sni);
            assert_eq!(fate(IDENTITY_VERIFIED, FQDN).await, HelloFate::Answered, "{name}: the authorized SNI passes");
            assert_eq!(fate(IDENTITY_VERIFIED, "evil.test").await, HelloFate::Refused, "{name}: another is refused");
            assert_eq!(fate(IDENTITY, "evil.test").await, HelloFate::Answered, "{name}: tunnelTls off passes any");
            println!("tunnel filter of {name}: verified passes {FQDN} and refuses evil.test; off passes evil.test");
        }
    }
    // Per tunnel kind: plain, verified (through (d)), no filter, and the candidate's verified
    // tunnels (each as its identity); keep-alive ones first, then a tunnel per request.
    let mut group = vec![
        ("plain", d, pids[4], IDENTITY),
        ("verified", d, pids[4], IDENTITY_VERIFIED),
        ("no filter", bare, bare_pids, IDENTITY),
    ];
    if let Some((proxy, pids, _)) = &candidate {
        group.push(("candidate", *proxy, *pids, IDENTITY_VERIFIED));
    }
    let kinds: Vec<(SocketAddr, Pids, &str, bool)> = [true, false]
        .into_iter()
        .flat_map(|keepalive| group.iter().map(move |&(_, proxy, pids, identity)| (proxy, pids, identity, keepalive)))
        .collect();
    let mut tls_tables: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
    for _ in 0..if args.http_only { 0 } else { args.rounds } {
        for (i, (proxy, pids, identity, keepalive)) in kinds.iter().enumerate() {
            let load = tls_tunnel_load(*proxy, tls_authority.clone(), identity, *keepalive, tls.clone(), &args);
            tls_tables[i].push(metered(*pids, args.duration, load).await);
        }
    }
    println!("(c') answers: {}", args.shape);
    for (name, table) in [("plain HTTP (wrk, keep-alive)", &http), ("CONNECT (new tunnel per request)", &tunnels)] {
        if table[0].is_empty() {
            continue;
        }
        println!("\n{name}");
        let summary: Vec<Summary> = table.iter().map(|s| Summary::of(s)).collect();
        for (v, m) in variants.iter().zip(&summary) {
            println!(
                "  {:<28} {:>7.0} req/s   p50 {:>6.0} us   p99 {:>6.0} us   CPU/req: Envoy {:>5.1} us, authz {:>5.1} us",
                v.label(),
                m.rps,
                m.p50,
                m.p99,
                m.envoy_us,
                m.authz_us
            );
        }
        for (name, this, other) in [("d/c", 4, 2), ("d/c'", 4, 3), ("c'/c", 3, 2), ("d/b", 4, 1), ("d/a", 4, 0)] {
            let (t, o) = (&summary[this], &summary[other]);
            println!(
                "  {name}: throughput {:.3} (paired {:.3})   p99 {:+.0} us ({:.2}x)   Envoy CPU/req {:.3}x   Envoy+authz CPU/req {:.3}x",
                t.rps / o.rps,
                paired(&table[this], &table[other]),
                t.p99 - o.p99,
                t.p99 / o.p99,
                t.envoy_us / o.envoy_us,
                (t.envoy_us + t.authz_us) / (o.envoy_us + o.authz_us)
            );
        }
    }
    if args.http_only {
        return;
    }
    println!(
        "\nTLS inside CONNECT: plain (tunnelTls: off) vs verified SNI, through (d); no filter: (d) without the tunnel filter"
    );
    for (label, first) in [("keep-alive tunnels", 0), ("new tunnel per request", group.len())] {
        let summary: Vec<Summary> = (0..group.len()).map(|k| Summary::of(&tls_tables[first + k])).collect();
        println!("  {label}");
        for ((name, ..), m) in group.iter().zip(&summary) {
            println!(
                "    {name:<9} {:>7.0} req/s   p50 {:>6.0} us   p99 {:>6.0} us   CPU/req: Envoy {:>5.1} us, egressd {:>5.1} us",
                m.rps, m.p50, m.p99, m.envoy_us, m.authz_us
            );
        }
        let mut ratios = vec![("verified/plain", 1, 0), ("verified/no filter", 1, 2), ("plain/no filter", 0, 2)];
        if group.len() > 3 {
            ratios.extend([("candidate/verified", 3, 1), ("candidate/no filter", 3, 2)]);
        }
        for (name, t_k, o_k) in ratios {
            let (t, o) = (&summary[t_k], &summary[o_k]);
            println!(
                "    {name}: throughput {:.3} (paired {:.3})   p99 {:.2}x   Envoy+egressd CPU/req {:.3}x",
                t.rps / o.rps,
                paired(&tls_tables[first + t_k], &tls_tables[first + o_k]),
                t.p99 / o.p99,
                (t.envoy_us + t.authz_us) / (o.envoy_us + o.authz_us)
            );
        }
    }
}

/// Medians of one variant's rounds.
struct Summary {
    rps: f64,
    p50: f64,
    p99: f64,
    envoy_us: f64,
    authz_us: f64,
}

impl Summary {
    fn of(rounds: &[Sample]) -> Self {
        let m = |f: fn(&Sample) -> f64| median(rounds.iter().map(f).collect());
        Summary {
            rps: m(|x| x.rps),
            p50: m(|x| x.p50_us),
            p99: m(|x| x.p99_us),
            envoy_us: m(|x| x.envoy_us),
            authz_us: m(|x| x.authz_us),
        }
    }
}
