//! The admin gRPC API (`egressd.admin.v1.Admin`, proto/egressd/admin/v1/admin.proto): break-glass
//! grants, Explain against the live policy and grants, rollout status.
//!
//! Every call must carry `authorization: Bearer <token>` with a token of the `--admin-tokens`
//! file, or come over TLS with a client certificate whose SPIFFE ID MeshDefaults
//! `adminIdentities` lists (`auth`); the token's name or the SPIFFE ID is the caller, recorded as
//! a grant's grantor or revoker. Without tokens or admin identities the API refuses every call
//! (fail closed), as it does missing or unknown credentials.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::auth::AdminAuth;
use super::tokens::BearerToken;
use crate::clock::unix_now;
use crate::explain;
use crate::policy::{Protocol, SharedPolicy};
use crate::runtime::RuntimeOverrides;
use crate::runtime::breakglass::{Grant, GrantError, GrantRequest};
use crate::runtime::status::{RolloutStatus, ServiceRollout};
use crate::runtime::store::StoreError;

/// The generated messages and service (tonic-prost-build); generated code keeps its own style.
#[allow(unused_qualifications, rust_2018_idioms)]
pub mod pb {
    tonic::include_proto!("egressd.admin.v1");
}

use pb::admin_server::{Admin, AdminServer};

#[derive(Clone)]
pub struct AdminApi {
    policy: SharedPolicy,
    runtime: Arc<RuntimeOverrides>,
    auth: AdminAuth,
}

impl AdminApi {
    pub fn new(policy: SharedPolicy, runtime: Arc<RuntimeOverrides>, auth: AdminAuth) -> Self {
        AdminApi { policy, runtime, auth }
    }

    pub fn into_server(self) -> AdminServer<Self> {
        AdminServer::new(self)
    }

    /// The authenticated caller (see `auth`), or UNAUTHENTICATED.
    fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        self.auth.caller(req)
    }
}

fn grant_pb(g: &Grant) -> pb::Grant {
    pb::Grant {
        id: g.id.clone(),
        service: g.service.clone(),
        host: g.host.clone().unwrap_or_default(),
        port: g.port.map(u32::from).unwrap_or(0),
        all: g.host.is_none(),
        created_unix: g.created_unix,
        expires_unix: g.expires_unix,
        reason: g.reason.clone(),
        grantor: g.grantor.clone(),
        revoked_unix: g.revoked_unix.unwrap_or(0),
        revoker: g.revoker.clone().unwrap_or_default(),
    }
}

fn rollout_pb(status: RolloutStatus) -> pb::RolloutStatusResponse {
    let service = |s: ServiceRollout| pb::ServiceRollout {
        service: s.service,
        mode: s.mode.as_str().to_string(),
        effective_mode: s.effective_mode.as_str().to_string(),
        checks: s.checks,
        denies: s.denies,
        would_denies: s.would_denies,
        window_seconds: s.window_seconds,
        next_step: s.next_step.map(|m| m.as_str().to_string()).unwrap_or_default(),
        ready: s.ready,
        detail: s.detail,
        guard_tripped: s.guard_tripped,
    };
    pb::RolloutStatusResponse {
        services: status.services.into_iter().map(service).collect(),
        policy_version: status.policy_version,
    }
}

fn grant_status(e: GrantError) -> Status {
    match e {
        GrantError::UnknownGrant(_) => Status::not_found(e.to_string()),
        GrantError::Inactive(_) => Status::failed_precondition(e.to_string()),
        // A shared store that is away: the caller may retry (gRPC's 503).
        GrantError::Store(StoreError::Unavailable { .. }) => Status::unavailable(e.to_string()),
        GrantError::Store(_) => Status::internal(e.to_string()),
        _ => Status::invalid_argument(e.to_string()),
    }
}

