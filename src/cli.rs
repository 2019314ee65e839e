//! The `egressd` command line: its arguments (clap lives here and only here), and the commands,
//! which run offline (`local`) or through a running egressd's admin API (`remote`).

#[macro_use]
mod output;
mod detect;
mod devpki;
mod export;
mod lint;
mod local;
mod matrix;
mod observe;
mod remote;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use egressd::admin::tokens::AdminTokens;
use egressd::policy::Protocol;
use egressd::runtime::breakglass::GrantStore;
use egressd::runtime::store::etcd::{EtcdConfig, EtcdStore};
use egressd::server;
use egressd::telemetry::audit::{AuditConfig, FsyncPolicy};
use egressd::telemetry::spans::parse_sampler;
use egressd::telemetry::{OtlpConfig, TelemetryConfig};

/// Runs the command line; exit code 2 on an error before or outside a decision.
pub fn main() -> ExitCode {
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
        Command::Serve { policy, grpc_listen, admin_listen, dns_listen, tls, telemetry, admin } => {
            let listen = local::Listen { grpc: grpc_listen, admin: admin_listen, dns: dns_listen, tls: tls.config() };
            local::serve(policy, listen, telemetry.config()?, (*admin).config()?)
        }
        Command::Validate { dir, strict } => {
            local::validate(&dir.unwrap_or_else(|| local::DEFAULT_POLICY_DIR.into()), strict)
        }
        Command::Lint { dir, format, fail_on } => lint::lint(dir, format, fail_on),
        Command::Export(args) => export::export(args),
        Command::Check { policy, from, to, protocol, request_id, json, server: None, .. } => {
            local::check(policy, &from, &to, protocol.map(Into::into), request_id.as_deref(), json)
        }
        Command::Check { from, to, protocol, request_id, json, server: Some(server), auth, .. } => {
            remote::check(&server, &auth, &from, &to, protocol.map(Into::into), request_id, json)
        }
        Command::BreakGlass(cmd) => remote::break_glass(cmd),
        Command::Rollout(cmd) => remote::rollout(cmd),
        Command::Discover(ReplayArgs { policy, input, format }) => observe::discover(policy, input, format),
        Command::Report(ReportCommand::Impact(ReplayArgs { policy, input, format })) => {
            observe::impact(policy, input, format)
        }
        Command::Report(ReportCommand::Stale(args)) => observe::stale(args),
        Command::Report(ReportCommand::Matrix(args)) => matrix::matrix(args),
        Command::Plan { base, head, input, format } => observe::plan(base, head, input, format),
        Command::Learn { policy, input, diff, write, min_siblings, any_port, format } => {
            let options = egressd::learn::LearnOptions { min_siblings, any_port };
            let output = if write {
                observe::LearnOutput::Write
            } else if diff {
                observe::LearnOutput::Diff
            } else {
                observe::LearnOutput::Summary(format)
            };
            observe::learn(policy, input, options, output)
        }
        Command::Init { dir, trust_domain } => {
            local::init(&dir.unwrap_or_else(|| local::DEFAULT_POLICY_DIR.into()), &trust_domain)
        }
        Command::DevPki(args) => devpki::dev_pki(args),
        Command::Detect(args) => detect::detect(args),
    }
}

/// `--protocol`: the CLI's face of `Protocol` (clap's possible values and help per value).
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ProtocolArg {
    /// A plaintext HTTP request proxied by the gateway.
    Http,
    /// HTTPS: a CONNECT tunnel to port 443, or a request with the `https` scheme.
    Https,
    /// TLS passed through by SNI.
    Tls,
    /// An opaque TCP stream: a CONNECT tunnel to another port, or a network check with no SNI.
    Tcp,
}

impl From<ProtocolArg> for Protocol {
    fn from(p: ProtocolArg) -> Protocol {
        match p {
            ProtocolArg::Http => Protocol::Http,
            ProtocolArg::Https => Protocol::Https,
            ProtocolArg::Tls => Protocol::Tls,
            ProtocolArg::Tcp => Protocol::Tcp,
        }
    }
}

