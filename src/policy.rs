//! Policy as code: YAML documents in `mesh-config/` -> a validated, compiled, immutable policy.
//!
//! Two phases, as in agentgateway and ztunnel: `load` + `model` describe what was written (serde,
//! with source locations), `compile` checks meaning and builds the structures `decide` reads.

pub mod addr;
mod compile;
mod compiled;
mod decide;
mod decision;
pub mod diagnostic;
pub mod fqdn;
mod gateway;
mod load;
pub mod matcher;
mod model;
#[cfg(test)]
mod proptests;
mod source;
#[cfg(test)]
mod tests;

pub use compile::compile;
pub use compiled::{Action, Canary, CompiledPolicy, GroupInfo, RollbackGuard, RuleInfo, ServiceInfo};
pub use decide::Destination;
pub use decision::{Decision, Malformed, Outcome, Reason, Verdict};
pub use diagnostic::{Diagnostic, Severity, SourceLoc};
pub use gateway::{GatewayConfig, GatewayTracing, MtlsPaths, UpstreamTls};
pub use model::{Mode, Protocol, TunnelTls};
pub use source::{PolicySource, SourceError};

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
    compile(&source, unix_now()).map_err(LoadError::Invalid)
}

/// Current time in unix seconds (the clock `expires` is compared against).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// Unix seconds, at most ~250 ms old, read from an atomic a background thread refreshes. `expires`
/// has day granularity, so the Check hot path need not ask the kernel for the time on every request.
pub fn coarse_unix_now() -> i64 {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicI64, Ordering};
    static NOW: AtomicI64 = AtomicI64::new(0);
    static TICKER: OnceLock<()> = OnceLock::new();
    TICKER.get_or_init(|| {
        NOW.store(unix_now(), Ordering::Relaxed);
        std::thread::Builder::new()
            .name("egressd-clock".into())
            .spawn(|| {
                loop {
                    std::thread::sleep(std::time::Duration::from_millis(250));
                    NOW.store(unix_now(), Ordering::Relaxed);
                }
            })
            .expect("spawn clock thread");
    });
    NOW.load(Ordering::Relaxed)
}
