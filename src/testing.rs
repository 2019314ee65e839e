//! Test support, compiled for unit tests and with the `testing` feature (integration tests,
//! benchmarks and examples turn it on): CheckRequests shaped like the ones Envoy 1.40 sends (see
//! the envoy-lab notes), and the Check path without a server, in the reference form tests compare
//! the server's answers with.

use std::collections::HashMap;
use std::sync::Arc;

use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
use tonic::codegen::http;

use crate::authz::cache::ResponseCache;
use crate::authz::checker::{Call, Checker, GatewayCaps};
use crate::authz::codec::CheckAnswer;
use crate::policy::{CompiledPolicy, Verdict};
use crate::telemetry::record::RequestFacts;

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

/// Decides one CheckRequest against `policy` alone and builds Envoy's answer as a message, as
/// the generated gateway (which originates TLS) would be answered: the reference form.
pub fn authorize(policy: &CompiledPolicy, req: &CheckRequest, now: i64) -> CheckResponse {
    Checker::offline(policy).authorize(req, generated_gateway_call(), now)
}

/// The verdict `authorize` reaches, detached from the policy (for tests of what telemetry sees).
pub fn decide_verdict(policy: &CompiledPolicy, req: &CheckRequest, now: i64) -> Verdict {
    Checker::offline(policy).check(req, generated_gateway_call(), now).verdict
}

/// Decides and answers with the answer cache (the server's path without its overrides).
pub fn answer(cache: &ResponseCache, req: &CheckRequest, now: i64) -> (CheckAnswer, Verdict) {
    let checked = Checker::cached(cache).check(req, generated_gateway_call(), now);
    (checked.answer, checked.verdict)
}

/// What telemetry receives for `req`: its verdict and facts, as the Check path makes them.
pub fn checked(
    policy: &Arc<CompiledPolicy>,
    req: &CheckRequest,
    metadata: &http::HeaderMap,
) -> (Verdict, RequestFacts) {
    let call =
        Call { metadata: Some(metadata), capture: crate::authz::checker::Capture::Full, ..generated_gateway_call() };
    let checked = Checker::offline(policy).check(req, call, 0);
    (checked.verdict, checked.facts.expect("captured"))
}

/// A check from egressd's own generated gateway with upstream TLS configured.
fn generated_gateway_call() -> Call<'static> {
    Call { gateway: GatewayCaps::generated(true), ..Default::default() }
}

/// A synthetic mesh for benchmarks of policy size: `services` services of `rules` allows each,
/// exact hosts, wildcards and CIDRs in a 3:1:1 mix, one file per service (as teams lay policies
/// out, and within the loader's per-file limits), after `mesh` (the MeshDefaults document).
pub fn synthetic_mesh(mesh: &str, services: usize, rules: usize) -> crate::policy::PolicySource {
    use std::fmt::Write as _;
    let mut source = crate::policy::PolicySource::from_text("mesh.yaml", mesh);
    for s in 0..services {
        let mut y = format!(
            "kind: ServicePolicy\nservice: svc{s}\nidentities: [spiffe://corp.example/ns/svc{s}/sa/api]\nallow:\n"
        );
        for r in 0..rules {
            let _ = match r % 5 {
                3 => writeln!(y, "  - host: \"*.s{s}r{r}.vendor{}.com\"", r % 97),
                4 => writeln!(y, "  - cidr: 10.{}.{}.0/24\n    ports: [5432]", s % 256, r % 256),
                _ => writeln!(y, "  - host: api{r}.svc{s}.vendor{}.com\n    ports: [443]", r % 97),
            };
            y.push_str("    justification: generated\n");
        }
        source.files.extend(crate::policy::PolicySource::from_text(&format!("services/svc{s}.yaml"), &y).files);
    }
    source
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_synthetic_mesh_compiles_past_one_files_document_limit() {
        // More services than one file may hold documents (1,000).
        let services = 1_200;
        let source = super::synthetic_mesh("kind: MeshDefaults\ntrustDomain: corp.example\n", services, 5);
        let policy = crate::policy::compile(&source, 0).expect("a file per service stays within the limits");
        assert_eq!(policy.services.len(), services);
    }
}