/// `--audit-fsync`: the CLI's face of `FsyncPolicy`.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FsyncArg {
    /// Leave it to the OS (records are still written out at least every flush interval).
    Never,
    /// After each batch: at most one flush interval (200 ms) of records is at risk on power loss.
    Batch,
    /// After every record (slowest; the telemetry queue absorbs bursts, drops are counted).
    Always,
}

impl From<FsyncArg> for FsyncPolicy {
    fn from(f: FsyncArg) -> FsyncPolicy {
        match f {
            FsyncArg::Never => FsyncPolicy::Never,
            FsyncArg::Batch => FsyncPolicy::Batch,
            FsyncArg::Always => FsyncPolicy::Always,
        }
    }
}

#[derive(Parser)]
#[command(name = "egressd", version, about = "Default-deny, explainable egress for an Envoy egress gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand)]
pub enum Command {
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
        /// DNS firewall listen address (UDP and TCP), overriding the DnsFirewall document's
        /// `listen`. Without a DnsFirewall document no DNS is served.
        #[arg(long, env = "EGRESSD_DNS_LISTEN")]
        dns_listen: Option<SocketAddr>,
        #[command(flatten)]
        tls: GrpcTlsArgs,
        #[command(flatten)]
        telemetry: TelemetryArgs,
        // Boxed: the largest variant by far, and `Command` is moved around by value.
        #[command(flatten)]
        admin: Box<AdminArgs>,
    },
    /// Validate a policy directory: exit 0 if valid, else print FILE:LINE:COL: message and exit 1.
    Validate {
        /// Policy directory (default: ./mesh-config).
        dir: Option<PathBuf>,
        /// Treat warnings (expired allows, overlapping identities) as errors.
        #[arg(long)]
        strict: bool,
    },
    /// Policy anti-patterns (allow-all CIDRs, multi-tenant wildcards, open admin ports, endless
    /// dry-runs...), each with an id (EGR001...), FILE:LINE:COL and a fix. Exit 0 when nothing is
    /// at or above --fail-on, 1 otherwise, 2 when the policy does not load (its errors are printed).
    Lint {
        /// Policy directory. Default: ./mesh-config, or the example policy built into the binary
        /// when that directory does not exist.
        dir: Option<PathBuf>,
        #[arg(long, value_enum, default_value = "text")]
        format: LintFormat,
        /// The lowest severity that fails the run (notes never do).
        #[arg(long, value_enum, default_value = "error")]
        fail_on: FailOn,
    },
    /// The policy compiled for another enforcement layer: Kubernetes NetworkPolicy (the gateway as
    /// the only way out), Istio ServiceEntries and AuthorizationPolicy, CiliumNetworkPolicy. What a
    /// layer cannot express is reported as a warning on standard error, never silently dropped.
    Export(ExportArgs),
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
        protocol: Option<ProtocolArg>,
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
    /// Write a development PKI into DIR: a CA, the gateway's certificate and an SVID (X.509 with a
    /// SPIFFE URI SAN) per service identity of the policy, for the quick start's gateway. Not for
    /// production: the keys are written unencrypted.
    DevPki(DevPkiArgs),
    /// Exfiltration and C2 signals over audit logs, in the records' own time (a day of history
    /// runs in seconds): beaconing, tunnel-like names, first-seen and rare domains, large uploads,
    /// deny bursts. One line per signal (one JSON object per line with --format json), a summary
    /// on standard error. Exit 0; 3 with --fail-on-signal when a signal fired; 2 on bad input.
    Detect(DetectArgs),
    /// Write a starter policy (dry-run, unclaimed callers observed, a mesh-wide deny floor,
    /// commented-out destination groups) into DIR; refuses if DIR already holds policy files.
    Init {
        /// Directory to create the policy in (default: ./mesh-config); created if missing.
        dir: Option<PathBuf>,
        /// The SPIFFE trust domain of your workloads (spiffe://TD/...).
        #[arg(long, default_value = "cluster.local")]
        trust_domain: String,
    },
    /// Time-boxed, audited exceptions to a service's policy, through a running egressd.
    #[command(name = "break-glass", subcommand)]
    BreakGlass(BreakGlassCommand),
    /// Rollout progress of every service, through a running egressd.
    #[command(subcommand)]
    Rollout(RolloutCommand),
    /// The observed flows: per service, destinations with ports, protocols, hits, workloads,
    /// first and last seen, and what today's policy does to each.
    Discover(ReplayArgs),
    /// Proposes the allows that would let the observed would-deny and deny flows through (never
    /// past a mesh-wide deny or an identity failure), as edits of the policy files: exact hosts,
    /// the observed ports, each justified `TODO` for a reviewer to answer.
    Learn {
        /// Policy directory to learn into (default: ./mesh-config).
        #[arg(long)]
        policy: Option<PathBuf>,
        #[command(flatten)]
        input: FlowInput,
        /// Print the change as a unified diff of the policy directory.
        #[arg(long, conflicts_with = "write")]
        diff: bool,
        /// Apply exactly that diff: edit the services' own files in place, new files for
        /// unclaimed identities.
        #[arg(long)]
        write: bool,
        /// Distinct names under one parent (addresses in one /24) before they become one
        /// `*.parent` (one CIDR).
        #[arg(long, default_value_t = 5)]
        min_siblings: usize,
        /// Propose allows without `ports` (any port) instead of the observed ports.
        #[arg(long)]
        any_port: bool,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
    /// Reports on observed flows.
    #[command(subcommand)]
    Report(ReportCommand),
    /// Replays the observed flows through two policy sets and lists every flow whose decision
    /// changes. Exit 0 when nothing let through today would be blocked, 3 otherwise.
    Plan {
        /// The policy directory as it is (e.g. the main branch).
        #[arg(long)]
        base: PathBuf,
        /// The policy directory as proposed (e.g. the pull request).
        #[arg(long)]
        head: PathBuf,
        #[command(flatten)]
        input: FlowInput,
        #[arg(long, value_enum, default_value = "text")]
        format: OutputFormat,
    },
}

