//! The wire contract between egressd and the gateway it configures: the headers egressd's answers
//! set for the gateway's filters, and the gRPC metadata the gateway's checks carry. `authz` writes
//! and reads them; `xds` builds the Envoy filters and routes that consume them. One definition,
//! so the two sides cannot drift apart.
//!
//! Every permitted HTTP answer says where the request may go: `x-egress-host` and `x-egress-port`
//! are the normalized destination egressd authorized, and the gateway dials exactly that (its
//! dynamic forward proxy reads them through filter state), never what the request's own
//! authority would resolve to by Envoy's rules. Every answer removes those headers it does not
//! set, so a client can never supply them; the route removes them all before a request leaves.

/// On every permitted CONNECT: what the gateway's tunnel filter (`src/tunnel_filter`) checks in
/// the tunnel's first bytes: `off`, or `<tunnelTls> <enforce|observe>` (see `authz::tunnel`).
pub const TUNNEL_HEADER: &str = crate::authz::tunnel::filter::ORDER_HEADER;
/// The authorized destination host (normalized; IPv6 in brackets) and port.
pub const HOST_HEADER: &str = "x-egress-host";
pub const PORT_HEADER: &str = "x-egress-port";
/// On a permitted `https://` proxy request: the name the gateway's TLS origination must present
/// as SNI and verify in the upstream certificate. Its presence routes to the TLS cluster.
pub const TLS_NAME_HEADER: &str = "x-egress-tls-name";
/// Headers only egressd may set.
pub const INTERNAL_HEADERS: [&str; 4] = [TUNNEL_HEADER, HOST_HEADER, PORT_HEADER, TLS_NAME_HEADER];

/// On a deny: the reason code.
pub const REASON_HEADER: &str = "x-egressd-reason";
/// The caller's identity as a sidecar forwarded it: removed from every permitted request.
pub const XFCC_HEADER: &str = "x-forwarded-client-cert";

/// The filter state the tunnel filter writes its verdict to, which the gateway's access logs
/// carry to egressd (`accesslog::entry`): `<reason> <enforce|observe> <unix ms> <host> <sni>`.
pub const TUNNEL_REPORT_STATE: &str = "wasm.egressd_tunnel";

/// gRPC metadata of the HTTP checks of egressd's generated gateway (value `generated`): that
/// gateway strips the internal headers from every incoming request before its filters run
/// (`internal_only_headers`) and removes them, and XFCC, before a request leaves (the route), so
/// egressd's answers need not list them. Any other gateway gets answers that remove them.
pub const GATEWAY_METADATA: &str = "x-egressd-gateway";
pub const GATEWAY_GENERATED: &str = "generated";

/// gRPC metadata of a gateway's HTTP checks when it originates TLS for `https://` proxy requests
/// (value `originate`). Without it an `https://` proxy request is denied: the gateway would
/// send it in plaintext.
pub const UPSTREAM_TLS_METADATA: &str = "x-egressd-upstream-tls";
pub const UPSTREAM_TLS_ORIGINATE: &str = "originate";

/// The dynamic metadata namespace egressd's HTTP ext_authz answers land in (the filter's name):
/// the gateway's access logs read `decision`, `reason`, `rule`, `service`, `mode` from it.
pub const DECISION_METADATA_NAMESPACE: &str = "envoy.filters.http.ext_authz";
