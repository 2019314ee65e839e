//! Who is calling: SPIFFE IDs, the identity patterns services claim, and the index that maps a
//! caller's ID to its service in time proportional to the ID's path segments.

pub mod xfcc;

use rustc_hash::FxHashMap;
use spiffe::SpiffeId;

/// A caller's SPIFFE ID, accepted: a valid SPIFFE ID of the mesh's trust domain, as the peer (or
/// the nearest XFCC hop) presented it. `CompiledPolicy::identify` makes it, so the code after it
/// (canary selection, tunnel pairing) works with an accepted identity, never a raw principal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkloadId<'a>(&'a str);

impl<'a> WorkloadId<'a> {
    /// A principal the policy accepted (the caller vouches for that).
    pub(crate) fn accepted(principal: &'a str) -> Self {
        WorkloadId(principal)
    }

    pub fn as_str(&self) -> &'a str {
        self.0
    }
}

impl std::fmt::Display for WorkloadId<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// Why a caller is not authenticated (the decision reason is `unauthenticated`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthnError {
    #[error("no caller identity: no mTLS peer principal{xfcc}")]
    Missing { xfcc: &'static str },
    #[error("caller identity is not a valid SPIFFE ID: {0}")]
    NotSpiffe(String),
    #[error("caller identity belongs to another trust domain")]
    ForeignTrustDomain,
    /// The identity would come from XFCC, and XFCC does not say it unambiguously.
    #[error("{0}")]
    Xfcc(#[from] xfcc::XfccError),
}

/// The subject of an `identities:` entry: one workload, or every workload under a path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum IdentityPattern {
    /// `spiffe://td/ns/payments/sa/api`: this path exactly.
    Exact { trust_domain: String, path: String },
    /// `spiffe://td/ns/ci/*`: any path below `/ns/ci`, in whole segments (not `/ns/cicd/...`).
    Prefix { trust_domain: String, path: String },
}

impl IdentityPattern {
    pub fn parse(raw: &str) -> Result<Self, String> {
        let (id, prefix) = match raw.strip_suffix("/*") {
            Some(base) => (base, true),
            None => (raw, false),
        };
        if id.contains('*') {
            return Err("'*' may only stand as the last path segment, as in spiffe://td/ns/ci/*".into());
        }
        let id = SpiffeId::new(id).map_err(|e| format!("invalid SPIFFE ID `{raw}`: {e}"))?;
        let trust_domain = id.trust_domain_name().to_string();
        let path = id.path().to_string();
        if !prefix && path.is_empty() {
            return Err(format!("`{raw}` names a trust domain, not a workload: use `{raw}/*` to claim all of it"));
        }
        Ok(if prefix {
            IdentityPattern::Prefix { trust_domain, path }
        } else {
            IdentityPattern::Exact { trust_domain, path }
        })
    }

    pub fn trust_domain(&self) -> &str {
        match self {
            IdentityPattern::Exact { trust_domain, .. } | IdentityPattern::Prefix { trust_domain, .. } => trust_domain,
        }
    }

    /// Reference semantics, for tests and overlap warnings.
    pub fn covers(&self, path: &str) -> bool {
        match self {
            IdentityPattern::Exact { path: p, .. } => p == path,
            IdentityPattern::Prefix { path: p, .. } => {
                path.len() > p.len() + 1 && path.starts_with(p.as_str()) && path.as_bytes()[p.len()] == b'/'
            }
        }
    }
}

impl std::fmt::Display for IdentityPattern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdentityPattern::Exact { trust_domain, path } => write!(f, "spiffe://{trust_domain}{path}"),
            IdentityPattern::Prefix { trust_domain, path } => write!(f, "spiffe://{trust_domain}{path}/*"),
        }
    }
}

/// Identity patterns of one trust domain -> service index.
#[derive(Debug, Default)]
pub struct IdentityIndex {
    exact: FxHashMap<Box<str>, u32>,
    prefix: FxHashMap<Box<str>, u32>,
}

