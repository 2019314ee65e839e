//! `egressd detect`: the detectors over audit logs (`egressd::detect::audit`), with filters, text
//! or JSON lines, and an evaluation against labelled attacks.

use std::collections::BTreeMap;
use std::process::ExitCode;

use anyhow::Context;
use egressd::detect::audit::AuditObservations;
use egressd::detect::evaluate::{self, Label};
use egressd::detect::{Detector, SignalKind, history};

use super::{DetectArgs, OutputFormat};

pub fn detect(args: DetectArgs) -> anyhow::Result<ExitCode> {
    let kinds: Vec<SignalKind> = args
        .kind
        .iter()
        .map(|k| k.parse::<SignalKind>())
        .collect::<Result<_, _>>()
        .map_err(|e| anyhow::anyhow!("--kind: {e}"))?;
    let labels: Option<Vec<Label>> = match &args.labels {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("--labels {}", path.display()))?;
            Some(
                serde_json::from_slice(&bytes)
                    .with_context(|| format!("--labels {}: not a JSON array of labels", path.display()))?,
            )
        }
        None => None,
    };
    let state = match &args.state {
        Some(path) => history::load(path)?,
        None => None,
    };
    let policy = super::local::load_policy(args.policy)?;
    let mut detector = Detector::new(policy.detection.clone());
    if let Some(state) = state {
        detector.restore_history(state);
    }
    let mut input = AuditObservations::new(Some(&policy));
    input.read_paths(&args.audit_log)?;
    let (mut signals, report) = input.detect(&mut detector);
    for bad in &report.first_bad_lines {
        eprintln!("egressd: skipped {bad}");
    }
    let scores = labels.as_ref().map(|l| evaluate::evaluate(l, &signals));
    signals.retain(|s| {
        (kinds.is_empty() || kinds.contains(&s.kind))
            && args.service.as_ref().is_none_or(|svc| s.service.as_ref() == Some(svc))
    });
    for s in &signals {
        match args.format {
            OutputFormat::Text => outln!("{}", s.text()),
            OutputFormat::Json => outln!("{}", s.to_json()),
        }
    }
    let mut by_kind: BTreeMap<SignalKind, usize> = BTreeMap::new();
    for s in &signals {
        *by_kind.entry(s.kind).or_default() += 1;
    }
    let counts: Vec<String> = by_kind.iter().map(|(k, n)| format!("{} {n}", k.as_str())).collect();
    let stats = detector.stats();
    eprintln!(
        "egressd: {} record(s) in {} file(s), {} observation(s), {} skipped, {} bad line(s); {} signal(s){}{}",
        report.records,
        report.files.len(),
        report.observations,
        report.skipped,
        report.bad_lines,
        signals.len(),
        if counts.is_empty() { String::new() } else { format!(": {}", counts.join(", ")) },
        if stats.evicted_identities + stats.evicted_destinations > 0 {
            format!(
                " ({} identities, {} destinations evicted by the limits)",
                stats.evicted_identities, stats.evicted_destinations
            )
        } else {
            String::new()
        }
    );
    if let Some(scores) = scores {
        eprint!("{}", evaluate::table(&scores));
    }
    Ok(if args.fail_on_signal && !signals.is_empty() { ExitCode::from(3) } else { ExitCode::SUCCESS })
}
