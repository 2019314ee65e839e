//! CheckRequest -> (principal, destination, request id): what Envoy told us, normalized.
//!
//! Two callers send CheckRequests: the HTTP filter (`request.http` set: proxied requests and
//! CONNECT) and the network filter (no `request.http`; Envoy puts the TLS SNI in
//! `destination.service`, and `destination.address` is the listener's address).

use std::borrow::Cow;

use envoy_types::pb::envoy::config::core::v3::{Address, address, socket_address::PortSpecifier};
use envoy_types::pb::envoy::service::auth::v3::{AttributeContext, CheckRequest, attribute_context::HttpRequest};

use super::checker::GatewayCaps;
use crate::identity::xfcc::{self, XfccError};
use crate::policy::fqdn::{Host, normalize_sni, parse_authority};
use crate::policy::{CompiledPolicy, Destination, Malformed, Protocol};

/// Everything the decision needs from a CheckRequest, borrowed where possible.
#[derive(Debug)]
pub struct CheckView<'a> {
    /// The peer principal, or (when the policy trusts it) the nearest XFCC hop's URI; `Err` when
    /// XFCC is trusted, present and does not name the nearest hop unambiguously.
    pub principal: Result<Option<Cow<'a, str>>, XfccError>,
    pub destination: Result<Destination<'a>, Malformed>,
    pub request_id: Option<&'a str>,
    /// HTTP method (empty for network checks); recorded, not decided on.
    pub method: &'a str,
    pub path: &'a str,
    /// Whether the caller was Envoy's HTTP filter (and so can use an HTTP deny response).
    pub is_http: bool,
    /// The gateway the check came through: the call's, or the external gateway (policy) whose
    /// HTTP listener the request arrived at.
    pub gateway: GatewayCaps,
}

/// Reads a CheckRequest against the policy: XFCC is used when the peer principal is empty and the
/// policy trusts it; TLS checks on the policy's gateway listeners get the upstream port.
pub fn view<'a>(
    req: &'a CheckRequest,
    policy: &CompiledPolicy,
    gateway: GatewayCaps,
) -> Result<CheckView<'a>, Malformed> {
    let trust_xfcc = policy.trust_forwarded_client_cert;
    let attrs = req.attributes.as_ref().ok_or(Malformed::NoAttributes)?;
    let http = attrs.request.as_ref().and_then(|r| r.http.as_ref());
    if let Some(http) = http {
        let count = http.headers.len() + http.header_map.as_ref().map_or(0, |m| m.headers.len());
        if count > super::limits::MAX_HEADERS {
            return Err(Malformed::TooManyHeaders(count));
        }
    }
    let source_principal = attrs.source.as_ref().map(|s| s.principal.as_str()).filter(|p| !p.is_empty());
    let principal = match (source_principal, http) {
        (Some(p), _) => Ok(Some(Cow::Borrowed(p))),
        (None, Some(http)) if trust_xfcc => header(http, "x-forwarded-client-cert").map(xfcc::last_uri).transpose(),
        _ => Ok(None),
    };
    let gateway = match http {
        Some(_) => arrived_through(attrs, policy, gateway),
        None => gateway,
    };
    Ok(match http {
        Some(http) => CheckView {
            principal,
            gateway,
            destination: http_destination(http, gateway),
            request_id: header(http, "x-request-id").or(Some(http.id.as_str()).filter(|id| !id.is_empty())),
            method: &http.method,
            path: &http.path,
            is_http: true,
        },
        None => CheckView {
            principal,
            gateway,
            destination: network_destination(attrs, policy),
            request_id: None,
            method: "",
            path: "",
            is_http: false,
        },
    })
}

/// The gateway an HTTP check came through: egressd's own declare themselves in the call's
/// metadata; any other is matched by the connection's local address against the policy's
/// external gateways (none: what the call said, i.e. a gateway that declares nothing).
fn arrived_through(attrs: &AttributeContext, policy: &CompiledPolicy, call: GatewayCaps) -> GatewayCaps {
    if call.removes_headers || policy.external_gateways.is_empty() {
        return call;
    }
    let local = attrs.destination.as_ref().and_then(|d| socket_address(d.address.as_ref()));
    local
        .and_then(|(ip, port)| policy.external_gateway_at(std::net::SocketAddr::new(ip, port)))
        .map_or(call, GatewayCaps::external)
}