#[tonic::async_trait]
impl Admin for AdminApi {
    async fn grant_break_glass(&self, req: Request<pb::GrantBreakGlassRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = self.caller(&req)?;
        let r = req.into_inner();
        // Exactly one of `to` and `all`.
        if r.all != r.to.trim().is_empty() {
            return Err(grant_status(GrantError::Target));
        }
        let request = GrantRequest {
            service: r.service,
            to: (!r.all).then_some(r.to),
            duration_seconds: r.duration_seconds,
            reason: r.reason,
        };
        if !self.policy.load().services.iter().any(|s| s.name == request.service) {
            return Err(grant_status(GrantError::UnknownService(request.service)));
        }
        let grants = self.runtime.grants.clone();
        // Persisting fsyncs: blocking work.
        let grant = tokio::task::spawn_blocking(move || grants.grant(&request, &caller, |_| true, unix_now()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(grant_status)?;
        Ok(Response::new(grant_pb(&grant)))
    }

    async fn list_grants(
        &self,
        req: Request<pb::ListGrantsRequest>,
    ) -> Result<Response<pb::ListGrantsResponse>, Status> {
        self.caller(&req)?;
        let grants = self.runtime.grants.list(req.get_ref().include_inactive, unix_now());
        Ok(Response::new(pb::ListGrantsResponse { grants: grants.iter().map(|g| grant_pb(g)).collect() }))
    }

    async fn revoke_grant(&self, req: Request<pb::RevokeGrantRequest>) -> Result<Response<pb::Grant>, Status> {
        let caller = self.caller(&req)?;
        let id = req.into_inner().id;
        let grants = self.runtime.grants.clone();
        let grant = tokio::task::spawn_blocking(move || grants.revoke(&id, &caller, unix_now()))
            .await
            .map_err(|e| Status::internal(e.to_string()))?
            .map_err(grant_status)?;
        Ok(Response::new(grant_pb(&grant)))
    }

    async fn explain(&self, req: Request<pb::ExplainRequest>) -> Result<Response<pb::ExplainResponse>, Status> {
        self.caller(&req)?;
        let r = req.into_inner();
        let protocol = match r.protocol.trim() {
            "" => None,
            p => Some(p.parse::<Protocol>().map_err(Status::invalid_argument)?),
        };
        let dest = explain::cli_destination(&r.to, protocol).map_err(Status::invalid_argument)?;
        let policy = self.policy.load();
        let request_id = Some(r.request_id.as_str()).filter(|id| !id.is_empty());
        let now = unix_now();
        let decision = policy.decide(Some(&r.from), Ok(&dest), request_id, now);
        // The same run-time overrides a Check gets.
        let decision = self.runtime.apply(decision, Some(&dest), now);
        Ok(Response::new(pb::ExplainResponse {
            decision: decision.outcome.as_str().to_string(),
            permits: decision.outcome.permits(),
            text: explain::text(&policy, &r.from, &dest, &decision, request_id),
            json: explain::json(&policy, &r.from, &dest, &decision, request_id).to_string(),
            policy_version: policy.version.clone(),
        }))
    }

    async fn rollout_status(
        &self,
        req: Request<pb::RolloutStatusRequest>,
    ) -> Result<Response<pb::RolloutStatusResponse>, Status> {
        self.caller(&req)?;
        let policy = self.policy.load();
        Ok(Response::new(rollout_pb(self.runtime.status(&policy, unix_now()))))
    }

    async fn reset_rollback_guard(
        &self,
        req: Request<pb::ResetRollbackGuardRequest>,
    ) -> Result<Response<pb::ResetRollbackGuardResponse>, Status> {
        let caller = self.caller(&req)?;
        let service = req.into_inner().service;
        let was_tripped = self.runtime.reset_guard(&service, &caller, unix_now());
        Ok(Response::new(pb::ResetRollbackGuardResponse { was_tripped }))
    }
}

/// An admin API client that sends its bearer token with every call.
pub type AdminClient = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<tonic::transport::Channel, BearerToken>,
>;

/// An admin API client for `addr` (`HOST:PORT` or a URL).
pub async fn connect(addr: &str, token: Option<&str>) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    connect_with(addr, token, None).await
}

/// TLS to a gRPC port served with `--tls-cert`: the CA bundle (PEM) that signed its certificate
/// and, optionally, a client certificate and key (PEM) to present, such as an admin's SVID.
#[derive(Debug, Clone, Default)]
pub struct ClientTls {
    pub ca_pem: Vec<u8>,
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

/// As `connect`, over TLS when `tls` is given (`addr` without a scheme then means https).
pub async fn connect_with(
    addr: &str,
    token: Option<&str>,
    tls: Option<&ClientTls>,
) -> Result<AdminClient, Box<dyn std::error::Error + Send + Sync>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let scheme = if tls.is_some() { "https" } else { "http" };
    let url = if addr.contains("://") { addr.to_string() } else { format!("{scheme}://{addr}") };
    let mut endpoint = tonic::transport::Channel::from_shared(url)?;
    if let Some(tls) = tls {
        let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&tls.ca_pem));
        if let Some((cert, key)) = &tls.identity {
            config = config.identity(Identity::from_pem(cert, key));
        }
        endpoint = endpoint.tls_config(config)?;
    }
    let channel = endpoint.connect().await?;
    Ok(pb::admin_client::AdminClient::with_interceptor(channel, BearerToken::new(token)?))
}
