//! The egress gateway's Envoy resources, generated from a `GatewaySpec`: what `envoy-lab` proved on
//! Envoy 1.40, built from envoy-types messages (type URLs come from `prost::Name`, never typed).
//!
//! * cluster `egressd_authz`: egressd's gRPC port over HTTP/2 (ext_authz checks).
//! * cluster `egress_dfp`: dynamic forward proxy, DNS through c-ares at the configured resolvers.
//! * listener `egress_http`: HTTP proxy + CONNECT (HTTP/1.1 and HTTP/2), ext_authz, DFP, router;
//!   mTLS with a required, verified client certificate when the spec names certificate files;
//!   access logs to stdout and, over gRPC, to egressd (`als`).
//! * cluster `egress_dfp_tls` (when the Gateway has `upstreamTls`): the same, with TLS originated
//!   to the destination for `https://` proxy requests.
//! * route `egress_http` (RDS): CONNECT to the DFP cluster as a tunnel (its first bytes checked by
//!   the tunnel filter, `tunnel`), `https://` proxy requests to the TLS DFP cluster, everything else proxied;
//!   always to the host and port egressd authorized (see `contract`).
//! * listener `egress_tls` (optional): TLS by SNI: tls_inspector, network ext_authz, SNI DFP, tcp_proxy.
//! * secrets (SDS, `secrets`): the gateway's SVID and workload bundle (`mtls`), its client
//!   certificate and egressd's bundle (`authz.tls`), named by the TLS contexts above, so they rotate.
//! * cluster `egress_otel_collector` (when the Gateway has `tracing`): the OTLP collector Envoy's
//!   OpenTelemetry tracer exports to; the HTTP listener traces requests and, through its ext_authz
//!   gRPC client, hands its span to egressd so decision spans join the request's trace.

use envoy_types::pb::envoy::config::accesslog::v3::{AccessLog, access_log};
use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::{
    Address, AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, GrpcService, HeaderValue,
    Http1ProtocolOptions, Http2ProtocolOptions, SocketAddress, SubstitutionFormatString, TransportSocket,
    TypedExtensionConfig, UpstreamHttpProtocolOptions, address, config_source, data_source, grpc_service,
    socket_address, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    Filter, FilterChain, Listener, ListenerFilter, filter, listener_filter,
};
use envoy_types::pb::envoy::config::route::v3::{
    DirectResponseAction, HeaderMatcher, Route, RouteAction, RouteConfiguration, RouteMatch, VirtualHost,
    header_matcher, route, route_action, route_match,
};
use envoy_types::pb::envoy::config::trace::v3::{self as tracing_v3, OpenTelemetryConfig};
use envoy_types::pb::envoy::extensions::access_loggers::stream::v3::StdoutAccessLog;
use envoy_types::pb::envoy::extensions::clusters::dynamic_forward_proxy::v3::{ClusterConfig, cluster_config};
use envoy_types::pb::envoy::extensions::common::dynamic_forward_proxy::v3::DnsCacheConfig;
use envoy_types::pb::envoy::extensions::filters::http::dynamic_forward_proxy::v3::{
    FilterConfig as HttpDfpConfig, filter_config as http_dfp_config,
};
use envoy_types::pb::envoy::extensions::filters::http::ext_authz::v3::{
    ExtAuthz as HttpExtAuthz, ext_authz as http_ext_authz,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, HttpFilter, Rds, http_connection_manager, http_filter,
};
use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::{
    FilterConfig as SniDfpConfig, filter_config as sni_dfp_config,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::network::dns_resolver::cares::v3::CaresDnsResolverConfig;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CertificateValidationContext, CommonTlsContext, DownstreamTlsContext, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{HttpProtocolOptions, http_protocol_options};
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::Name;

use super::secrets;
use crate::contract::{
    DECISION_METADATA_NAMESPACE, GATEWAY_GENERATED, GATEWAY_METADATA, INTERNAL_HEADERS, TLS_NAME_HEADER,
    UPSTREAM_TLS_METADATA, UPSTREAM_TLS_ORIGINATE, XFCC_HEADER,
};
use crate::policy::{AuthzAddress, GatewaySpec};

pub const AUTHZ_CLUSTER: &str = "egressd_authz";
pub const DFP_CLUSTER: &str = "egress_dfp";
pub const DFP_TLS_CLUSTER: &str = "egress_dfp_tls";
pub const HTTP_LISTENER: &str = "egress_http";
pub const HTTP_ROUTE: &str = "egress_http";
pub const TLS_LISTENER: &str = "egress_tls";
pub const OTEL_CLUSTER: &str = "egress_otel_collector";
/// SDS secrets (`secrets`): the gateway's SVID and the bundle that verifies workloads (`mtls`),
/// and its TLS to egressd (`authz.tls`).
pub const SVID_SECRET: &str = "egress_gateway_svid";
pub const TRUST_BUNDLE_SECRET: &str = "egress_gateway_trust_bundle";
pub const AUTHZ_CLIENT_CERT_SECRET: &str = "egressd_authz_client_certificate";
pub const AUTHZ_TRUST_BUNDLE_SECRET: &str = "egressd_authz_trust_bundle";
const DNS_CACHE: &str = "egress_dns_cache";

/// One generated resource: its name and the message packed as `Any`.
#[derive(Debug, Clone)]
pub struct Resource {
    pub name: String,
    pub any: Any,
}

pub(super) fn resource<M: Name + prost::Message>(name: &str, msg: M) -> Resource {
    Resource { name: name.to_string(), any: pack_any(msg) }
}

pub(super) fn typed<M: Name + prost::Message>(name: &str, msg: M) -> TypedExtensionConfig {
    TypedExtensionConfig { name: name.to_string(), typed_config: Some(pack_any(msg)) }
}

pub(super) fn millis(ms: u64) -> Duration {
    Duration { seconds: (ms / 1000) as i64, nanos: ((ms % 1000) * 1_000_000) as i32 }
}

pub(super) fn socket(addr: std::net::SocketAddr) -> Address {
    named_socket(&addr.ip().to_string(), addr.port())
}

/// A socket address by name (for a STRICT_DNS cluster) or IP text.
fn named_socket(host: &str, port: u16) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: host.to_string(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    }
}

