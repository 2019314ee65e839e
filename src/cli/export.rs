//! `egressd export TARGET [--policy DIR] [--out DIR]`: the policy as Kubernetes objects for
//! another enforcement layer (`egressd::export`). A YAML stream on standard output, or one file
//! per kind in `--out`; what the layer cannot express goes to standard error as
//! `egressd: warning: FILE:LINE:COL: message`. Exit 0 (warnings included); 2 when the policy
//! does not load or the files cannot be written.

use std::process::ExitCode;

use anyhow::Context;

use egressd::export::{self, Options, Target};

use super::{ExportArgs, ExportTarget};

pub fn export(args: ExportArgs) -> anyhow::Result<ExitCode> {
    let (source, policy) = super::local::load_policy_source(args.policy)?;
    let target = match args.target {
        ExportTarget::Networkpolicy => Target::NetworkPolicy,
        ExportTarget::Istio => Target::Istio,
        ExportTarget::Cilium => Target::Cilium,
        ExportTarget::Rpz => return rpz(&policy, &args.zone, args.out.as_deref()),
    };
    let options = Options { now: Some(egressd::clock::unix_now()), ..Options::default() };
    let exported = export::export_with_source(&policy, &source, target, &options);
    // The policy's own warnings (a `TODO` justification, an expired allow) travel with it.
    for w in &policy.warnings {
        eprintln!("egressd: warning: {}: {}", w.loc, w.message);
    }
    for w in &exported.warnings {
        eprintln!("egressd: warning: {w}");
    }
    match args.out {
        None => out!("{}", exported.to_yaml().context("serializing the objects as YAML")?),
        Some(dir) => {
            std::fs::create_dir_all(&dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
            for (name, text) in exported.files().context("serializing the objects as YAML")? {
                let path = dir.join(&name);
                std::fs::write(&path, text).with_context(|| format!("{}: cannot write", path.display()))?;
                let count = text_objects(&exported, &name);
                outln!("wrote {} ({count} object(s))", path.display());
            }
        }
    }
    eprintln!(
        "egressd: export {target}: {} object(s), {} warning(s) (policy {}, {})",
        exported.objects.len(),
        exported.warnings.len(),
        policy.version,
        policy.origin
    );
    Ok(ExitCode::SUCCESS)
}

/// How many objects went into the file `name` (`KIND.yaml`).
fn text_objects(exported: &export::Export, name: &str) -> usize {
    exported
        .objects
        .iter()
        .filter(|o| o["kind"].as_str().is_some_and(|k| format!("{}.yaml", k.to_ascii_lowercase()) == name))
        .count()
}

/// `egressd export rpz`: the zone file on standard output, or `<zone>rpz` in `--out`.
fn rpz(
    policy: &egressd::policy::CompiledPolicy,
    zone: &str,
    out: Option<&std::path::Path>,
) -> anyhow::Result<ExitCode> {
    let exported = export::rpz::rpz(policy, zone, egressd::clock::unix_now());
    for w in &policy.warnings {
        eprintln!("egressd: warning: {}: {}", w.loc, w.message);
    }
    for w in &exported.warnings {
        eprintln!("egressd: warning: {w}");
    }
    match out {
        None => out!("{}", exported.text),
        Some(dir) => {
            std::fs::create_dir_all(dir).with_context(|| format!("{}: cannot create the directory", dir.display()))?;
            let path = dir.join(format!("{}rpz", exported.zone));
            std::fs::write(&path, &exported.text).with_context(|| format!("{}: cannot write", path.display()))?;
            outln!("wrote {}", path.display());
        }
    }
    eprintln!("egressd: export rpz: zone {} (policy {}, {})", exported.zone, policy.version, policy.origin);
    Ok(ExitCode::SUCCESS)
}
