//! Who is calling the admin API: a bearer token of the `--admin-tokens` file, or, on a gRPC port
//! served over TLS with client certificates (`serve --tls-cert --client-ca`), the SPIFFE ID of
//! the caller's certificate when MeshDefaults `adminIdentities` lists it. Every refusal is counted
//! (`egressd_admin_auth_failures_total{reason}`) and logged with the caller's address, never with
//! what it presented.

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tonic::{Request, Status};

use super::tokens::AdminTokens;
use crate::policy::SharedPolicy;
use crate::telemetry::metrics::ReasonLabel;

/// Why a call was refused (label values of `egressd_admin_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Neither tokens nor admin identities are configured: the API is off.
    Disabled,
    /// No `authorization` header and no admin certificate.
    MissingCredentials,
    /// A bearer token that is not in the tokens file.
    UnknownToken,
    /// A client certificate whose SPIFFE ID `adminIdentities` does not list, and no token.
    UnknownIdentity,
}

impl Refusal {
    pub fn code(self) -> &'static str {
        match self {
            Refusal::Disabled => "disabled",
            Refusal::MissingCredentials => "missing-credentials",
            Refusal::UnknownToken => "unknown-token",
            Refusal::UnknownIdentity => "unknown-identity",
        }
    }

    fn status(self) -> Status {
        Status::unauthenticated(match self {
            Refusal::Disabled => {
                "the admin API is disabled: start egressd with --admin-tokens FILE, or list adminIdentities and serve TLS with --client-ca"
            }
            Refusal::MissingCredentials => "missing `authorization: Bearer <token>` (or an admin client certificate)",
            Refusal::UnknownToken => "unknown token",
            Refusal::UnknownIdentity => {
                "the client certificate's SPIFFE ID is not in adminIdentities, and no token was sent"
            }
        })
    }
}

/// The admin API's authenticator.
#[derive(Clone)]
pub struct AdminAuth {
    tokens: Option<Arc<AdminTokens>>,
    /// The live policy: `adminIdentities` follow reloads.
    policy: SharedPolicy,
    failures: Family<ReasonLabel, Counter>,
}

impl AdminAuth {
    pub fn new(tokens: Option<Arc<AdminTokens>>, policy: SharedPolicy, failures: Family<ReasonLabel, Counter>) -> Self {
        AdminAuth { tokens, policy, failures }
    }

    /// The caller's name (a token's owner, or the certificate's SPIFFE ID), or UNAUTHENTICATED.
    pub fn caller<T>(&self, req: &Request<T>) -> Result<String, Status> {
        let peer = req.peer_certs().and_then(|certs| certs.first().and_then(|c| spiffe_id_of(c)));
        let bearer = req
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
            .map(str::trim);
        self.identify(peer.as_deref(), bearer).map_err(|refusal| {
            self.failures.get_or_create(&ReasonLabel { reason: refusal.code() }).inc();
            let remote = req.remote_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::warn!(reason = refusal.code(), remote = %remote, peer_identity = peer.as_deref().unwrap_or(""), "admin API call refused");
            refusal.status()
        })
    }

    /// The decision, from what the call presented: an admin certificate wins, then a token.
    pub fn identify(&self, peer: Option<&str>, bearer: Option<&str>) -> Result<String, Refusal> {
        let policy = self.policy.load();
        let admins = &policy.admin_identities;
        if self.tokens.is_none() && admins.is_empty() {
            return Err(Refusal::Disabled);
        }
        if let Some(id) = peer.filter(|id| admins.iter().any(|a| a == id)) {
            return Ok(id.to_string());
        }
        match (bearer, &self.tokens) {
            (Some(token), Some(tokens)) => tokens.caller(token).map(str::to_string).ok_or(Refusal::UnknownToken),
            (Some(_), None) => Err(Refusal::UnknownToken),
            (None, _) if peer.is_some() => Err(Refusal::UnknownIdentity),
            (None, _) => Err(Refusal::MissingCredentials),
        }
    }
}

