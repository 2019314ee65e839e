//! The ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`).
//!
//! Per request: read the policy through arc-swap (no lock), then `checker::Checker` views the
//! request, decides and answers. A CheckRequest that decodes but cannot be understood is denied
//! with a reason; only bytes that are not a CheckRequest get an RPC error (INVALID_ARGUMENT).
//! Permitted answers are written from a per-policy-version cache plus this request's forwarding
//! headers (see `cache`, `forward`, `codec`); denies are written in wire format (`encoded`). A
//! CONNECT tunnel's own check happens in the gateway (`tunnel`): no Check call reaches here for it.

pub mod cache;
pub mod checker;
pub mod codec;
pub mod encoded;
pub mod facts;
pub mod forward;
pub mod limits;
pub mod request;
pub mod response;
pub mod tunnel;
mod wire;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use arc_swap::ArcSwap;
use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use tonic::codegen::{Body, BoxFuture, Service, StdError, http};

use crate::clock::coarse_unix_now;
use crate::policy::{CompiledPolicy, SharedPolicy, Verdict};
use crate::runtime::RuntimeOverrides;
use crate::runtime::tally::VersionTally;
use crate::telemetry::Telemetry;
use crate::telemetry::metrics::DecisionCounters;
use crate::telemetry::record::{CheckEvent, RequestFacts};
use cache::ResponseCache;
use checker::{Call, Checker, GatewayCaps};
use codec::{CheckAnswer, CheckCodec};

/// gRPC path of the one method this service serves.
pub const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// Per policy version: its answer cache and its decision counters (telemetry's and the runtime
/// layer's).
struct VersionState {
    cache: ResponseCache,
    counters: DecisionCounters,
    tally: VersionTally,
}

impl VersionState {
    fn new(policy: Arc<CompiledPolicy>, telemetry: &Telemetry, runtime: &RuntimeOverrides) -> Self {
        VersionState {
            counters: telemetry.metrics.decision_counters(&policy),
            tally: runtime.version_tally(&policy),
            cache: ResponseCache::new(policy),
        }
    }
}

/// The Check handler's state: the live policy, the state of its current version, the run-time
/// overrides and telemetry.
struct CheckState {
    policy: SharedPolicy,
    version: ArcSwap<VersionState>,
    telemetry: Telemetry,
    runtime: Arc<RuntimeOverrides>,
}

impl CheckState {
    /// Answers one Check, counts it, times it and hands it to telemetry (which never blocks).
    fn check(&self, request: tonic::Request<CheckRequest>) -> CheckAnswer {
        let started = Instant::now();
        let policy = self.policy.load();
        let mut version = self.version.load_full();
        if !Arc::ptr_eq(&version.cache.policy, &policy) {
            // First check after a reload: start the state of the new version.
            version = Arc::new(VersionState::new(Arc::clone(&policy), &self.telemetry, &self.runtime));
            // The old version's state (its answer cache, a slot per rule) is freed elsewhere.
            crate::policy::retire::retire(self.version.swap(version.clone()));
        }
        let (metadata, _, req) = request.into_parts();
        let metadata = metadata.into_headers();
        let now = coarse_unix_now();
        let call = Call {
            metadata: Some(&metadata),
            gateway: GatewayCaps::from_metadata(&metadata),
            capture: if self.telemetry.queues_decisions(&version.cache.policy) {
                checker::Capture::Full
            } else if self.telemetry.flows().is_some() {
                checker::Capture::Flows
            } else {
                checker::Capture::Nothing
            },
            flows: self.telemetry.flows().map(|f| &**f),
            timeline: self.telemetry.notes_timelines(&version.cache.policy),
        };
        let checker = Checker::serving(&version.cache, &self.runtime);
        let checked = checker.check(&req, call, now);
        let facts = checked.facts;
        self.finish(&version, checked.verdict, started, || facts.unwrap_or_default());
        checked.answer
    }

    /// Counts, times and (when telemetry records decisions) queues one decision.
    fn finish(&self, version: &VersionState, verdict: Verdict, started: Instant, facts: impl FnOnce() -> RequestFacts) {
        version.counters.count(&verdict);
        version.tally.count(&verdict);
        let duration = started.elapsed();
        self.telemetry.metrics.check_duration.observe(duration);
        // Decisions are queued for spans, the audit log and (without a flow table) the detectors; the flow
        // table and its timelines for the detectors were fed by the Check path itself (`Capture::Flows`).
        if self.telemetry.queues_decisions(&version.cache.policy) {
            let start = crate::clock::wall_now() - duration;
            let policy = Arc::clone(&version.cache.policy);
            self.telemetry.submit(CheckEvent { facts: facts(), verdict, policy, start, duration });
        }
    }
}

/// What the gateway reported of one CONNECT tunnel (its access log entry, `accesslog`).
#[derive(Debug, Clone)]
pub struct TunnelSeen<'a> {
    pub report: &'a tunnel::Report,
    /// The CONNECT's service, as its ext_authz answer left it in the stream's metadata.
    pub service: Option<&'a str>,
    /// The caller (the URI SAN of its certificate) and the CONNECT's request id and port.
    pub principal: Option<&'a str>,
    pub request_id: Option<&'a str>,
    pub port: Option<u16>,
}

/// Records tunnel decisions as the Check handler records its own: counted with the current
/// policy version's counters, queued for spans and the audit log.
#[derive(Clone)]
pub struct TunnelRecorder(Arc<CheckState>);

