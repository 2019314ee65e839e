//! Proposed allows as YAML text: list items with their evidence as comments, and whole
//! documents for new services. Written by hand, not serialized, so the lines look like the ones
//! people write (and the edits around them stay small).

use super::{Evidence, LearnedTarget, NewService, ProposedAllow};
use crate::policy::fqdn::HostPattern;

/// At most this many collapsed names are listed in a wildcard's evidence comment.
const LISTED_NAMES: usize = 5;

/// Where the lines of a list item start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Indent {
    /// Column of the `-` (and of the evidence comments above it).
    pub dash: usize,
    /// Column of the item's keys after the first (`ports:`, `justification:`).
    pub key: usize,
}

impl Indent {
    /// `  - host: …` / `    ports: …`, as in the example policy.
    pub const DEFAULT: Indent = Indent { dash: 2, key: 4 };
}

/// The list items for `allows` of `service`, each line ending in `nl`.
pub fn allow_items(allows: &[ProposedAllow], service: &str, indent: Indent, nl: &str) -> String {
    let mut out = String::new();
    for allow in allows {
        allow_item(&mut out, allow, service, indent, nl);
    }
    out
}

fn allow_item(out: &mut String, allow: &ProposedAllow, service: &str, indent: Indent, nl: &str) {
    let dash = " ".repeat(indent.dash);
    let key = " ".repeat(indent.key);
    for comment in evidence_comments(&allow.evidence, &allow.target) {
        out.push_str(&format!("{dash}# {comment}{nl}"));
    }
    let (field, value) = match &allow.target {
        LearnedTarget::Host(pattern) => ("host", host_value(pattern)),
        LearnedTarget::Cidr(net) if net.addr().is_ipv6() => ("cidr", quote(&net.to_string())),
        LearnedTarget::Cidr(net) => ("cidr", net.to_string()),
    };
    // The first key sits where the others do, whatever the dash's own spacing.
    let gap = " ".repeat(indent.key.saturating_sub(indent.dash + 1).max(1));
    out.push_str(&format!("{dash}-{gap}{field}: {value}{nl}"));
    if let Some(ports) = &allow.ports {
        let list: Vec<String> = ports.iter().map(u16::to_string).collect();
        out.push_str(&format!("{key}ports: [{}]{nl}", list.join(", ")));
    }
    let justification = quote(&allow.placeholder_justification(service));
    out.push_str(&format!("{key}justification: {justification}{nl}"));
}

/// `learned: 1,234 hits from 3 workloads, first seen …, last seen …`, then the collapsed names.
pub fn evidence_comments(evidence: &Evidence, target: &LearnedTarget) -> Vec<String> {
    let mut learned = format!("learned: {}", plural(evidence.hits, "hit"));
    if !evidence.workloads.is_empty() {
        let (count, more) = (evidence.workloads.len() as u64, evidence.workloads_truncated);
        let s = if count == 1 && !more { "" } else { "s" };
        learned.push_str(&format!(" from {}{} workload{s}", thousands(count), if more { "+" } else { "" }));
    }
    learned.push_str(&format!(
        ", first seen {}, last seen {}",
        timestamp(evidence.first_seen_ms),
        timestamp(evidence.last_seen_ms)
    ));
    let mut lines = vec![learned];
    if !evidence.collapsed.is_empty() {
        let what = if matches!(target, LearnedTarget::Cidr(_)) { "addresses" } else { "names" };
        lines.push(format!("{what}: {}", listed(&evidence.collapsed)));
    }
    lines
}

/// `a, b, c, d, e, ... (12 in all)`.
fn listed(items: &[String]) -> String {
    let shown = items[..items.len().min(LISTED_NAMES)].join(", ");
    if items.len() > LISTED_NAMES { format!("{shown}, ... ({} in all)", items.len()) } else { shown }
}

fn plural(n: u64, what: &str) -> String {
    format!("{} {what}{}", thousands(n), if n == 1 { "" } else { "s" })
}

use crate::reports::thousands;

/// RFC 3339 UTC to the second: the comment is for people, milliseconds are noise.
fn timestamp(ms: i64) -> String {
    jiff::Timestamp::from_second(ms.div_euclid(1000)).map_or_else(|_| format!("{ms} ms"), |t| t.to_string())
}

