//! `egressd lint`: the policy's anti-patterns (`egressd::lint`), as text, JSON or SARIF.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use egressd::lint::{self, Level};
use egressd::policy::{self, PolicySource};

use super::local::DEFAULT_POLICY_DIR;
use super::{FailOn, LintFormat};

pub fn lint(dir: Option<PathBuf>, format: LintFormat, fail_on: FailOn) -> anyhow::Result<ExitCode> {
    let source = match dir {
        Some(dir) => PolicySource::from_dir(&dir)?,
        None if Path::new(DEFAULT_POLICY_DIR).is_dir() => PolicySource::from_dir(Path::new(DEFAULT_POLICY_DIR))?,
        None => PolicySource::embedded(),
    };
    let now = egressd::clock::unix_now();
    // Lint reads a policy that loads: one that does not is `validate`'s to explain.
    let compiled = match policy::compile(&source, now) {
        Ok(compiled) => compiled,
        Err(diags) => {
            for d in &diags {
                outln!("{d}");
            }
            eprintln!("{}: does not compile; lint runs on a valid policy (see egressd validate)", source.origin);
            return Ok(ExitCode::from(2));
        }
    };
    let findings = lint::lint(&compiled, now);
    match format {
        LintFormat::Text => out!("{}", lint::text(&findings)),
        LintFormat::Json => outln!("{:#}", lint::json(&findings)),
        LintFormat::Sarif => {
            let root = std::env::current_dir().ok();
            outln!("{:#}", lint::sarif(&findings, root.as_deref()))
        }
    }
    let count = |level| findings.iter().filter(|f| f.severity == level).count();
    eprintln!(
        "{}: {} error(s), {} warning(s), {} note(s)",
        source.origin,
        count(Level::Error),
        count(Level::Warning),
        count(Level::Note)
    );
    let threshold = match fail_on {
        FailOn::Error => Level::Error,
        FailOn::Warning => Level::Warning,
    };
    Ok(if lint::fails(&findings, threshold) { ExitCode::FAILURE } else { ExitCode::SUCCESS })
}