impl std::fmt::Debug for TunnelRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TunnelRecorder")
    }
}

impl TunnelRecorder {
    pub fn record(&self, seen: &TunnelSeen<'_>) {
        let version = self.0.version.load();
        let decision = tunnel::decide(&version.cache.policy, seen.service, seen.report);
        tracing::debug!(
            decision = decision.outcome.as_str(),
            reason = decision.reason.code(),
            service = decision.service_name(),
            host = seen.report.host(),
            "tunnel"
        );
        let verdict = decision.verdict();
        version.counters.count(&verdict);
        version.tally.count(&verdict);
        if self.0.telemetry.queues_decisions(&version.cache.policy) {
            // The span starts when the filter judged the tunnel (not when the report arrived,
            // which for a verified tunnel may be its first progress report or its end).
            let start = std::time::UNIX_EPOCH + std::time::Duration::from_millis(seen.report.unix_ms);
            let policy = Arc::clone(&version.cache.policy);
            let (facts, duration) = (facts::of_tunnel(seen), std::time::Duration::ZERO);
            self.0.telemetry.submit(CheckEvent { facts, verdict, policy, start, duration });
        }
    }
}

/// `envoy.service.auth.v3.Authorization` as a tower service, like tonic's generated server but with
/// `CheckCodec`, so cached answers are written without re-encoding.
#[derive(Clone)]
pub struct CheckServer {
    state: Arc<CheckState>,
}

impl CheckServer {
    pub fn new(policy: SharedPolicy, telemetry: Telemetry, runtime: Arc<RuntimeOverrides>) -> Self {
        let version = ArcSwap::from_pointee(VersionState::new(policy.load_full(), &telemetry, &runtime));
        CheckServer { state: Arc::new(CheckState { policy, version, telemetry, runtime }) }
    }

    /// The handle the access log service records tunnel decisions through.
    pub fn tunnel_recorder(&self) -> TunnelRecorder {
        TunnelRecorder(Arc::clone(&self.state))
    }
}

impl tonic::server::NamedService for CheckServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

struct CheckMethod(Arc<CheckState>);

impl tonic::server::UnaryService<CheckRequest> for CheckMethod {
    type Response = CheckAnswer;
    type Future = std::future::Ready<Result<tonic::Response<CheckAnswer>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(self.0.check(request))))
    }
}

impl<B> Service<http::Request<B>> for CheckServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async {
                Ok(tonic::Status::unimplemented("egressd serves Authorization/Check only").into_http())
            });
        }
        let state = self.state.clone();
        Box::pin(async move {
            let mut grpc =
                tonic::server::Grpc::new(CheckCodec).max_decoding_message_size(limits::MAX_CHECK_REQUEST_BYTES);
            Ok(grpc.unary(CheckMethod(state), req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};
    use crate::testing::{answer, authorize, http_check};

    fn http(principal: &str, method: &str, host: &str) -> CheckRequest {
        http_check(principal, method, host, &[("x-request-id", "fixed")])
    }

    #[test]
    fn cached_answers_equal_freshly_built_ones() {
        let text = include_str!("../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let cache = ResponseCache::new(policy.clone());
        let pay = "spiffe://corp.example/ns/payments/sa/api";
        let ci = "spiffe://corp.example/ns/ci/sa/x";
        let requests = [
            http(pay, "CONNECT", "api.stripe.com:443"),     // allow (exact)
            http(pay, "GET", "a.stripe.com"),               // allow (wildcard)
            http(pay, "CONNECT", "pypi.org:443"),           // allow (group)
            http(ci, "CONNECT", "evil.example.org:443"),    // would-deny, no matching allow
            http(ci, "CONNECT", "github.com:443"),          // allow in dry-run
            http(pay, "CONNECT", "evil.example.org:443"),   // deny: built per request
            http(pay, "CONNECT", "uploads.stripe.com:443"), // service deny
            http("", "CONNECT", "api.stripe.com:443"),      // unauthenticated
        ];
        let mut cached = 0;
        for round in 0..2 {
            for req in &requests {
                let got = answer(&cache, req, 0).0;
                cached += usize::from(round == 1 && matches!(got, CheckAnswer::Forwarded { .. }));
                assert_eq!(got.to_message(), authorize(&policy, req, 0), "{req:?}");
            }
        }
        assert_eq!(cached, 5, "allows and would-denies come from the cache");
    }

    proptest::proptest! {
        #[test]
        fn any_request_gets_ok_or_permission_denied(
            principal in "(spiffe://corp\\.example/ns/[a-z]{1,8}/sa/[a-z]{1,8}|.{0,40})",
            method in "(GET|CONNECT|POST|.{0,8})",
            host in ".{0,80}",
            sni in ".{0,40}",
            port in proptest::prelude::any::<u32>(),
            xfcc in ".{0,60}",
            network in proptest::prelude::any::<bool>(),
        ) {
            let text = include_str!("../integration/fixtures/semantics.yaml");
            let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
            let cache = ResponseCache::new(policy.clone());
            let req = if network {
                crate::testing::network_check(&principal, &sni, "10.20.0.1", port)
            } else {
                http_check(&principal, &method, &host, &[("x-forwarded-client-cert", &xfcc)])
            };
            let resp = answer(&cache, &req, 0).0.to_message();
            let code = resp.status.as_ref().map(|s| s.code);
            proptest::prop_assert!(code == Some(0) || code == Some(7), "{:?}", code);
            proptest::prop_assert_eq!(resp, authorize(&policy, &req, 0));
        }
    }
}
