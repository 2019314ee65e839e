//! The compiled policy: what the Check hot path reads (through `arc-swap`) and what explanations
//! and the admin API describe. Nothing in here is a YAML document type (`model`); the policy's
//! vocabulary (`terms`) is shared by both.

use serde::Serialize;

use super::diagnostic::{Diagnostic, SourceLoc};
use super::matcher::{Matcher, TableId};
use super::terms::{Mode, Protocol, TunnelTls, UnclaimedIdentities};
use crate::identity::IdentityIndex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Allow,
    Deny,
}

/// One compiled rule, as an operator would want it explained.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RuleInfo {
    /// Position in `CompiledPolicy::rules` (lets per-rule caches be plain vectors).
    #[serde(skip)]
    pub index: usize,
    /// Stable name: `payments/allow/0`, `payments/allow/1/package-mirrors/0`, `mesh/deny/0`.
    pub id: String,
    pub action: Action,
    /// Where the deciding text is: the rule itself, or the group destination it expanded to.
    #[serde(serialize_with = "ser_loc")]
    pub loc: SourceLoc,
    pub justification: Option<String>,
    /// `api.stripe.com`, `*.pythonhosted.org`, `10.20.0.0/16`, or `any destination`.
    pub target: String,
    pub ports: Option<Vec<u16>>,
    pub protocols: Vec<Protocol>,
    pub expires: Option<String>,
    /// The destination group this rule came from, if any.
    pub group: Option<String>,
    /// The service whose rule this is; `None` for a mesh-wide deny.
    #[serde(skip)]
    pub service: Option<ServiceIdx>,
    /// For a rule expanded from a group: where the referencing `- group: NAME` is written.
    #[serde(skip)]
    pub group_ref_loc: Option<SourceLoc>,
    /// The host destination, if the rule names one.
    #[serde(skip)]
    pub host: Option<super::fqdn::HostPattern>,
    /// The CIDR destination, if the rule names one (neither host nor cidr: any destination).
    #[serde(skip)]
    pub cidr: Option<ipnet::IpNet>,
    /// Where `expires:` is written (the referencing rule's, for a group expansion that has it).
    #[serde(skip)]
    pub expires_loc: Option<SourceLoc>,
}

impl RuleInfo {
    /// What the rule matches, `api.stripe.com ports [443] protocols [https]`: what identifies a
    /// rule across versions, where its positional id and location move with edits.
    pub fn content_key(&self) -> String {
        let mut text = self.target.clone();
        if let Some(ports) = &self.ports {
            text.push_str(&format!(" ports {ports:?}"));
        }
        if !self.protocols.is_empty() {
            let names: Vec<&str> = self.protocols.iter().map(|p| p.as_str()).collect();
            text.push_str(&format!(" protocols [{}]", names.join(", ")));
        }
        text
    }

    pub fn action_str(&self) -> &'static str {
        match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }
}

fn ser_loc<S: serde::Serializer>(loc: &SourceLoc, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&loc.to_string())
}

/// A service's position in one compiled policy's `services`. Meaningless in another version:
/// what lasts across reloads (grants, guards, counts) is keyed by the service's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceIdx(u32);

