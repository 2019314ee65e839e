//! The embedded store: grants in one JSON state file (`serve --break-glass-state`), trips in
//! the process. Written to a temporary file, fsynced, renamed over the old one.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{StateStore, StoreError};
use crate::runtime::breakglass::Grant;

#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    grants: Vec<Grant>,
}

#[derive(Debug)]
pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(path: &Path) -> Self {
        FileStore { path: path.to_path_buf() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl StateStore for FileStore {
    fn save_grant(&self, _grant: &Grant, all: &[Arc<Grant>]) -> Result<(), StoreError> {
        persist(&self.path, all)
    }
}

/// The grants of a state file, as written (a missing file has none); nothing is pruned or
/// rewritten (`report stale` reads a running server's file).
pub fn read_state(path: &Path) -> Result<Vec<Grant>, StoreError> {
    let shown = || path.display().to_string();
    match std::fs::read_to_string(path) {
        Ok(text) => serde_json::from_str::<StateFile>(&text)
            .map(|state| state.grants)
            .map_err(|e| StoreError::Corrupt { path: shown(), message: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(source) => Err(StoreError::File { path: shown(), source }),
    }
}

/// Writes the state atomically: a temporary file in the same directory, fsynced, renamed over
/// the old one, then the directory fsynced, so a crash leaves the old or the new file, whole.
fn persist(path: &Path, grants: &[Arc<Grant>]) -> Result<(), StoreError> {
    use std::io::Write;
    let err = |source| StoreError::File { path: path.display().to_string(), source };
    let state = StateFile { grants: grants.iter().map(|g| (**g).clone()).collect() };
    let text = serde_json::to_vec_pretty(&state).expect("grants serialize");
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    let mut file = std::fs::File::create(&tmp).map_err(err)?;
    file.write_all(&text).map_err(err)?;
    file.sync_all().map_err(err)?;
    std::fs::rename(&tmp, path).map_err(err)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(err)?;
    }
    Ok(())
}