fn file(path: &str) -> Option<DataSource> {
    Some(DataSource { specifier: Some(data_source::Specifier::Filename(path.to_string())), ..Default::default() })
}

/// The DNS cache shared by the DFP filters and the DFP cluster (Envoy requires them identical).
pub(super) fn dns_cache(spec: &GatewaySpec) -> DnsCacheConfig {
    let resolver = CaresDnsResolverConfig {
        resolvers: spec.dns_resolvers.iter().copied().map(socket).collect(),
        use_resolvers_as_fallback: false,
        dns_resolver_options: Some(envoy_types::pb::envoy::config::core::v3::DnsResolverOptions {
            use_tcp_for_dns_lookups: false,
            no_default_search_domain: true,
        }),
        ..Default::default()
    };
    DnsCacheConfig {
        name: DNS_CACHE.to_string(),
        // V4_ONLY: the lab's resolvers answer A records; AUTO would wait on AAAA first.
        dns_lookup_family: cluster::DnsLookupFamily::V4Only as i32,
        max_hosts: Some(UInt32Value { value: spec.dns_max_hosts }),
        host_ttl: Some(millis(spec.dns_host_ttl_ms)),
        typed_dns_resolver_config: Some(typed("envoy.network.dns_resolver.cares", resolver)),
        ..Default::default()
    }
}

