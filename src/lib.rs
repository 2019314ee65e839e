//! egressd: default-deny, explainable egress for an Envoy egress gateway.
//!
//! Module map (the README's "Design" section has the data flow), leaves first:
//! `identity` (SPIFFE IDs, XFCC) and `policy` (YAML -> a compiled, immutable policy and its
//! `decide`) depend on nothing else here; `clock` is the one reader of the wall clock;
//! `contract` is the wire contract with the gateway (headers, check metadata); `runtime` (rollback
//! guard, break-glass grants, their counts) changes decisions at run time; `telemetry` (spans,
//! metrics, audit log) consumes decision facts and stream totals; `accesslog` (the gateway's
//! gRPC access log) turns Envoy's entries into those totals; `authz` (the ext_authz Check service: one
//! `Checker`), `xds` (the gateway's ADS control plane) and `dns` (the DNS firewall) build on those; `admin` (HTTP port,
//! admin gRPC API), `reload`, `explain` and `server` (wiring) are the edges; `testing` is test
//! support behind the `testing` feature.

pub mod accesslog;
pub mod admin;
pub mod authz;
pub mod clock;
pub mod contract;
pub mod detect;
pub mod devpki;
pub mod dns;
pub mod explain;
pub mod export;
pub mod flows;
pub mod identity;
pub mod init;
pub mod learn;
pub mod lint;
pub mod policy;
pub mod reload;
pub mod reports;
pub mod runtime;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod xds;
