//! The tunnel half of the generated gateway: every CONNECT tunnel whose service verifies tunnels
//! (`tunnelTls` other than `off`) is routed into an internal listener that checks its first bytes.
//!
//! ```text
//! egress_http (CONNECT)          ext_authz: egressd allows, answers x-egress-corr/-host/-port
//!   set_filter_state             dynamic host/port (what egressd authorized, never the SNI),
//!                                original_dst local = the correlation, remote = the client
//!   route: x-egress-corr present -> cluster egress_tunnel (internal upstream) ─┐
//!          otherwise (tunnelTls off) -> egress_dfp directly                     │
//! egress_tunnel (internal listener) <───────────────────────────────────────────┘
//!   tls_inspector, original_dst
//!   chain "tls": network ext_authz (metadata x-egressd-check: tunnel-tls; SNI in destination.service)
//!   default:     network ext_authz (x-egressd-check: tunnel-raw)
//!   then sni_dynamic_forward_proxy (dials the filter-state host:port) and tcp_proxy -> egress_dfp
//! ```
//! The Envoy bootstrap must enable `envoy.bootstrap.internal_listener` (examples/envoy-bootstrap.yaml).

use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
use envoy_types::pb::envoy::config::core::v3::DataSource;
use envoy_types::pb::envoy::config::core::v3::{
    Address, ApiVersion, EnvoyInternalAddress, GrpcService, HeaderValue, SubstitutionFormatString, TransportSocket,
    address, data_source, envoy_internal_address, substitution_format_string, transport_socket,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints, lb_endpoint,
};
use envoy_types::pb::envoy::config::listener::v3::{
    FilterChain, FilterChainMatch, Listener, ListenerFilter, listener, listener_filter,
};
use envoy_types::pb::envoy::extensions::filters::common::set_filter_state::v3::{FilterStateValue, filter_state_value};
use envoy_types::pb::envoy::extensions::filters::http::set_filter_state::v3::Config as SetFilterState;
use envoy_types::pb::envoy::extensions::filters::listener::original_dst::v3::OriginalDst;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::ext_authz::v3::ExtAuthz as NetworkExtAuthz;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpFilter;
use envoy_types::pb::envoy::extensions::filters::network::sni_dynamic_forward_proxy::v3::{
    FilterConfig as SniDfpConfig, filter_config as sni_dfp_config,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{TcpProxy, tcp_proxy};
use envoy_types::pb::envoy::extensions::transport_sockets::internal_upstream::v3::InternalUpstreamTransport;
use envoy_types::pb::envoy::extensions::transport_sockets::raw_buffer::v3::RawBuffer;
use envoy_types::util::pack_any;

use super::resources::{
    DFP_CLUSTER, Resource, access_log, dns_cache, grpc_authz_service, http_filter, network_filter, resource,
};
use crate::contract::{
    CHECK_KIND_METADATA, CHECK_KIND_TUNNEL_RAW, CHECK_KIND_TUNNEL_TLS, CORRELATION_HEADER, HOST_HEADER, PORT_HEADER,
    TLS_NAME_HEADER,
};
use crate::policy::GatewaySpec;

pub const TUNNEL_LISTENER: &str = "egress_tunnel";
pub const TUNNEL_CLUSTER: &str = "egress_tunnel";

/// A format string whose missing values are empty (not the access log's `-`), so `skip_if_empty`
/// skips them: a request egressd answered without these headers sets no filter state.
fn format(text: &str) -> SubstitutionFormatString {
    SubstitutionFormatString {
        format: Some(substitution_format_string::Format::TextFormatSource(DataSource {
            specifier: Some(data_source::Specifier::InlineString(text.to_string())),
            ..Default::default()
        })),
        omit_empty_values: true,
        ..Default::default()
    }
}

/// After ext_authz in the HTTP listener: hands the authorized destination to the forward proxy
/// (every permitted request), the correlation to the internal connection into the tunnel listener,
/// and the TLS name to an originated upstream TLS connection (ONCE: that connection only).
pub fn set_filter_state_filter() -> HttpFilter {
    let value = |key: &str, text: &str, skip_if_empty: bool| FilterStateValue {
        key: Some(filter_state_value::Key::ObjectKey(key.to_string())),
        value: Some(filter_state_value::Value::FormatString(format(text))),
        shared_with_upstream: filter_state_value::SharedWithUpstream::Once as i32,
        skip_if_empty,
        ..Default::default()
    };
    let config = SetFilterState {
        on_request_headers: vec![
            value("envoy.upstream.dynamic_host", &format!("%REQ({HOST_HEADER})%"), true),
            value("envoy.upstream.dynamic_port", &format!("%REQ({PORT_HEADER})%"), true),
            value("envoy.filters.listener.original_dst.local_ip", &format!("%REQ({CORRELATION_HEADER})%"), true),
            value("envoy.filters.listener.original_dst.remote_ip", "%DOWNSTREAM_REMOTE_ADDRESS%", false),
            // TLS origination (`https://` proxy requests): SNI and the certificate name to verify.
            value("envoy.network.upstream_server_name", &format!("%REQ({TLS_NAME_HEADER})%"), true),
            value("envoy.network.upstream_subject_alt_names", &format!("%REQ({TLS_NAME_HEADER})%"), true),
        ],
        ..Default::default()
    };
    http_filter("envoy.filters.http.set_filter_state", config)
}

/// The cluster that opens an in-process connection to the tunnel listener.
pub fn tunnel_cluster() -> Resource {
    let raw = TransportSocket {
        name: "envoy.transport_sockets.raw_buffer".to_string(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(RawBuffer::default()))),
    };
    let internal = InternalUpstreamTransport { transport_socket: Some(raw), ..Default::default() };
    let address = Address {
        address: Some(address::Address::EnvoyInternalAddress(EnvoyInternalAddress {
            address_name_specifier: Some(envoy_internal_address::AddressNameSpecifier::ServerListenerName(
                TUNNEL_LISTENER.to_string(),
            )),
            ..Default::default()
        })),
    };
    let c = Cluster {
        name: TUNNEL_CLUSTER.to_string(),
        connect_timeout: Some(super::resources::millis(1000)),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::Static as i32)),
        transport_socket: Some(TransportSocket {
            name: "envoy.transport_sockets.internal_upstream".to_string(),
            config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(internal))),
        }),
        load_assignment: Some(ClusterLoadAssignment {
            cluster_name: TUNNEL_CLUSTER.to_string(),
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
    };
    resource(TUNNEL_CLUSTER, c)
}