fn http2_options() -> (String, Any) {
    let opts = HttpProtocolOptions {
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                        Http2ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    (HttpProtocolOptions::full_name(), pack_any(opts))
}

/// A cluster of one static HTTP/2 endpoint (a gRPC server).
fn static_h2_cluster(name: &str, addr: std::net::SocketAddr) -> Resource {
    resource(name, static_h2(name, addr))
}

fn static_h2(name: &str, addr: std::net::SocketAddr) -> Cluster {
    h2_cluster(name, socket(addr), cluster::DiscoveryType::Static)
}

/// An HTTP/2 cluster of one endpoint `address` (an IP for STATIC, a name for STRICT_DNS).
fn h2_cluster(name: &str, address: Address, discovery: cluster::DiscoveryType) -> Cluster {
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(millis(1000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(discovery as i32)),
        typed_extension_protocol_options: [http2_options()].into_iter().collect(),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: name.to_string(),
            endpoints: vec![LocalityLbEndpoints {
                lb_endpoints: vec![LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: Some(address),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// egressd's own gRPC port, over HTTP/2, for ext_authz and the access log; over TLS when the
/// Gateway says so (`authz.tls`, egressd served with `--tls-cert`). A named address is a
/// STRICT_DNS cluster: Envoy resolves it with its own (system) resolver, not the gateway's
/// destination resolvers (a DnsFirewall would have no reason to answer for egressd), and
/// balances over every address it returns.
pub fn authz_cluster(spec: &GatewaySpec) -> Resource {
    let base = match spec.authz() {
        AuthzAddress::Ip(addr) => static_h2(AUTHZ_CLUSTER, addr),
        AuthzAddress::Name { host, port } => Cluster {
            dns_lookup_family: cluster::DnsLookupFamily::V4Preferred as i32,
            ..h2_cluster(AUTHZ_CLUSTER, named_socket(&host, port), cluster::DiscoveryType::StrictDns)
        },
    };
    let c = Cluster { transport_socket: spec.authz_tls.as_ref().map(authz_tls_socket), ..base };
    resource(AUTHZ_CLUSTER, c)
}

/// TLS to egressd: its certificate verified against the bundle (and the name, when given), h2
/// by ALPN, the gateway's certificate presented when configured.
fn authz_tls_socket(tls: &crate::policy::AuthzTls) -> TransportSocket {
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        SubjectAltNameMatcher, subject_alt_name_matcher,
    };
    use envoy_types::pb::envoy::r#type::matcher::v3::{StringMatcher, string_matcher};
    let san_matchers = tls
        .server_name
        .iter()
        .map(|name| {
            let san_type = if name.parse::<std::net::IpAddr>().is_ok() {
                subject_alt_name_matcher::SanType::IpAddress
            } else {
                subject_alt_name_matcher::SanType::Dns
            };
            SubjectAltNameMatcher {
                san_type: san_type as i32,
                matcher: Some(StringMatcher {
                    match_pattern: Some(string_matcher::MatchPattern::Exact(name.clone())),
                    ..Default::default()
                }),
                ..Default::default()
            }
        })
        .collect();
    // The bundle and the client certificate are SDS secrets (they rotate, see `secrets`); the
    // name check stays here, combined with the served bundle.
    let validation = common_tls_context::CombinedCertificateValidationContext {
        default_validation_context: Some(CertificateValidationContext {
            match_typed_subject_alt_names: san_matchers,
            ..Default::default()
        }),
        validation_context_sds_secret_config: Some(secrets::over_ads(AUTHZ_TRUST_BUNDLE_SECRET)),
        ..Default::default()
    };
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: tls
                .client_certificate
                .iter()
                .map(|_| secrets::over_ads(AUTHZ_CLIENT_CERT_SECRET))
                .collect(),
            validation_context_type: Some(common_tls_context::ValidationContextType::CombinedValidationContext(
                validation,
            )),
            alpn_protocols: vec!["h2".to_string()],
            ..Default::default()
        }),
        sni: tls.server_name.clone().filter(|n| n.parse::<std::net::IpAddr>().is_err()).unwrap_or_default(),
        ..Default::default()
    };
    TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    }
}

/// The SDS secrets the gateway's TLS contexts name: its SVID and workload bundle (`mtls`), its
/// client certificate and egressd's bundle (`authz.tls`).
pub fn tls_secrets(spec: &GatewaySpec) -> Vec<Resource> {
    let mut out = Vec::new();
    if let Some(m) = &spec.mtls {
        out.push(secrets::certificate(SVID_SECRET, &m.certificate_chain, &m.private_key));
        out.push(secrets::trust_bundle(TRUST_BUNDLE_SECRET, &m.trust_bundle));
    }
    if let Some(t) = &spec.authz_tls {
        out.push(secrets::trust_bundle(AUTHZ_TRUST_BUNDLE_SECRET, &t.trust_bundle));
        if let Some((chain, key)) = &t.client_certificate {
            out.push(secrets::certificate(AUTHZ_CLIENT_CERT_SECRET, chain, key));
        }
    }
    out
}

/// The OTLP/gRPC collector of the gateway's own spans, when tracing is configured.
pub fn otel_cluster(spec: &GatewaySpec) -> Option<Resource> {
    spec.tracing.as_ref().map(|t| static_h2_cluster(OTEL_CLUSTER, t.collector))
}

/// Envoy's OpenTelemetry tracer for the HTTP listener.
fn tracing(spec: &GatewaySpec) -> Option<http_connection_manager::Tracing> {
    let t = spec.tracing.as_ref()?;
    let otel = OpenTelemetryConfig {
        grpc_service: Some(GrpcService {
            target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                cluster_name: OTEL_CLUSTER.to_string(),
                ..Default::default()
            })),
            timeout: Some(millis(1000)),
            ..Default::default()
        }),
        service_name: t.service_name.clone(),
        ..Default::default()
    };
    Some(http_connection_manager::Tracing {
        random_sampling: Some(Percent { value: f64::from(t.sampling_percent) }),
        provider: Some(tracing_v3::tracing::Http {
            name: "envoy.tracers.opentelemetry".to_string(),
            config_type: Some(tracing_v3::tracing::http::ConfigType::TypedConfig(pack_any(otel))),
        }),
        // A gateway is its own hop: a span per upstream request as well.
        spawn_upstream_span: Some(BoolValue { value: true }),
        ..Default::default()
    })
}

