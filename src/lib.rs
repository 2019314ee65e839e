//! egressd: default-deny, explainable egress for an Envoy egress gateway.
//!
//! Module map (see ARCHITECTURE in the README): `policy` (YAML -> compiled matchers), `identity`
//! (SPIFFE, XFCC), `rollout` (modes, canary), `authz` (the ext_authz Check service), `admin`
//! (health/readiness/policy HTTP), `server` (wiring), `explain` (human and JSON explanations).
#![forbid(unsafe_code)]

pub mod admin;
pub mod authz;
pub mod clock;
pub mod contract;
pub mod explain;
pub mod identity;
pub mod policy;
pub mod reload;
pub mod runtime;
pub mod server;
pub mod telemetry;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod xds;