#[derive(Subcommand)]
pub enum ReportCommand {
    /// What switching a service to `enforce` would deny now, and whether it is ready by the
    /// rollout criteria (traffic observed, not one request denied). Exit 0 ready, 1 not ready.
    Impact(ReplayArgs),
    /// What the policy allows that nobody uses: allows and group destinations without hits in the
    /// window (oldest first), wildcards that matched a few names, allows one workload of many
    /// used, unused groups, break-glass grants never used. Exit 3 with --fail-on-stale and findings.
    Stale(StaleArgs),
    /// The audit-ready egress matrix: every rule with its service (owner, identities, mode),
    /// destination, ports, protocols, justification, expiry and location, with hits and last seen
    /// when flows are given; and each service's third-party dependencies.
    Matrix(MatrixArgs),
}

#[derive(clap::Args)]
pub struct DetectArgs {
    /// Audit log written by `serve --audit-log` (repeatable; rotated files PATH.N..PATH.1 are read
    /// too). Records of several logs are merged by time.
    #[arg(long = "audit-log", required = true)]
    pub audit_log: Vec<PathBuf>,
    /// Policy directory: its MeshDefaults `detection:` thresholds, and which allow rules name an
    /// exact host (a reviewed dependency; see the README). Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Start from this first-seen history (the state file of `serve --detect-state`); read only.
    #[arg(long)]
    pub state: Option<PathBuf>,
    /// Only signals of this kind (repeatable): beaconing, dns-tunnel, first-seen, rare,
    /// large-upload, deny-burst.
    #[arg(long)]
    pub kind: Vec<String>,
    /// Only signals about this service.
    #[arg(long)]
    pub service: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
    /// Labelled attacks (a JSON array of {kind, spiffe_id or service, destination}, as
    /// examples/detect_corpus.rs writes): print precision and recall per detector.
    #[arg(long)]
    pub labels: Option<PathBuf>,
    /// Exit 3 when any signal fired (after the filters).
    #[arg(long)]
    pub fail_on_signal: bool,
}

#[derive(clap::Args)]
pub struct DevPkiArgs {
    /// Directory to write the PEM files into; created if missing.
    pub dir: PathBuf,
    /// Policy whose service identities get an SVID. Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Overwrite files already in DIR.
    #[arg(long)]
    pub force: bool,
}