/// Dynamic forward proxy: upstream hosts are the authorized destinations, resolved on demand.
pub fn dfp_cluster(spec: &GatewaySpec) -> Resource {
    resource(DFP_CLUSTER, dfp_cluster_named(DFP_CLUSTER, spec))
}

/// A dynamic forward proxy cluster on the gateway's one DNS cache.
fn dfp_cluster_named(name: &str, spec: &GatewaySpec) -> Cluster {
    let config = ClusterConfig {
        cluster_implementation_specifier: Some(cluster_config::ClusterImplementationSpecifier::DnsCacheConfig(
            dns_cache(spec),
        )),
        ..Default::default()
    };
    Cluster {
        name: name.to_string(),
        connect_timeout: Some(millis(spec.connect_timeout_ms)),
        lb_policy: cluster::LbPolicy::ClusterProvided as i32,
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::ClusterType(cluster::CustomClusterType {
            name: "envoy.clusters.dynamic_forward_proxy".to_string(),
            typed_config: Some(pack_any(config)),
        })),
        ..Default::default()
    }
}

/// The dynamic forward proxy for `https://` proxy requests: TLS to the destination, its
/// certificate verified against the Gateway's `upstreamTls.trustBundle`. SNI and the name checked
/// in the certificate come from egressd's answer (`x-egress-tls-name`, through set_filter_state),
/// which overrides the cluster's auto SNI and SAN validation from the Host header.
pub fn dfp_tls_cluster(spec: &GatewaySpec) -> Option<Resource> {
    let tls = spec.upstream_tls.as_ref()?;
    let ctx = UpstreamTlsContext {
        common_tls_context: Some(CommonTlsContext {
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContext(
                CertificateValidationContext { trusted_ca: file(&tls.trust_bundle), ..Default::default() },
            )),
            ..Default::default()
        }),
        ..Default::default()
    };
    let options = HttpProtocolOptions {
        upstream_http_protocol_options: Some(UpstreamHttpProtocolOptions {
            auto_sni: true,
            auto_san_validation: true,
            ..Default::default()
        }),
        upstream_protocol_options: Some(http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
            http_protocol_options::ExplicitHttpConfig {
                protocol_config: Some(
                    http_protocol_options::explicit_http_config::ProtocolConfig::HttpProtocolOptions(
                        Http1ProtocolOptions::default(),
                    ),
                ),
            },
        )),
        ..Default::default()
    };
    let c = Cluster {
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.tls".to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
        }),
        typed_extension_protocol_options: [(HttpProtocolOptions::full_name(), pack_any(options))].into_iter().collect(),
        ..dfp_cluster_named(DFP_TLS_CLUSTER, spec)
    };
    Some(resource(DFP_TLS_CLUSTER, c))
}

pub(super) fn grpc_authz_service(spec: &GatewaySpec) -> GrpcService {
    GrpcService {
        target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
            cluster_name: AUTHZ_CLUSTER.to_string(),
            ..Default::default()
        })),
        timeout: Some(millis(spec.authz_timeout_ms)),
        ..Default::default()
    }
}

