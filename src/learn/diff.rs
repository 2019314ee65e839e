//! Showing edits (a `git diff`-style unified diff) and writing them.

use std::fmt::Write as _;
use std::fs;
use std::io::{self, Write as _};
use std::path::{Component, Path};

use similar::TextDiff;

use super::FileEdit;

/// Lines of context around each change, as `git diff` shows.
const CONTEXT: usize = 3;

/// The edits as one unified diff with `a/…` and `b/…` paths relative to `policy_dir` (new files
/// from `/dev/null`), in the order given: what `git diff` would show, and what `git apply` (or
/// `patch -p1`, run in `policy_dir`) takes.
pub fn unified_diff(edits: &[FileEdit], policy_dir: &Path) -> String {
    let mut out = String::new();
    for edit in edits {
        if edit.before.as_deref() == Some(edit.after.as_str()) {
            continue;
        }
        let before = edit.before.as_deref().unwrap_or("");
        let path = relative(&edit.path, policy_dir);
        let old = if edit.before.is_some() { format!("a/{path}") } else { "/dev/null".to_string() };
        let _ = writeln!(out, "diff --git a/{path} b/{path}");
        if edit.before.is_none() {
            out.push_str("new file mode 100644\n");
        }
        let diff = TextDiff::from_lines(before, &edit.after);
        let _ = write!(out, "{}", diff.unified_diff().context_radius(CONTEXT).header(&old, &format!("b/{path}")));
    }
    out
}

/// `path` below `dir`, with `/` separators whatever the platform (diff paths always use them).
fn relative(path: &Path, dir: &Path) -> String {
    let rel = path.strip_prefix(dir).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    parts.join("/")
}

/// Writes every edit's `after` text: each file through a temporary file in its directory (hidden,
/// so a policy loader never reads a half-written one) renamed over it, so a reader sees the old
/// text or the new, never a mix. Refuses a file that changed since it was read (its text is not
/// `before`), or a new file that exists by now: learning from a stale text would undo someone's
/// edit. Stops at the first failure; files written before it stay written.
pub fn apply(edits: &[FileEdit]) -> io::Result<()> {
    for edit in edits {
        check_unchanged(edit)?;
        write_atomically(&edit.path, &edit.after)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: cannot write: {e}", edit.path.display())))?;
    }
    Ok(())
}

fn check_unchanged(edit: &FileEdit) -> io::Result<()> {
    let current = match fs::read_to_string(&edit.path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io::Error::new(e.kind(), format!("{}: cannot read: {e}", edit.path.display()))),
    };
    match (&edit.before, current) {
        (None, Some(_)) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!(
                "{}: exists already; learn writes new services only to new files (run learn again)",
                edit.path.display()
            ),
        )),
        (Some(before), current) if current.as_ref() != Some(before) => Err(io::Error::other(format!(
            "{}: changed since the policy was read; nothing written to it (run learn again)",
            edit.path.display()
        ))),
        _ => Ok(()),
    }
}

fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    fs::create_dir_all(dir)?;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.learn-{}.tmp", std::process::id()));
    let written = (|| {
        let mut file = fs::File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        if let Ok(meta) = fs::metadata(path) {
            // Keep the file's mode: a rename would otherwise give it the temp file's.
            fs::set_permissions(&tmp, meta.permissions())?;
        }
        fs::rename(&tmp, path)
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn edit(path: &Path, before: Option<&str>, after: &str) -> FileEdit {
        FileEdit { path: path.to_path_buf(), before: before.map(str::to_string), after: after.to_string() }
    }

    #[test]
    fn a_git_style_diff_with_relative_paths_and_new_files_from_dev_null() {
        let dir = PathBuf::from("/policy");
        let before = "a\nb\nc\nd\ne\nf\ng\n";
        let after = "a\nb\nc\nd\nNEW\ne\nf\ng\n";
        let diff = unified_diff(
            &[
                edit(&dir.join("services/p.yaml"), Some(before), after),
                edit(&dir.join("services/new.yaml"), None, "x\ny\n"),
                edit(&dir.join("same.yaml"), Some("z\n"), "z\n"),
            ],
            &dir,
        );
        assert_eq!(
            diff,
            "diff --git a/services/p.yaml b/services/p.yaml\n\
             --- a/services/p.yaml\n\
             +++ b/services/p.yaml\n\
             @@ -2,6 +2,7 @@\n b\n c\n d\n+NEW\n e\n f\n g\n\
             diff --git a/services/new.yaml b/services/new.yaml\n\
             new file mode 100644\n\
             --- /dev/null\n\
             +++ b/services/new.yaml\n\
             @@ -0,0 +1,2 @@\n+x\n+y\n"
        );
    }

    #[test]
    fn apply_writes_new_and_edited_files_and_refuses_stale_ones() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("p.yaml");
        fs::write(&old, "one\n").unwrap();
        let new = dir.path().join("services/n.yaml");
        apply(&[edit(&old, Some("one\n"), "one\ntwo\n"), edit(&new, None, "n\n")]).unwrap();
        assert_eq!(fs::read_to_string(&old).unwrap(), "one\ntwo\n");
        assert_eq!(fs::read_to_string(&new).unwrap(), "n\n");
        let leftovers: Vec<_> = fs::read_dir(dir.path()).unwrap().filter_map(|e| e.ok()).collect();
        assert_eq!(leftovers.len(), 2, "no temporary file is left: {leftovers:?}");

        // The same edits again: both files are no longer what they were read as.
        let stale = apply(&[edit(&old, Some("one\n"), "one\ntwo\n")]).unwrap_err();
        assert!(stale.to_string().contains("changed since the policy was read"), "{stale}");
        let exists = apply(&[edit(&new, None, "n\n")]).unwrap_err();
        assert_eq!(exists.kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(fs::read_to_string(&old).unwrap(), "one\ntwo\n");
    }
}
