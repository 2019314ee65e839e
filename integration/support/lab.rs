#![allow(dead_code)] // each test binary uses a subset of these helpers
//! The gateway lab: egressd, and Envoy 1.40 configured only by egressd's ADS; workloads with
//! SPIFFE SVIDs over mTLS; test FQDNs resolved by a real DNS server; real HTTP and TLS upstreams
//! on loopback. `Lab::builder()` picks the policy and the gateway's options.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio_rustls::TlsConnector;

use egressd::policy::{GatewaySpec, MtlsPaths};
use egressd::policy::{GatewayTracing, PolicySource, UpstreamTls};
use egressd::telemetry::Telemetry;

use super::client::{connect_gateway, connect_tunnel, tls_config};
use super::dns::{TestDns, start_dns_at};
use super::envoy::{RunningEnvoy, free_port, start_ads_envoy};
use super::eventually::eventually;
use super::pki::{Ca, Issued};
use super::process::EgressdProcess;
use super::server::{TestServer, http_get, mesh_without_gateway, try_http_get};
use super::upstream::{start_http, start_tls};

pub const GATEWAY_NAME: &str = "egress-gateway.corp.example";
pub const CHECKOUT: &str = "spiffe://corp.example/ns/checkout/sa/web";
pub const SEARCH: &str = "spiffe://corp.example/ns/search/sa/indexer";

/// Names the lab's DNS answers with 127.0.0.1.
const LOOPBACK_NAMES: [&str; 4] =
    ["api.partner.test", "admin.partner.test", "unknown.partner.test", "billing-api.partner.test"];

pub struct Lab {
    pub ca: Ca,
    pub gateway: SocketAddr,
    pub tls_gateway: SocketAddr,
    pub http_upstream: SocketAddr,
    pub tls_upstream: SocketAddr,
    pub checkout: Issued,
    pub search: Issued,
    pub envoy: RunningEnvoy,
    pub egressd: LabEgressd,
    /// Whether workloads reach the gateway over mTLS (else plaintext, no identity of their own).
    pub mtls: bool,
    pub dir: tempfile::TempDir,
    _dns: TestDns,
}

/// The lab's egressd: in the test's process, or the real binary (`LabBuilder::egressd_binary`).
pub struct LabEgressd {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub dns: Option<SocketAddr>,
    /// Kept running while the lab lives.
    _server: Option<TestServer>,
    /// The binary, to kill and restart (`egressd_binary`).
    pub process: Option<EgressdProcess>,
}

impl From<TestServer> for LabEgressd {
    fn from(server: TestServer) -> Self {
        LabEgressd { grpc: server.grpc, admin: server.admin, dns: server.dns, _server: Some(server), process: None }
    }
}

/// How to build a lab.
#[derive(Default)]
pub struct LabBuilder {
    policy_dir: Option<PathBuf>,
    own_policy: bool,
    plaintext: bool,
    upstream_tls: bool,
    traced: Option<(SocketAddr, Telemetry)>,
    telemetry: Option<Telemetry>,
    progress_ms: Option<u64>,
    names: Vec<(String, Ipv4Addr)>,
    dns_firewall: bool,
    process: bool,
    listen_ip: Option<Ipv4Addr>,
    kubelet_svid: bool,
}

impl LabBuilder {
    /// egressd runs from (and watches) `dir`: a copy of mesh-config/ plus whatever `dir` already
    /// holds, and a Gateway document describing this lab's gateway.
    pub fn policy_dir(mut self, dir: &Path) -> Self {
        self.policy_dir = Some(dir.to_path_buf());
        self
    }

    /// With `policy_dir`: `dir` holds the whole policy (no copy of mesh-config/).
    pub fn own_policy(mut self) -> Self {
        self.own_policy = true;
        self
    }

    /// The HTTP listener without mTLS: identity can only come from a forwarded XFCC.
    pub fn plaintext(mut self) -> Self {
        self.plaintext = true;
        self
    }

    /// The gateway originates TLS for `https://` proxy requests (trusting the lab's CA).
    pub fn upstream_tls(mut self) -> Self {
        self.upstream_tls = true;
        self
    }

