//! One check, start to finish: view the request once, decide, apply the run-time overrides, order
//! a permitted CONNECT's tunnel check (`tunnel::order`), and produce Envoy's answer, the verdict and the
//! request's facts for telemetry. The server, the reference form used by tests and benchmarks,
//! and the offline tools all go through `Checker::check`, so they cannot disagree.

use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use tonic::codegen::http;

use super::cache::ResponseCache;
use super::codec::CheckAnswer;
use super::forward::Forward;
use super::request::{self, CheckView};
use super::{response, tunnel};
use crate::contract::{GATEWAY_GENERATED, GATEWAY_METADATA, UPSTREAM_TLS_METADATA, UPSTREAM_TLS_ORIGINATE};
use crate::identity::WorkloadId;
use crate::policy::external_gateway::{ExternalGateway, HttpUpstream};
use crate::policy::{CompiledPolicy, Decision, Destination, Malformed, Protocol, Reason, TunnelTls, Verdict};
use crate::runtime::RuntimeOverrides;
use crate::telemetry::record::RequestFacts;

/// What the gateway that sent a check can do with a permitted request, from the Check call's
/// gRPC metadata (the generated gateway declares it; another gateway declares nothing).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GatewayCaps {
    /// It originates TLS for `https://` proxy requests (Gateway `upstreamTls`).
    pub originates_tls: bool,
    /// It strips and removes egressd's internal headers and XFCC itself (the generated gateway):
    /// answers carry no removal list.
    pub removes_headers: bool,
    /// It routes by its own configuration (an external gateway, `policy::external_gateway`):
    /// answers set no `x-egress-*` headers, they only remove them.
    pub routes_itself: bool,
    /// What its HTTP listener's requests leave as (an external gateway's `httpUpstream`): decided
    /// so instead of by their `:scheme`.
    pub http_upstream: Option<HttpUpstream>,
}

impl GatewayCaps {
    pub fn from_metadata(metadata: &http::HeaderMap) -> Self {
        let is = |key: &str, value: &str| metadata.get(key).is_some_and(|v| v.as_bytes() == value.as_bytes());
        GatewayCaps {
            originates_tls: is(UPSTREAM_TLS_METADATA, UPSTREAM_TLS_ORIGINATE),
            removes_headers: is(GATEWAY_METADATA, GATEWAY_GENERATED),
            routes_itself: false,
            http_upstream: None,
        }
    }

    /// The gateway egressd generates, with or without TLS origination (tests, tools).
    pub fn generated(originates_tls: bool) -> Self {
        GatewayCaps { originates_tls, removes_headers: true, ..GatewayCaps::default() }
    }

    /// An external gateway, as its Gateway document describes it.
    pub fn external(gateway: &ExternalGateway) -> Self {
        GatewayCaps {
            originates_tls: gateway.http_upstream.is_some_and(|u| u.protocol == Protocol::Https),
            removes_headers: false,
            routes_itself: true,
            http_upstream: gateway.http_upstream,
        }
    }
}

/// The call around a CheckRequest: its metadata (trace context) and the gateway's capabilities.
#[derive(Debug, Clone, Copy, Default)]
pub struct Call<'m> {
    pub metadata: Option<&'m http::HeaderMap>,
    pub gateway: GatewayCaps,
    /// What telemetry keeps of the request.
    pub capture: Capture,
    /// Where a `Capture::Flows` check counts its flow.
    pub flows: Option<&'m crate::flows::live::LiveFlowTable>,
    /// A `Capture::Flows` check also notes its second and body for the detectors, which then
    /// read the flow table's timelines instead of queued decisions.
    pub timeline: bool,
}

/// What of a request the Check path copies for telemetry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Capture {
    /// Nothing: telemetry records no decisions.
    #[default]
    Nothing,
    /// Who went where, counted by the Check path into the live flow table (`Call::flows`): no
    /// request facts are copied, nothing is queued.
    Flows,
    /// Everything spans and the audit log name, trace context included.
    Full,
}

impl Capture {
    fn trace(self) -> bool {
        self == Capture::Full
    }
}

