//! CheckRequests shaped like the ones Envoy 1.40 sends (see the envoy-lab notes), for tests,
//! benchmarks and the load tool. Public so integration tests and examples share one definition.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{Address, SocketAddress, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::service::auth::v3::attribute_context::{HttpRequest, Peer, Request};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest};

/// A socket address as Envoy reports peers.
pub fn socket(ip: &str, port: u32) -> Address {
    Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: ip.to_string(),
            port_specifier: Some(PortSpecifier::PortValue(port)),
            ..Default::default()
        })),
    }
}

/// What Envoy's HTTP ext_authz filter sends: `host` is the :authority (the CONNECT target for
/// CONNECT), headers are lowercase.
pub fn http_check(principal: &str, method: &str, host: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let headers: HashMap<String, String> = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                address: Some(socket("127.0.0.1", 40000)),
                ..Default::default()
            }),
            destination: Some(Peer { address: Some(socket("127.0.0.1", 10000)), ..Default::default() }),
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.to_string(),
                    host: host.to_string(),
                    path: if method == "CONNECT" { String::new() } else { "/".to_string() },
                    scheme: "http".to_string(),
                    protocol: "HTTP/1.1".to_string(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

/// What Envoy's network ext_authz filter sends: no HTTP part, the SNI in `destination.service`, and
/// the listener's address as `destination.address`.
pub fn network_check(principal: &str, sni: &str, dest_ip: &str, port: u32) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            source: Some(Peer {
                principal: principal.to_string(),
                address: Some(socket("127.0.0.1", 40001)),
                ..Default::default()
            }),
            destination: Some(Peer {
                service: sni.to_string(),
                address: Some(socket(dest_ip, port)),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}
