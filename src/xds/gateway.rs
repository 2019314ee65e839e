//! What a gateway looks like: ports, certificates, DNS, timeouts. Every Envoy resource egressd
//! serves is derived from one of these (see `resources`).

use std::net::SocketAddr;

/// Files of the gateway's own certificate and the trust bundle that verifies workload SVIDs (the
/// same type the policy's `kind: Gateway` compiles to).
pub type MtlsFiles = crate::policy::MtlsPaths;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySpec {
    /// Name of the profile (a `kind: Gateway` document's name, or `default`).
    pub name: String,
    /// The HTTP proxy / CONNECT listener.
    pub http_listen: SocketAddr,
    /// The TLS-by-SNI listener, if enabled.
    pub tls_listen: Option<SocketAddr>,
    /// Port the SNI forward proxy dials upstream.
    pub tls_upstream_port: u16,
    /// Workload mTLS on the HTTP listener; `None` serves it in plaintext (development only).
    pub mtls: Option<MtlsFiles>,
    /// egressd's gRPC address as the gateway reaches it.
    pub authz_address: SocketAddr,
    pub authz_timeout_ms: u64,
    /// DNS servers for destination names (c-ares); empty means the system's.
    pub dns_resolvers: Vec<SocketAddr>,
    pub dns_host_ttl_ms: u64,
    pub dns_max_hosts: u32,
    pub connect_timeout_ms: u64,
    pub request_timeout_ms: u64,
    /// The policy trusts x-forwarded-client-cert (sidecars terminate mTLS): the listener passes a
    /// client's XFCC on to the check instead of stripping it. egressd removes it from every request
    /// it allows, so it still never leaves the gateway.
    pub trust_forwarded_client_cert: bool,
    /// Envoy's own tracing (OpenTelemetry tracer to an OTLP collector), if configured.
    pub tracing: Option<crate::policy::GatewayTracing>,
    /// TLS origination for `https://` proxy requests; without it they are denied.
    pub upstream_tls: Option<crate::policy::UpstreamTls>,
}

impl GatewaySpec {
    /// A development gateway on loopback talking to egressd at `authz_address`.
    pub fn local(authz_address: SocketAddr) -> Self {
        GatewaySpec {
            name: "default".to_string(),
            http_listen: "127.0.0.1:10080".parse().expect("literal"),
            tls_listen: Some("127.0.0.1:10443".parse().expect("literal")),
            tls_upstream_port: 443,
            mtls: None,
            authz_address,
            authz_timeout_ms: 500,
            dns_resolvers: Vec::new(),
            dns_host_ttl_ms: 300_000,
            dns_max_hosts: 10_000,
            connect_timeout_ms: 2_000,
            request_timeout_ms: 30_000,
            trust_forwarded_client_cert: false,
            tracing: None,
            upstream_tls: None,
        }
    }
}

impl GatewaySpec {
    /// The spec of a `kind: Gateway` document; `authz_default` when it names no authz address.
    pub fn from_config(cfg: &crate::policy::GatewayConfig, authz_default: SocketAddr) -> Self {
        GatewaySpec {
            name: cfg.name.clone(),
            http_listen: cfg.http_listen,
            tls_listen: cfg.tls_listen,
            tls_upstream_port: cfg.tls_upstream_port,
            mtls: cfg.mtls.clone(),
            authz_address: cfg.authz_address.unwrap_or(authz_default),
            authz_timeout_ms: cfg.authz_timeout_ms,
            dns_resolvers: cfg.dns_resolvers.clone(),
            dns_host_ttl_ms: cfg.dns_host_ttl_ms,
            dns_max_hosts: cfg.dns_max_hosts,
            connect_timeout_ms: cfg.connect_timeout_ms,
            request_timeout_ms: cfg.request_timeout_ms,
            trust_forwarded_client_cert: false,
            tracing: cfg.tracing.clone(),
            upstream_tls: cfg.upstream_tls.clone(),
        }
    }
}