#[derive(clap::Args)]
pub struct ExportArgs {
    #[arg(value_enum)]
    pub target: ExportTarget,
    /// Policy directory. Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Write one file per object kind into this directory instead of one YAML stream on stdout
    /// (rpz: the zone file `<zone>.rpz` into it).
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// rpz: the zone's name.
    #[arg(long, value_name = "NAME", default_value = egressd::export::rpz::DEFAULT_ZONE)]
    pub zone: String,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum ExportTarget {
    /// Kubernetes NetworkPolicy: pods may leave only through the egress gateway and DNS.
    Networkpolicy,
    /// Istio ServiceEntries for every allowed host and the egress gateway's AuthorizationPolicy.
    Istio,
    /// CiliumNetworkPolicy per service (toFQDNs, toPorts, toCIDR, egressDeny).
    Cilium,
    /// A DNS Response Policy Zone (unbound, BIND): allowed names pass, every other name NXDOMAIN.
    Rpz,
}

#[derive(clap::Args)]
pub struct StaleArgs {
    /// Policy directory. Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub input: FlowInput,
    /// A rule is stale when nothing it decides was seen within this age: 30d, 12h.
    #[arg(long, value_name = "AGE", default_value = "30d")]
    pub window: String,
    /// `serve --break-glass-state` file: grants made in the window that decided no request are reported.
    #[arg(long, value_name = "PATH")]
    pub break_glass_state: Option<PathBuf>,
    /// Exit 3 when anything is stale (for CI).
    #[arg(long)]
    pub fail_on_stale: bool,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

#[derive(clap::Args)]
pub struct MatrixArgs {
    /// Policy directory. Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    /// Optional: with --audit-log or --server, each rule gets its hits and last seen.
    #[command(flatten)]
    pub input: FlowInput,
    /// Hits are counted over flows seen within this age.
    #[arg(long, value_name = "AGE", default_value = "30d")]
    pub window: String,
    #[arg(long, value_enum, default_value = "md")]
    pub format: MatrixFormat,
    /// Write to this file instead of standard output.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum MatrixFormat {
    /// Markdown tables.
    Md,
    /// One row per rule, RFC 4180.
    Csv,
    Json,
    /// One self-contained file: a sortable table and a services-to-destinations diagram.
    Html,
}

/// Observed flows replayed with one policy.
#[derive(clap::Args)]
pub struct ReplayArgs {
    /// Policy directory the flows are replayed with. Default as for `serve`.
    #[arg(long)]
    pub policy: Option<PathBuf>,
    #[command(flatten)]
    pub input: FlowInput,
    #[arg(long, value_enum, default_value = "text")]
    pub format: OutputFormat,
}

/// Where observed flows come from.
#[derive(clap::Args)]
pub struct FlowInput {
    /// An audit log of `serve --audit-log` (repeatable); its rotated files PATH.N .. PATH.1 are read too.
    #[arg(long = "audit-log", value_name = "PATH")]
    pub audit_log: Vec<PathBuf>,
    /// A running egressd's admin address (HOST:PORT): its live flow table (GET /flows).
    #[arg(long, value_name = "ADDR")]
    pub server: Option<String>,
    /// Only what was seen within this age: 7d, 12h, 30m.
    #[arg(long, value_name = "AGE")]
    pub since: Option<String>,
    /// Only this service's flows (or an unclaimed identity's SPIFFE ID); `report impact` needs it.
    #[arg(long, value_name = "SERVICE")]
    pub service: Option<String>,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum LintFormat {
    /// `FILE:LINE:COL: LEVEL[ID]: message` and a hint line.
    Text,
    /// An array of findings.
    Json,
    /// SARIF 2.1.0, for GitHub code scanning.
    Sarif,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum FailOn {
    Error,
    Warning,
}

/// The gRPC port over TLS.
#[derive(clap::Args)]
pub struct GrpcTlsArgs {
    /// Serve the gRPC port (Check, ADS, access log, health, admin API) over TLS with this
    /// certificate chain (PEM). Gateways then reach egressd with TLS: set the Gateway document's
    /// `authz.tls`. The three files are read again when their directories change (a renewed
    /// certificate is served to new connections, no restart; a set that does not load is logged
    /// and the last good one stays).
    #[arg(long, requires = "tls_key", env = "EGRESSD_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// The private key (PEM) of --tls-cert.
    #[arg(long, requires = "tls_cert", env = "EGRESSD_TLS_KEY")]
    tls_key: Option<PathBuf>,
    /// CA bundle (PEM) that signs callers' client certificates. A certificate is optional; the
    /// admin API accepts one whose SPIFFE ID MeshDefaults `adminIdentities` lists.
    #[arg(long, requires = "tls_cert", env = "EGRESSD_CLIENT_CA")]
    client_ca: Option<PathBuf>,
}

impl GrpcTlsArgs {
    fn config(self) -> Option<server::tls::GrpcTls> {
        let (cert, key) = (self.tls_cert?, self.tls_key?);
        Some(server::tls::GrpcTls { cert, key, client_ca: self.client_ca })
    }
}

/// How CLI commands reach and authenticate to a running egressd's admin API.
#[derive(clap::Args)]
pub struct AdminAuth {
    /// Bearer token of the admin API (one of `serve --admin-tokens`).
    #[arg(long, env = "EGRESSD_ADMIN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// CA bundle (PEM) that signed the server's certificate: connect over TLS (a server started
    /// with --tls-cert). An `https://` --server needs it.
    #[arg(long, env = "EGRESSD_CA")]
    pub ca: Option<PathBuf>,
    /// Client certificate (PEM) to present over TLS, e.g. an SVID listed in adminIdentities.
    #[arg(long, requires_all = ["key", "ca"], env = "EGRESSD_CERT")]
    pub cert: Option<PathBuf>,
    /// The private key (PEM) of --cert.
    #[arg(long, requires = "cert", env = "EGRESSD_KEY")]
    pub key: Option<PathBuf>,
}

impl AdminAuth {
    /// The TLS settings these flags name, read from their files.
    pub fn tls(&self, server: &str) -> anyhow::Result<Option<egressd::admin::grpc::ClientTls>> {
        use anyhow::Context as _;
        let read = |flag: &str, p: &PathBuf| std::fs::read(p).with_context(|| format!("{flag} {}", p.display()));
        let Some(ca) = &self.ca else {
            anyhow::ensure!(
                !server.starts_with("https://"),
                "--server {server} is TLS: name the CA that signed its certificate with --ca PATH"
            );
            return Ok(None);
        };
        let identity = match (&self.cert, &self.key) {
            (Some(c), Some(k)) => Some((read("--cert", c)?, read("--key", k)?)),
            _ => None,
        };
        Ok(Some(egressd::admin::grpc::ClientTls { ca_pem: read("--ca", ca)?, identity }))
    }
}

#[derive(clap::Args)]
pub struct RemoteArgs {
    /// egressd's gRPC address.
    #[arg(long, default_value = "127.0.0.1:18000", env = "EGRESSD_SERVER")]
    pub server: String,
    #[command(flatten)]
    pub auth: AdminAuth,
}

#[derive(Subcommand)]
pub enum BreakGlassCommand {
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
pub enum RolloutCommand {
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

/// `--state`: where run-time state lives.
#[derive(Clone, Copy, clap::ValueEnum)]
pub enum StateArg {
    /// This process, grants in the --break-glass-state file.
    File,
    /// etcd, shared by replicas (--etcd-endpoints, --etcd-prefix).
    Etcd,
}

/// The admin gRPC API (break-glass, Explain, rollout status) and its state.
#[derive(clap::Args)]
pub struct AdminArgs {
    /// Operators' admin API tokens: one `NAME TOKEN` per line (token >= 16 characters). The name is
    /// recorded as grantor. Without this file the admin API refuses every call.
    #[arg(long, env = "EGRESSD_ADMIN_TOKENS")]
    admin_tokens: Option<PathBuf>,
    /// Where break-glass grants are kept across restarts (written atomically). With --state file.
    #[arg(long, default_value = "egressd-break-glass.json", env = "EGRESSD_BREAK_GLASS_STATE")]
    break_glass_state: PathBuf,
    /// Where run-time state (break-glass grants, rollback-guard trips) lives: `file` (this
    /// process and --break-glass-state) or `etcd`, shared by every replica using the same
    /// --etcd-endpoints and --etcd-prefix. With etcd away, replicas serve the last known state and
    /// refuse new grants (UNAVAILABLE) until it is back.
    #[arg(long, value_enum, default_value = "file", env = "EGRESSD_STATE")]
    state: StateArg,
    /// etcd members for --state etcd: URL[,URL...], e.g. http://10.0.0.5:2379.
    #[arg(long, value_delimiter = ',', value_name = "URL", env = "EGRESSD_ETCD_ENDPOINTS")]
    etcd_endpoints: Vec<String>,
    /// Key prefix in etcd (a trailing `/` is added if missing): keys are PREFIX + grants/ID and
    /// PREFIX + guard-trips/SERVICE. Replicas sharing state share the prefix.
    #[arg(long, default_value = "/egressd/", value_name = "PREFIX", env = "EGRESSD_ETCD_PREFIX")]
    etcd_prefix: String,
    /// Longest break-glass grant allowed.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    max_grant_duration: std::time::Duration,
    /// How long a service must run without would-denies to be ready for its next rollout step.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    rollout_window: std::time::Duration,
}

impl AdminArgs {
    pub fn config(self) -> anyhow::Result<server::AdminApiConfig> {
        let tokens = self.admin_tokens.map(|p| AdminTokens::load(&p)).transpose()?.map(Arc::new);
        let max = self.max_grant_duration.as_secs().max(1);
        let grants = match self.state {
            StateArg::File => GrantStore::open(&self.break_glass_state, max, egressd::clock::unix_now())?,
            StateArg::Etcd => {
                let endpoints: Vec<String> =
                    self.etcd_endpoints.into_iter().map(|e| e.trim().to_string()).filter(|e| !e.is_empty()).collect();
                anyhow::ensure!(!endpoints.is_empty(), "--state etcd needs --etcd-endpoints URL[,URL]");
                let store = EtcdStore::new(EtcdConfig::new(endpoints, &self.etcd_prefix));
                GrantStore::with_store(Arc::new(store), max)
            }
        };
        Ok(server::AdminApiConfig {
            tokens,
            grants: Arc::new(grants),
            rollout_window_seconds: self.rollout_window.as_secs().max(1),
        })
    }
}

/// Decision spans (OTLP) and the audit log. The OTLP flags follow the standard variables.
#[derive(clap::Args)]
pub struct TelemetryArgs {
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
    audit_fsync: FsyncArg,
    /// Decisions queued for the telemetry thread before new ones are dropped (and counted).
    /// Decisions are queued by value: the queue holds ~370 bytes a slot (6 MiB at the default).
    #[arg(long, default_value_t = 16384)]
    telemetry_queue: usize,
    /// Flows the live flow table keeps (GET /flows on the admin port); beyond it the least
    /// recently seen are evicted and counted. 0 turns the table off.
    #[arg(long, default_value_t = egressd::flows::live::DEFAULT_CAPACITY, env = "EGRESSD_FLOW_TABLE_SIZE")]
    flow_table_size: usize,
    /// Do not run the exfiltration and C2 detectors (GET /signals). They run on the telemetry
    /// thread, off the Check path; the policy's MeshDefaults `detection: {enabled: false}` turns
    /// them off too.
    #[arg(long)]
    no_detect: bool,
    /// The detectors' first-seen history (which registrable domains each service has reached),
    /// loaded at start and saved atomically every minute when changed. Without it, every start
    /// begins a new learning period.
    #[arg(long, env = "EGRESSD_DETECT_STATE")]
    detect_state: Option<PathBuf>,
}

impl TelemetryArgs {
    pub fn config(self) -> anyhow::Result<TelemetryConfig> {
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
            fsync: self.audit_fsync.into(),
        });
        Ok(TelemetryConfig {
            otlp,
            audit,
            sampler: parse_sampler(&self.traces_sampler, self.traces_sampler_arg.as_deref())?,
            sample_denies: self.sample_denies,
            queue_capacity: self.telemetry_queue.max(1),
            flows: (self.flow_table_size > 0).then(|| egressd::flows::live::LiveFlows::shared(self.flow_table_size)),
            detect: (!self.no_detect).then(|| egressd::telemetry::signals::DetectSetup {
                state_path: self.detect_state,
                signals: Default::default(),
                policy: None,
            }),
        })
    }
}