/// The access log line: the request, then egressd's decision from ext_authz dynamic metadata.
pub(super) fn access_log(namespace: &str, tcp: bool) -> Vec<AccessLog> {
    let m = |key: &str| format!("%DYNAMIC_METADATA({namespace}:{key})%");
    let what = if tcp {
        "%DOWNSTREAM_REMOTE_ADDRESS% -> %REQUESTED_SERVER_NAME% %UPSTREAM_HOST% %RESPONSE_FLAGS%".to_string()
    } else {
        "%DOWNSTREAM_REMOTE_ADDRESS% \"%REQ(:METHOD)% %REQ(:AUTHORITY)%%REQ(:PATH)%\" %RESPONSE_CODE% %RESPONSE_FLAGS%"
            .to_string()
    };
    // An HTTP stream's tunnel filter verdict (`reason action ms host sni`), `-` when it wrote none.
    let tunnel = if tcp {
        String::new()
    } else {
        format!(" tunnel=%FILTER_STATE({}:PLAIN)%", crate::contract::TUNNEL_REPORT_STATE)
    };
    let format = format!(
        "[%START_TIME%] {what} peer=%DOWNSTREAM_PEER_URI_SAN% decision={} reason={} rule={} service={} mode={}{tunnel}\n",
        m("decision"),
        m("reason"),
        m("rule"),
        m("service"),
        m("mode")
    );
    let stdout = StdoutAccessLog {
        access_log_format: Some(envoy_types::pb::envoy::extensions::access_loggers::stream::v3::stdout_access_log::AccessLogFormat::LogFormat(
            SubstitutionFormatString {
                format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
                    specifier: Some(data_source::Specifier::InlineString(format)),
                    ..Default::default()
                })),
                ..Default::default()
            },
        )),
    };
    vec![AccessLog {
        name: "envoy.access_loggers.stdout".to_string(),
        config_type: Some(access_log::ConfigType::TypedConfig(pack_any(stdout))),
        ..Default::default()
    }]
}

pub(super) fn http_filter<M: Name + prost::Message>(name: &str, msg: M) -> HttpFilter {
    HttpFilter {
        name: name.to_string(),
        config_type: Some(http_filter::ConfigType::TypedConfig(pack_any(msg))),
        ..Default::default()
    }
}

pub(super) fn network_filter<M: Name + prost::Message>(name: &str, msg: M) -> Filter {
    Filter { name: name.to_string(), config_type: Some(filter::ConfigType::TypedConfig(pack_any(msg))) }
}

fn downstream_mtls(spec: &GatewaySpec, alpn: &[&str]) -> Option<TransportSocket> {
    spec.mtls.as_ref()?;
    let ctx = DownstreamTlsContext {
        // The SVID and the bundle are SDS secrets, so they rotate (see `secrets`).
        common_tls_context: Some(CommonTlsContext {
            tls_certificate_sds_secret_configs: vec![secrets::over_ads(SVID_SECRET)],
            validation_context_type: Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(
                secrets::over_ads(TRUST_BUNDLE_SECRET),
            )),
            alpn_protocols: alpn.iter().map(|a| a.to_string()).collect(),
            ..Default::default()
        }),
        // A workload without a valid SVID never gets past the handshake.
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    Some(TransportSocket {
        name: "envoy.transport_sockets.tls".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(ctx))),
    })
}

