//! Policy as code: YAML documents in `mesh-config/` -> a validated, compiled, immutable policy.
//!
//! Two phases, as in agentgateway and ztunnel: `load` + `model` describe what was written (serde,
//! with source locations), `compile` checks meaning and builds the structures `decide` reads.

pub mod addr;
pub mod canary;
mod compile;
mod compiled;
mod decide;
mod decision;
pub mod detection;
pub mod diagnostic;
pub mod dns;
pub mod external_gateway;
pub mod fqdn;
mod gateway;
pub mod hits;
mod load;
pub mod matcher;
mod model;
#[cfg(test)]
mod proptests;
pub mod retire;
mod source;
mod terms;
#[cfg(test)]
mod tests;

pub use canary::canary_bucket;
pub use compile::{Placeholders, compile, compile_with};
pub use compiled::{Action, Canary, CompiledPolicy, GroupInfo, RollbackGuard, RuleInfo, ServiceIdx, ServiceInfo};
pub use decide::Destination;
pub use decision::{Decision, GrantRef, Malformed, Outcome, Reason, Verdict};
pub use diagnostic::{Diagnostic, Severity, SourceLoc};
pub use gateway::{
    AuthzAddress, AuthzTls, GatewayAccessLog, GatewaySpec, GatewayTracing, MtlsPaths, UpstreamTls,
    defaults as gateway_defaults, parse_authz_address,
};
pub use source::{PolicySource, SourceError};
pub use terms::{Mode, Protocol, TunnelTls, UnclaimedIdentities};

/// The live policy: swapped whole on reload, read on the hot path without a lock.
pub type SharedPolicy = std::sync::Arc<arc_swap::ArcSwap<CompiledPolicy>>;

/// Why a policy set could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Source(#[from] SourceError),
    #[error("policy is invalid ({} error(s)):\n{}", .0.iter().filter(|d| d.severity == Severity::Error).count(), format_diagnostics(.0))]
    Invalid(Vec<Diagnostic>),
}

pub fn format_diagnostics(diags: &[Diagnostic]) -> String {
    diags.iter().map(|d| d.to_string()).collect::<Vec<_>>().join("\n")
}

/// Reads and compiles a directory.
pub fn load_dir(dir: &std::path::Path) -> Result<CompiledPolicy, LoadError> {
    let source = PolicySource::from_dir(dir)?;
    compile(&source, crate::clock::unix_now()).map_err(LoadError::Invalid)
}