/// Counts a decision in the live flow table, where it was made: borrowed strings, no copy for a
/// flow this thread saw since the last drain (`flows::pending`). With `detected` (the request,
/// when the detectors read the table), also its second and body size.
fn note_flow(
    table: &crate::flows::live::LiveFlowTable,
    view: &CheckView<'_>,
    decision: &Decision<'_>,
    now: i64,
    detected: Option<&CheckRequest>,
) {
    use crate::flows::{Observation, SubjectRef, rule_of_decision};
    let Ok(dest) = &view.destination else { return };
    let timeline = detected.map(|req| crate::flows::pending::TimelineNote {
        exact_host: decision.rule.is_some_and(|r| crate::detect::names_exact_host(r.host.as_ref())),
        body_bytes: super::facts::body_size(req, view.is_http).unwrap_or(0),
    });
    let principal = view.principal.as_ref().ok().and_then(|p| p.as_deref());
    let service = decision.service.map(|s| s.name.as_str());
    let Some(subject) = SubjectRef::of_decision(service, principal, &decision.reason) else { return };
    let ip_text;
    let host = match &dest.host {
        crate::policy::fqdn::Host::Name(n) => n.as_ref(),
        crate::policy::fqdn::Host::Ip(ip) => {
            ip_text = ip.to_string();
            ip_text.as_str()
        }
    };
    table.note(
        &Observation {
            time_ms: now.saturating_mul(1000),
            subject,
            workload: principal,
            host,
            port: dest.port,
            protocol: dest.protocol,
            decision: decision.outcome,
            reason: decision.reason.code(),
            rule: rule_of_decision(&decision.reason, decision.rule.map(|r| r.id.as_str())),
        },
        timeline,
    );
}

/// The outcome of one check.
pub struct Checked {
    pub answer: CheckAnswer,
    pub verdict: Verdict,
    /// The request's facts, when the call asked for them.
    pub facts: Option<RequestFacts>,
}

/// Checks requests against one policy version.
pub struct Checker<'a> {
    policy: &'a CompiledPolicy,
    /// Encoded cores of permitted answers (None: every answer is built as a message).
    cache: Option<&'a ResponseCache>,
    overrides: Option<&'a RuntimeOverrides>,
    /// Whether decisions count as rule hits: the server's traffic does, tools and tests do not.
    counts_hits: bool,
}

/// The answer to a check that cannot be routed (its request or destination did not parse):
/// a deny, written in wire format; the reference message for anything else.
fn unrouted(
    decision: &Decision<'_>,
    dest: Result<&Destination<'_>, &Malformed>,
    version: &str,
    is_http: bool,
) -> CheckAnswer {
    if decision.outcome.permits() {
        return CheckAnswer::Message(Box::new(response::build(decision, dest, version, is_http, None)));
    }
    CheckAnswer::Encoded(super::encoded::deny(decision, dest, version, is_http))
}

impl<'a> Checker<'a> {
    /// The policy alone: no cache, no run-time overrides (tests, tools).
    pub fn offline(policy: &'a CompiledPolicy) -> Self {
        Checker { policy, cache: None, overrides: None, counts_hits: false }
    }

    /// What the server runs: cached answers and the overrides.
    pub fn serving(cache: &'a ResponseCache, overrides: &'a RuntimeOverrides) -> Self {
        Checker { policy: &cache.policy, cache: Some(cache), overrides: Some(overrides), counts_hits: true }
    }

    /// As `offline`, with the answer cache (tests of the cached path).
    pub fn cached(cache: &'a ResponseCache) -> Self {
        Checker { policy: &cache.policy, cache: Some(cache), overrides: None, counts_hits: false }
    }

    pub fn check(&self, req: &CheckRequest, call: Call<'_>, now: i64) -> Checked {
        let empty = http::HeaderMap::new();
        let metadata = call.metadata.unwrap_or(&empty);
        let policy = self.policy;
        let view = match request::view(req, policy, call.gateway) {
            Ok(v) => v,
            Err(m) => {
                let decision = Decision::hard_deny(Reason::Malformed(m.clone()));
                let answer = unrouted(&decision, Err(&m), &policy.version, true);
                let facts = call.capture.trace().then(|| super::facts::from_view(None, req, metadata, true));
                return Checked { answer, verdict: decision.verdict(), facts };
            }
        };
        let (decision, workload) = self.decide(&view, now);
        tracing::debug!(
            decision = decision.outcome.as_str(),
            reason = decision.reason.code(),
            service = decision.service_name(),
            rule = decision.rule_id(),
            method = view.method,
            path = view.path,
            "check"
        );
        if let Some(rule) = decision.rule.filter(|_| self.counts_hits) {
            policy.rule_hits.record(rule.index, now);
        }
        let verdict = decision.verdict();
        let connect = view.method.eq_ignore_ascii_case("CONNECT");
        if let (Capture::Flows, Some(table)) = (call.capture, call.flows) {
            note_flow(table, &view, &decision, now, call.timeline.then_some(req));
        }
        let facts = call.capture.trace().then(|| super::facts::from_view(Some(&view), req, metadata, true));
        let Ok(dest) = &view.destination else {
            // A permitted decision always has a destination; a deny names it as unparseable.
            let answer = unrouted(&decision, view.destination.as_ref(), &policy.version, view.is_http);
            return Checked { answer, verdict, facts };
        };
        let tunnel = (connect && decision.outcome.permits()).then(|| self.tunnel_order(&decision, workload, &view));
        let answer = self.answer(&decision, dest, view.is_http, !connect, tunnel, view.gateway);
        Checked { answer, verdict, facts }
    }

