//! `kind: Gateway` documents -> `GatewaySpec`: the one description of a gateway, which the xDS
//! layer turns into Envoy resources. Checked here, so a bad address or port is reported at
//! FILE:LINE:COL like any rule; every default is a named constant in `defaults`, shared with the
//! development gateway (`GatewaySpec::local`) egressd serves when the policy has no Gateway.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;
use serde_saphyr::Spanned;

use super::diagnostic::{Diagnostics, SourceLoc};
use super::external_gateway::{self, ExternalGateway};
use super::load::Located;
use super::model::{GatewayAccessLogDoc, GatewayDoc};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MtlsPaths {
    pub certificate_chain: String,
    pub private_key: String,
    pub trust_bundle: String,
}

/// TLS from the gateway to egressd's gRPC port (`authz.tls`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AuthzTls {
    pub trust_bundle: String,
    pub server_name: Option<String>,
    /// The gateway's client certificate chain and key.
    pub client_certificate: Option<(String, String)>,
}

/// The gateway's own tracing: Envoy's OpenTelemetry tracer, exporting to an OTLP/gRPC collector.
/// Envoy then passes its span to egressd in each Check call, so decision spans join its traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayTracing {
    pub collector: SocketAddr,
    /// Share of requests Envoy starts a trace for (requests that arrive traced keep their decision).
    pub sampling_percent: u8,
    pub service_name: String,
}

/// The defaults of a Gateway document's optional fields.
pub mod defaults {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
    pub const TLS_UPSTREAM_PORT: u16 = 443;
    pub const AUTHZ_TIMEOUT_MS: u64 = 500;
    pub const DNS_HOST_TTL_SECONDS: u64 = 300;
    pub const DNS_MAX_HOSTS: u32 = 10_000;
    pub const CONNECT_TIMEOUT_MS: u64 = 2_000;
    pub const REQUEST_TIMEOUT_MS: u64 = 30_000;
    pub const TRACING_SAMPLING_PERCENT: u8 = 100;
    /// How often the gateway reports a stream still open (a tunnel) to egressd.
    pub const ACCESS_LOG_PROGRESS_SECONDS: u64 = 300;
    /// egressd's own default gRPC address (`serve --grpc-listen`).
    pub const AUTHZ_ADDRESS: SocketAddr = SocketAddr::new(LOOPBACK, 18000);
    /// The development gateway's listeners (`GatewaySpec::local`).
    pub const DEV_HTTP_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 10080);
    pub const DEV_TLS_LISTEN: SocketAddr = SocketAddr::new(LOOPBACK, 10443);
}

/// A gateway: what its Envoy listens on, how it verifies workloads, reaches egressd, resolves
/// and dials destinations, traces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// The Gateway document's name (`default` for the development gateway).
    pub name: String,
    /// Envoy node clusters (or ids) served this gateway; empty: the default gateway.
    pub nodes: Vec<String>,
    /// The HTTP proxy / CONNECT listener.
    pub http_listen: SocketAddr,
    /// The TLS-by-SNI listener, if enabled.
    pub tls_listen: Option<SocketAddr>,
    /// Port the SNI forward proxy dials upstream.
    pub tls_upstream_port: u16,
    /// Workload mTLS on the HTTP listener; `None` serves it in plaintext (development only).
    pub mtls: Option<MtlsPaths>,
    /// Where the gateway reaches egressd; `None`: egressd's own gRPC listen address.
    pub authz_address: Option<AuthzAddress>,
    pub authz_timeout_ms: u64,
    /// TLS to egressd (`authz.tls`); `None`: plaintext HTTP/2.
    pub authz_tls: Option<AuthzTls>,
    /// DNS servers for destination names (c-ares); empty means the system's.
    pub dns_resolvers: Vec<SocketAddr>,
    pub dns_host_ttl_ms: u64,
    pub dns_max_hosts: u32,
    /// Resolve through egressd's DnsFirewall: `None` means yes when the policy has one and
    /// `dns_resolvers` is empty (explicit resolvers win).
    pub use_dns_firewall: Option<bool>,
    /// Where egressd's DNS firewall is bound (`serve --dns-listen`, a port 0 resolved); `None`:
    /// the DnsFirewall document's `listen`.
    #[serde(skip)]
    pub dns_firewall_address: Option<SocketAddr>,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// Envoy's own tracing (OpenTelemetry tracer to an OTLP collector), if configured.
    pub tracing: Option<GatewayTracing>,
    /// Originate TLS for `https://` proxy requests (verifying destinations against this bundle).
    pub upstream_tls: Option<UpstreamTls>,
    /// The gateway's access log to egressd over gRPC (stream totals).
    pub access_log: GatewayAccessLog,
    /// From MeshDefaults: sidecars terminate mTLS and forward x-forwarded-client-cert, so the
    /// listener passes a client's XFCC on to the check instead of stripping it (egressd removes it
    /// from every request it allows: it never leaves the gateway).
    #[serde(skip)]
    pub trust_forwarded_client_cert: bool,
    #[serde(skip)]
    pub loc: SourceLoc,
}

