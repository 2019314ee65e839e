//! Explaining a decision to a human (`egressd check`) or a program (`--json`).

use serde_json::json;

use crate::policy::fqdn::{Host, parse_authority};
use crate::policy::matcher::Miss;
use crate::policy::{CompiledPolicy, Decision, Destination, Mode, Outcome, Protocol, RuleInfo};

/// Builds the destination `egressd check --to HOST[:PORT] [--protocol P]` describes, with the same
/// defaults the gateway applies: the port from the protocol (http 80, https/tls 443), the protocol
/// from the port (80 http, 443 https, anything else tcp).
pub fn cli_destination(to: &str, protocol: Option<Protocol>) -> Result<Destination<'static>, String> {
    let (host, port) = parse_authority(to).map_err(|e| format!("--to {to}: {e}"))?;
    let host = host.into_owned();
    let protocol = protocol.unwrap_or(match port {
        None | Some(443) => Protocol::Https,
        Some(80) => Protocol::Http,
        Some(_) => Protocol::Tcp,
    });
    let port = match (port, protocol) {
        (Some(p), _) => p,
        (None, Protocol::Http) => 80,
        (None, Protocol::Https | Protocol::Tls) => 443,
        (None, Protocol::Tcp) => return Err(format!("--to {to}: a tcp destination needs a port (HOST:PORT)")),
    };
    if protocol == Protocol::Tls && matches!(host, Host::Ip(_)) {
        return Err(format!("--to {to}: TLS by SNI needs a name, not an IP address"));
    }
    Ok(Destination { host, port, protocol })
}

fn miss_text(rule: &RuleInfo, miss: Miss, dest: &Destination<'_>) -> String {
    let what = match miss {
        Miss::Port => format!("port {} is not in its ports {:?}", dest.port, rule.ports.as_deref().unwrap_or_default()),
        Miss::Protocol => format!("protocol {} is not in its protocols [{}]", dest.protocol, protocol_list(rule)),
        Miss::Expired => format!("it expired on {}", rule.expires.as_deref().unwrap_or("?")),
    };
    format!("{} ({}) matches {} but {what}", rule.id, rule.loc.short(), rule.target)
}

fn protocol_list(rule: &RuleInfo) -> String {
    rule.protocols.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(", ")
}

fn verdict_label(d: &Decision<'_>) -> &'static str {
    match d.outcome {
        Outcome::Allow => "ALLOW",
        Outcome::Deny => "DENY",
        Outcome::WouldDeny => "WOULD-DENY (allowed: not enforced)",
    }
}

/// What an observed unclaimed caller's explanation says about its identity: the decision has no
/// service, so without this line a would-deny would look unexplained.
const UNCLAIMED_OBSERVED: &str = "claimed by no service, and unclaimed callers are observed (MeshDefaults unclaimedIdentities: observe): let through as would-deny, mesh-wide denies enforced";

fn mode_text(d: &Decision<'_>, from: &str, request_id: Option<&str>) -> Option<String> {
    if d.observes_unclaimed() {
        return d.mode.map(|m| m.to_string());
    }
    let svc = d.service?;
    Some(match svc.mode {
        Mode::Canary => {
            let c = &svc.canary;
            let mut parts = Vec::new();
            if !c.workloads.is_empty() {
                let listed = if c.workloads.iter().any(|w| w == from) { "listed" } else { "not listed" };
                parts.push(format!("workloads {:?} enforced (this caller: {listed})", c.workloads));
            }
            if let Some(p) = c.workload_percent {
                let bucket = crate::policy::canary_bucket(from);
                parts.push(format!("{p}% of workloads enforced (this caller is in bucket {bucket} of 0..99)"));
            }
            if let Some(p) = c.request_percent {
                parts.push(match request_id {
                    Some(id) => format!(
                        "{p}% of requests enforced (request id {id:?} is in bucket {} of 0..99)",
                        crate::policy::canary_bucket(id)
                    ),
                    None => format!("{p}% of requests enforced (no --request-id given: the enforced outcome is shown)"),
                });
            }
            format!("canary: {}", parts.join("; "))
        }
        m => m.to_string(),
    })
}

pub fn text(
    policy: &CompiledPolicy,
    from: &str,
    dest: &Destination<'_>,
    d: &Decision<'_>,
    request_id: Option<&str>,
) -> String {
    let mut out = format!("{}  {from} -> {}:{} ({})\n", verdict_label(d), dest.host, dest.port, dest.protocol);
    let mut line = |k: &str, v: String| out.push_str(&format!("  {k:<9} {v}\n"));
    if let Some(svc) = d.service {
        line("service:", format!("{} ({})", svc.name, svc.loc.short()));
    }
    if d.observes_unclaimed() {
        line("identity:", UNCLAIMED_OBSERVED.to_string());
    }
    if let Some(mode) = mode_text(d, from, request_id) {
        line("mode:", mode);
    }
    if d.rolled_back {
        line("guard:", "rollback guard tripped: this service runs as dry-run until reset".to_string());
    }
    line("reason:", format!("{}: {}", d.reason.code(), d.reason));
    if let Some(rule) = d.rule {
        line("rule:", format!("{} at {}", rule.id, rule.loc));
        line("matches:", describe_rule(rule));
        if let Some(j) = &rule.justification {
            line("why:", j.clone());
        }
    }
    if let Some((rule, miss)) = d.near_miss {
        line("hint:", miss_text(rule, miss, dest));
    }
    line("policy:", format!("{} ({})", policy.version, policy.origin));
    out
}

fn describe_rule(rule: &RuleInfo) -> String {
    let mut s = format!("{} {}", rule.action_str(), rule.target);
    if let Some(ports) = &rule.ports {
        s.push_str(&format!(" ports {ports:?}"));
    }
    if !rule.protocols.is_empty() {
        s.push_str(&format!(" protocols [{}]", protocol_list(rule)));
    }
    if let Some(g) = &rule.group {
        s.push_str(&format!(" (group {g})"));
    }
    if let Some(e) = &rule.expires {
        s.push_str(&format!(", expires {e}"));
    }
    s
}

pub fn json(
    policy: &CompiledPolicy,
    from: &str,
    dest: &Destination<'_>,
    d: &Decision<'_>,
    request_id: Option<&str>,
) -> serde_json::Value {
    let mut out = json!({
        "decision": d.outcome.as_str(),
        "allowed": d.outcome.permits(),
        "reason": d.reason.code(),
        "detail": d.reason.to_string(),
        "from": from,
        "destination": { "host": dest.host.to_string(), "port": dest.port, "protocol": dest.protocol },
        "service": d.service.map(|s| s.name.as_str()),
        "mode": d.mode,
        "canary": d.service.filter(|s| s.mode == Mode::Canary).map(|s| &s.canary),
        "canaryBucket": request_id.filter(|_| d.mode == Some(Mode::Canary)).map(crate::policy::canary_bucket),
        "enforced": d.enforced,
        "rollbackGuardTripped": d.rolled_back,
        "rule": d.rule,
        "hint": d.near_miss.map(|(r, m)| miss_text(r, m, dest)),
        "policyVersion": policy.version,
    });
    // Only on these decisions, so every other explanation's shape stays as it was.
    if d.observes_unclaimed() {
        out["unclaimedIdentity"] = json!({ "observed": true, "detail": UNCLAIMED_OBSERVED });
    }
    out
}
