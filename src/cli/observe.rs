//! The commands that read observed flows: `discover`, `learn`, `report impact`, `plan`. Flows
//! come from audit logs or from a running server's `GET /flows`; every flow is replayed with the
//! policy at hand.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, bail};
use egressd::flows::json::FlowsDocument;
use egressd::flows::{Flow, FlowTable, audit_log};
use egressd::reports::{self, ReplayedFlow};

use super::{FlowInput, OutputFormat};

/// Where flows come from, read: the flows (sorted; each command applies `--service` after
/// replay, since a policy change can give a flow to another service) and a line about what was
/// read for standard error.
pub struct Observed {
    pub flows: Vec<Flow>,
    pub summary: String,
}

impl FlowInput {
    /// Whether `--audit-log` or `--server` names flows (`report matrix` runs without them).
    pub fn is_given(&self) -> bool {
        !self.audit_log.is_empty() || self.server.is_some()
    }

    fn since_ms(&self) -> anyhow::Result<Option<i64>> {
        let Some(age) = &self.since else { return Ok(None) };
        let seconds = egressd::flows::parse_age(age).map_err(|e| anyhow::anyhow!("--since: {e}"))?;
        Ok(Some(egressd::clock::unix_now().saturating_sub(seconds).saturating_mul(1000)))
    }

    /// Reads the flows named by `--audit-log` or `--server`.
    pub fn read(&self) -> anyhow::Result<Observed> {
        let since_ms = self.since_ms()?;
        let (flows, summary) = match (&self.audit_log[..], &self.server) {
            ([], None) => bail!("name where flows come from: --audit-log PATH (repeatable) or --server ADDR"),
            ([_, ..], Some(_)) => bail!("--audit-log and --server are alternatives: name one"),
            (paths, None) => read_audit_logs(paths, since_ms)?,
            ([], Some(server)) => fetch(server, self.since.as_deref())?,
        };
        Ok(Observed { flows, summary })
    }
}

fn read_audit_logs(paths: &[PathBuf], since_ms: Option<i64>) -> anyhow::Result<(Vec<Flow>, String)> {
    let mut table = FlowTable::default();
    let report = audit_log::read_paths(paths, since_ms, &mut table)?;
    for bad in &report.first_bad_lines {
        eprintln!("egressd: skipped {bad}");
    }
    if report.bad_lines > report.first_bad_lines.len() as u64 {
        eprintln!("egressd: ... and {} more bad line(s)", report.bad_lines - report.first_bad_lines.len() as u64);
    }
    let mut summary = format!(
        "read {} record(s) from {} file(s): {} flow(s); skipped {} bad line(s), {} tunnel check(s), {} without an accepted identity or destination, {} older than --since",
        reports::thousands(report.records),
        report.files.len(),
        table.len(),
        report.bad_lines,
        report.tunnel_checks,
        report.unattributed,
        report.too_old
    );
    if report.other_records > 0 {
        summary += &format!(", {} stream total(s) (not decisions)", reports::thousands(report.other_records));
    }
    Ok((table.into_sorted(), summary))
}

/// `GET http://ADDR/flows` of a running egressd's admin port.
fn fetch(server: &str, since: Option<&str>) -> anyhow::Result<(Vec<Flow>, String)> {
    use http_body_util::BodyExt;
    let base = if server.contains("://") { server.to_string() } else { format!("http://{server}") };
    let url = match since {
        Some(age) => format!("{}/flows?since={age}", base.trim_end_matches('/')),
        None => format!("{}/flows", base.trim_end_matches('/')),
    };
    let uri: hyper::Uri = url.parse().with_context(|| format!("--server {server}: not an address"))?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (status, body) = runtime.block_on(async {
        let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http::<http_body_util::Empty<bytes::Bytes>>();
        let response = tokio::time::timeout(std::time::Duration::from_secs(30), client.get(uri))
            .await
            .map_err(|_| anyhow::anyhow!("{url}: no answer within 30 s"))?
            .with_context(|| format!("cannot reach egressd's admin port at {url}"))?;
        let status = response.status();
        let body = response.into_body().collect().await.with_context(|| format!("{url}: reading the answer"))?;
        anyhow::Ok((status, body.to_bytes()))
    })?;
    if !status.is_success() {
        bail!("{url}: {status}: {}", String::from_utf8_lossy(&body).trim());
    }
    let doc: FlowsDocument = serde_json::from_slice(&body).with_context(|| format!("{url}: not a flow table"))?;
    let flows = doc
        .flows
        .into_iter()
        .map(Flow::try_from)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow::anyhow!("{url}: {e}"))?;
    let summary = format!(
        "read {} flow(s) from {url} (the table holds at most {}; {} evicted)",
        flows.len(),
        reports::thousands(doc.capacity as u64),
        reports::thousands(doc.evicted)
    );
    Ok((flows, summary))
}

