//! The policy documents exactly as written in YAML (phase one of two).
//!
//! These structs only describe shape: camelCase keys, unknown keys rejected, every value that a
//! later check may complain about kept with its source location. Meaning (hosts, CIDRs, groups,
//! identities) is checked by `compile`, which turns them into the types the hot path uses.

use serde::Deserialize;
use serde_saphyr::Spanned;

use super::terms::{Mode, Protocol, TunnelTls, UnclaimedIdentities};

/// Just enough of a document to dispatch on its `kind`.
#[derive(Debug, Deserialize)]
pub struct KindProbe {
    pub kind: Option<Spanned<String>>,
}

/// `kind: MeshDefaults`: one per policy set.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshDefaultsDoc {
    #[allow(dead_code)]
    pub kind: String,
    pub trust_domain: Spanned<String>,
    #[serde(default)]
    pub mode: Option<Spanned<Mode>>,
    #[serde(default)]
    pub canary_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub trust_forwarded_client_cert: Option<Spanned<bool>>,
    #[serde(default)]
    pub tunnel_tls: Option<TunnelTls>,
    /// Callers in the trust domain that no service claims: `deny` (the default) or `observe`.
    #[serde(default)]
    pub unclaimed_identities: Option<Spanned<UnclaimedIdentities>>,
    /// SPIFFE IDs whose client certificate authorizes admin API calls (gRPC port over TLS with
    /// `--client-ca`), as a bearer token does.
    #[serde(default)]
    pub admin_identities: Vec<Spanned<String>>,
    /// Thresholds of the exfiltration and C2 detectors (`policy::detection`).
    #[serde(default)]
    pub detection: Option<super::detection::DetectionDoc>,
    #[serde(default)]
    pub deny: Vec<Spanned<RuleDoc>>,
}

/// `kind: DestinationGroup`: a named, justified set of destinations services can allow by name.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DestinationGroupDoc {
    #[allow(dead_code)]
    pub kind: String,
    pub name: Spanned<String>,
    /// Spanned so a placeholder (`TODO`) is reported where it is written.
    #[serde(default)]
    pub justification: Option<Spanned<String>>,
    #[serde(default)]
    pub description: Option<String>,
    pub destinations: Vec<Spanned<RuleDoc>>,
}

/// `kind: ServicePolicy`: who a service is (identities) and where it may go.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServicePolicyDoc {
    #[allow(dead_code)]
    pub kind: String,
    pub service: Spanned<String>,
    #[serde(default)]
    pub owner: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    pub identities: Vec<Spanned<String>>,
    #[serde(default)]
    pub mode: Option<Spanned<Mode>>,
    /// When the service entered its current mode (`YYYY-MM-DD`): `lint` flags a dry-run or canary
    /// that has been observing for too long.
    #[serde(default)]
    pub since: Option<Spanned<String>>,
    #[serde(default)]
    pub canary_percent: Option<Spanned<i64>>,
    /// Canary by workload: these SPIFFE IDs are enforced.
    #[serde(default)]
    pub canary_workloads: Vec<Spanned<String>>,
    /// Canary by workload: this share of identities (stable hash of the SPIFFE ID) is enforced.
    #[serde(default)]
    pub canary_workload_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub rollback_guard: Option<Spanned<RollbackGuardDoc>>,
    #[serde(default)]
    pub tunnel_tls: Option<TunnelTls>,
    #[serde(default)]
    pub allow: Vec<Spanned<RuleDoc>>,
    #[serde(default)]
    pub deny: Vec<Spanned<RuleDoc>>,
}

/// One allow, deny or group destination. Which fields are required depends on where it stands;
/// `compile` checks that.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RuleDoc {
    #[serde(default)]
    pub host: Option<Spanned<String>>,
    #[serde(default)]
    pub cidr: Option<Spanned<String>>,
    #[serde(default)]
    pub group: Option<Spanned<String>>,
    #[serde(default)]
    pub ports: Option<Vec<Spanned<i64>>>,
    #[serde(default)]
    pub protocols: Option<Vec<Protocol>>,
    /// Spanned so a placeholder (`TODO`) is reported where it is written.
    #[serde(default)]
    pub justification: Option<Spanned<String>>,
    #[serde(default)]
    pub expires: Option<Spanned<String>>,
}

/// `kind: Gateway`: how an egress gateway is built (ports, certificates, DNS, timeouts). Nodes are
/// matched by their Envoy node `cluster` (or `id`); a Gateway without `nodes` is the default.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayDoc {
    #[allow(dead_code)]
    pub kind: String,
    pub name: Spanned<String>,
    #[serde(default)]
    pub nodes: Vec<Spanned<String>>,
    pub listeners: GatewayListenersDoc,
    #[serde(default)]
    pub tls_upstream_port: Option<Spanned<i64>>,
    #[serde(default)]
    pub mtls: Option<GatewayMtlsDoc>,
    #[serde(default)]
    pub authz: Option<GatewayAuthzDoc>,
    #[serde(default)]
    pub dns: Option<GatewayDnsDoc>,
    #[serde(default)]
    pub timeouts: Option<GatewayTimeoutsDoc>,
    #[serde(default)]
    pub tracing: Option<GatewayTracingDoc>,
    #[serde(default)]
    pub upstream_tls: Option<GatewayUpstreamTlsDoc>,
    #[serde(default)]
    pub access_log: Option<GatewayAccessLogDoc>,
    /// A gateway another control plane configures (Istio's egress gateway): egressd serves it no
    /// xDS and reads its checks by this document's listeners (`external_gateway`).
    #[serde(default)]
    pub external: Option<Spanned<bool>>,
    /// External gateways: what a request on the HTTP listener becomes upstream.
    #[serde(default)]
    pub http_upstream: Option<GatewayHttpUpstreamDoc>,
}

