//! `egressd dev-pki DIR`.

use std::process::ExitCode;

use super::DevPkiArgs;

pub fn dev_pki(_args: DevPkiArgs) -> anyhow::Result<ExitCode> {
    anyhow::bail!("dev-pki: not built yet")
}