    /// Envoy traces to `collector`; egressd sends its decisions to `telemetry`.
    pub fn traced(mut self, collector: SocketAddr, telemetry: Telemetry) -> Self {
        self.traced = Some((collector, telemetry));
        self
    }

    /// The policy gets a DnsFirewall in front of the lab's DNS, and the gateway names no resolver
    /// of its own: its forward proxy resolves through egressd (the default with a DnsFirewall).
    pub fn dns_firewall(mut self) -> Self {
        self.dns_firewall = true;
        self
    }

    /// egressd's decisions (Checks and DNS queries) and stream totals go to `telemetry` (an audit log, say).
    pub fn telemetry(mut self, telemetry: Telemetry) -> Self {
        self.telemetry = Some(telemetry);
        self
    }

    /// The gateway reports open streams to egressd's access log service every `ms`.
    pub fn progress_every(mut self, ms: u64) -> Self {
        self.progress_ms = Some(ms);
        self
    }

    /// With `policy_dir`: egressd runs as the real binary (`serve --policy DIR`), which a test may
    /// kill and restart (`lab.egressd.process`).
    pub fn egressd_binary(mut self) -> Self {
        self.process = true;
        self
    }

    /// The gateway's listeners on `ip` instead of 127.0.0.1 (an address of a veth the test made,
    /// so a network namespace can reach the gateway).
    /// The gateway's SVID (`tls.crt`, `tls.key`, `ca.crt`) laid out in `svid/` as the kubelet
    /// mounts a Secret: each file a link through `..data` to a generation directory, so
    /// `Lab::rotate_svid` replaces all three in one rename.
    pub fn kubelet_svid(mut self) -> Self {
        self.kubelet_svid = true;
        self
    }

    pub fn listen_on(mut self, ip: Ipv4Addr) -> Self {
        self.listen_ip = Some(ip);
        self
    }

    /// The DNS also answers `name` with `ip` (a loopback address of the test's own).
    pub fn name(mut self, name: &str, ip: Ipv4Addr) -> Self {
        self.names.push((name.to_string(), ip));
        self
    }

