//! SPIFFE IDs as Kubernetes workloads. The Kubernetes shape (Istio's, SPIRE's k8s workload
//! registrar's) is `spiffe://TD/ns/NAMESPACE/sa/SERVICEACCOUNT`: that namespace, that service
//! account. `spiffe://TD/ns/NAMESPACE/sa/*` and `spiffe://TD/ns/NAMESPACE/*` claim every service
//! account of the namespace. Anything else (another path shape, a wildcard over namespaces, a
//! name Kubernetes would not accept) is a warning at the identity and stands for no workload.

use super::Warning;
use super::names::{is_dns_label, is_dns_subdomain};
use crate::identity::IdentityPattern;
use crate::policy::{PolicySource, ServiceInfo, SourceLoc};

/// Pods a service's identity stands for.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub namespace: String,
    /// `None`: every service account of the namespace.
    pub service_account: Option<String>,
    /// The identity as written.
    pub identity: String,
    /// Where it is written (the service's `service:` key when the source is not at hand).
    pub loc: SourceLoc,
}

/// The workloads of `svc`'s identities; a warning for each identity that maps to none.
pub fn workloads(svc: &ServiceInfo, source: Option<&PolicySource>, warnings: &mut Vec<Warning>) -> Vec<Workload> {
    let mut out = Vec::new();
    for identity in &svc.identities {
        let loc = source.and_then(|s| locate(s, svc, identity)).unwrap_or_else(|| svc.name_loc.clone());
        match map(identity) {
            Ok((namespace, service_account)) => {
                out.push(Workload { namespace, service_account, identity: identity.clone(), loc })
            }
            Err(why) => warnings.push(Warning {
                location: loc,
                message: format!(
                    "service `{}`: identity `{identity}` {why}: Kubernetes layers select pods by namespace and \
                     service account (spiffe://TD/ns/NAMESPACE/sa/ACCOUNT, or .../sa/* for every account); \
                     not exported for it",
                    svc.name
                ),
            }),
        }
    }
    out.sort();
    out.dedup_by(|a, b| a.namespace == b.namespace && a.service_account == b.service_account);
    out
}

/// (namespace, service account or every one) of a Kubernetes-shaped SPIFFE ID, or why not.
pub fn map(identity: &str) -> Result<(String, Option<String>), String> {
    let pattern = IdentityPattern::parse(identity)?;
    let (path, prefix) = match &pattern {
        IdentityPattern::Exact { path, .. } => (path.as_str(), false),
        IdentityPattern::Prefix { path, .. } => (path.as_str(), true),
    };
    let segments: Vec<&str> = path.strip_prefix('/').unwrap_or(path).split('/').collect();
    let (namespace, account) = match (segments.as_slice(), prefix) {
        (["ns", ns, "sa", sa], false) => (*ns, Some(*sa)),
        (["ns", ns, "sa"], true) | (["ns", ns], true) => (*ns, None),
        (["ns", _, "sa", _], true) => {
            return Err("claims paths below a service account, which Kubernetes workloads do not have".into());
        }
        ([""], true) | (["ns"], true) => return Err("claims every namespace".into()),
        _ => return Err("is not of the form spiffe://TD/ns/NAMESPACE/sa/ACCOUNT".into()),
    };
    if !is_dns_label(namespace) {
        return Err(format!("names namespace `{namespace}`, which is not a valid Kubernetes namespace name"));
    }
    if let Some(sa) = account
        && !is_dns_subdomain(sa)
    {
        return Err(format!("names service account `{sa}`, which is not a valid Kubernetes name"));
    }
    Ok((namespace.to_string(), account.map(str::to_string)))
}

/// Where `identity` is written in `svc`'s document: the first line at or after its
/// `identities:` key that holds it as a whole value.
fn locate(source: &PolicySource, svc: &ServiceInfo, identity: &str) -> Option<SourceLoc> {
    let file = source.files.iter().find(|f| *f.name == *svc.loc.file)?;
    let start = (svc.loc.line as usize).saturating_sub(1);
    let mut in_identities = false;
    for (i, line) in file.text.lines().enumerate().skip(start) {
        if i > start && (line.starts_with("---") || line.starts_with("...")) {
            break;
        }
        let code = line.split(" #").next().unwrap_or(line);
        if code.trim_start().starts_with("identities:") {
            in_identities = true;
        }
        if !in_identities {
            continue;
        }
        let mut from = 0;
        while let Some(at) = code[from..].find(identity).map(|p| p + from) {
            let before = code[..at].chars().next_back();
            let after = code[at + identity.len()..].chars().next();
            let open = matches!(before, None | Some(' ' | '-' | '"' | '\'' | '[' | ',' | '\t'));
            let close = matches!(after, None | Some(' ' | '"' | '\'' | ']' | ',' | '\t' | '\r'));
            if open && close {
                let column = code[..at].chars().count() + 1;
                return Some(SourceLoc::new(&svc.loc.file, i as u32 + 1, column as u32));
            }
            from = at + 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_shapes() {
        let ok = |id: &str| map(id).unwrap();
        assert_eq!(ok("spiffe://td/ns/payments/sa/api"), ("payments".into(), Some("api".into())));
        assert_eq!(ok("spiffe://td/ns/ci/sa/*"), ("ci".into(), None));
        assert_eq!(ok("spiffe://td/ns/ci/*"), ("ci".into(), None));
        for bad in [
            "spiffe://td/ns/*",
            "spiffe://td/*",
            "spiffe://td/workload/api",
            "spiffe://td/ns/payments/sa/api/*",
            "spiffe://td/ns/payments/sa/api/extra",
            "spiffe://td/ns/Payments/sa/api",
            "spiffe://td/ns/payments/sa/API",
            "spiffe://td/ns/payments",
        ] {
            assert!(map(bad).is_err(), "{bad}");
        }
    }
}