impl GatewaySpec {
    /// The development gateway on loopback, reaching egressd at `authz_address`.
    pub fn local(authz_address: SocketAddr) -> Self {
        let authz_address = AuthzAddress::Ip(authz_address);
        GatewaySpec {
            name: "default".to_string(),
            nodes: Vec::new(),
            http_listen: defaults::DEV_HTTP_LISTEN,
            tls_listen: Some(defaults::DEV_TLS_LISTEN),
            tls_upstream_port: defaults::TLS_UPSTREAM_PORT,
            mtls: None,
            authz_address: Some(authz_address),
            authz_timeout_ms: defaults::AUTHZ_TIMEOUT_MS,
            authz_tls: None,
            dns_resolvers: Vec::new(),
            dns_host_ttl_ms: defaults::DNS_HOST_TTL_SECONDS * 1000,
            dns_max_hosts: defaults::DNS_MAX_HOSTS,
            use_dns_firewall: None,
            dns_firewall_address: None,
            connect_timeout_ms: defaults::CONNECT_TIMEOUT_MS,
            request_timeout_ms: defaults::REQUEST_TIMEOUT_MS,
            tracing: None,
            upstream_tls: None,
            access_log: GatewayAccessLog::default(),
            trust_forwarded_client_cert: false,
            loc: SourceLoc::default(),
        }
    }

    /// Where the gateway reaches egressd (egressd's default address when none is set).
    pub fn authz(&self) -> AuthzAddress {
        self.authz_address.clone().unwrap_or(AuthzAddress::Ip(defaults::AUTHZ_ADDRESS))
    }

    /// This gateway with its DNS resolvers settled: egressd's DnsFirewall when the policy has one,
    /// the gateway does not opt out and names no resolvers of its own. A firewall listening on an
    /// unspecified address (`0.0.0.0`) is reached at the IP the gateway reaches egressd's gRPC on.
    pub fn with_dns_firewall(mut self, dns: Option<&super::dns::DnsFirewallSpec>) -> Self {
        if let Some(dns) = dns
            && self.dns_resolvers.is_empty()
            && self.use_dns_firewall != Some(false)
        {
            let listen = self.dns_firewall_address.unwrap_or(dns.listen);
            // A named authz address has no IP to lend: compile rejects that pairing
            // (`firewall_address_needs_an_ip`), so the listen address is kept as it is.
            let ip = match self.authz() {
                AuthzAddress::Ip(authz) if listen.ip().is_unspecified() => authz.ip(),
                _ => listen.ip(),
            };
            self.dns_resolvers = vec![SocketAddr::new(ip, listen.port())];
        }
        self
    }
}

/// The gateway's access log to egressd over gRPC (`xds::als`, `accesslog`): every request's and
/// CONNECT tunnel's totals, at its end and, while it stays open, every `progress_interval_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GatewayAccessLog {
    /// Stream entries to egressd (default on); off: the stdout log only.
    pub grpc: bool,
    /// How often an open stream is reported (cumulative bytes so far); 0: only at its end.
    pub progress_interval_ms: u64,
}

impl Default for GatewayAccessLog {
    fn default() -> Self {
        GatewayAccessLog { grpc: true, progress_interval_ms: defaults::ACCESS_LOG_PROGRESS_SECONDS * 1000 }
    }
}

/// TLS the gateway originates for `https://` proxy requests: SNI and certificate name are the
/// host egressd authorized; the chain must verify against `trust_bundle` (a PEM file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpstreamTls {
    pub trust_bundle: String,
}

