//! Rollout status: per service, its configured and effective mode, what it did over the readiness
//! window, and whether it is ready for its next step (dry-run -> canary -> enforce): the window
//! saw traffic and not one deny or would-deny. Domain values; the admin API maps them to protobuf.

use serde::Serialize;

use super::guard::Guards;
use super::history::History;
use crate::policy::{CompiledPolicy, Mode, ServiceInfo};

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    pub services: Vec<ServiceRollout>,
    pub policy_version: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceRollout {
    pub service: String,
    pub mode: Mode,
    /// `dry-run` while the rollback guard has it tripped, else its mode.
    pub effective_mode: Mode,
    pub checks: u64,
    pub denies: u64,
    pub would_denies: u64,
    /// Seconds of the window actually observed.
    pub window_seconds: u64,
    /// The mode it can move to, if any.
    pub next_step: Option<Mode>,
    pub ready: bool,
    pub detail: String,
    pub guard_tripped: bool,
}

/// The status of every service of `policy` over `window_seconds` before `now`.
pub fn status(
    policy: &CompiledPolicy,
    history: &History,
    guards: &Guards,
    window_seconds: u64,
    now: i64,
) -> RolloutStatus {
    let since = now - window_seconds as i64;
    let services = policy
        .services
        .iter()
        .map(|svc| {
            let (counts, covered) = history.since(&svc.name, since).unwrap_or(([0; 3], 0));
            service_rollout(svc, counts, covered, guards.is_tripped(&svc.name), window_seconds)
        })
        .collect();
    RolloutStatus { services, policy_version: policy.version.clone() }
}

fn service_rollout(
    svc: &ServiceInfo,
    [checks, denies, would_denies]: [u64; 3],
    covered: u64,
    guard_tripped: bool,
    window: u64,
) -> ServiceRollout {
    let next_step = match svc.mode {
        Mode::DryRun => Some(Mode::Canary),
        Mode::Canary => Some(Mode::Enforce),
        Mode::Enforce => None,
    };
    let rejected = denies + would_denies;
    let (ready, detail) = if svc.mode == Mode::Enforce {
        (false, "enforcing: nothing further".to_string())
    } else if guard_tripped {
        (false, "rollback guard tripped: reset it once the policy is fixed".to_string())
    } else if rejected > 0 {
        (false, format!("{rejected} denied or would-denied checks in the last {covered}s"))
    } else if checks == 0 {
        (false, format!("no traffic in the last {covered}s"))
    } else if covered < window {
        (false, format!("clean so far, but only {covered}s of the {window}s window observed"))
    } else {
        (true, format!("no would-deny in {checks} checks over {window}s"))
    };
    ServiceRollout {
        service: svc.name.clone(),
        mode: svc.mode,
        effective_mode: if guard_tripped { Mode::DryRun } else { svc.mode },
        checks,
        denies,
        would_denies,
        window_seconds: covered,
        next_step,
        ready,
        detail,
        guard_tripped,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};

    #[test]
    fn readiness_needs_a_whole_clean_window_with_traffic() {
        let text = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: d\nidentities: [spiffe://corp.example/ns/d/sa/x]\nmode: dry-run\n";
        let policy = compile(&PolicySource::from_text("d.yaml", text), 0).unwrap();
        let svc = &policy.services[0];
        let row = |counts, covered| service_rollout(svc, counts, covered, false, 600);
        assert!(!row([0, 0, 0], 600).ready, "no traffic");
        assert!(!row([10, 0, 1], 600).ready, "a would-deny");
        assert!(!row([10, 0, 0], 300).ready, "half the window");
        let ready = row([10, 0, 0], 600);
        assert!(ready.ready && ready.next_step == Some(Mode::Canary), "{ready:?}");
        let tripped = service_rollout(svc, [10, 0, 0], 600, true, 600);
        assert!(!tripped.ready && tripped.effective_mode == Mode::DryRun);
    }
}
