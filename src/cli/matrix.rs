//! `egressd report matrix`: the egress allowlist matrix of a policy directory, as Markdown, CSV,
//! JSON or one HTML file; with `--audit-log` or `--server`, each rule's hits within `--window`
//! and when it was last used. The matrix itself is `egressd::reports::matrix`; this reads the
//! inputs and writes the chosen face.

use std::process::ExitCode;

use anyhow::Context;
use egressd::policy::CompiledPolicy;
use egressd::reports::matrix::{self, Matrix};
use egressd::reports::usage::Usage;

use super::{MatrixArgs, MatrixFormat};

pub fn matrix(args: MatrixArgs) -> anyhow::Result<ExitCode> {
    let (policy, usage) = policy_and_usage(args.policy, &args.input, &args.window)?;
    if let Some(service) = &args.input.service {
        known_service(&policy, service)?;
    }
    let mut matrix = match usage {
        Some(usage) => matrix::build(&policy, Some(&usage)).with_window(&args.window),
        None => matrix::build(&policy, None),
    };
    if let Some(service) = &args.input.service {
        matrix.retain_service(service);
    }
    let text = render(&matrix, args.format)?;
    match &args.output {
        Some(path) => {
            std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
            eprintln!("egressd: wrote {} ({} rule(s))", path.display(), matrix.rows.len());
        }
        None => out!("{text}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// The policy and, when flows are named, its rules' use; the window is checked before any flow
/// is read.
fn policy_and_usage(
    dir: Option<std::path::PathBuf>,
    input: &super::FlowInput,
    window: &str,
) -> anyhow::Result<(CompiledPolicy, Option<Usage>)> {
    if !input.is_given() {
        return Ok((super::local::load_policy(dir)?, None));
    }
    let window_start = super::observe::window_start_ms(window)?;
    let (policy, flows) = super::observe::policy_and_replayed(dir, input)?;
    let usage = Usage::of(&policy, &flows, Some(window_start));
    Ok((policy, Some(usage)))
}

fn known_service(policy: &CompiledPolicy, service: &str) -> anyhow::Result<()> {
    if policy.service(service).is_some() {
        return Ok(());
    }
    let names: Vec<&str> = policy.services.iter().map(|s| s.name.as_str()).collect();
    anyhow::bail!("--service {service}: no such service in {} (services: {})", policy.origin, names.join(", "))
}

fn render(matrix: &Matrix, format: MatrixFormat) -> anyhow::Result<String> {
    Ok(match format {
        MatrixFormat::Md => matrix::markdown(matrix),
        MatrixFormat::Csv => matrix::csv(matrix),
        MatrixFormat::Json => serde_json::to_string_pretty(matrix)? + "\n",
        MatrixFormat::Html => matrix::html(matrix),
    })
}
