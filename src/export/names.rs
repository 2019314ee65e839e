//! Kubernetes names and label values from policy text: DNS-1123 labels (lowercase letters,
//! digits and `-`, alphanumeric at both ends, at most 63 characters; object names are kept to
//! that length too, so they are valid wherever a label is expected), deduplicated per namespace.
//! A name that had to be shortened, or that another object already took, ends in a short hash of
//! what it was made from, so it is stable from one export to the next.

use std::collections::HashSet;

use sha2::{Digest, Sha256};

pub const MAX_LABEL: usize = 63;

/// Object names handed out so far, per (namespace, kind).
#[derive(Debug, Default)]
pub struct Names {
    used: HashSet<(String, String, String)>,
}

impl Names {
    /// A DNS-1123 name for an object of `kind` in `namespace`, made from `raw`, never one given
    /// out before for the same namespace and kind.
    pub fn unique(&mut self, kind: &str, namespace: &str, raw: &str) -> String {
        let mut name = dns_label(raw);
        let mut n = 1u32;
        while !self.used.insert((kind.to_string(), namespace.to_string(), name.clone())) {
            n += 1;
            name = with_hash(&dns_label_untrimmed(raw), &format!("{raw}#{n}"));
        }
        name
    }
}

/// `raw` as a DNS-1123 label: lowercase, runs of other characters as one `-`, at most 63
/// characters (a longer one keeps its first 54 and a hash of the whole).
pub fn dns_label(raw: &str) -> String {
    let base = dns_label_untrimmed(raw);
    if base.len() <= MAX_LABEL { base } else { with_hash(&base, raw) }
}

fn dns_label_untrimmed(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            out.push(c);
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    let out = out.trim_matches('-').to_string();
    if out.is_empty() { "x".to_string() } else { out }
}

/// The first characters of `base` and `-` and 8 hex digits of SHA-256(`seed`), 63 at most.
fn with_hash(base: &str, seed: &str) -> String {
    let digest = Sha256::digest(seed.as_bytes());
    let hash: String = digest.iter().take(4).map(|b| format!("{b:02x}")).collect();
    let keep = MAX_LABEL - hash.len() - 1;
    let head: String = base.chars().take(keep).collect();
    format!("{}-{hash}", head.trim_end_matches('-'))
}

/// `raw` as a label value: letters, digits, `-`, `_`, `.`, alphanumeric at both ends, at most 63.
pub fn label_value(raw: &str) -> String {
    let mapped: String =
        raw.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') { c } else { '-' }).collect();
    let trimmed = mapped.trim_matches(|c: char| !c.is_ascii_alphanumeric());
    if trimmed.len() <= MAX_LABEL && !trimmed.is_empty() {
        return trimmed.to_string();
    }
    with_hash(&dns_label_untrimmed(raw), raw)
}

/// Whether `s` is a DNS-1123 label (a Kubernetes namespace name).
pub fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_LABEL
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether `s` is a DNS-1123 subdomain (a Kubernetes service account name).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty() && s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        assert_eq!(dns_label("egressd-api.stripe.com"), "egressd-api-stripe-com");
        assert_eq!(dns_label("Payments_API"), "payments-api");
        assert_eq!(dns_label("--"), "x");
        let long = dns_label(&"a".repeat(100));
        assert_eq!(long.len(), 63);
        assert!(is_dns_label(&long));
        assert_ne!(dns_label(&"a".repeat(100)), dns_label(&"a".repeat(101)));
        assert_eq!(label_value("team payments/api"), "team-payments-api");
        assert_eq!(label_value("ci-runners"), "ci-runners");
        assert!(is_dns_subdomain("build.bot") && !is_dns_subdomain("Build") && !is_dns_label("a.b"));
    }

    #[test]
    fn unique_per_namespace_and_kind() {
        let mut names = Names::default();
        let a = names.unique("K", "ns", "egressd-a.b");
        let b = names.unique("K", "ns", "egressd-a-b");
        assert_eq!(a, "egressd-a-b");
        assert_ne!(a, b);
        assert!(is_dns_label(&b) && b.starts_with("egressd-a-b-"));
        assert_eq!(names.unique("K", "other", "egressd-a-b"), "egressd-a-b");
        assert_eq!(names.unique("L", "ns", "egressd-a-b"), "egressd-a-b");
    }
}
