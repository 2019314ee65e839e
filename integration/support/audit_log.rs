#![allow(dead_code)] // each test binary uses a subset of these helpers
//! egressd's audit log behind the gateway lab: a lab whose egressd writes one, and its records
//! read back as JSON.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
use egressd::telemetry::{Telemetry, TelemetryConfig, TelemetryTasks};

use super::eventually::eventually;
use super::lab::{Lab, LabBuilder};

/// Every record of the audit log at `path` (none yet: empty).
pub fn records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit line {l}: {e}")))
        .collect()
}

/// The first record `pick` accepts, waiting for it (tunnels report when they close, and Envoy
/// batches entries for a moment).
pub async fn wait_record(path: &Path, what: &str, pick: impl Fn(&Value) -> bool) -> Value {
    eventually(what, Duration::from_secs(20), || async { records(path).into_iter().find(|r| pick(r)) }).await
}

pub fn is(r: &Value, key: &str, value: &str) -> bool {
    r[key].as_str() == Some(value)
}

/// egressd with an audit log, the gateway lab in front (`tune` picks its options).
pub async fn lab_with_audit(tune: impl FnOnce(LabBuilder) -> LabBuilder) -> (Lab, tempfile::TempDir, TelemetryTasks) {
    let dir = tempfile::tempdir().unwrap();
    let config = TelemetryConfig { audit: Some(audit_at(&dir.path().join("audit.jsonl"))), ..Default::default() };
    let (telemetry, tasks) = Telemetry::start(config).unwrap();
    (tune(Lab::builder().telemetry(telemetry)).start().await, dir, tasks)
}

/// An audit log at `path`, one file, never rotated in a test, not synced.
pub fn audit_at(path: &Path) -> AuditConfig {
    AuditConfig { path: path.to_path_buf(), max_bytes: 1 << 30, keep: 1, fsync: FsyncPolicy::Never }
}