/// The HTTP egress listener: plain proxy requests and CONNECT tunnels, each checked by egressd.
pub fn http_listener(spec: &GatewaySpec) -> Resource {
    let mut authz_service = grpc_authz_service(spec);
    let metadata = |key: &str, value: &str| HeaderValue { key: key.into(), value: value.into(), ..Default::default() };
    // This gateway strips and removes egressd's headers and XFCC itself (see `http_route`), so
    // egressd's answers need not carry removal lists.
    authz_service.initial_metadata = vec![metadata(GATEWAY_METADATA, GATEWAY_GENERATED)];
    if spec.upstream_tls.is_some() {
        // `https://` proxy requests leave with TLS (else egressd denies them).
        authz_service.initial_metadata.push(metadata(UPSTREAM_TLS_METADATA, UPSTREAM_TLS_ORIGINATE));
    }
    let ext_authz = HttpExtAuthz {
        services: Some(http_ext_authz::Services::GrpcService(authz_service)),
        transport_api_version: ApiVersion::V3 as i32,
        // Fail closed: egressd down means no egress.
        failure_mode_allow: false,
        include_peer_certificate: false,
        // egressd's answer decides the route (`x-egress-tls-name`: TLS origination).
        clear_route_cache: true,
        ..Default::default()
    };
    let dfp = HttpDfpConfig {
        implementation_specifier: Some(http_dfp_config::ImplementationSpecifier::DnsCacheConfig(dns_cache(spec))),
        // Resolve and dial the host:port egressd authorized (x-egress-host/-port, through
        // set_filter_state), not the request's own authority: no parsing differential between
        // what was decided and where the request goes, and no default port of Envoy's choosing.
        allow_dynamic_host_from_filter_state: true,
        ..Default::default()
    };
    let hcm = HttpConnectionManager {
        stat_prefix: HTTP_LISTENER.to_string(),
        codec_type: http_connection_manager::CodecType::Auto as i32,
        route_specifier: Some(http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: Some(ads_source()),
            route_config_name: HTTP_ROUTE.to_string(),
        })),
        http_filters: vec![
            http_filter("envoy.filters.http.ext_authz", ext_authz),
            super::tunnel::set_filter_state_filter(),
            // A CONNECT's tunnel: its ClientHello checked as egressd's answer ordered.
            super::tunnel::tunnel_filter(),
            http_filter("envoy.filters.http.dynamic_forward_proxy", dfp),
            http_filter("envoy.filters.http.router", Router::default()),
        ],
        upgrade_configs: vec![http_connection_manager::UpgradeConfig {
            upgrade_type: "CONNECT".to_string(),
            ..Default::default()
        }],
        http_protocol_options: Some(Http1ProtocolOptions {
            // Absolute-form proxy requests (GET http://host/) and HTTP/1.0 CONNECT (openssl -proxy).
            allow_absolute_url: Some(BoolValue { value: true }),
            accept_http_10: true,
            ..Default::default()
        }),
        http2_protocol_options: Some(Http2ProtocolOptions { allow_connect: true, ..Default::default() }),
        // Identity from the gateway's own mTLS: a client-supplied XFCC is stripped. Where the policy
        // trusts XFCC (sidecars terminate mTLS), it is passed to the check; either way egressd's OK
        // answer removes it, so identity headers never leave the gateway.
        forward_client_cert_details: if spec.trust_forwarded_client_cert {
            http_connection_manager::ForwardClientCertDetails::AlwaysForwardOnly as i32
        } else {
            http_connection_manager::ForwardClientCertDetails::Sanitize as i32
        },
        access_log: super::als::http_access_logs(spec, access_log(DECISION_METADATA_NAMESPACE, false)),
        access_log_options: super::als::hcm_log_options(spec),
        tracing: tracing(spec),
        // Every workload is an external client: the gateway generates each request's
        // x-request-id (canary shares hash it), so a client cannot choose its bucket. Envoy 1.33+
        // treats no address as internal; XFF is not appended (workload addresses stay inside).
        use_remote_address: Some(BoolValue { value: true }),
        skip_xff_append: true,
        preserve_external_request_id: false,
        ..Default::default()
    };
    let listener = Listener {
        name: HTTP_LISTENER.to_string(),
        address: Some(socket(spec.http_listen)),
        filter_chains: vec![FilterChain {
            filters: vec![network_filter("envoy.filters.network.http_connection_manager", hcm)],
            // HTTP/2 and HTTP/1.1 over TLS (CONNECT works on both).
            transport_socket: downstream_mtls(spec, &["h2", "http/1.1"]),
            ..Default::default()
        }],
        ..Default::default()
    };
    resource(HTTP_LISTENER, listener)
}

fn ads_source() -> ConfigSource {
    ConfigSource {
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(AggregatedConfigSource::default())),
        resource_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    }
}

