//! The commands that talk to a running egressd's admin API: `check --server`, `break-glass`,
//! `rollout`.

use std::process::ExitCode;

use anyhow::Context;
use egressd::admin::grpc::{AdminClient, connect_with, pb};
use egressd::policy::Protocol;

use super::{AdminAuth, BreakGlassCommand, RemoteArgs, RolloutCommand};

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting the async runtime")
}

async fn client(server: &str, auth: &AdminAuth) -> anyhow::Result<AdminClient> {
    let tls = auth.tls(server)?;
    connect_with(server, auth.token.as_deref(), tls.as_ref())
        .await
        .map_err(|e| anyhow::anyhow!("cannot reach egressd at {server}: {e}"))
}

fn status_error(server: &str) -> impl Fn(tonic::Status) -> anyhow::Error + '_ {
    move |s| anyhow::anyhow!("egressd at {server}: {} ({:?})", s.message(), s.code())
}

fn when(unix: i64) -> String {
    jiff::Timestamp::from_second(unix).map(|t| t.strftime("%Y-%m-%d %H:%M:%SZ").to_string()).unwrap_or_default()
}

pub fn check(
    server: &str,
    auth: &AdminAuth,
    from: &str,
    to: &str,
    protocol: Option<Protocol>,
    request_id: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let answer = runtime()?.block_on(async {
        let mut c = client(server, auth).await?;
        let req = pb::ExplainRequest {
            from: from.to_string(),
            to: to.to_string(),
            protocol: protocol.map(|p| p.as_str().to_string()).unwrap_or_default(),
            request_id: request_id.unwrap_or_default(),
        };
        c.explain(req).await.map(|r| r.into_inner()).map_err(status_error(server))
    })?;
    if json {
        let v: serde_json::Value = serde_json::from_str(&answer.json).context("server sent invalid JSON")?;
        outln!("{v:#}");
    } else {
        out!("{}", answer.text);
        outln!("  (decided by the live policy and break-glass grants of {server})");
    }
    Ok(if answer.permits { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn print_grants(grants: &[pb::Grant]) {
    if grants.is_empty() {
        outln!("no grants");
        return;
    }
    outln!("{:<24} {:<14} {:<32} {:<21} {:<12} REASON", "ID", "SERVICE", "TO", "EXPIRES", "BY");
    for g in grants {
        let to = match (g.all, g.port) {
            (true, _) => "any destination".to_string(),
            (false, 0) => format!("{} (any port)", g.host),
            (false, p) => format!("{}:{p}", g.host),
        };
        let state = if g.revoked_unix != 0 { format!(" [revoked by {}]", g.revoker) } else { String::new() };
        outln!(
            "{:<24} {:<14} {:<32} {:<21} {:<12} {}{state}",
            g.id,
            g.service,
            to,
            when(g.expires_unix),
            g.grantor,
            g.reason
        );
    }
}

fn grant_json(g: &pb::Grant) -> serde_json::Value {
    serde_json::json!({
        "id": g.id, "service": g.service, "host": (!g.all).then_some(&g.host),
        "port": (g.port != 0).then_some(g.port), "all": g.all, "createdUnix": g.created_unix,
        "expiresUnix": g.expires_unix, "reason": g.reason, "grantor": g.grantor,
        "revokedUnix": (g.revoked_unix != 0).then_some(g.revoked_unix),
        "revoker": (!g.revoker.is_empty()).then_some(&g.revoker),
    })
}

pub fn break_glass(cmd: BreakGlassCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match cmd {
        BreakGlassCommand::Grant { service, to, all, duration, reason, remote } => {
            let RemoteArgs { server, auth } = remote;
            let g = rt.block_on(async {
                let mut c = client(&server, &auth).await?;
                let req = pb::GrantBreakGlassRequest {
                    service,
                    to: to.unwrap_or_default(),
                    all,
                    duration_seconds: duration.as_secs(),
                    reason,
                };
                c.grant_break_glass(req).await.map(|r| r.into_inner()).map_err(status_error(&server))
            })?;
            outln!("granted {} until {} (by {})", g.id, when(g.expires_unix), g.grantor);
        }
        BreakGlassCommand::List { all, json, remote } => {
            let RemoteArgs { server, auth } = remote;
            let grants = rt.block_on(async {
                let mut c = client(&server, &auth).await?;
                let req = pb::ListGrantsRequest { include_inactive: all };
                c.list_grants(req).await.map(|r| r.into_inner().grants).map_err(status_error(&server))
            })?;
            if json {
                outln!("{:#}", serde_json::Value::Array(grants.iter().map(grant_json).collect()));
            } else {
                print_grants(&grants);
            }
        }
        BreakGlassCommand::Revoke { id, remote } => {
            let RemoteArgs { server, auth } = remote;
            let g = rt.block_on(async {
                let mut c = client(&server, &auth).await?;
                c.revoke_grant(pb::RevokeGrantRequest { id })
                    .await
                    .map(|r| r.into_inner())
                    .map_err(status_error(&server))
            })?;
            outln!("revoked {} (service {}, by {})", g.id, g.service, g.revoker);
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn rollout(cmd: RolloutCommand) -> anyhow::Result<ExitCode> {
    let rt = runtime()?;
    match cmd {
        RolloutCommand::Status { json, remote } => {
            let RemoteArgs { server, auth } = remote;
            let status = rt.block_on(async {
                let mut c = client(&server, &auth).await?;
                c.rollout_status(pb::RolloutStatusRequest {})
                    .await
                    .map(|r| r.into_inner())
                    .map_err(status_error(&server))
            })?;
            if json {
                let services: Vec<_> = status
                    .services
                    .iter()
                    .map(|s| {
                        serde_json::json!({
                            "service": s.service, "mode": s.mode, "effectiveMode": s.effective_mode,
                            "checks": s.checks, "denies": s.denies, "wouldDenies": s.would_denies,
                            "windowSeconds": s.window_seconds, "nextStep": (!s.next_step.is_empty()).then_some(&s.next_step),
                            "ready": s.ready, "detail": s.detail, "rollbackGuardTripped": s.guard_tripped,
                        })
                    })
                    .collect();
                outln!("{:#}", serde_json::json!({ "policyVersion": status.policy_version, "services": services }));
            } else {
                outln!(
                    "{:<14} {:<9} {:<9} {:>9} {:>7} {:>11} {:>8}  {:<8} DETAIL",
                    "SERVICE",
                    "MODE",
                    "EFFECTIVE",
                    "CHECKS",
                    "DENIES",
                    "WOULD-DENY",
                    "WINDOW",
                    "NEXT"
                );
                for s in &status.services {
                    let next = match (s.next_step.as_str(), s.ready) {
                        ("", _) => "-".to_string(),
                        (n, true) => format!("{n} ✓"),
                        (n, false) => format!("{n} ✗"),
                    };
                    outln!(
                        "{:<14} {:<9} {:<9} {:>9} {:>7} {:>11} {:>7}s  {:<8} {}",
                        s.service,
                        s.mode,
                        s.effective_mode,
                        s.checks,
                        s.denies,
                        s.would_denies,
                        s.window_seconds,
                        next,
                        s.detail
                    );
                }
                outln!("policy {}", status.policy_version);
            }
        }
        RolloutCommand::Reset { service, remote } => {
            let RemoteArgs { server, auth } = remote;
            let r = rt.block_on(async {
                let mut c = client(&server, &auth).await?;
                let req = pb::ResetRollbackGuardRequest { service: service.clone() };
                c.reset_rollback_guard(req).await.map(|r| r.into_inner()).map_err(status_error(&server))
            })?;
            if r.was_tripped {
                outln!("{service}: rollback guard reset; back to its configured mode");
            } else {
                outln!("{service}: rollback guard had not tripped (its window restarts now)");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
