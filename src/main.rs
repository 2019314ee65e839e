//! The `egressd` binary: thin CLI over the library. `anyhow` lives here, at the edge.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use arc_swap::ArcSwap;
use clap::{Parser, Subcommand};

use egressd::admin_api::AdminTokens;
use egressd::policy::{self, CompiledPolicy, PolicySource, Protocol, Severity};
use egressd::rollout::breakglass::GrantStore;
use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
use egressd::telemetry::spans::parse_sampler;
use egressd::telemetry::{OtlpConfig, Telemetry, TelemetryConfig};
use egressd::{explain, server};

mod remote_cli;
use remote_cli as remote;

const DEFAULT_POLICY_DIR: &str = "mesh-config";

/// mimalloc instead of glibc malloc: decoded CheckRequests are freed on the telemetry thread, and
/// glibc's per-arena locking made those cross-thread frees (and its consolidation passes) a large
/// share of the Check path's CPU under load; mimalloc frees to the owning thread's heap lock-free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "egressd", version, about = "Default-deny, explainable egress for an Envoy egress gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve ext_authz Check (and gRPC health) for the egress gateway, plus the admin HTTP port.
    Serve {
        /// Policy directory. Default: ./mesh-config, or the example policy built into the binary
        /// when that directory does not exist.
        #[arg(long, env = "EGRESSD_POLICY")]
        policy: Option<PathBuf>,
        /// gRPC listen address (ext_authz Check, grpc.health.v1).
        #[arg(long, default_value = "127.0.0.1:18000", env = "EGRESSD_GRPC_LISTEN")]
        grpc_listen: SocketAddr,
        /// Admin HTTP listen address (/healthz, /readyz, /policy).
        #[arg(long, default_value = "127.0.0.1:18001", env = "EGRESSD_ADMIN_LISTEN")]
        admin_listen: SocketAddr,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Validate a policy directory: exit 0 if valid, else print FILE:LINE:COL: message and exit 1.
    Validate {
        /// Policy directory (default: ./mesh-config).
        dir: Option<PathBuf>,
        /// Treat warnings (expired allows, overlapping identities) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Explain, offline, what egressd decides for one request. Exit 0 on allow (including a dry-run
    /// would-deny), 1 on deny, 2 when the policy or arguments are invalid.
    Check {
        /// Policy directory. Default as for `serve`.
        #[arg(long)]
        policy: Option<PathBuf>,
        /// The caller's SPIFFE ID, e.g. spiffe://corp.example/ns/payments/sa/api.
        #[arg(long)]
        from: String,
        /// Destination HOST[:PORT] (IPv6 as [ADDR]:PORT).
        #[arg(long)]
        to: String,
        /// How the request reaches the gateway. Default: from the port (80 http, 443 https, else tcp).
        #[arg(long, value_enum)]
        protocol: Option<Protocol>,
        /// x-request-id, to see which side of a canary this request falls on.
        #[arg(long)]
        request_id: Option<String>,
        /// Print the decision as JSON.
        #[arg(long)]
        json: bool,
        /// Ask a running egressd (its gRPC address) instead: the live policy and break-glass grants.
        #[arg(long)]
        server: Option<String>,
        #[command(flatten)]
        auth: AdminAuth,
    },
    /// Time-boxed, audited exceptions to a service's policy, through a running egressd.
    #[command(name = "break-glass", subcommand)]
    BreakGlass(BreakGlassCommand),
    /// Rollout progress of every service, through a running egressd.
    #[command(subcommand)]
    Rollout(RolloutCommand),
}

/// How CLI commands reach and authenticate to a running egressd's admin API.
#[derive(clap::Args)]
struct AdminAuth {
    /// Bearer token of the admin API (one of `serve --admin-tokens`).
    #[arg(long, env = "EGRESSD_ADMIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
}

#[derive(clap::Args)]
struct RemoteArgs {
    /// egressd's gRPC address.
    #[arg(long, default_value = "127.0.0.1:18000", env = "EGRESSD_SERVER")]
    server: String,
    #[command(flatten)]
    auth: AdminAuth,
}

#[derive(Subcommand)]
enum BreakGlassCommand {
    /// Let SERVICE reach a destination (or anything) for a while, past its own denies and the
    /// default deny (never past mesh-wide denies).
    Grant {
        #[arg(long)]
        service: String,
        /// HOST[:PORT]; without a port, any port.
        #[arg(long, conflicts_with = "all", required_unless_present = "all")]
        to: Option<String>,
        /// Any destination.
        #[arg(long)]
        all: bool,
        /// How long, e.g. 30m, 2h, 1h30m (at most the server's --max-grant-duration).
        #[arg(long = "for", value_parser = parse_duration)]
        duration: std::time::Duration,
        /// Why (required; carried by every decision the grant makes).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Active grants (with --all, also expired and revoked ones of the last day).
    List {
        #[arg(long)]
        all: bool,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// End a grant now.
    Revoke {
        id: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

#[derive(Subcommand)]
enum RolloutCommand {
    /// Per service: mode, checks and would-denies over the server's rollout window, and whether it
    /// is ready for its next step (dry-run -> canary -> enforce).
    Status {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        remote: RemoteArgs,
    },
    /// Re-arm a service whose rollback guard tripped.
    Reset {
        service: String,
        #[command(flatten)]
        remote: RemoteArgs,
    },
}

/// `30m`, `2h`, `1h30m`, `90s` (or ISO 8601 `PT30M`).
fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let d: jiff::SignedDuration =
        s.trim().parse().map_err(|e| format!("`{s}` is not a duration like 30m or 2h: {e}"))?;
    std::time::Duration::try_from(d).map_err(|_| format!("`{s}` is negative"))
}

/// The admin gRPC API (break-glass, Explain, rollout status) and its state.
#[derive(clap::Args)]
struct AdminArgs {
    /// Operators' admin API tokens: one `NAME TOKEN` per line (token >= 16 characters). The name is
    /// recorded as grantor. Without this file the admin API refuses every call.
    #[arg(long, env = "EGRESSD_ADMIN_TOKENS")]
    admin_tokens: Option<PathBuf>,
    /// Where break-glass grants are kept across restarts (written atomically).
    #[arg(long, default_value = "egressd-break-glass.json", env = "EGRESSD_BREAK_GLASS_STATE")]
    break_glass_state: PathBuf,
    /// Longest break-glass grant allowed.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_grant_duration: std::time::Duration,
    /// How long a service must run without would-denies to be ready for its next rollout step.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    rollout_window: std::time::Duration,
}

impl AdminArgs {
    fn config(self) -> anyhow::Result<server::AdminApiConfig> {
        let tokens = self.admin_tokens.map(|p| AdminTokens::load(&p)).transpose()?.map(Arc::new);
        let max = self.max_grant_duration.as_secs().max(1);
        let grants = GrantStore::open(&self.break_glass_state, max, policy::unix_now())?;
        Ok(server::AdminApiConfig {
            tokens,
            grants: Arc::new(grants),
            rollout_window_seconds: self.rollout_window.as_secs().max(1),
        })
    }
}

/// Decision spans (OTLP) and the audit log. The OTLP flags follow the standard variables.
#[derive(clap::Args)]
struct TelemetryArgs {
    /// OTLP/gRPC collector for decision spans, e.g. http://127.0.0.1:4317 (falls back to
    /// OTEL_EXPORTER_OTLP_ENDPOINT). No endpoint: no spans. OTEL_TRACES_EXPORTER=none or
    /// OTEL_SDK_DISABLED=true turn export off. Headers, timeout and TLS: OTEL_EXPORTER_OTLP_*.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")]
    otlp_endpoint: Option<String>,
    /// service.name of the spans (OTEL_RESOURCE_ATTRIBUTES adds more resource attributes).
    #[arg(long, env = "OTEL_SERVICE_NAME", default_value = "egressd")]
    otel_service_name: String,
    /// always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off,
    /// parentbased_traceidratio. Applies to allows; denies and would-denies are always recorded
    /// unless --sample-denies.
    #[arg(long, env = "OTEL_TRACES_SAMPLER", default_value = "parentbased_always_on")]
    traces_sampler: String,
    /// The sampler's ratio (0..1) for the *traceidratio samplers.
    #[arg(long, env = "OTEL_TRACES_SAMPLER_ARG")]
    traces_sampler_arg: Option<String>,
    /// Apply the sampler to denies and would-denies too.
    #[arg(long)]
    sample_denies: bool,
    /// Append one JSON line per decision to this file (schema in the README).
    #[arg(long, env = "EGRESSD_AUDIT_LOG")]
    audit_log: Option<PathBuf>,
    /// Rotate the audit log when it reaches this many MiB.
    #[arg(long, default_value_t = 100)]
    audit_max_mib: u64,
    /// Rotated audit files to keep (PATH.1 .. PATH.N).
    #[arg(long, default_value_t = 5)]
    audit_keep: u32,
    /// When the audit log is fsynced.
    #[arg(long, value_enum, default_value = "batch")]
    audit_fsync: FsyncPolicy,
    /// Decisions queued for the telemetry thread before new ones are dropped (and counted).
    #[arg(long, default_value_t = 16384)]
    telemetry_queue: usize,
}

impl TelemetryArgs {
    fn config(self) -> anyhow::Result<TelemetryConfig> {
        let env_is = |name: &str, value: &str| std::env::var(name).is_ok_and(|v| v.trim().eq_ignore_ascii_case(value));
        let disabled = env_is("OTEL_TRACES_EXPORTER", "none") || env_is("OTEL_SDK_DISABLED", "true");
        let endpoint = self.otlp_endpoint.or_else(|| std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok());
        let otlp = endpoint
            .filter(|e| !e.is_empty() && !disabled)
            .map(|endpoint| OtlpConfig::from_env(endpoint, self.otel_service_name))
            .transpose()?;
        let audit = self.audit_log.map(|path| AuditConfig {
            path,
            max_bytes: self.audit_max_mib.saturating_mul(1024 * 1024),
            keep: self.audit_keep,
            fsync: self.audit_fsync,
        });
        Ok(TelemetryConfig {
            otlp,
            audit,
            sampler: parse_sampler(&self.traces_sampler, self.traces_sampler_arg.as_deref())?,
            sample_denies: self.sample_denies,
            queue_capacity: self.telemetry_queue.max(1),
        })
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("egressd: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { policy, grpc_listen, admin_listen, telemetry, admin } => {
            serve(policy, grpc_listen, admin_listen, telemetry.config()?, admin.config()?)
        }
        Command::Validate { dir, strict } => validate(&dir.unwrap_or_else(|| DEFAULT_POLICY_DIR.into()), strict),
        Command::Check { policy, from, to, protocol, request_id, json, server: None, .. } => {
            check(policy, &from, &to, protocol, request_id.as_deref(), json)
        }
        Command::Check { from, to, protocol, request_id, json, server: Some(server), auth, .. } => {
            remote::check(&server, auth.token.as_deref(), &from, &to, protocol, request_id, json)
        }
        Command::BreakGlass(cmd) => remote::break_glass(cmd),
        Command::Rollout(cmd) => remote::rollout(cmd),
    }
}

/// The explicit directory, else ./mesh-config, else the embedded example.
fn policy_source(dir: Option<PathBuf>) -> anyhow::Result<PolicySource> {
    match dir {
        Some(dir) => Ok(PolicySource::from_dir(&dir)?),
        None if Path::new(DEFAULT_POLICY_DIR).is_dir() => Ok(PolicySource::from_dir(Path::new(DEFAULT_POLICY_DIR))?),
        None => Ok(PolicySource::embedded()),
    }
}

fn compile_or_report(source: &PolicySource) -> anyhow::Result<CompiledPolicy> {
    policy::compile(source, policy::unix_now())
        .map_err(|diags| anyhow::anyhow!("{} is invalid:\n{}", source.origin, policy::format_diagnostics(&diags)))
}

fn serve(
    dir: Option<PathBuf>,
    grpc_listen: SocketAddr,
    admin_listen: SocketAddr,
    telemetry: TelemetryConfig,
    admin_api: server::AdminApiConfig,
) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
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
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        let (telemetry, tasks) = Telemetry::start(telemetry).context("starting telemetry")?;
        let config = server::ServeConfig { grpc_listen, admin_listen, gateway: None, watch_dir, telemetry, admin_api };
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

fn validate(dir: &Path, strict: bool) -> anyhow::Result<ExitCode> {
    let source = PolicySource::from_dir(dir)?;
    let diags = match policy::compile(&source, policy::unix_now()) {
        Ok(compiled) => compiled.warnings,
        Err(diags) => diags,
    };
    for d in &diags {
        println!("{d}");
    }
    let errors = diags.iter().filter(|d| d.severity == Severity::Error || strict).count();
    if errors > 0 {
        eprintln!("{}: {errors} error(s)", dir.display());
        return Ok(ExitCode::FAILURE);
    }
    eprintln!("{}: valid ({} file(s), version {})", dir.display(), source.files.len(), source.version());
    Ok(ExitCode::SUCCESS)
}

fn check(
    dir: Option<PathBuf>,
    from: &str,
    to: &str,
    protocol: Option<Protocol>,
    request_id: Option<&str>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let compiled = compile_or_report(&policy_source(dir)?)?;
    let dest = explain::cli_destination(to, protocol).map_err(anyhow::Error::msg)?;
    let decision = compiled.decide(Some(from), Ok(&dest), request_id, policy::unix_now());
    if json {
        println!("{:#}", explain::json(&compiled, from, &dest, &decision, request_id));
    } else {
        print!("{}", explain::text(&compiled, from, &dest, &decision, request_id));
    }
    Ok(if decision.outcome.permits() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}