    pub async fn start(self) -> Lab {
        let mut names: Vec<(String, Ipv4Addr)> =
            LOOPBACK_NAMES.iter().map(|n| (n.to_string(), Ipv4Addr::LOCALHOST)).collect();
        names.extend(self.names.iter().cloned());
        let dns = start_dns_at(&names).await;
        let ca = Ca::new("corp.example trust bundle");
        let dir = tempfile::tempdir().unwrap();
        let gw = ca.issue(&[GATEWAY_NAME], &[]);
        let path = |n: &str| dir.path().join(n).display().to_string();
        std::fs::write(path("gw.pem"), &gw.cert_pem).unwrap();
        std::fs::write(path("gw.key"), &gw.key_pem).unwrap();
        std::fs::write(path("bundle.pem"), &ca.pem).unwrap();
        let upstream_cert = ca.issue(&["api.partner.test", "admin.partner.test"], &[]);
        let http_upstream = start_http("http").await;
        let tls_upstream = start_tls("tls", &upstream_cert).await;

        let grpc: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let mut spec = GatewaySpec::local(grpc);
        let listen_ip = self.listen_ip.unwrap_or(Ipv4Addr::LOCALHOST);
        spec.http_listen = SocketAddr::from((listen_ip, free_port()));
        spec.tls_listen = Some(SocketAddr::from((listen_ip, free_port())));
        // The SNI forward proxy dials the TLS upstream's port.
        spec.tls_upstream_port = tls_upstream.port();
        spec.dns_resolvers = if self.dns_firewall { Vec::new() } else { vec![dns.addr] };
        spec.mtls = (!self.plaintext).then(|| match self.kubelet_svid {
            false => MtlsPaths {
                certificate_chain: path("gw.pem"),
                private_key: path("gw.key"),
                trust_bundle: path("bundle.pem"),
            },
            true => {
                let svid = dir.path().join("svid");
                kubelet_secret_generation(&svid, "1", &gw, &ca.pem);
                for key in ["tls.crt", "tls.key", "ca.crt"] {
                    std::os::unix::fs::symlink(Path::new("..data").join(key), svid.join(key)).unwrap();
                }
                let at = |key: &str| svid.join(key).display().to_string();
                MtlsPaths { certificate_chain: at("tls.crt"), private_key: at("tls.key"), trust_bundle: at("ca.crt") }
            }
        });
        if let Some(ms) = self.progress_ms {
            spec.access_log.progress_interval_ms = ms;
        }
        spec.upstream_tls = self.upstream_tls.then(|| UpstreamTls { trust_bundle: path("bundle.pem") });
        let (collector, telemetry) = match self.traced {
            Some((collector, telemetry)) => (Some(collector), telemetry),
            None => (None, self.telemetry.unwrap_or_else(Telemetry::metrics_only)),
        };
        spec.tracing = collector.map(|collector| GatewayTracing {
            collector,
            sampling_percent: 100,
            service_name: "egress-gateway".into(),
        });
        let work = dir.path().to_path_buf();
        let egressd = match &self.policy_dir {
            None => {
                let mut source = mesh_without_gateway();
                if self.dns_firewall {
                    // The document's port is never bound: `--dns-listen 127.0.0.1:0` overrides it,
                    // and the generated resolver must follow the bound address.
                    let firewall =
                        format!("kind: DnsFirewall\nname: lab\nlisten: 127.0.0.1:9\nupstreams: [{}]\n", dns.addr);
                    source.files.extend(PolicySource::from_text("dns.yaml", &firewall).files);
                }
                TestServer::builder(source)
                    .dns_listen("127.0.0.1:0".parse().unwrap())
                    .gateway(spec.clone())
                    .grpc_listen(grpc)
                    .telemetry(telemetry)
                    .start()
                    .await
                    .into()
            }
            Some(dir) => {
                if !self.own_policy {
                    copy_mesh_config(dir);
                }
                std::fs::write(dir.join("gateway.yaml"), gateway_yaml(&spec, 30_000)).unwrap();
                if self.process {
                    let admin = format!("127.0.0.1:{}", free_port()).parse().unwrap();
                    let process = EgressdProcess::start(dir, &work, grpc, admin).await;
                    LabEgressd { grpc, admin, dns: None, _server: None, process: Some(process) }
                } else {
                    let source = PolicySource::from_dir(dir).unwrap();
                    TestServer::builder(source)
                        .grpc_listen(grpc)
                        .watch(dir.to_path_buf())
                        .telemetry(telemetry)
                        .start()
                        .await
                        .into()
                }
            }
        };
        let envoy = start_ads_envoy(egressd.grpc);
        // A gateway that never gets ready shows Envoy's log as `envoy` is dropped.
        eventually("the gateway to become ready", Duration::from_secs(20), || async {
            let ready = matches!(try_http_get(envoy.admin, "/ready").await, Ok((200, _)));
            (ready
                && tokio::net::TcpStream::connect(spec.http_listen).await.is_ok()
                && tokio::net::TcpStream::connect(spec.tls_listen.unwrap()).await.is_ok())
            .then_some(())
        })
        .await;
        let checkout = ca.issue(&[], &[CHECKOUT]);
        let search = ca.issue(&[], &[SEARCH]);
        Lab {
            ca,
            gateway: spec.http_listen,
            tls_gateway: spec.tls_listen.unwrap(),
            http_upstream,
            tls_upstream,
            checkout,
            search,
            envoy,
            egressd,
            mtls: !self.plaintext,
            dir,
            _dns: dns,
        }
    }
}

impl Lab {
    pub fn builder() -> LabBuilder {
        LabBuilder::default()
    }

    /// The example policy and an mTLS gateway.
    pub async fn start() -> Lab {
        Lab::builder().start().await
    }

