//! Every resource egressd generates for the gateway passes the real Envoy's `--mode validate`.

mod support {
    pub mod envoy;
}

use envoy_types::pb::envoy::config::bootstrap::v3::{Bootstrap, bootstrap};
use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::{ApiVersion, GrpcService, grpc_service};
use envoy_types::pb::envoy::config::core::v3::{TransportSocket, transport_socket};
use envoy_types::pb::envoy::config::listener::v3::{Listener, filter};
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    HttpConnectionManager, http_connection_manager,
};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    CommonTlsContext, DownstreamTlsContext, Secret, UpstreamTlsContext, common_tls_context,
};
use envoy_types::pb::google::protobuf::Any;
use envoy_types::util::pack_any;
use prost::{Message, Name};

use egressd::policy::{GatewaySpec, MtlsPaths};
use egressd::xds::resources;
use egressd::xds::snapshot::Snapshot;

fn decode<M: Message + Default>(r: &resources::Resource) -> M {
    decode_any(&r.any)
}

fn decode_any<M: Message + Default>(any: &Any) -> M {
    M::decode(any.value.as_slice()).unwrap()
}

/// A copy of the HTTP listener whose HCM carries `route` inline, so the route is validated too.
fn with_inline_route(mut listener: Listener, route: RouteConfiguration, port: u16) -> Listener {
    listener.name = "route_check".into();
    if let Some(envoy_types::pb::envoy::config::core::v3::Address {
        address: Some(envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(sa)),
    }) = listener.address.as_mut()
    {
        sa.port_specifier =
            Some(envoy_types::pb::envoy::config::core::v3::socket_address::PortSpecifier::PortValue(port.into()));
    }
    let f = &mut listener.filter_chains[0].filters[0];
    let Some(filter::ConfigType::TypedConfig(any)) = &f.config_type else { panic!("HCM has a typed config") };
    let mut hcm = HttpConnectionManager::decode(any.value.as_slice()).unwrap();
    hcm.route_specifier = Some(http_connection_manager::RouteSpecifier::RouteConfig(route));
    f.config_type = Some(filter::ConfigType::TypedConfig(pack_any(hcm)));
    listener
}