/// `httpUpstream`: the protocol (and port) an external gateway sends its HTTP listener's requests
/// on with, whatever `:scheme` the hop to the gateway gave them.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayHttpUpstreamDoc {
    pub protocol: Spanned<String>,
    #[serde(default)]
    pub port: Option<Spanned<i64>>,
}

/// The gateway's access log to egressd over gRPC.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAccessLogDoc {
    #[serde(default)]
    pub grpc: Option<Spanned<bool>>,
    /// Seconds between reports of an open stream; 0: only at its end.
    #[serde(default)]
    pub progress_seconds: Option<Spanned<i64>>,
}

/// TLS the gateway originates for `https://` proxy requests.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayUpstreamTlsDoc {
    /// CA bundle (PEM) that verifies destinations' certificates.
    pub trust_bundle: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayListenersDoc {
    pub http: Spanned<String>,
    #[serde(default)]
    pub tls: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayMtlsDoc {
    pub certificate_chain: Spanned<String>,
    pub private_key: Spanned<String>,
    pub trust_bundle: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAuthzDoc {
    #[serde(default)]
    pub address: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<i64>>,
    /// TLS to egressd's gRPC port (egressd served with `--tls-cert`).
    #[serde(default)]
    pub tls: Option<GatewayAuthzTlsDoc>,
}

/// How the gateway verifies egressd's certificate and, optionally, which certificate it presents.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayAuthzTlsDoc {
    /// CA bundle (PEM) that verifies egressd's certificate.
    pub trust_bundle: Spanned<String>,
    /// The name egressd's certificate must carry (SNI and SAN check); default: none checked
    /// beyond the bundle.
    #[serde(default)]
    pub server_name: Option<Spanned<String>>,
    /// The gateway's client certificate chain and key (PEM), both or neither.
    #[serde(default)]
    pub certificate_chain: Option<Spanned<String>>,
    #[serde(default)]
    pub private_key: Option<Spanned<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayDnsDoc {
    #[serde(default)]
    pub resolvers: Vec<Spanned<String>>,
    #[serde(default)]
    pub host_ttl_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_hosts: Option<Spanned<i64>>,
    /// Resolve through egressd's DnsFirewall (default: on when the policy has one).
    #[serde(default)]
    pub use_dns_firewall: Option<Spanned<bool>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTimeoutsDoc {
    #[serde(default)]
    pub connect_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub request_ms: Option<Spanned<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GatewayTracingDoc {
    /// OTLP/gRPC collector, IP:PORT.
    pub collector: Spanned<String>,
    #[serde(default)]
    pub sampling_percent: Option<Spanned<i64>>,
    #[serde(default)]
    pub service_name: Option<Spanned<String>>,
}

/// A canary service falls back to dry-run by itself when its deny rate passes `maxDenyRate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RollbackGuardDoc {
    pub max_deny_rate: Spanned<f64>,
    #[serde(default)]
    pub window_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    pub min_checks: Option<Spanned<i64>>,
}

/// `kind: DnsFirewall`: egressd answers the fleet's DNS from the same policy (at most one).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsFirewallDoc {
    #[allow(dead_code)]
    pub kind: String,
    pub name: Spanned<String>,
    /// IP:PORT, served over UDP and TCP.
    pub listen: Spanned<String>,
    pub upstreams: Vec<Spanned<String>>,
    #[serde(default)]
    pub blocked: Option<Spanned<String>>,
    #[serde(default)]
    pub timeout_ms: Option<Spanned<i64>>,
    #[serde(default)]
    pub attempts: Option<Spanned<i64>>,
    #[serde(default)]
    pub cache: Option<DnsCacheDoc>,
    #[serde(default)]
    pub rate_limit: Option<DnsRateLimitDoc>,
    #[serde(default)]
    pub sources: Vec<Spanned<DnsSourceDoc>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsSourceDoc {
    pub cidr: Spanned<String>,
    pub service: Spanned<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsCacheDoc {
    #[serde(default)]
    pub max_entries: Option<Spanned<i64>>,
    #[serde(default)]
    pub max_ttl_seconds: Option<Spanned<i64>>,
    #[serde(default)]
    pub negative_ttl_seconds: Option<Spanned<i64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DnsRateLimitDoc {
    #[serde(default)]
    pub queries_per_second: Option<Spanned<i64>>,
    #[serde(default)]
    pub burst: Option<Spanned<i64>>,
    #[serde(default)]
    pub clients: Option<Spanned<i64>>,
}
