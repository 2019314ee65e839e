//! What telemetry keeps of a check, copied on the Check path from the view the check already made
//! (the request is read once): the caller, the destination, the method and request id, the trace
//! headers. Telemetry consumes `RequestFacts`; only this module knows how a CheckRequest holds them.

use std::net::SocketAddr;

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use tonic::codegen::http;

use super::checker::GatewayCaps;
use super::request::{CheckView, header, socket_address, tls_sni, view};
use crate::policy::fqdn::Host;
use crate::policy::{CompiledPolicy, Protocol};
use crate::telemetry::context::TRACE_HEADERS;
use crate::telemetry::record::{Fact, FactValues, RequestFacts};

/// Trace-context carriers: when the Check call's metadata has one, it wins over the request's.
const CARRIERS: [&str; 3] = ["traceparent", "b3", "x-b3-traceid"];

/// The facts of `req` from the view the check made of it (`None`: the request was malformed),
/// with the Check call's `metadata` for trace context when `trace` (spans and audit records name
/// the trace; the flow table does not, and looking for carriers is most of the copy's cost).
pub fn from_view(
    view: Option<&CheckView<'_>>,
    req: &CheckRequest,
    metadata: &http::HeaderMap,
    trace: bool,
) -> RequestFacts {
    let attrs = req.attributes.as_ref();
    let mut values = FactValues::default();
    values.set(Fact::Sni, attrs.and_then(tls_sni));
    let ip_text;
    let (mut port, mut protocol, mut is_http) = (None, None, false);
    if let Some(v) = view {
        is_http = v.is_http;
        values.set(Fact::Principal, v.principal.as_ref().ok().and_then(|p| p.as_deref()));
        values.set(Fact::Method, Some(v.method));
        values.set(Fact::RequestId, v.request_id);
        if let Ok(d) = &v.destination {
            port = Some(d.port);
            protocol = Some(d.protocol);
            values.set(
                Fact::Host,
                Some(match &d.host {
                    Host::Name(n) => n.as_ref(),
                    Host::Ip(ip) => {
                        ip_text = ip.to_string();
                        ip_text.as_str()
                    }
                }),
            );
        }
    }
    let http = attrs.and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref());
    let body_size = body_size(req, is_http);
    if !trace {
        // The flow table only: no trace context.
    } else if CARRIERS.iter().any(|h| metadata.contains_key(*h)) {
        for (i, name) in TRACE_HEADERS.iter().enumerate() {
            values.set_trace_header(i, metadata.get(*name).and_then(|v| v.to_str().ok()));
        }
    } else if let Some(http) = http
        && CARRIERS.iter().any(|h| header(http, h).is_some())
    {
        for (i, name) in TRACE_HEADERS.iter().enumerate() {
            values.set_trace_header(i, header(http, name));
        }
    }
    let mut facts = RequestFacts::pack_from(values);
    facts.client = attrs
        .and_then(|a| a.source.as_ref())
        .and_then(|s| socket_address(s.address.as_ref()))
        .map(|(ip, port)| SocketAddr::new(ip, port));
    (facts.port, facts.protocol, facts.is_http) = (port, protocol, is_http);
    facts.body_size = body_size;
    facts
}

/// The body size an HTTP request declares (`content-length`), parsed in place (no copy). A
/// CONNECT's length, if any, says nothing of its tunnel.
pub fn body_size(req: &CheckRequest, is_http: bool) -> Option<u64> {
    let http = req.attributes.as_ref().and_then(|a| a.request.as_ref()).and_then(|r| r.http.as_ref())?;
    if !is_http || http.method.eq_ignore_ascii_case("CONNECT") {
        return None;
    }
    header(http, "content-length").and_then(|v| v.trim().parse::<u64>().ok())
}

/// Reads `req` as `policy` would (from the generated gateway) and takes its facts: for tests and
/// benchmarks of what telemetry does with them.
pub fn capture(req: &CheckRequest, metadata: &http::HeaderMap, policy: &CompiledPolicy) -> RequestFacts {
    let gateway = GatewayCaps::generated(true);
    from_view(view(req, policy, gateway).ok().as_ref(), req, metadata, true)
}

/// The facts of a tunnel decision: the CONNECT's caller, host, port and request id (which joins
/// the decision to the CONNECT's trace, see `telemetry::recent`), and the SNI the tunnel sent.
pub fn of_tunnel(seen: &super::TunnelSeen<'_>) -> RequestFacts {
    let mut values = FactValues::default();
    values.set(Fact::Sni, seen.report.sni.as_deref());
    values.set(Fact::Principal, seen.principal);
    values.set(Fact::Host, Some(seen.report.host()));
    values.set(Fact::RequestId, seen.request_id);
    let mut facts = RequestFacts::pack_from(values);
    facts.port = seen.port;
    facts.protocol = Some(Protocol::Tls);
    facts.tunnel_start = Some(seen.report.verdict.start());
    facts
}