/// The unix milliseconds `age` (`30d`, `12h`) before now, for a `--window AGE`.
pub fn window_start_ms(age: &str) -> anyhow::Result<i64> {
    let seconds = egressd::flows::parse_age(age).map_err(|e| anyhow::anyhow!("--window: {e}"))?;
    Ok(egressd::clock::unix_now().saturating_sub(seconds).saturating_mul(1000))
}

/// Runs `load` (a policy) on its own thread while the flows `input` names are read: the two are
/// independent and, for 10,000 services and a month of logs, each takes seconds. A policy that
/// does not load is the error reported first.
pub fn loaded_with_flows<T: Send>(
    input: &FlowInput,
    load: impl FnOnce() -> anyhow::Result<T> + Send,
) -> anyhow::Result<(T, Observed)> {
    std::thread::scope(|scope| {
        let loading = scope.spawn(load);
        let observed = input.read();
        let loaded = loading.join().map_err(|_| anyhow::anyhow!("loading the policy failed (a panic)"))??;
        let observed = observed?;
        eprintln!("egressd: {}", observed.summary);
        Ok((loaded, observed))
    })
}

/// The policy in `dir` and the flows `input` names, replayed with it now; `--service` applied.
pub fn policy_and_replayed(
    dir: Option<PathBuf>,
    input: &FlowInput,
) -> anyhow::Result<(egressd::policy::CompiledPolicy, Vec<ReplayedFlow>)> {
    let (policy, observed) = loaded_with_flows(input, || super::local::load_policy(dir))?;
    let flows = reports::replay_all(&policy, observed.flows, egressd::clock::unix_now());
    let flows = reports::only_service(flows, input.service.as_deref());
    Ok((policy, flows))
}