impl IdentityIndex {
    /// Adds a claim; returns the service that already holds this exact pattern, if any.
    pub fn insert(&mut self, pattern: &IdentityPattern, service: u32) -> Result<(), u32> {
        let (map, path) = match pattern {
            IdentityPattern::Exact { path, .. } => (&mut self.exact, path),
            IdentityPattern::Prefix { path, .. } => (&mut self.prefix, path),
        };
        match map.get(path.as_str()) {
            Some(&owner) => Err(owner),
            None => {
                map.insert(path.as_str().into(), service);
                Ok(())
            }
        }
    }

    /// The service that claims `path`: an exact claim, else the longest prefix claim.
    pub fn lookup(&self, path: &str) -> Option<u32> {
        if let Some(&s) = self.exact.get(path) {
            return Some(s);
        }
        if self.prefix.is_empty() {
            return None;
        }
        // Try every whole-segment prefix, longest first: "/ns/ci/sa/x" -> "/ns/ci/sa", "/ns/ci", "/ns", "".
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            if let Some(&s) = self.prefix.get(&path[..slash]) {
                return Some(s);
            }
            end = slash;
        }
        None
    }
}

/// Parses and checks a principal against the accepted trust domain.
pub fn authenticate(principal: &str, trust_domain: &str) -> Result<SpiffeId, AuthnError> {
    let id = SpiffeId::new(principal).map_err(|e| AuthnError::NotSpiffe(e.to_string()))?;
    if id.trust_domain_name() != trust_domain {
        return Err(AuthnError::ForeignTrustDomain);
    }
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(patterns: &[(&str, u32)]) -> IdentityIndex {
        let mut idx = IdentityIndex::default();
        for (p, s) in patterns {
            idx.insert(&IdentityPattern::parse(p).unwrap(), *s).unwrap();
        }
        idx
    }

    #[test]
    fn prefixes_match_whole_segments() {
        let idx = index(&[("spiffe://corp.example/ns/ci/*", 1)]);
        assert_eq!(idx.lookup("/ns/ci/sa/x"), Some(1));
        assert_eq!(idx.lookup("/ns/ci/x"), Some(1));
        assert_eq!(idx.lookup("/ns/cicd/sa/x"), None);
        assert_eq!(idx.lookup("/ns/ci"), None);
    }

    #[test]
    fn exact_beats_prefix_and_longest_prefix_wins() {
        let idx = index(&[
            ("spiffe://corp.example/ns/ci/*", 1),
            ("spiffe://corp.example/ns/ci/sa/deployer", 2),
            ("spiffe://corp.example/ns/ci/sa/*", 3),
        ]);
        assert_eq!(idx.lookup("/ns/ci/sa/deployer"), Some(2));
        assert_eq!(idx.lookup("/ns/ci/sa/builder"), Some(3));
        assert_eq!(idx.lookup("/ns/ci/pod/x"), Some(1));
    }

    #[test]
    fn duplicate_claims_are_reported() {
        let mut idx = index(&[("spiffe://corp.example/ns/a/sa/x", 1)]);
        assert_eq!(idx.insert(&IdentityPattern::parse("spiffe://corp.example/ns/a/sa/x").unwrap(), 2), Err(1));
    }

    #[test]
    fn authentication() {
        assert!(authenticate("spiffe://corp.example/ns/a/sa/x", "corp.example").is_ok());
        assert_eq!(authenticate("spiffe://other.example/ns/a", "corp.example"), Err(AuthnError::ForeignTrustDomain));
        assert!(matches!(authenticate("alice", "corp.example"), Err(AuthnError::NotSpiffe(_))));
        assert!(matches!(authenticate("spiffe://corp.example/ns//x", "corp.example"), Err(AuthnError::NotSpiffe(_))));
    }

    #[test]
    fn pattern_errors() {
        assert!(IdentityPattern::parse("spiffe://corp.example/ns/*/sa").is_err());
        assert!(IdentityPattern::parse("spiffe://corp.example").is_err());
        assert!(IdentityPattern::parse("spiffe://corp.example/*").is_ok());
        assert!(IdentityPattern::parse("https://corp.example/x").is_err());
    }
}
