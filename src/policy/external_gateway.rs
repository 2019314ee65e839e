//! `kind: Gateway` with `external: true`: a gateway another control plane configures (Istio's
//! egress gateway), described so egressd reads its checks right.
//!
//! egressd builds nothing for it (no xDS: no Envoy is served it, it is never the default), but
//! its checks name its own listeners as their destination address, and its answers go to an
//! Envoy that routes by its own configuration:
//! - a TLS-by-SNI check on its `listeners.tls` is decided on `tlsUpstreamPort` (Istio's gateway
//!   listens on 8443 for 443), as for egressd's own gateways;
//! - an HTTP check on its `listeners.http` is decided as `httpUpstream` says the gateway sends it
//!   on (`http`, or `https` where it originates TLS), whatever `:scheme` the hop to the gateway
//!   gave it (Istio's HTTP/1.1 hop over mutual TLS arrives as `https`);
//! - answers set none of egressd's `x-egress-*` routing headers (the gateway would send them to
//!   the destination) and remove them, and XFCC, from the request.

use std::net::SocketAddr;
use std::sync::Arc;

use serde::Serialize;

use super::Protocol;
use super::diagnostic::{Diagnostics, SourceLoc};
use super::model::{GatewayDoc, GatewayHttpUpstreamDoc};

/// What an external gateway sends its HTTP listener's requests on with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HttpUpstream {
    /// `Http` or `Https` (the gateway originates TLS).
    pub protocol: Protocol,
    /// The port it dials; `None`: the request's authority port, else the protocol's default.
    pub port: Option<u16>,
}

impl HttpUpstream {
    /// The port a request with `authority_port` is decided on.
    pub fn port_for(&self, authority_port: Option<u16>) -> u16 {
        self.port.or(authority_port).unwrap_or(if self.protocol == Protocol::Https { 443 } else { 80 })
    }
}

/// A gateway egressd does not configure, as its checks are read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ExternalGateway {
    pub name: String,
    pub http_listen: SocketAddr,
    pub tls_listen: Option<SocketAddr>,
    pub tls_upstream_port: u16,
    /// `None`: requests are decided by their own `:scheme`, as egressd's gateways' are.
    pub http_upstream: Option<HttpUpstream>,
    #[serde(skip)]
    pub loc: SourceLoc,
}

/// Whether a listener address (unspecified IP: any) is where a check arrived.
pub fn listens_on(listener: SocketAddr, arrived: SocketAddr) -> bool {
    listener.port() == arrived.port() && (listener.ip().is_unspecified() || listener.ip() == arrived.ip())
}

impl ExternalGateway {
    /// Whether an HTTP check whose connection arrived at `local` came through this gateway.
    pub fn serves_http_at(&self, local: SocketAddr) -> bool {
        listens_on(self.http_listen, local)
    }
}

/// The fields that configure a gateway egressd builds: each an error on an external one, which
/// its own control plane configures (silently ignoring them would hide a misunderstanding).
fn built_only_fields(d: &GatewayDoc) -> Vec<&'static str> {
    let set = [
        ("nodes", !d.nodes.is_empty()),
        ("mtls", d.mtls.is_some()),
        ("authz", d.authz.is_some()),
        ("dns", d.dns.is_some()),
        ("timeouts", d.timeouts.is_some()),
        ("tracing", d.tracing.is_some()),
        ("upstreamTls", d.upstream_tls.is_some()),
        ("accessLog", d.access_log.is_some()),
    ];
    set.into_iter().filter(|(_, on)| *on).map(|(name, _)| name).collect()
}

/// `httpUpstream` of a Gateway document (external gateways only).
pub fn http_upstream(file: &Arc<str>, doc: &GatewayHttpUpstreamDoc, diags: &mut Diagnostics) -> Option<HttpUpstream> {
    let protocol = match doc.protocol.value.trim() {
        "http" => Protocol::Http,
        "https" => Protocol::Https,
        other => {
            diags.error(
                SourceLoc::of(file, &doc.protocol),
                format!("httpUpstream.protocol `{other}` is not `http` or `https`"),
            );
            return None;
        }
    };
    let port = match &doc.port {
        None => None,
        Some(p) if (1..=65535).contains(&p.value) => Some(p.value as u16),
        Some(p) => {
            diags.error(SourceLoc::of(file, p), format!("httpUpstream.port {} is outside 1..=65535", p.value));
            return None;
        }
    };
    Some(HttpUpstream { protocol, port })
}

/// An external Gateway document, its listeners already read.
pub fn compile(
    file: &Arc<str>,
    d: &GatewayDoc,
    loc: SourceLoc,
    listeners: (SocketAddr, Option<SocketAddr>),
    tls_upstream_port: u16,
    diags: &mut Diagnostics,
) -> Option<ExternalGateway> {
    let name = d.name.value.trim().to_string();
    let misplaced = built_only_fields(d);
    if !misplaced.is_empty() {
        diags.error(
            loc.clone(),
            format!(
                "Gateway `{name}` is external (its own control plane configures it; egressd serves it no xDS), so {} cannot be set: remove {}",
                misplaced.join(", "),
                if misplaced.len() == 1 { "it" } else { "them" }
            ),
        );
        return None;
    }
    let http_upstream = match &d.http_upstream {
        Some(doc) => Some(http_upstream(file, doc, diags)?),
        None => None,
    };
    let (http_listen, tls_listen) = listeners;
    Some(ExternalGateway { name, http_listen, tls_listen, tls_upstream_port, http_upstream, loc })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_upstream_port_is_the_configured_one_then_the_authoritys_then_the_protocols() {
        let https = HttpUpstream { protocol: Protocol::Https, port: None };
        assert_eq!(https.port_for(None), 443);
        assert_eq!(https.port_for(Some(8443)), 8443);
        let http = HttpUpstream { protocol: Protocol::Http, port: None };
        assert_eq!(http.port_for(None), 80);
        let pinned = HttpUpstream { protocol: Protocol::Https, port: Some(443) };
        assert_eq!(pinned.port_for(Some(80)), 443, "TLS origination: the app's :80 leaves on 443");
    }

    #[test]
    fn an_unspecified_listener_matches_any_address_on_its_port() {
        let any: SocketAddr = "0.0.0.0:8080".parse().unwrap();
        assert!(listens_on(any, "10.1.2.3:8080".parse().unwrap()));
        assert!(!listens_on(any, "10.1.2.3:8443".parse().unwrap()));
        let one: SocketAddr = "10.1.2.3:8080".parse().unwrap();
        assert!(listens_on(one, "10.1.2.3:8080".parse().unwrap()));
        assert!(!listens_on(one, "10.1.2.4:8080".parse().unwrap()));
    }
}
