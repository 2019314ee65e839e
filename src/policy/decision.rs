//! What a check concluded, and why, in terms an operator (and Envoy's access log) can use.

use super::compiled::{RuleInfo, ServiceIdx, ServiceInfo};
use super::fqdn::HostError;
use super::matcher::Miss;
use super::terms::Mode;
use crate::identity::AuthnError;

/// What happens to the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Allow,
    Deny,
    /// Allowed because the service is in dry-run (or outside its canary share), or the caller is
    /// unclaimed and the mesh observes such callers; enforcement would deny.
    WouldDeny,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Allow => "allow",
            Outcome::Deny => "deny",
            Outcome::WouldDeny => "would-deny",
        }
    }

    /// Whether the request goes through.
    pub fn permits(self) -> bool {
        !matches!(self, Outcome::Deny)
    }
}

impl std::str::FromStr for Outcome {
    type Err = String;

    /// The recorded form (`allow`, `deny`, `would-deny`), as audit records and `/flows` write it.
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "allow" => Ok(Outcome::Allow),
            "deny" => Ok(Outcome::Deny),
            "would-deny" => Ok(Outcome::WouldDeny),
            other => Err(format!("decision `{other}` is not allow, deny or would-deny")),
        }
    }
}

/// A request egressd could not make sense of. Always denied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Malformed {
    #[error("CheckRequest has no attributes")]
    NoAttributes,
    #[error("request names no destination (no :authority/host, SNI or destination address)")]
    NoDestination,
    #[error("CONNECT target has no port")]
    ConnectWithoutPort,
    #[error("destination has no port")]
    NoPort,
    /// An `https://` proxy request (not a CONNECT) through a gateway that does not originate TLS:
    /// it would leave in plaintext, so it is not what its scheme asks for.
    #[error(
        "an https:// proxy request needs the gateway to originate TLS, and this gateway does not (Gateway upstreamTls): send a CONNECT instead (curl -x does)"
    )]
    HttpsNotOriginated,
    #[error("scheme `{0}` is not http or https")]
    UnknownScheme(String),
    /// More headers than any gateway sends (Envoy's own limit is 100 by default): a request built
    /// to make each check expensive.
    #[error("the request has {0} headers, more than the {max} egressd reads", max = crate::authz::limits::MAX_HEADERS)]
    TooManyHeaders(usize),
    #[error("{0}")]
    Host(#[from] HostError),
}

/// The break-glass grant a decision was made by: what the decision, its spans and records say
/// about it (the grant's store, its file format and lifecycle live in `runtime::breakglass`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRef {
    pub id: String,
    pub grantor: String,
    pub reason: String,
    /// `api.partner.test:443`, `api.partner.test (any port)` or `any destination`.
    pub target: String,
    pub expires_unix: i64,
}

/// Why the policy concluded what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    /// A service allow matched (`rule` names it).
    Allowed,
    /// A mesh-wide deny matched; enforced in every mode.
    MeshDeny,
    /// One of the service's own denies matched.
    ServiceDeny,
    /// Default deny.
    NoMatchingAllow,
    Unauthenticated(AuthnError),
    /// The caller authenticated (its SPIFFE ID is in the trust domain) but no service claims it:
    /// a deny, or a would-deny under MeshDefaults `unclaimedIdentities: observe`.
    UnknownService,
    Malformed(Malformed),
    /// Allowed by an operator's time-boxed break-glass grant.
    BreakGlass(std::sync::Arc<GrantRef>),
    /// A CONNECT tunnel's TLS ClientHello named another host than the CONNECT authority.
    SniMismatch {
        connect: String,
        sni: String,
    },
    /// A CONNECT tunnel's TLS ClientHello had no SNI.
    SniMissing,
    /// A CONNECT tunnel did not start with TLS.
    NotTls,
    /// The tunnel carries what its service's `tunnelTls` requires.
    TunnelVerified,
}

impl Reason {
    /// The code of a break-glass grant's allow (what readers of recorded codes compare with).
    pub const BREAK_GLASS: &'static str = "break-glass";