fn addr(file: &Arc<str>, v: &Spanned<String>, what: &str, diags: &mut Diagnostics) -> Option<SocketAddr> {
    match v.value.trim().parse::<SocketAddr>() {
        Ok(a) if a.port() != 0 => Some(a),
        _ => {
            diags.error(SourceLoc::of(file, v), format!("{what} `{}` is not IP:PORT (e.g. 127.0.0.1:10080)", v.value));
            None
        }
    }
}

/// Where a gateway reaches egressd: an IP and port (a STATIC cluster), or a DNS name and port (a
/// STRICT_DNS cluster: every address the name resolves to, re-resolved as its TTL says, e.g. the
/// replicas behind a Kubernetes Service). Written `HOST:PORT`, `[v6]:PORT` for IPv6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthzAddress {
    Ip(SocketAddr),
    Name { host: String, port: u16 },
}

impl AuthzAddress {
    pub fn port(&self) -> u16 {
        match self {
            AuthzAddress::Ip(a) => a.port(),
            AuthzAddress::Name { port, .. } => *port,
        }
    }
}

impl std::fmt::Display for AuthzAddress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AuthzAddress::Ip(a) => write!(f, "{a}"),
            AuthzAddress::Name { host, port } => write!(f, "{host}:{port}"),
        }
    }
}

impl Serialize for AuthzAddress {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// Parses `HOST:PORT`: an IP, or a DNS name normalized as destinations are (`fqdn`: lowercase,
/// punycode, no trailing dot, length and label rules) and, being a name Envoy must resolve for
/// itself, a hostname too (RFC 1123: no `_`, no label starting or ending with `-`).
pub fn parse_authz_address(text: &str) -> Result<AuthzAddress, String> {
    use super::fqdn::{Host, normalize_host, parse_port};
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return if a.port() == 0 { Err("port 0".into()) } else { Ok(AuthzAddress::Ip(a)) };
    }
    let (host, port) = text.rsplit_once(':').ok_or("no `:PORT`")?;
    let port = parse_port(port).map_err(|_| format!("port `{port}` is not 1..65535"))?;
    let not_a_name = || format!("`{host}` is neither an IP address nor a DNS name");
    let host = match normalize_host(host).map_err(|_| not_a_name())? {
        Host::Name(name) => name.into_owned(),
        // An IPv4 literal with a valid port parsed as a SocketAddr above.
        Host::Ip(_) => return Err(not_a_name()),
    };
    let hostname_label = |l: &str| !l.contains('_') && !l.starts_with('-') && !l.ends_with('-');
    if !host.split('.').all(hostname_label) {
        return Err(not_a_name());
    }
    Ok(AuthzAddress::Name { host, port })
}

fn authz_address(file: &Arc<str>, v: &Spanned<String>, diags: &mut Diagnostics) -> Option<AuthzAddress> {
    match parse_authz_address(&v.value) {
        Ok(a) => Some(a),
        Err(why) => {
            let msg = format!(
                "authz.address `{}` is not HOST:PORT ({why}; e.g. 127.0.0.1:18000 or egressd.egressd.svc.cluster.local:18000)",
                v.value
            );
            diags.error(SourceLoc::of(file, v), msg);
            None
        }
    }
}

/// A gateway that resolves through the DnsFirewall reaches it at the IP it reaches egressd on when
/// the firewall listens on an unspecified address; a named `authz.address` has no such IP, so
/// that gateway must name its resolvers (or opt out) itself.
pub fn firewall_address_needs_an_ip(
    gateways: &[GatewaySpec],
    dns: Option<&super::dns::DnsFirewallSpec>,
    diags: &mut Diagnostics,
) {
    let Some(dns) = dns.filter(|d| d.listen.ip().is_unspecified()) else { return };
    for g in gateways {
        if let (Some(AuthzAddress::Name { host, .. }), true, true) =
            (&g.authz_address, g.dns_resolvers.is_empty(), g.use_dns_firewall != Some(false))
        {
            diags.error(
                g.loc.clone(),
                format!(
                    "Gateway {}: authz.address names a host ({host}) and the DnsFirewall listens on {}, so the gateway cannot tell the firewall's IP: set dns.resolvers to it (IP:PORT) or dns.useDnsFirewall: false",
                    g.name, dns.listen
                ),
            );
        }
    }
}

