//! `egressd report matrix`.

use std::process::ExitCode;

use super::MatrixArgs;

pub fn matrix(_args: MatrixArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("report matrix: not built yet")
}