/// Routes of the HTTP listener: CONNECT becomes a tunnel to the authorized authority; other
/// requests are proxied to the host they name.
pub fn http_route(spec: &GatewaySpec) -> Resource {
    let to = |cluster: &str, upgrade: bool| {
        route::Action::Route(RouteAction {
            cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(cluster.to_string())),
            timeout: (!upgrade).then(|| millis(spec.request_timeout_ms)),
            upgrade_configs: if upgrade {
                vec![route_action::UpgradeConfig {
                    upgrade_type: "CONNECT".to_string(),
                    connect_config: Some(route_action::upgrade_config::ConnectConfig::default()),
                    ..Default::default()
                }]
            } else {
                vec![]
            },
            ..Default::default()
        })
    };
    let rc = RouteConfiguration {
        name: HTTP_ROUTE.to_string(),
        virtual_hosts: vec![VirtualHost {
            name: "any".to_string(),
            domains: vec!["*".to_string()],
            routes: vec![
                Route {
                    name: "connect".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::ConnectMatcher(
                            route_match::ConnectMatcher::default(),
                        )),
                        ..Default::default()
                    }),
                    action: Some(to(DFP_CLUSTER, true)),
                    ..Default::default()
                },
                // An https:// proxy request egressd permitted: TLS to the authorized host.
                Route {
                    name: "proxy-tls".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                        headers: vec![HeaderMatcher {
                            name: TLS_NAME_HEADER.to_string(),
                            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::PresentMatch(true)),
                            ..Default::default()
                        }],
                        ..Default::default()
                    }),
                    action: Some(if spec.upstream_tls.is_some() {
                        to(DFP_TLS_CLUSTER, false)
                    } else {
                        // egressd never permits one without upstream TLS; should it, fail closed.
                        route::Action::DirectResponse(DirectResponseAction { status: 403, ..Default::default() })
                    }),
                    typed_per_filter_config: super::tunnel::disabled_on_route(),
                    ..Default::default()
                },
                Route {
                    name: "proxy".to_string(),
                    r#match: Some(RouteMatch {
                        path_specifier: Some(route_match::PathSpecifier::Prefix("/".to_string())),
                        ..Default::default()
                    }),
                    action: Some(to(DFP_CLUSTER, false)),
                    typed_per_filter_config: super::tunnel::disabled_on_route(),
                    ..Default::default()
                },
            ],
            // egressd's headers are for the gateway's filters, never for the destination; nor is
            // the caller's identity.
            request_headers_to_remove: std::iter::once(XFCC_HEADER)
                .chain(INTERNAL_HEADERS)
                .map(str::to_string)
                .collect(),
            ..Default::default()
        }],
        // A client's own x-egress-* are dropped before any filter runs (every workload is an
        // external client: use_remote_address, no internal addresses), so only egressd's reach
        // set_filter_state and the routes.
        internal_only_headers: INTERNAL_HEADERS.iter().map(|h| h.to_string()).collect(),
        ..Default::default()
    };
    resource(HTTP_ROUTE, rc)
}

/// TLS by SNI. With mTLS configured (production), the workload's mTLS to the gateway names the
/// destination in its SNI (Istio's ISTIO_MUTUAL egress pattern): Envoy verifies the SVID, egressd
/// checks identity + SNI, and the stream inside (the workload's own TLS to the destination) is
/// forwarded to SNI:tlsUpstreamPort. Without mTLS, the client's TLS passes through untouched and
/// checks carry no identity.
pub fn tls_listener(spec: &GatewaySpec, listen: std::net::SocketAddr) -> Resource {
    let ext_authz = NetworkExtAuthz {
        stat_prefix: TLS_LISTENER.to_string(),
        grpc_service: Some(grpc_authz_service(spec)),
        failure_mode_allow: false,
        transport_api_version: ApiVersion::V3 as i32,
        ..Default::default()
    };
    let sni_dfp = SniDfpConfig {
        port_specifier: Some(sni_dfp_config::PortSpecifier::PortValue(u32::from(spec.tls_upstream_port))),
        dns_cache_config: Some(dns_cache(spec)),
        ..Default::default()
    };
    let tcp = TcpProxy {
        stat_prefix: TLS_LISTENER.to_string(),
        cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(DFP_CLUSTER.to_string())),
        access_log: access_log("envoy.filters.network.ext_authz", true),
        ..Default::default()
    };
    let listener = Listener {
        name: TLS_LISTENER.to_string(),
        address: Some(socket(listen)),
        listener_filters: vec![ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".to_string(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(TlsInspector::default()))),
            ..Default::default()
        }],
        filter_chains: vec![FilterChain {
            filters: vec![
                network_filter("envoy.filters.network.ext_authz", ext_authz),
                network_filter("envoy.filters.network.sni_dynamic_forward_proxy", sni_dfp),
                network_filter("envoy.filters.network.tcp_proxy", tcp),
            ],
            transport_socket: downstream_mtls(spec, &[]),
            ..Default::default()
        }],
        ..Default::default()
    };
    resource(TLS_LISTENER, listener)
}
