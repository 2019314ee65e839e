//! Policy hot reload: a changed policy directory (or SIGHUP) is read, validated and compiled as a
//! whole, then swapped in atomically, and the gateways' xDS snapshots are rebuilt from it. A set
//! with errors is rejected with its FILE:LINE:COL diagnostics (logged, and shown on `/policy`); the
//! running policy stays.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use serde::Serialize;

use crate::policy::{self, CompiledPolicy, PolicySource, SharedPolicy};

/// What the last reload attempts did, for `/policy`.
#[derive(Debug, Default)]
pub struct ReloadStatus {
    pub reloads: AtomicU64,
    pub failures: AtomicU64,
    pub last_error: Mutex<Option<ReloadError>>,
    /// The version of the last source that did not compile. One edit (or one ConfigMap swap) can
    /// raise several file events; reading the same broken files again is not a second failure.
    rejected_version: Mutex<Option<String>>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ReloadError {
    pub at_unix: i64,
    pub errors: Vec<String>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Reloaded { from: String, to: String },
    Rejected,
}

/// Reads `dir` once; swaps the policy in if it is valid and different. `on_new` runs after the swap.
pub fn reload_once(
    dir: &Path,
    policy: &SharedPolicy,
    status: &ReloadStatus,
    on_new: &dyn Fn(&Arc<CompiledPolicy>),
) -> Outcome {
    let reject = |errors: Vec<String>| {
        for e in &errors {
            tracing::error!("policy reload rejected: {e}");
        }
        status.failures.fetch_add(1, Ordering::Relaxed);
        *status.last_error.lock().expect("status lock") =
            Some(ReloadError { at_unix: crate::clock::unix_now(), errors });
        Outcome::Rejected
    };
    let source = match read_consistent(dir, PolicySource::from_dir) {
        Ok(s) => s,
        Err(e) => {
            return reject(vec![format!(
                "{e}: {}",
                std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default()
            )]);
        }
    };
    let current = policy.load();
    let version = source.version();
    if version == current.version {
        return Outcome::Unchanged;
    }
    let mut rejected = status.rejected_version.lock().expect("status lock");
    if rejected.as_deref() == Some(version.as_str()) {
        tracing::warn!(version = %version, "policy unchanged since it was rejected; still serving {}", current.version);
        return Outcome::Rejected;
    }
    match policy::compile(&source, crate::clock::unix_now()) {
        Err(diags) => {
            *rejected = Some(version);
            reject(diags.iter().filter(|d| d.severity == policy::Severity::Error).map(|d| d.to_string()).collect())
        }
        Ok(compiled) => {
            *rejected = None;
            let from = current.version.clone();
            drop(current);
            let compiled = Arc::new(compiled);
            // Counted before it is visible: whoever sees the new version (`/policy`) sees its reload.
            status.reloads.fetch_add(1, Ordering::Relaxed);
            *status.last_error.lock().expect("status lock") = None;
            // The old version is freed off the Check path (`policy::retire`).
            let old = policy.swap(compiled.clone());
            policy::retire::retire(old);
            for w in &compiled.warnings {
                tracing::warn!("{w}");
            }
            tracing::info!(from = %from, to = %compiled.version, "policy reloaded");
            on_new(&compiled);
            Outcome::Reloaded { from, to: compiled.version.clone() }
        }
    }
}

/// Reads `dir` with `read`, again when a Kubernetes ConfigMap swap happened meanwhile. A mounted
/// ConfigMap's files are links through `..data`, which the kubelet points at a new directory of
/// files in one rename: a read that spans the rename would mix both sets (and serve, or reject, a
/// policy nobody wrote). The read is kept once `..data` names the same directory before and after
/// it; after a few swaps in a row, the last read is taken (the swap's own event reloads again).
fn read_consistent(
    dir: &Path,
    read: impl Fn(&Path) -> Result<PolicySource, policy::SourceError>,
) -> Result<PolicySource, policy::SourceError> {
    let link = dir.join("..data");
    let mut attempts = 0;
    loop {
        let before = std::fs::read_link(&link).ok();
        let source = read(dir)?;
        attempts += 1;
        if std::fs::read_link(&link).ok() == before || attempts == 4 {
            return Ok(source);
        }
    }
}

/// Called with each newly swapped-in policy (rebuilds the xDS snapshots).
pub type OnNewPolicy = Arc<dyn Fn(&Arc<CompiledPolicy>) + Send + Sync>;

/// Watches `dir` (editors' atomic renames and ConfigMap symlink swaps included: the whole directory
/// is watched and re-read) and listens for SIGHUP; reloads until the returned task is dropped.
pub fn spawn_watcher(
    dir: PathBuf,
    policy: SharedPolicy,
    status: Arc<ReloadStatus>,
    on_new: OnNewPolicy,
) -> Result<tokio::task::JoinHandle<()>, notify_debouncer_full::notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
    let fs_tx = tx.clone();
    let mut debouncer = new_debouncer(Duration::from_millis(150), None, move |res: DebounceEventResult| {
        if res.is_ok() {
            let _ = fs_tx.try_send(());
        }
    })?;
    debouncer.watch(&dir, RecursiveMode::Recursive)?;
    #[cfg(unix)]
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else { return };
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading policy");
            let _ = tx.send(()).await;
        }
    });
    Ok(tokio::spawn(async move {
        let _debouncer = debouncer; // dropping it stops the watch
        while rx.recv().await.is_some() {
            let (dir, policy, status, on_new) = (dir.clone(), policy.clone(), status.clone(), on_new.clone());
            // Reading and compiling is blocking work: keep it off the async workers.
            let _ = tokio::task::spawn_blocking(move || reload_once(&dir, &policy, &status, &*on_new)).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use arc_swap::ArcSwap;

    use super::*;

    const MESH: &str = "kind: MeshDefaults\ntrustDomain: corp.example\n";

    fn setup(text: &str) -> (tempfile::TempDir, SharedPolicy) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("p.yaml"), text).unwrap();
        let p = policy::load_dir(dir.path()).unwrap();
        (dir, Arc::new(ArcSwap::from_pointee(p)))
    }

    #[test]
    fn unchanged_reloaded_rejected() {
        let (dir, shared) = setup(MESH);
        let status = ReloadStatus::default();
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let on_new = |_: &Arc<CompiledPolicy>| {
            calls.fetch_add(1, Ordering::Relaxed);
        };
        assert_eq!(reload_once(dir.path(), &shared, &status, &on_new), Outcome::Unchanged);
        let v1 = shared.load().version.clone();
        std::fs::write(dir.path().join("p.yaml"), format!("{MESH}mode: dry-run\n")).unwrap();
        let Outcome::Reloaded { from, to } = reload_once(dir.path(), &shared, &status, &on_new) else { panic!() };
        assert_eq!((from, to.clone()), (v1, shared.load().version.clone()));
        std::fs::write(dir.path().join("p.yaml"), format!("{MESH}mode: sometimes\n")).unwrap();
        assert_eq!(reload_once(dir.path(), &shared, &status, &on_new), Outcome::Rejected);
        assert_eq!(shared.load().version, to, "the running policy stays");
        let err = status.last_error.lock().unwrap().clone().unwrap();
        assert_eq!(err.errors.len(), 1, "{:?}", err.errors);
        assert!(err.errors[0].contains("p.yaml:3:7: unknown variant `sometimes`"), "{:?}", err.errors);
        assert_eq!(calls.load(Ordering::Relaxed), 1);
        assert_eq!((status.reloads.load(Ordering::Relaxed), status.failures.load(Ordering::Relaxed)), (1, 1));

        // The same broken files read again (a second event of one edit): still rejected, not a new failure.
        assert_eq!(reload_once(dir.path(), &shared, &status, &on_new), Outcome::Rejected);
        assert_eq!(status.failures.load(Ordering::Relaxed), 1);
        // A different broken edit is.
        std::fs::write(dir.path().join("p.yaml"), format!("{MESH}mode: never\n")).unwrap();
        assert_eq!(reload_once(dir.path(), &shared, &status, &on_new), Outcome::Rejected);
        assert_eq!(status.failures.load(Ordering::Relaxed), 2);
    }

    /// A ConfigMap generation `stamp` of `dir`: `..<stamp>/p.yaml`, `..data -> ..<stamp>`, `p.yaml ->
    /// ..data/p.yaml`, as the kubelet lays it out.
    #[cfg(unix)]
    fn configmap_generation(dir: &Path, stamp: &str, text: &str) {
        let generation = dir.join(format!("..{stamp}"));
        std::fs::create_dir(&generation).unwrap();
        std::fs::write(generation.join("p.yaml"), text).unwrap();
        if dir.join("p.yaml").symlink_metadata().is_err() {
            std::os::unix::fs::symlink("..data/p.yaml", dir.join("p.yaml")).unwrap();
        }
        std::os::unix::fs::symlink(format!("..{stamp}"), dir.join("..data_tmp")).unwrap();
        std::fs::rename(dir.join("..data_tmp"), dir.join("..data")).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn a_read_that_spans_a_configmap_swap_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        configmap_generation(dir.path(), "1", MESH);
        let new = format!("{MESH}mode: dry-run\n");
        let reads = std::sync::atomic::AtomicUsize::new(0);
        // The first read sees the old generation, then the kubelet swaps in a new one.
        let source = read_consistent(dir.path(), |d| {
            let source = PolicySource::from_dir(d);
            if reads.fetch_add(1, Ordering::Relaxed) == 0 {
                configmap_generation(d, "2", &new);
            }
            source
        })
        .unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 2, "read again after the swap");
        assert_eq!(source.files.len(), 1, "each file once, not again under ..data or ..<stamp>");
        assert_eq!(source.files[0].text, new);
        assert_eq!(source.version(), PolicySource::from_dir(dir.path()).unwrap().version());

        // No swap during the read (and no ConfigMap at all): one read.
        let reads = std::sync::atomic::AtomicUsize::new(0);
        let read_once = |d: &Path| {
            reads.fetch_add(1, Ordering::Relaxed);
            PolicySource::from_dir(d)
        };
        read_consistent(dir.path(), read_once).unwrap();
        let (plain, _) = setup(MESH);
        read_consistent(plain.path(), read_once).unwrap();
        assert_eq!(reads.load(Ordering::Relaxed), 2);
    }
}