/// `authz.tls`: a client certificate needs its key (and the other way round).
fn authz_tls(file: &Arc<str>, t: &super::model::GatewayAuthzTlsDoc, diags: &mut Diagnostics) -> Option<AuthzTls> {
    let client_certificate = match (&t.certificate_chain, &t.private_key) {
        (Some(c), Some(k)) => Some((c.value.clone(), k.value.clone())),
        (None, None) => None,
        (Some(one), None) | (None, Some(one)) => {
            diags.error(SourceLoc::of(file, one), "authz.tls: certificateChain and privateKey go together");
            return None;
        }
    };
    Some(AuthzTls {
        trust_bundle: t.trust_bundle.value.clone(),
        server_name: t.server_name.as_ref().map(|n| n.value.trim().to_string()).filter(|n| !n.is_empty()),
        client_certificate,
    })
}

fn positive(
    file: &Arc<str>,
    v: Option<&Spanned<i64>>,
    default: u64,
    max: u64,
    what: &str,
    diags: &mut Diagnostics,
) -> u64 {
    match v {
        None => default,
        Some(s) if s.value > 0 && (s.value as u64) <= max => s.value as u64,
        Some(s) => {
            diags.error(SourceLoc::of(file, s), format!("{what} {} is outside 1..={max}", s.value));
            default
        }
    }
}

/// `accessLog`: `progressSeconds` 0 turns periodic reports off.
fn access_log(file: &Arc<str>, doc: Option<&GatewayAccessLogDoc>, diags: &mut Diagnostics) -> GatewayAccessLog {
    let mut out = GatewayAccessLog::default();
    let Some(doc) = doc else { return out };
    if let Some(grpc) = &doc.grpc {
        out.grpc = grpc.value;
    }
    match &doc.progress_seconds {
        None => {}
        Some(s) if s.value == 0 => out.progress_interval_ms = 0,
        Some(s) => {
            out.progress_interval_ms = 1000
                * positive(file, Some(s), out.progress_interval_ms / 1000, 86_400, "accessLog.progressSeconds", diags)
        }
    }
    out
}