/// The SPIFFE ID of an X.509-SVID: its one URI SAN, when that is a `spiffe://` ID. A certificate
/// with several URI SANs is no SVID (the SPIFFE X.509 spec allows exactly one) and names nobody.
pub fn spiffe_id_of(der: &[u8]) -> Option<String> {
    use x509_parser::extensions::GeneralName;
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let san = cert.subject_alternative_name().ok()??;
    let mut uris = san.value.general_names.iter().filter_map(|n| match n {
        GeneralName::URI(u) => Some(*u),
        _ => None,
    });
    let (Some(uri), None) = (uris.next(), uris.next()) else { return None };
    spiffe::SpiffeId::new(uri).ok().map(|id| id.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicySource;

    fn auth(tokens: Option<&str>, admins: &[&str]) -> AdminAuth {
        let mut mesh = "kind: MeshDefaults\ntrustDomain: corp.example\n".to_string();
        if !admins.is_empty() {
            mesh.push_str(&format!("adminIdentities: [{}]\n", admins.join(", ")));
        }
        let policy = crate::policy::compile(&PolicySource::from_text("mesh.yaml", &mesh), 0).unwrap();
        let tokens = tokens.map(|t| Arc::new(AdminTokens::parse("tokens", t).unwrap()));
        AdminAuth::new(tokens, Arc::new(arc_swap::ArcSwap::from_pointee(policy)), Family::default())
    }

    const OPS: &str = "spiffe://corp.example/ns/ops/sa/oncall";

    #[test]
    fn a_listed_certificate_identity_is_the_caller_and_a_token_still_works() {
        let a = auth(Some("alice 0123456789abcdef0123\n"), &[OPS]);
        assert_eq!(a.identify(Some(OPS), None), Ok(OPS.to_string()));
        assert_eq!(a.identify(Some(OPS), Some("wrong-token-but-cert-ok")), Ok(OPS.to_string()));
        assert_eq!(a.identify(None, Some("0123456789abcdef0123")), Ok("alice".to_string()));
        let other = "spiffe://corp.example/ns/payments/sa/api";
        assert_eq!(a.identify(Some(other), Some("0123456789abcdef0123")), Ok("alice".to_string()));
    }

    #[test]
    fn refusals_say_why() {
        let a = auth(Some("alice 0123456789abcdef0123\n"), &[OPS]);
        assert_eq!(a.identify(None, None), Err(Refusal::MissingCredentials));
        assert_eq!(a.identify(None, Some("0123456789abcdef0124")), Err(Refusal::UnknownToken));
        assert_eq!(a.identify(Some("spiffe://corp.example/ns/x/sa/y"), None), Err(Refusal::UnknownIdentity));
        assert_eq!(auth(None, &[]).identify(Some(OPS), Some("t")), Err(Refusal::Disabled));
        // Identities alone turn the API on; a token then matches nothing.
        assert_eq!(auth(None, &[OPS]).identify(None, Some("0123456789abcdef0123")), Err(Refusal::UnknownToken));
    }

    #[test]
    fn refused_calls_are_counted_by_reason() {
        let a = auth(Some("alice 0123456789abcdef0123\n"), &[]);
        let mut req = Request::new(());
        req.metadata_mut().insert("authorization", "Bearer nope-nope-nope-nope".parse().unwrap());
        assert_eq!(a.caller(&req).unwrap_err().code(), tonic::Code::Unauthenticated);
        assert!(a.caller(&Request::new(())).is_err());
        assert_eq!(a.failures.get_or_create(&ReasonLabel { reason: "unknown-token" }).get(), 1);
        assert_eq!(a.failures.get_or_create(&ReasonLabel { reason: "missing-credentials" }).get(), 1);
    }

    #[test]
    fn an_svid_names_its_one_uri_san() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = |sans: &[&str]| {
            let mut params = rcgen::CertificateParams::default();
            params.subject_alt_names = sans
                .iter()
                .map(|s| rcgen::SanType::URI(rcgen::string::Ia5String::try_from(s.to_string()).unwrap()))
                .collect();
            params.self_signed(&key).unwrap().der().to_vec()
        };
        assert_eq!(spiffe_id_of(&cert(&[OPS])).as_deref(), Some(OPS));
        assert_eq!(spiffe_id_of(&cert(&[OPS, "spiffe://corp.example/ns/b/sa/c"])), None, "two URI SANs: no SVID");
        assert_eq!(spiffe_id_of(&cert(&["https://corp.example/x"])), None);
        assert_eq!(spiffe_id_of(&cert(&[])), None);
        assert_eq!(spiffe_id_of(b"not a certificate"), None);
    }
}