/// A wildcard must be quoted (a plain `*` starts an alias); names that YAML could read as
/// something else than a string (`null`, `1.5e3`) are quoted as well.
fn host_value(pattern: &HostPattern) -> String {
    let text = pattern.to_string();
    let plain = matches!(pattern, HostPattern::Exact(_))
        && text.starts_with(|c: char| c.is_ascii_lowercase())
        && text.contains('.');
    if plain { text } else { quote(&text) }
}

/// A double-quoted YAML scalar.
pub fn quote(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A new file's (or document's) text: a dry-run ServicePolicy claiming the identity, with the
/// learned allows, and comments saying where it came from and what a reviewer must do.
pub fn new_service_document(service: &NewService, nl: &str) -> String {
    let identity = if service.identity.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._:/".contains(&b)) {
        service.identity.clone()
    } else {
        quote(&service.identity)
    };
    let mut out = String::new();
    for line in [
        format!("# Learned by `egressd learn` from the traffic of {identity},"),
        "# which no service claimed. Review it: name the owner, answer each justification's".to_string(),
        "# question, and move it out of dry-run once it holds.".to_string(),
        "kind: ServicePolicy".to_string(),
        format!("service: {}", service.name),
        "owner: TODO".to_string(),
        "identities:".to_string(),
        format!("  - {identity}"),
        "mode: dry-run".to_string(),
        "allow:".to_string(),
    ] {
        out.push_str(&line);
        out.push_str(nl);
    }
    out.push_str(&allow_items(&service.allows, &service.name, Indent::DEFAULT, nl));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn evidence(hits: u64, workloads: &[&str]) -> Evidence {
        Evidence {
            hits,
            workloads: workloads.iter().map(|w| w.to_string()).collect(),
            workloads_truncated: false,
            first_seen_ms: 1_795_000_000_123,
            last_seen_ms: 1_795_086_400_999,
            collapsed: Vec::new(),
        }
    }

    #[test]
    fn an_item_with_its_evidence() {
        let mut e = evidence(1234, &["spiffe://d/a", "spiffe://d/b", "spiffe://d/c"]);
        e.collapsed = (1..=7).map(|i| format!("n{i}.cdn.vendor.test")).collect();
        let allow = ProposedAllow {
            target: LearnedTarget::Host(HostPattern::Wildcard("cdn.vendor.test".into())),
            ports: Some(vec![443, 8443]),
            evidence: e,
        };
        let text = allow_items(&[allow], "payments", Indent::DEFAULT, "\n");
        assert_eq!(
            text,
            "  # learned: 1,234 hits from 3 workloads, first seen 2026-11-18T11:06:40Z, last seen 2026-11-19T11:06:40Z\n\
             \x20 # names: n1.cdn.vendor.test, n2.cdn.vendor.test, n3.cdn.vendor.test, n4.cdn.vendor.test, n5.cdn.vendor.test, ... (7 in all)\n\
             \x20 - host: \"*.cdn.vendor.test\"\n\
             \x20   ports: [443, 8443]\n\
             \x20   justification: \"TODO: why does payments need *.cdn.vendor.test?\"\n"
        );
    }

    #[test]
    fn values_yaml_would_misread_are_quoted() {
        let exact = |n: &str| host_value(&HostPattern::Exact(n.into()));
        assert_eq!(exact("api.vendor.test"), "api.vendor.test");
        assert_eq!(exact("1.5e3"), "\"1.5e3\"");
        assert_eq!(exact("null"), "\"null\"");
        assert_eq!(quote("a \"b\" \\ c"), r#""a \"b\" \\ c""#);
    }

    #[test]
    fn counts_and_singulars() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
        let one = evidence(1, &["spiffe://d/a"]);
        let target = LearnedTarget::Cidr("10.0.0.1/32".parse().unwrap());
        assert!(evidence_comments(&one, &target)[0].starts_with("learned: 1 hit from 1 workload, first seen"));
        let mut many = evidence(2, &["spiffe://d/a"]);
        many.workloads_truncated = true;
        assert!(evidence_comments(&many, &target)[0].starts_with("learned: 2 hits from 1+ workloads,"));
    }
}