/// The internal listener that checks what a tunnel carries, then forwards it to the authorized
/// destination.
pub fn tunnel_listener(spec: &GatewaySpec) -> Resource {
    let chain = |kind: &str, matching: Option<FilterChainMatch>| {
        let mut grpc: GrpcService = grpc_authz_service(spec);
        grpc.initial_metadata =
            vec![HeaderValue { key: CHECK_KIND_METADATA.to_string(), value: kind.to_string(), ..Default::default() }];
        let ext_authz = NetworkExtAuthz {
            stat_prefix: format!("{TUNNEL_LISTENER}_{kind}"),
            grpc_service: Some(grpc),
            failure_mode_allow: false,
            transport_api_version: ApiVersion::V3 as i32,
            ..Default::default()
        };
        let sni_dfp = SniDfpConfig {
            // Overridden per connection by envoy.upstream.dynamic_port (the CONNECT port).
            port_specifier: Some(sni_dfp_config::PortSpecifier::PortValue(443)),
            dns_cache_config: Some(dns_cache(spec)),
            ..Default::default()
        };
        let tcp = TcpProxy {
            stat_prefix: format!("{TUNNEL_LISTENER}_{kind}"),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(DFP_CLUSTER.to_string())),
            access_log: access_log("envoy.filters.network.ext_authz", true),
            ..Default::default()
        };
        FilterChain {
            filter_chain_match: matching,
            filters: vec![
                network_filter("envoy.filters.network.ext_authz", ext_authz),
                network_filter("envoy.filters.network.sni_dynamic_forward_proxy", sni_dfp),
                network_filter("envoy.filters.network.tcp_proxy", tcp),
            ],
            ..Default::default()
        }
    };
    let listener_filter = |name: &str, any| ListenerFilter {
        name: name.to_string(),
        config_type: Some(listener_filter::ConfigType::TypedConfig(any)),
        ..Default::default()
    };
    let l = Listener {
        name: TUNNEL_LISTENER.to_string(),
        listener_specifier: Some(listener::ListenerSpecifier::InternalListener(listener::InternalListenerConfig {})),
        listener_filters: vec![
            listener_filter("envoy.filters.listener.tls_inspector", pack_any(TlsInspector::default())),
            listener_filter("envoy.filters.listener.original_dst", pack_any(OriginalDst::default())),
        ],
        filter_chains: vec![chain(
            CHECK_KIND_TUNNEL_TLS,
            Some(FilterChainMatch { transport_protocol: "tls".to_string(), ..Default::default() }),
        )],
        default_filter_chain: Some(chain(CHECK_KIND_TUNNEL_RAW, None)),
        ..Default::default()
    };
    resource(TUNNEL_LISTENER, l)
}
