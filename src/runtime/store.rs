//! Where run-time state lives: break-glass grants and rollback-guard trips, behind one trait.
//!
//! `file` (the default) keeps grants in one process and its state file, as egressd always did;
//! `etcd` shares grants and trips between replicas. Either way the Check path never calls a
//! store: it reads the in-memory sets (`arc-swap`) that the store's writes and, for etcd, its
//! background replication keep up to date.
//!
//! Key layout under the etcd prefix (default `/egressd/`), one JSON value per key:
//! `PREFIX grants/<grant id>` (a `Grant`, leased to expire a day after the grant ends) and
//! `PREFIX guard-trips/<service>` (a `Tripped`; deleted by a reset).

pub mod etcd;
pub mod file;

use std::sync::Arc;

use super::RuntimeOverrides;
use super::breakglass::Grant;
use super::guard::Tripped;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("break-glass state file {path}: {source}")]
    File { path: String, source: std::io::Error },
    #[error("break-glass state file {path} is not valid: {message}")]
    Corrupt { path: String, message: String },
    /// Named for an operator: what failed, and that serving goes on with the last known state.
    #[error(
        "etcd ({endpoints}) is unavailable: {message}. Break-glass changes are refused until it is back; \
         replicas keep serving the last known grants and trips"
    )]
    Unavailable { endpoints: String, message: String },
}

/// A backend for run-time state. Writes happen before a change applies locally, so a change an
/// operator was told succeeded is durable (file) or shared (etcd).
pub trait StateStore: Send + Sync + std::fmt::Debug {
    /// Makes `grant` (new, or just revoked) durable; `all` is the whole set after the change (the
    /// file store rewrites it; etcd writes the one key). Blocking: call it off the async workers.
    fn save_grant(&self, grant: &Grant, all: &[Arc<Grant>]) -> Result<(), StoreError>;

    /// Tells the other replicas that `service`'s guard tripped. Never blocks (the sampler calls it).
    fn share_trip(&self, _service: &str, _trip: &Tripped) {}

    /// Tells the other replicas that `service`'s guard was reset. Never blocks.
    fn share_reset(&self, _service: &str) {}

    /// Becomes `true` once the shared state was first loaded; `None` for a one-process store
    /// (loaded when opened).
    fn synced(&self) -> Option<tokio::sync::watch::Receiver<bool>> {
        None
    }

    /// Starts applying the other replicas' changes to `runtime`; `None` for a one-process store.
    fn spawn_replication(self: Arc<Self>, _runtime: Arc<RuntimeOverrides>) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}

/// State kept in memory only (tests, tools): nothing to save, nothing to share.
#[derive(Debug, Default)]
pub struct MemoryStore;

impl StateStore for MemoryStore {
    fn save_grant(&self, _grant: &Grant, _all: &[Arc<Grant>]) -> Result<(), StoreError> {
        Ok(())
    }
}
