//! The commands that run on their own: `serve`, `validate`, and `check` against a policy directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;

use egressd::policy::{self, CompiledPolicy, PolicySource, Protocol, Severity};
use egressd::telemetry::{Telemetry, TelemetryConfig};
use egressd::{explain, server};

pub const DEFAULT_POLICY_DIR: &str = "mesh-config";

fn policy_source(dir: Option<PathBuf>) -> anyhow::Result<PolicySource> {
    match dir {
        Some(dir) => Ok(PolicySource::from_dir(&dir)?),
        None if Path::new(DEFAULT_POLICY_DIR).is_dir() => Ok(PolicySource::from_dir(Path::new(DEFAULT_POLICY_DIR))?),
        None => Ok(PolicySource::embedded()),
    }
}

fn compile_or_report(source: &PolicySource) -> anyhow::Result<CompiledPolicy> {
    policy::compile(source, egressd::clock::unix_now())
        .map_err(|diags| anyhow::anyhow!("{} is invalid:\n{}", source.origin, policy::format_diagnostics(&diags)))
}

/// The policy of `dir` (default as for `serve`) as the review commands read it: compiled, with
/// `TODO` justifications (allows `learn` wrote, waiting for review) as warnings, not errors.
pub fn load_policy(dir: Option<PathBuf>) -> anyhow::Result<CompiledPolicy> {
    Ok(load_policy_source(dir)?.1)
}

/// As `load_policy`, with the source it was compiled from.
pub fn load_policy_source(dir: Option<PathBuf>) -> anyhow::Result<(PolicySource, CompiledPolicy)> {
    let source = policy_source(dir)?;
    let compiled = policy::compile_with(&source, egressd::clock::unix_now(), policy::Placeholders::Warn)
        .map_err(|diags| anyhow::anyhow!("{} is invalid:\n{}", source.origin, policy::format_diagnostics(&diags)))?;
    Ok((source, compiled))
}

/// `egressd init`: a starter policy in `dir`.
pub fn init(dir: &Path, trust_domain: &str) -> anyhow::Result<ExitCode> {
    let written = egressd::init::init(dir, trust_domain)?;
    for path in &written {
        outln!("wrote {}", path.display());
    }
    outln!(
        "next: egressd validate {0}; egressd serve --policy {0} --audit-log audit.log; then egressd discover / learn (README: From zero to enforce)",
        dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// Where `serve` listens.
pub struct Listen {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    /// Overrides the DnsFirewall's `listen`.
    pub dns: Option<SocketAddr>,
    /// The gRPC port over TLS.
    pub tls: Option<server::tls::GrpcTls>,
}

pub fn serve(
    dir: Option<PathBuf>,
    listen: Listen,
    telemetry: TelemetryConfig,
    admin_api: server::AdminApiConfig,
) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        // Colour only for a person at a terminal: no escape codes in log files and journals.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let watch_dir = match &dir {
        Some(d) => Some(d.clone()),
        None if Path::new(DEFAULT_POLICY_DIR).is_dir() => Some(PathBuf::from(DEFAULT_POLICY_DIR)),
        None => None,
    };
    let source = policy_source(dir)?;
    let compiled = compile_or_report(&source)?;
    for w in &compiled.warnings {
        tracing::warn!("{w}");
    }
    tracing::info!(
        origin = %compiled.origin,
        version = %compiled.version,
        services = compiled.services.len(),
        rules = compiled.rule_count(),
        "policy loaded"
    );
    let shared = Arc::new(ArcSwap::from_pointee(compiled));
    let mut telemetry = telemetry;
    if let Some(detect) = &mut telemetry.detect {
        // The detectors read their thresholds from the live policy (see `DetectSetup::policy`).
        detect.policy = Some(shared.clone());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (telemetry, tasks) = Telemetry::start(telemetry).context("starting telemetry")?;
        let config = server::ServeConfig {
            grpc_listen: listen.grpc,
            admin_listen: listen.admin,
            dns_listen: listen.dns,
            gateway: None,
            watch_dir,
            telemetry,
            admin_api,
            tls: listen.tls,
        };
        let served = server::serve(config, shared, |_| {}, shutdown_signal()).await;
        // Every decision answered before the server stopped is in the audit log after this.
        tasks.shutdown(std::time::Duration::from_secs(5)).await;
        served.map_err(anyhow::Error::from)
    })?;
    tracing::info!("egressd stopped");
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}

pub fn validate(dir: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let source = PolicySource::from_dir(dir)?;
    let diags = match policy::compile(&source, egressd::clock::unix_now()) {
        Ok(compiled) => compiled.warnings,
        Err(diags) => diags,
    };
    for d in &diags {
        outln!("{d}");
    }
    let errors = diags.iter().filter(|d| d.severity == Severity::Error || strict).count();
    if errors > 0 {
        eprintln!("{}: {errors} error(s)", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("{}: valid ({} file(s), version {})", dir.display(), source.files.len(), source.version());
    Ok(ExitCode::SUCCESS)
}

pub fn check(
    dir: Option<PathBuf>,
    from: &str,
    to: &str,
    protocol: Option<Protocol>,
    request_id: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let compiled = compile_or_report(&policy_source(dir)?)?;
    let dest = explain::cli_destination(to, protocol).map_err(anyhow::Error::msg)?;
    let decision = compiled.decide(Some(from), Ok(&dest), request_id, egressd::clock::unix_now());
    if json {
        outln!("{:#}", explain::json(&compiled, from, &dest, &decision, request_id));
    } else {
        out!("{}", explain::text(&compiled, from, &dest, &decision, request_id));
    }
    Ok(if decision.outcome.permits() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
