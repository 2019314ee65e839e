//! The ext_authz gRPC service (`envoy.service.auth.v3.Authorization/Check`).
//!
//! Per request: read the policy through arc-swap (no lock), view the request, decide, answer. A
//! request that cannot be understood is denied with a reason; this path never returns an RPC error.

pub mod request;
pub mod response;

use envoy_types::pb::envoy::service::auth::v3::authorization_server::{Authorization, AuthorizationServer};
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};

use crate::policy::{CompiledPolicy, Decision, Reason, SharedPolicy, unix_now};

#[derive(Clone)]
pub struct CheckService {
    policy: SharedPolicy,
}

impl CheckService {
    pub fn new(policy: SharedPolicy) -> Self {
        CheckService { policy }
    }

    pub fn into_server(self) -> AuthorizationServer<Self> {
        AuthorizationServer::new(self)
    }
}

/// Decides one CheckRequest against `policy` and builds Envoy's answer.
pub fn authorize(policy: &CompiledPolicy, req: &CheckRequest, now: i64) -> CheckResponse {
    let view = match request::view(req, policy.trust_forwarded_client_cert) {
        Ok(v) => v,
        Err(m) => {
            let decision = Decision::hard_deny(Reason::Malformed(m.clone()));
            return response::build(&decision, Err(&m), &policy.version, true);
        }
    };
    let dest = view.destination.as_ref().map_err(Clone::clone);
    let decision = policy.decide(view.principal.as_deref(), dest, view.request_id, now);
    tracing::debug!(
        decision = decision.outcome.as_str(),
        reason = decision.reason.code(),
        service = decision.service_name(),
        rule = decision.rule_id(),
        method = view.method,
        path = view.path,
        "check"
    );
    response::build(&decision, view.destination.as_ref(), &policy.version, view.is_http)
}

#[tonic::async_trait]
impl Authorization for CheckService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        let policy = self.policy.load();
        Ok(tonic::Response::new(authorize(&policy, request.get_ref(), unix_now())))
    }
}