/// Exit 3 with `--fail-on-stale` when anything is stale.
pub fn stale(args: super::StaleArgs) -> anyhow::Result<ExitCode> {
    let window_start = window_start_ms(&args.window)?;
    let grants = match &args.break_glass_state {
        Some(path) => read_grants(path)?,
        None => Vec::new(),
    };
    let (policy, flows) = policy_and_replayed(args.policy, &args.input)?;
    let usage = reports::usage::Usage::of(&policy, &flows, Some(window_start));
    let report = reports::stale::stale(&policy, &usage, &grants, window_start);
    match args.format {
        OutputFormat::Text => out!("{}", reports::stale::text(&report)),
        OutputFormat::Json => print_json(&report)?,
    }
    Ok(if args.fail_on_stale && !report.is_empty() { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// Every grant of a `serve --break-glass-state` file, active or not.
fn read_grants(path: &std::path::Path) -> anyhow::Result<Vec<egressd::runtime::breakglass::Grant>> {
    if !path.is_file() {
        bail!("--break-glass-state {}: no such file", path.display());
    }
    Ok(egressd::runtime::breakglass::read_state(path)?)
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    outln!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn discover(policy: Option<PathBuf>, input: FlowInput, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let (_, flows) = policy_and_replayed(policy, &input)?;
    match format {
        OutputFormat::Text => out!("{}", reports::discover::text(&flows)),
        OutputFormat::Json => print_json(&reports::discover::json(&flows))?,
    }
    Ok(ExitCode::SUCCESS)
}

/// Exit 0 when the service is ready to enforce, 1 when not.
pub fn impact(policy: Option<PathBuf>, input: FlowInput, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let Some(service) = input.service.clone() else { bail!("report impact needs --service SERVICE") };
    let service = service.as_str();
    let (policy, flows) = policy_and_replayed(policy, &input)?;
    let impact = reports::impact::impact(&policy, service, &flows)?;
    match format {
        OutputFormat::Text => out!("{}", reports::impact::text(&impact)),
        OutputFormat::Json => print_json(&impact)?,
    }
    Ok(if impact.ready { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Exit 0 when nothing let through today would be blocked, 3 otherwise.
pub fn plan(base: PathBuf, head: PathBuf, input: FlowInput, format: OutputFormat) -> anyhow::Result<ExitCode> {
    let load = || Ok((super::local::load_policy(Some(base))?, super::local::load_policy(Some(head))?));
    let ((base, head), observed) = loaded_with_flows(&input, load)?;
    let plan = reports::plan::plan(&base, &head, &observed.flows, input.service.as_deref(), egressd::clock::unix_now());
    match format {
        OutputFormat::Text => out!("{}", reports::plan::text(&plan)),
        OutputFormat::Json => print_json(&plan)?,
    }
    Ok(if plan.breaking { ExitCode::from(3) } else { ExitCode::SUCCESS })
}

/// What `learn` prints or does.
pub enum LearnOutput {
    Summary(OutputFormat),
    Diff,
    Write,
}

pub fn learn(
    policy: Option<PathBuf>,
    input: FlowInput,
    options: egressd::learn::LearnOptions,
    output: LearnOutput,
) -> anyhow::Result<ExitCode> {
    use egressd::learn;
    let dir = policy.clone().unwrap_or_else(|| super::local::DEFAULT_POLICY_DIR.into());
    if !matches!(output, LearnOutput::Summary(_)) && !dir.is_dir() {
        bail!("{}: not a policy directory (--diff and --write edit one: name it with --policy)", dir.display());
    }
    let ((source, compiled), observed) = loaded_with_flows(&input, || super::local::load_policy_source(policy))?;
    let now = egressd::clock::unix_now();
    let replayed: Vec<_> =
        reports::only_service(reports::replay_all(&compiled, observed.flows, now), input.service.as_deref())
            .into_iter()
            .map(|f| (f.flow, f.now))
            .collect();
    let proposal = learn::propose(&replayed, &compiled, &options, now);
    for s in &proposal.skipped {
        eprintln!("egressd: not proposed: {} -> {} ({} hits): {}", s.subject.describe(), s.destination, s.hits, s.why);
    }
    match output {
        LearnOutput::Summary(OutputFormat::Text) => out!("{}", summary(&proposal)),
        LearnOutput::Summary(OutputFormat::Json) => print_json(&summary_json(&proposal))?,
        LearnOutput::Diff => out!("{}", learn::unified_diff(&learn::edits(&proposal, &source, &dir)?, &dir)),
        LearnOutput::Write => {
            let edits = learn::edits(&proposal, &source, &dir)?;
            learn::apply(&edits).context("writing the learned policy")?;
            for e in &edits {
                outln!("{} {}", if e.before.is_some() { "edited" } else { "created" }, e.path.display());
            }
            if edits.is_empty() {
                outln!("nothing to learn: every observed flow is allowed, or not something an allow can change");
            } else {
                outln!("next: answer every `TODO` justification, then egressd validate {}", dir.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `payments: 2 allow(s)` and a line per allow with its evidence.
fn summary(proposal: &egressd::learn::Proposal) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if proposal.is_empty() {
        out.push_str("nothing to learn: every observed flow is allowed, or not something an allow can change\n");
    }
    let mut block = |name: &str, new: bool, allows: &[egressd::learn::ProposedAllow]| {
        let _ = writeln!(
            out,
            "{name}{}: {} allow(s) to add",
            if new { " (new dry-run service)" } else { "" },
            allows.len()
        );
        for a in allows {
            let ports = a.ports.as_ref().map(|p| format!("{p:?}")).unwrap_or_else(|| "any port".into());
            let _ = writeln!(
                out,
                "  {} ports {ports}: {} hits from {} workload(s), last seen {}",
                a.target,
                reports::thousands(a.evidence.hits),
                a.evidence.workloads.len(),
                reports::short_time(a.evidence.last_seen_ms)
            );
        }
    };
    for s in &proposal.services {
        block(&s.service, false, &s.allows);
    }
    for s in &proposal.new_services {
        block(&format!("{} ({})", s.name, s.identity), true, &s.allows);
    }
    out
}

fn summary_json(proposal: &egressd::learn::Proposal) -> serde_json::Value {
    let allows = |allows: &[egressd::learn::ProposedAllow]| -> Vec<serde_json::Value> {
        allows
            .iter()
            .map(|a| {
                serde_json::json!({
                    "target": a.target.to_string(),
                    "ports": a.ports,
                    "hits": a.evidence.hits,
                    "workloads": a.evidence.workloads,
                    "firstSeen": egressd::flows::json::rfc3339(a.evidence.first_seen_ms),
                    "lastSeen": egressd::flows::json::rfc3339(a.evidence.last_seen_ms),
                    "names": a.evidence.collapsed,
                })
            })
            .collect()
    };
    serde_json::json!({
        "services": proposal.services.iter().map(|s| serde_json::json!({"service": s.service, "allows": allows(&s.allows)})).collect::<Vec<_>>(),
        "newServices": proposal.new_services.iter().map(|s| serde_json::json!({"service": s.name, "identity": s.identity, "allows": allows(&s.allows)})).collect::<Vec<_>>(),
        "skipped": proposal.skipped.iter().map(|s| serde_json::json!({"subject": s.subject.describe(), "destination": s.destination, "hits": s.hits, "why": s.why.to_string()})).collect::<Vec<_>>(),
    })
}
