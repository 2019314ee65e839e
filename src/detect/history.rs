//! The first-seen state file: which registrable domains each service has reached, kept across
//! restarts. Written whole and atomically (a temporary file in the same directory, fsynced, then
//! renamed over the old one), so a crash leaves the old or the new file, never half of one.

use std::io::Write;
use std::path::{Path, PathBuf};

use super::novelty::{HISTORY_VERSION, HistoryFile};

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error("cannot read detection state {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("detection state {path} is not a state file egressd wrote: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("cannot write detection state {path}: {source}")]
    Write { path: PathBuf, source: std::io::Error },
}

/// Reads the state file; a missing file is an empty history.
pub fn load(path: &Path) -> Result<Option<HistoryFile>, HistoryError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(HistoryError::Read { path: path.into(), source }),
    };
    let file: HistoryFile = serde_json::from_slice(&bytes)
        .map_err(|e| HistoryError::Parse { path: path.into(), message: e.to_string() })?;
    if file.version != HISTORY_VERSION {
        return Err(HistoryError::Parse {
            path: path.into(),
            message: format!("version {} (this egressd reads version {HISTORY_VERSION})", file.version),
        });
    }
    Ok(Some(file))
}

/// Writes the state file atomically.
pub fn save(path: &Path, history: &HistoryFile) -> Result<(), HistoryError> {
    let err = |source| HistoryError::Write { path: path.into(), source };
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile_in(dir, path).map_err(err)?;
    let json = serde_json::to_vec(history).map_err(|e| err(std::io::Error::other(e)))?;
    tmp.1.write_all(&json).map_err(err)?;
    tmp.1.sync_all().map_err(err)?;
    std::fs::rename(&tmp.0, path).map_err(err)?;
    // The rename itself is durable once the directory is synced.
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// `PATH.tmp.PID` next to `path`, created new.
fn tempfile_in(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, std::fs::File)> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "state".into());
    let tmp = dir.join(format!(".{name}.tmp.{}", std::process::id()));
    let file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).open(&tmp)?;
    Ok((tmp, file))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::novelty::SubjectRecord;

    #[test]
    fn a_saved_history_loads_back_and_a_missing_file_is_empty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detect.json");
        assert!(load(&path).unwrap().is_none());
        let h = HistoryFile {
            version: HISTORY_VERSION,
            subjects: vec![SubjectRecord { name: "ci".into(), since: 5, domains: vec![("pypi.org".into(), 5, 9)] }],
        };
        save(&path, &h).unwrap();
        let back = load(&path).unwrap().unwrap();
        assert_eq!(back.subjects[0].domains, vec![("pypi.org".to_string(), 5, 9)]);
        // Only the state file is left: the temporary file was renamed.
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn a_corrupt_or_foreign_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("detect.json");
        std::fs::write(&path, "{not json").unwrap();
        let e = load(&path).unwrap_err().to_string();
        assert!(e.contains("detect.json") && e.contains("not a state file"), "{e}");
        std::fs::write(&path, r#"{"version":9,"subjects":[]}"#).unwrap();
        assert!(load(&path).unwrap_err().to_string().contains("version 9"));
    }
}