/// A request header by lowercase name, from `headers` or (when Envoy sends raw headers) `header_map`.
pub fn header<'a>(http: &'a HttpRequest, name: &str) -> Option<&'a str> {
    if let Some(v) = http.headers.get(name) {
        return Some(v.as_str());
    }
    let map = http.header_map.as_ref()?;
    map.headers
        .iter()
        .find(|h| h.key.eq_ignore_ascii_case(name))
        .and_then(|h| if h.value.is_empty() { std::str::from_utf8(&h.raw_value).ok() } else { Some(h.value.as_str()) })
}

fn http_destination(http: &HttpRequest, gateway: GatewayCaps) -> Result<Destination<'_>, Malformed> {
    let authority = Some(http.host.as_str())
        .filter(|h| !h.is_empty())
        .or_else(|| header(http, ":authority"))
        .or_else(|| header(http, "host"))
        .ok_or(Malformed::NoDestination)?;
    let (host, port) = parse_authority(authority)?;
    if http.method.eq_ignore_ascii_case("CONNECT") {
        // The CONNECT target is the destination; what the tunnel will carry is judged by its port.
        let port = port.ok_or(Malformed::ConnectWithoutPort)?;
        let protocol = if port == 443 { Protocol::Https } else { Protocol::Tcp };
        return Ok(Destination { host, port, protocol });
    }
    if let Some(upstream) = gateway.http_upstream {
        // `:scheme` names the hop to the gateway, not how the gateway sends the request on.
        return Ok(Destination { host, port: upstream.port_for(port), protocol: upstream.protocol });
    }
    let https = http.scheme.eq_ignore_ascii_case("https");
    if !https && !http.scheme.is_empty() && !http.scheme.eq_ignore_ascii_case("http") {
        return Err(Malformed::UnknownScheme(http.scheme.chars().take(16).collect()));
    }
    // Decided as https (port 443) only where the gateway will speak TLS to the destination.
    if https && !gateway.originates_tls {
        return Err(Malformed::HttpsNotOriginated);
    }
    let protocol = if https { Protocol::Https } else { Protocol::Http };
    let port = port.unwrap_or(if https { 443 } else { 80 });
    Ok(Destination { host, port, protocol })
}

fn network_destination<'a>(attrs: &'a AttributeContext, policy: &CompiledPolicy) -> Result<Destination<'a>, Malformed> {
    let sni = tls_sni(attrs);
    let socket = attrs.destination.as_ref().and_then(|d| socket_address(d.address.as_ref()));
    match (sni, socket) {
        (Some(sni), socket) => {
            let host = normalize_sni(sni)?;
            let (ip, port) = socket.ok_or(Malformed::NoPort)?;
            let port = policy.tls_upstream_port(std::net::SocketAddr::new(ip, port)).unwrap_or(port);
            Ok(Destination { host, port, protocol: Protocol::Tls })
        }
        (None, Some((ip, port))) => Ok(Destination { host: Host::Ip(ip), port, protocol: Protocol::Tcp }),
        (None, None) => Err(Malformed::NoDestination),
    }
}

/// The TLS server name the client sent: `tls_session.sni`, or (network filter) `destination.service`.
pub fn tls_sni(attrs: &AttributeContext) -> Option<&str> {
    attrs
        .tls_session
        .as_ref()
        .map(|t| t.sni.as_str())
        .filter(|s| !s.is_empty())
        .or_else(|| attrs.destination.as_ref().map(|d| d.service.as_str()).filter(|s| !s.is_empty()))
}

pub fn socket_address(addr: Option<&Address>) -> Option<(std::net::IpAddr, u16)> {
    let Some(address::Address::SocketAddress(sa)) = addr?.address.as_ref() else { return None };
    // Embedded IPv4 (`::ffff:a.b.c.d`) is matched, and listeners compared, as IPv4.
    let ip = crate::policy::addr::canonical(sa.address.parse().ok()?);
    let port = match sa.port_specifier {
        Some(PortSpecifier::PortValue(p)) => u16::try_from(p).ok().filter(|p| *p != 0)?,
        _ => return None,
    };
    Some((ip, port))
}