    /// The reference answer as a message (tests and benchmarks compare the server's with it).
    pub fn authorize(&self, req: &CheckRequest, call: Call<'_>, now: i64) -> CheckResponse {
        self.check(req, call, now).answer.to_message()
    }

    /// The policy's decision, then the run-time overrides (see `RuntimeOverrides::apply`), and the
    /// caller's accepted identity.
    fn decide<'v>(&self, view: &'v CheckView<'_>, now: i64) -> (Decision<'a>, Option<WorkloadId<'v>>) {
        let dest = view.destination.as_ref().map_err(Clone::clone);
        let (decision, workload) = match &view.principal {
            Ok(principal) => {
                let identified = self.policy.identify(principal.as_deref());
                let workload = identified.as_ref().ok().map(|(_, w)| *w);
                (self.policy.decide_identified(identified, dest, view.request_id, now), workload)
            }
            Err(xfcc) => (Decision::hard_deny(Reason::Unauthenticated((*xfcc).into())), None),
        };
        let decision = match self.overrides {
            Some(overrides) => overrides.apply(decision, view.destination.as_ref().ok(), now),
            None => decision,
        };
        (decision, workload)
    }

    /// Envoy's answer. Permitted HTTP answers say where the request goes (`forward`), on top of
    /// the cached core when the decision has one.
    fn answer(
        &self,
        decision: &Decision<'_>,
        dest: &Destination<'_>,
        is_http: bool,
        proxied: bool,
        tunnel: Option<&'static str>,
        gateway: GatewayCaps,
    ) -> CheckAnswer {
        let version = &self.policy.version;
        if !decision.outcome.permits() {
            return CheckAnswer::Encoded(super::encoded::deny(decision, Ok(dest), version, is_http));
        }
        if !is_http {
            // A permitted network check's answer is its core alone.
            return match self.cache.and_then(|c| c.ok_core(decision)) {
                Some(core) => CheckAnswer::Encoded(core),
                None => CheckAnswer::Message(Box::new(response::build(decision, Ok(dest), version, false, None))),
            };
        }
        // An `https://` proxy request (not a CONNECT) is sent on with TLS the gateway originates.
        let originate_tls = proxied && dest.protocol == Protocol::Https;
        let forward = Forward::new(dest, tunnel, originate_tls, !gateway.removes_headers, !gateway.routes_itself);
        match self.cache.and_then(|c| c.ok_core(decision)) {
            Some(core) => CheckAnswer::Forwarded { core, forward },
            None => CheckAnswer::Message(Box::new(response::build(decision, Ok(dest), version, true, Some(&forward)))),
        }
    }

    /// What the gateway's tunnel filter checks in a permitted CONNECT's tunnel: the service's
    /// `tunnelTls`, enforced unless the service is in dry-run, the CONNECT fell outside a canary's
    /// enforced share, or the service's canary was rolled back. A break-glass grant keeps the
    /// service (`runtime::breakglass`), so its tunnels are verified as the service's are; `off`
    /// only without a service, whose CONNECT is never permitted.
    fn tunnel_order(
        &self,
        decision: &Decision<'_>,
        workload: Option<WorkloadId<'_>>,
        view: &CheckView<'_>,
    ) -> &'static str {
        let (Some(svc), Some(workload)) = (decision.service, workload) else {
            return tunnel::order(TunnelTls::Off, true);
        };
        let enforced = crate::policy::canary::enforces(svc, workload, view.request_id)
            && !self.overrides.is_some_and(|o| o.is_tripped(&svc.name));
        tunnel::order(svc.tunnel_tls, enforced)
    }
}