/// Every Gateway document; `trust_forwarded_client_cert` is the mesh's (MeshDefaults).
pub fn compile_gateways(
    docs: Vec<Located<GatewayDoc>>,
    trust_forwarded_client_cert: bool,
    diags: &mut Diagnostics,
) -> (Vec<GatewaySpec>, Vec<ExternalGateway>) {
    let mut out: Vec<GatewaySpec> = Vec::new();
    let mut external: Vec<ExternalGateway> = Vec::new();
    let mut names: HashMap<String, SourceLoc> = HashMap::new();
    let mut nodes: HashMap<String, String> = HashMap::new();
    let mut default: Option<SourceLoc> = None;
    for g in docs {
        let (file, d) = (&g.file, &g.doc);
        let name = d.name.value.trim().to_string();
        let name_loc = SourceLoc::of(file, &d.name);
        if name.is_empty() {
            diags.error(name_loc.clone(), "a Gateway needs a name");
        } else if let Some(first) = names.insert(name.clone(), name_loc.clone()) {
            diags.error(name_loc.clone(), format!("Gateway `{name}` is already defined at {first}"));
        }
        let is_external = d.external.as_ref().is_some_and(|e| e.value);
        if let (Some(upstream), false) = (&d.http_upstream, is_external) {
            let msg = "httpUpstream describes a gateway egressd does not configure: it needs `external: true` (egressd's own gateways send requests on with the scheme they arrived with)";
            diags.error(SourceLoc::of(file, &upstream.protocol), msg);
        }
        if d.nodes.is_empty() && !is_external {
            if let Some(first) = &default {
                diags.error(g.loc.clone(), format!("a second default Gateway (no `nodes`); the first is at {first}"));
            }
            default = Some(g.loc.clone());
        }
        for n in &d.nodes {
            if let Some(owner) = nodes.insert(n.value.clone(), name.clone()) {
                diags.error(
                    SourceLoc::of(file, n),
                    format!("node `{}` is already served by Gateway `{owner}`", n.value),
                );
            }
        }
        let http = addr(file, &d.listeners.http, "listeners.http", diags);
        let tls = d.listeners.tls.as_ref().and_then(|t| addr(file, t, "listeners.tls", diags));
        if let (Some(h), Some(t)) = (http, tls)
            && h == t
        {
            diags.error(
                SourceLoc::of(file, d.listeners.tls.as_ref().unwrap()),
                "listeners.tls and listeners.http are the same address",
            );
        }
        let tls_upstream_port = positive(
            file,
            d.tls_upstream_port.as_ref(),
            defaults::TLS_UPSTREAM_PORT.into(),
            65535,
            "tlsUpstreamPort",
            diags,
        ) as u16;
        let Some(http_listen) = http else { continue };
        if is_external {
            let loc = g.loc.clone();
            external.extend(external_gateway::compile(file, d, loc, (http_listen, tls), tls_upstream_port, diags));
            continue;
        }
        let authz = d.authz.as_ref();
        let dns = d.dns.as_ref();
        let timeouts = d.timeouts.as_ref();
        out.push(GatewaySpec {
            name: name.clone(),
            nodes: d.nodes.iter().map(|n| n.value.clone()).collect(),
            http_listen,
            tls_listen: tls,
            tls_upstream_port,
            mtls: d.mtls.as_ref().map(|m| MtlsPaths {
                certificate_chain: m.certificate_chain.value.clone(),
                private_key: m.private_key.value.clone(),
                trust_bundle: m.trust_bundle.value.clone(),
            }),
            authz_address: authz.and_then(|a| a.address.as_ref()).and_then(|a| authz_address(file, a, diags)),
            authz_timeout_ms: positive(
                file,
                authz.and_then(|a| a.timeout_ms.as_ref()),
                defaults::AUTHZ_TIMEOUT_MS,
                60_000,
                "authz.timeoutMs",
                diags,
            ),
            authz_tls: authz.and_then(|a| a.tls.as_ref()).and_then(|t| authz_tls(file, t, diags)),
            dns_resolvers: dns
                .map(|d| d.resolvers.iter().filter_map(|r| addr(file, r, "dns.resolvers", diags)).collect())
                .unwrap_or_default(),
            dns_host_ttl_ms: 1000
                * positive(
                    file,
                    dns.and_then(|d| d.host_ttl_seconds.as_ref()),
                    defaults::DNS_HOST_TTL_SECONDS,
                    86_400,
                    "dns.hostTtlSeconds",
                    diags,
                ),
            dns_max_hosts: positive(
                file,
                dns.and_then(|d| d.max_hosts.as_ref()),
                defaults::DNS_MAX_HOSTS.into(),
                1_000_000,
                "dns.maxHosts",
                diags,
            ) as u32,
            use_dns_firewall: dns.and_then(|d| d.use_dns_firewall.as_ref()).map(|u| u.value),
            dns_firewall_address: None,
            connect_timeout_ms: positive(
                file,
                timeouts.and_then(|t| t.connect_ms.as_ref()),
                defaults::CONNECT_TIMEOUT_MS,
                600_000,
                "timeouts.connectMs",
                diags,
            ),
            request_timeout_ms: positive(
                file,
                timeouts.and_then(|t| t.request_ms.as_ref()),
                defaults::REQUEST_TIMEOUT_MS,
                3_600_000,
                "timeouts.requestMs",
                diags,
            ),
            tracing: d.tracing.as_ref().and_then(|t| {
                let collector = addr(file, &t.collector, "tracing.collector", diags)?;
                let sampling_percent = match &t.sampling_percent {
                    None => defaults::TRACING_SAMPLING_PERCENT,
                    Some(p) if (0..=100).contains(&p.value) => p.value as u8,
                    Some(p) => {
                        diags.error(
                            SourceLoc::of(file, p),
                            format!("tracing.samplingPercent {} is outside 0..=100", p.value),
                        );
                        defaults::TRACING_SAMPLING_PERCENT
                    }
                };
                let service_name = t.service_name.as_ref().map(|n| n.value.trim().to_string());
                let service_name =
                    service_name.filter(|n| !n.is_empty()).unwrap_or_else(|| format!("egress-gateway-{name}"));
                Some(GatewayTracing { collector, sampling_percent, service_name })
            }),
            upstream_tls: d.upstream_tls.as_ref().and_then(|u| {
                let path = u.trust_bundle.value.trim();
                if path.is_empty() {
                    diags.error(SourceLoc::of(file, &u.trust_bundle), "upstreamTls.trustBundle names no file");
                    return None;
                }
                Some(UpstreamTls { trust_bundle: path.to_string() })
            }),
            access_log: access_log(file, d.access_log.as_ref(), diags),
            trust_forwarded_client_cert,
            loc: g.loc.clone(),
        });
    }
    (out, external)
}
