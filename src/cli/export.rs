//! `egressd export TARGET`.

use std::process::ExitCode;

use super::ExportArgs;

pub fn export(_args: ExportArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("export: not built yet")
}