    /// Stable machine-readable code (header `x-egressd-reason`, metadata, logs).
    pub fn code(&self) -> &'static str {
        match self {
            Reason::Allowed => "allowed",
            Reason::MeshDeny => "mesh-deny",
            Reason::ServiceDeny => "service-deny",
            Reason::NoMatchingAllow => "no-matching-allow",
            Reason::Unauthenticated(_) => "unauthenticated",
            Reason::UnknownService => "unknown-service",
            Reason::Malformed(Malformed::HttpsNotOriginated | Malformed::UnknownScheme(_)) => "unsupported-scheme",
            Reason::Malformed(_) => "malformed-request",
            Reason::BreakGlass(_) => Reason::BREAK_GLASS,
            Reason::SniMismatch { .. } => "sni-mismatch",
            Reason::SniMissing => "sni-missing",
            Reason::NotTls => "not-tls",
            Reason::TunnelVerified => "tunnel-verified",
        }
    }

    /// Whether the message (`Display`) is the same for every reason of this code: nothing of the
    /// request or a grant is in it. Telemetry encodes such a decision's fields once
    /// (`telemetry::wire`); a new reason whose message says more must answer false.
    pub fn message_is_fixed(&self) -> bool {
        match self {
            Reason::Allowed
            | Reason::MeshDeny
            | Reason::ServiceDeny
            | Reason::NoMatchingAllow
            | Reason::UnknownService
            | Reason::SniMissing
            | Reason::NotTls
            | Reason::TunnelVerified => true,
            Reason::Unauthenticated(_) | Reason::Malformed(_) | Reason::BreakGlass(_) | Reason::SniMismatch { .. } => {
                false
            }
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reason::Allowed => f.write_str("allowed by rule"),
            Reason::MeshDeny => f.write_str("denied by a mesh-wide rule"),
            Reason::ServiceDeny => f.write_str("denied by a rule of the service"),
            Reason::NoMatchingAllow => f.write_str("no allow rule matches (default deny)"),
            Reason::Unauthenticated(e) => write!(f, "{e}"),
            Reason::UnknownService => f.write_str("caller's SPIFFE ID is not claimed by any service"),
            Reason::Malformed(m) => write!(f, "malformed request: {m}"),
            Reason::SniMismatch { connect, sni } => {
                write!(f, "the tunnel to {connect} sent TLS for `{sni}` (domain fronting?)")
            }
            Reason::SniMissing => f.write_str("the tunnel's TLS ClientHello names no server (no SNI)"),
            Reason::NotTls => f.write_str("the tunnel did not start with TLS"),
            Reason::TunnelVerified => f.write_str("the tunnel carries what tunnelTls requires"),
            Reason::BreakGlass(g) => write!(
                f,
                "break-glass grant {} by {} for {}: {} (expires {})",
                g.id,
                g.grantor,
                g.target,
                g.reason,
                jiff::Timestamp::from_second(g.expires_unix).map(|t| t.to_string()).unwrap_or_default()
            ),
        }
    }
}

/// One decision. Borrows from the policy version that made it, so it is cheap to build.
#[derive(Debug, Clone)]
pub struct Decision<'p> {
    pub outcome: Outcome,
    pub reason: Reason,
    /// The rule that decided, if a rule did.
    pub rule: Option<&'p RuleInfo>,
    pub service: Option<&'p ServiceInfo>,
    /// The service's mode (None when no service was identified).
    pub mode: Option<Mode>,
    /// For a deny by the service's rules: whether this request was enforced (canary share).
    pub enforced: bool,
    /// On a default deny: an allow whose destination matched but whose port, protocol or expiry did not.
    pub near_miss: Option<(&'p RuleInfo, Miss)>,
    /// The service's rollback guard has tripped: its denies are not enforced.
    pub rolled_back: bool,
}

impl<'p> Decision<'p> {
    /// A deny that no mode can soften (identity and parsing failures; `decide` softens an
    /// unclaimed caller's under `unclaimedIdentities: observe` from this).
    pub fn hard_deny(reason: Reason) -> Self {
        Decision {
            outcome: Outcome::Deny,
            reason,
            rule: None,
            service: None,
            mode: None,
            enforced: true,
            near_miss: None,
            rolled_back: false,
        }
    }

    /// A caller no service claims, let through or held by the mesh floor alone because the mesh
    /// observes unclaimed callers (`unclaimedIdentities: observe`). `decide` gives only these a
    /// mode without a service; the reasons rule out a tunnel decision whose service a reload
    /// removed (also a mode without a service, but always a tunnel reason).
    pub fn observes_unclaimed(&self) -> bool {
        self.service.is_none()
            && self.mode.is_some()
            && matches!(self.reason, Reason::UnknownService | Reason::MeshDeny | Reason::Malformed(_))
    }

    pub fn mode_str(&self) -> &'static str {
        self.mode.map(Mode::as_str).unwrap_or("none")
    }

    pub fn service_name(&self) -> &str {
        self.service.map(|s| s.name.as_str()).unwrap_or("")
    }

    pub fn rule_id(&self) -> &str {
        self.rule.map(|r| r.id.as_str()).unwrap_or("")
    }
}

/// A decision detached from the borrow of its policy, so it can travel off the Check path (to
/// metrics, spans and the audit log). Indices refer to the policy version that decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict {
    pub outcome: Outcome,
    pub reason: Reason,
    pub rule: Option<u32>,
    pub service: Option<ServiceIdx>,
    pub mode: Option<Mode>,
    pub enforced: bool,
    pub rolled_back: bool,
}

impl Decision<'_> {
    pub fn verdict(&self) -> Verdict {
        Verdict {
            outcome: self.outcome,
            reason: self.reason.clone(),
            rule: self.rule.map(|r| r.index as u32),
            service: self.service.map(|s| s.index),
            mode: self.mode,
            enforced: self.enforced,
            rolled_back: self.rolled_back,
        }
    }
}