impl ServiceIdx {
    pub(crate) fn new(index: usize) -> Self {
        ServiceIdx(u32::try_from(index).expect("fewer than 2^32 services"))
    }

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceInfo {
    /// Position in `CompiledPolicy::services`.
    #[serde(skip)]
    pub index: ServiceIdx,
    pub name: String,
    pub owner: Option<String>,
    pub description: Option<String>,
    pub mode: Mode,
    /// Which requests a canary enforces; meaningless in other modes.
    pub canary: Canary,
    pub rollback_guard: Option<RollbackGuard>,
    /// What this service's CONNECT tunnels must carry.
    pub tunnel_tls: TunnelTls,
    pub identities: Vec<String>,
    /// When the service entered its mode (`since:`, `YYYY-MM-DD`), if written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    #[serde(serialize_with = "ser_loc")]
    pub loc: SourceLoc,
    /// Where the lint-relevant keys are written: `service:`, `mode:`, `since:`.
    #[serde(skip)]
    pub name_loc: SourceLoc,
    #[serde(skip)]
    pub mode_loc: Option<SourceLoc>,
    #[serde(skip)]
    pub since_loc: Option<SourceLoc>,
    pub allow_rules: usize,
    pub deny_rules: usize,
    #[serde(skip)]
    pub allow_table: TableId,
    #[serde(skip)]
    pub deny_table: TableId,
}

/// A canary enforces a request when any of its selectors picks it.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Canary {
    /// Share of requests (by a stable hash of x-request-id).
    pub request_percent: Option<u8>,
    /// These workloads (SPIFFE IDs), every request.
    pub workloads: Vec<String>,
    /// Share of workloads (by a stable hash of the SPIFFE ID), every request.
    pub workload_percent: Option<u8>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RollbackGuard {
    pub max_deny_rate: f64,
    pub window_seconds: u64,
    pub min_checks: u64,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    pub name: String,
    pub justification: String,
    pub description: Option<String>,
    pub destinations: usize,
    #[serde(serialize_with = "ser_loc")]
    pub loc: SourceLoc,
}

/// A validated, compiled policy set. Immutable: a reload builds a new one and swaps it in whole.
#[derive(Debug)]
pub struct CompiledPolicy {
    /// Content hash of the source files (`sha256:…`), stamped on every decision.
    pub version: String,
    /// Where it was loaded from (a directory, or the embedded example).
    pub origin: String,
    pub trust_domain: String,
    pub default_mode: Mode,
    pub trust_forwarded_client_cert: bool,
    /// What `decide` does with a caller in the trust domain that no service claims.
    pub unclaimed_identities: UnclaimedIdentities,
    /// Where the MeshDefaults document, and its `trustForwardedClientCert` and
    /// `unclaimedIdentities` values, are written (for `lint`).
    pub mesh_loc: SourceLoc,
    pub trust_forwarded_client_cert_loc: Option<SourceLoc>,
    pub unclaimed_identities_loc: Option<SourceLoc>,
    /// Callers whose client certificate's SPIFFE ID authorizes admin API calls (MeshDefaults
    /// `adminIdentities`), exact IDs.
    pub admin_identities: Vec<String>,
    /// The detectors' thresholds (MeshDefaults `detection:`).
    pub detection: super::detection::DetectionConfig,
    pub services: Vec<ServiceInfo>,
    pub groups: Vec<GroupInfo>,
    /// Indexed by `RuleIdx`, parallel to the matcher's constraints.
    pub rules: Vec<RuleInfo>,
    /// How often each rule decided a Check of this version (`GET /rules`, `/metrics`).
    pub rule_hits: super::hits::RuleHits,
    /// When this version was compiled (unix seconds): since when `rule_hits` count.
    pub compiled_unix: i64,
    pub mesh_deny_table: TableId,
    pub mesh_deny_rules: usize,
    /// `kind: Gateway` documents: how the gateways egressd configures over xDS are built.
    pub gateways: Vec<super::gateway::GatewaySpec>,
    /// `kind: Gateway` documents with `external: true`: gateways another control plane configures,
    /// described so their checks are read right (`external_gateway`).
    pub external_gateways: Vec<super::external_gateway::ExternalGateway>,
    /// `kind: DnsFirewall`, if the policy has one: egressd answers DNS from this policy.
    pub dns: Option<super::dns::DnsFirewallSpec>,
    /// Findings that did not stop the load (expired allows, overlapping identities).
    pub warnings: Vec<Diagnostic>,
    pub(crate) identities: IdentityIndex,
    /// Canonical exact identities (`spiffe://td/path`) -> service: a principal equal to one of these
    /// strings is already known valid, so the hot path skips parsing it.
    pub(crate) exact_principals: rustc_hash::FxHashMap<Box<str>, u32>,
    pub(crate) service_by_name: rustc_hash::FxHashMap<String, ServiceIdx>,
    pub(crate) matcher: Matcher,
}

impl CompiledPolicy {
    /// The upstream port of a TLS-by-SNI check that arrived on one of the policy's gateway TLS
    /// listeners: Envoy reports the listener's own address, but the gateway dials `tlsUpstreamPort`.
    pub fn tls_upstream_port(&self, listener: std::net::SocketAddr) -> Option<u16> {
        use super::external_gateway::listens_on;
        let own = self.gateways.iter().map(|g| (g.tls_listen, g.tls_upstream_port));
        let external = self.external_gateways.iter().map(|g| (g.tls_listen, g.tls_upstream_port));
        own.chain(external).find_map(|(l, port)| listens_on(l?, listener).then_some(port))
    }

    /// The external gateway whose HTTP listener an HTTP check's connection arrived at.
    pub fn external_gateway_at(
        &self,
        local: std::net::SocketAddr,
    ) -> Option<&super::external_gateway::ExternalGateway> {
        self.external_gateways.iter().find(|g| g.serves_http_at(local))
    }

    /// The service called `name` (hashed: tunnel reports name their CONNECT's service).
    pub fn service(&self, name: &str) -> Option<&ServiceInfo> {
        self.service_by_name.get(name).map(|&i| &self.services[i.get()])
    }

    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}