    /// As `svid`: mTLS to the gateway, then `CONNECT api.partner.test:<tls upstream>`, answered 200.
    pub async fn tunnel_to_tls_upstream(
        &self,
        svid: &Issued,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let mut conn = self.as_workload(svid).await;
        let authority = format!("api.partner.test:{}", self.tls_upstream.port());
        let (status, head) = connect_tunnel(&mut conn, &authority).await.unwrap();
        assert_eq!(status, 200, "{head}\n{}", self.envoy.log());
        conn
    }

    /// A TLS client trusting the lab's CA (for TLS inside a tunnel).
    pub fn upstream_tls(&self) -> TlsConnector {
        TlsConnector::from(tls_config(&self.ca.der, None))
    }

    pub async fn as_workload(&self, svid: &Issued) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        connect_gateway(self.gateway, GATEWAY_NAME, tls_config(&self.ca.der, Some(svid)))
            .await
            .expect("mTLS to the gateway")
    }

    /// The first access log line containing `needle` (waits up to 15 s: tunnels log at close).
    pub async fn wait_for_log(&self, needle: &str) -> String {
        self.wait_for_log_within(needle, Duration::from_secs(15)).await
    }

    /// As `wait_for_log`, waiting up to `within`.
    pub async fn wait_for_log_within(&self, needle: &str, within: Duration) -> String {
        eventually(&format!("`{needle}` in the access log"), within, || async {
            self.envoy.log().lines().find(|l| l.contains(needle)).map(str::to_string)
        })
        .await
    }

    pub async fn admin_json(&self, path: &str) -> serde_json::Value {
        serde_json::from_str(&http_get(self.egressd.admin, path).await.1).unwrap()
    }
}

pub fn copy_mesh_config(dir: &Path) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("mesh-config");
    for sub in ["", "services"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
        for e in std::fs::read_dir(root.join(sub)).unwrap().flatten() {
            if e.path().is_file() {
                std::fs::copy(e.path(), dir.join(sub).join(e.file_name())).unwrap();
            }
        }
    }
}

/// The Gateway document of `spec` (the lab's gateway), with its request timeout.
pub fn gateway_yaml(spec: &GatewaySpec, request_ms: u64) -> String {
    let mut doc = format!(
        "kind: Gateway\nname: lab\nlisteners:\n  http: {}\n  tls: {}\ntlsUpstreamPort: {}\ndns:\n  resolvers: [{}]\ntimeouts:\n  requestMs: {request_ms}\n",
        spec.http_listen,
        spec.tls_listen.unwrap(),
        spec.tls_upstream_port,
        spec.dns_resolvers[0]
    );
    if let Some(m) = &spec.mtls {
        doc += &format!(
            "mtls:\n  certificateChain: {}\n  privateKey: {}\n  trustBundle: {}\n",
            m.certificate_chain, m.private_key, m.trust_bundle
        );
    }
    if let Some(t) = &spec.upstream_tls {
        doc += &format!("upstreamTls:\n  trustBundle: {}\n", t.trust_bundle);
    }
    doc
}

/// One generation of a kubelet Secret volume in `dir`: the files in `..<stamp>/`, then `..data`
/// pointed at it in one rename (the kubelet's atomic writer).
fn kubelet_secret_generation(dir: &Path, stamp: &str, svid: &Issued, bundle: &str) {
    let generation = format!("..2026_12_02_06_00_0{stamp}.000000001");
    std::fs::create_dir_all(dir.join(&generation)).unwrap();
    for (key, text) in [("tls.crt", svid.cert_pem.as_str()), ("tls.key", &svid.key_pem), ("ca.crt", bundle)] {
        std::fs::write(dir.join(&generation).join(key), text).unwrap();
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&generation, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

impl Lab {
    /// Rotates the gateway's SVID (`LabBuilder::kubelet_svid`) as the kubelet updates a Secret
    /// volume: a new generation, `..data` swapped to it.
    pub fn rotate_svid(&self, stamp: &str, svid: &Issued, bundle: &str) {
        kubelet_secret_generation(&self.dir.path().join("svid"), stamp, svid, bundle);
    }
}

/// Replaces a file the way editors do: write a sibling, then rename over it.
pub fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}