/// Every resource of the gateway's snapshot (what ADS would serve) as static resources.
fn bootstrap_for(spec: &GatewaySpec) -> Bootstrap {
    let snapshot = Snapshot::for_gateway(spec, "validate");
    let all = |type_url: String| -> Vec<Any> {
        snapshot.get(&type_url).map(|t| t.resources.values().map(|r| r.any.clone()).collect()).unwrap_or_default()
    };
    let mut clusters: Vec<Cluster> = all(Cluster::type_url()).iter().map(decode_any).collect();
    // The ADS source the HCM's RDS subscription names.
    // (Plaintext: a copy that kept `authz.tls` would fetch its own secrets over itself.)
    let mut xds: Cluster = decode(&resources::authz_cluster(spec));
    xds.name = "xds_cluster".into();
    xds.transport_socket = None;
    if let Some(la) = xds.load_assignment.as_mut() {
        la.cluster_name = "xds_cluster".into();
    }
    clusters.push(xds);
    // The SDS secrets, static here: Envoy reads their files and checks them, and every TLS
    // context names them as static secrets (by name, no `sds_config`), so a name that is not
    // served fails validation too.
    let secrets: Vec<Secret> = all(Secret::type_url()).iter().map(decode_any).collect();
    for c in &mut clusters {
        if let Some(socket) = c.transport_socket.as_mut() {
            with_static_secrets::<UpstreamTlsContext>(socket, |t| t.common_tls_context.as_mut());
        }
    }
    let mut listeners: Vec<Listener> = all(Listener::type_url()).iter().map(decode_any).collect();
    for socket in listeners.iter_mut().flat_map(|l| &mut l.filter_chains).filter_map(|f| f.transport_socket.as_mut()) {
        with_static_secrets::<DownstreamTlsContext>(socket, |t| t.common_tls_context.as_mut());
    }
    let routes: Vec<RouteConfiguration> = all(RouteConfiguration::type_url()).iter().map(decode_any).collect();
    assert_eq!(routes.len(), 1, "one route configuration");
    let http = listeners.iter().find(|l| l.name == resources::HTTP_LISTENER).expect("the HTTP listener").clone();
    listeners.push(with_inline_route(http, routes[0].clone(), 19080));
    Bootstrap {
        node: Some(envoy_types::pb::envoy::config::core::v3::Node {
            id: "validate".into(),
            cluster: "egress-gateway".into(),
            ..Default::default()
        }),
        static_resources: Some(bootstrap::StaticResources { listeners, clusters, secrets }),
        dynamic_resources: Some(bootstrap::DynamicResources {
            ads_config: Some(envoy_types::pb::envoy::config::core::v3::ApiConfigSource {
                api_type: envoy_types::pb::envoy::config::core::v3::api_config_source::ApiType::Grpc as i32,
                transport_api_version: ApiVersion::V3 as i32,
                grpc_services: vec![GrpcService {
                    target_specifier: Some(grpc_service::TargetSpecifier::EnvoyGrpc(grpc_service::EnvoyGrpc {
                        cluster_name: "xds_cluster".into(),
                        ..Default::default()
                    })),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Points a TLS transport socket's SDS references at static secrets of the same names.
fn with_static_secrets<T: Message + Default + Name>(
    socket: &mut TransportSocket,
    common: impl Fn(&mut T) -> Option<&mut CommonTlsContext>,
) {
    let Some(transport_socket::ConfigType::TypedConfig(any)) = &socket.config_type else { return };
    if any.type_url != T::type_url() {
        return; // not TLS
    }
    let mut tls: T = decode_any(any);
    if let Some(ctx) = common(&mut tls) {
        for sds in &mut ctx.tls_certificate_sds_secret_configs {
            sds.sds_config = None;
        }
        match ctx.validation_context_type.as_mut() {
            Some(common_tls_context::ValidationContextType::ValidationContextSdsSecretConfig(sds)) => {
                sds.sds_config = None
            }
            Some(common_tls_context::ValidationContextType::CombinedValidationContext(c)) => {
                if let Some(sds) = c.validation_context_sds_secret_config.as_mut() {
                    sds.sds_config = None;
                }
            }
            _ => {}
        }
    }
    socket.config_type = Some(transport_socket::ConfigType::TypedConfig(pack_any(tls)));
}

fn validate(name: &str, spec: &GatewaySpec) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(format!("{name}.pb"));
    std::fs::write(&path, bootstrap_for(spec).encode_to_vec()).unwrap();
    if let Err(out) = support::envoy::validate(&path) {
        panic!("Envoy rejected the generated {name} gateway:\n{out}");
    }
}

#[test]
fn plaintext_gateway_validates() {
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    spec.dns_resolvers = vec!["127.0.0.1:5353".parse().unwrap()];
    validate("plaintext", &spec);
}

#[test]
fn traced_gateway_validates() {
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    spec.tracing = Some(egressd::policy::GatewayTracing {
        collector: "127.0.0.1:4317".parse().unwrap(),
        sampling_percent: 10,
        service_name: "egress-gateway".into(),
    });
    validate("traced", &spec);
}

#[test]
fn mtls_gateway_validates() {
    // Envoy reads certificate files at validation: generate real ones.
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.corp.example".into()]).unwrap();
    let cert = dir.path().join("gw.pem");
    let key = dir.path().join("gw.key");
    let bundle = dir.path().join("bundle.pem");
    std::fs::write(&cert, ca.cert.pem()).unwrap();
    std::fs::write(&key, ca.signing_key.serialize_pem()).unwrap();
    std::fs::write(&bundle, ca.cert.pem()).unwrap();
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    spec.mtls = Some(MtlsPaths {
        certificate_chain: cert.display().to_string(),
        private_key: key.display().to_string(),
        trust_bundle: bundle.display().to_string(),
    });
    spec.tls_listen = None;
    validate("mtls", &spec);
}

#[test]
fn a_broken_resource_is_rejected() {
    // The check can fail: a DFP cluster whose DNS cache differs from the filters' is invalid.
    let spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    let mut bootstrap = bootstrap_for(&spec);
    let mut other = spec.clone();
    other.dns_max_hosts = 7;
    let clusters = &mut bootstrap.static_resources.as_mut().unwrap().clusters;
    let dfp = clusters.iter_mut().find(|c| c.name == resources::DFP_CLUSTER).unwrap();
    *dfp = decode(&resources::dfp_cluster(&other));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("broken.pb");
    std::fs::write(&path, bootstrap.encode_to_vec()).unwrap();
    let err = support::envoy::validate(&path).expect_err("Envoy accepted mismatched DNS caches");
    assert!(err.contains("egress_dns_cache"), "rejected for another reason:\n{err}");
}

#[test]
fn tls_originating_gateway_validates() {
    // Envoy reads the trust bundle at validation: write a real one.
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["ca.corp.example".into()]).unwrap();
    let bundle = dir.path().join("cas.pem");
    std::fs::write(&bundle, ca.cert.pem()).unwrap();
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    spec.upstream_tls = Some(egressd::policy::UpstreamTls { trust_bundle: bundle.display().to_string() });
    validate("upstream-tls", &spec);
}

#[test]
fn a_gateway_reaching_egressd_over_tls_validates() {
    let dir = tempfile::tempdir().unwrap();
    let ca = rcgen::generate_simple_self_signed(vec!["egressd.corp.example".into()]).unwrap();
    let write = |name: &str, text: &str| {
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p.display().to_string()
    };
    let bundle = write("ca.pem", &ca.cert.pem());
    let (cert, key) = (write("gw.pem", &ca.cert.pem()), write("gw-key.pem", &ca.signing_key.serialize_pem()));
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    for (name, client) in [("authz-tls", None), ("authz-mtls", Some((cert, key)))] {
        spec.authz_tls = Some(egressd::policy::AuthzTls {
            trust_bundle: bundle.clone(),
            server_name: Some("egressd.corp.example".into()),
            client_certificate: client,
        });
        validate(name, &spec);
    }
}

/// A Gateway reaching egressd by name: a STRICT_DNS `egressd_authz` cluster Envoy accepts.
#[test]
fn a_gateway_reaching_egressd_by_name_validates() {
    use envoy_types::pb::envoy::config::cluster::v3::{Cluster, cluster};
    let mut spec = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    spec.authz_address =
        Some(egressd::policy::AuthzAddress::Name { host: "egressd.egressd.svc.cluster.local".into(), port: 18000 });
    let cluster: Cluster = decode(&resources::authz_cluster(&spec));
    assert_eq!(
        cluster.cluster_discovery_type,
        Some(cluster::ClusterDiscoveryType::Type(cluster::DiscoveryType::StrictDns as i32))
    );
    let endpoint = format!("{:?}", cluster.load_assignment.unwrap().endpoints[0].lb_endpoints[0]);
    assert!(
        endpoint.contains("\"egressd.egressd.svc.cluster.local\"") && endpoint.contains("PortValue(18000)"),
        "{endpoint}"
    );
    validate("authz-by-name", &spec);
}

/// The HTTP listener's connection manager, decoded.
fn http_hcm(spec: &GatewaySpec) -> HttpConnectionManager {
    let listener: Listener = decode(&resources::http_listener(spec));
    let Some(filter::ConfigType::TypedConfig(any)) = &listener.filter_chains[0].filters[0].config_type else {
        panic!("HCM has a typed config")
    };
    decode_any(any)
}

#[test]
fn the_access_log_to_egressd_validates_on_off_and_ends_only() {
    use envoy_types::pb::envoy::config::accesslog::v3::access_log;
    use envoy_types::pb::envoy::extensions::access_loggers::grpc::v3::HttpGrpcAccessLogConfig;
    let on = GatewaySpec::local("127.0.0.1:18000".parse().unwrap());
    let hcm = http_hcm(&on);
    let names: Vec<&str> = hcm.access_log.iter().map(|l| l.name.as_str()).collect();
    assert_eq!(names, ["envoy.access_loggers.stdout", "envoy.access_loggers.http_grpc"]);
    let Some(access_log::ConfigType::TypedConfig(any)) = &hcm.access_log[1].config_type else { panic!("typed") };
    let grpc: HttpGrpcAccessLogConfig = decode_any(any);
    let common = grpc.common_config.unwrap();
    assert_eq!((common.log_name.as_str(), common.transport_api_version), ("egressd", ApiVersion::V3 as i32));
    let Some(grpc_service::TargetSpecifier::EnvoyGrpc(target)) =
        common.grpc_service.and_then(|g: GrpcService| g.target_specifier)
    else {
        panic!("an Envoy gRPC target")
    };
    assert_eq!(target.cluster_name, resources::AUTHZ_CLUSTER, "egressd's own port, as for ext_authz");
    let every = hcm.access_log_options.and_then(|o| o.access_log_flush_interval).expect("progress reports");
    assert_eq!(every.seconds, 300);
    validate("access-log-on", &on);

    let mut ends_only = on.clone();
    ends_only.access_log.progress_interval_ms = 0;
    let hcm = http_hcm(&ends_only);
    assert!(hcm.access_log_options.is_none() && hcm.access_log[0].filter.is_none(), "no periodic entries to filter");
    assert_eq!(hcm.access_log.len(), 2);
    validate("access-log-ends-only", &ends_only);

    let mut off = on.clone();
    off.access_log.grpc = false;
    let hcm = http_hcm(&off);
    assert_eq!(hcm.access_log.len(), 1, "stdout only");
    assert!(hcm.access_log_options.is_none());
    validate("access-log-off", &off);
}
