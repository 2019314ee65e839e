//! A service name for an identity no service claims, taken from its SPIFFE path.

use std::collections::BTreeSet;

/// Used when the path gives nothing usable (`spiffe://td/%%%`).
const FALLBACK: &str = "unclaimed";

/// The name a new service for `spiffe_id` gets: Kubernetes `/ns/X/sa/Y` is `X-Y`; any other path
/// is its segments joined by `-`; lowercased, every character outside `[a-z0-9-]` replaced by
/// `-` (runs squeezed, ends trimmed, so it is a clean file name and service name). A name in
/// `taken` gets the first free numeric suffix (`batch-etl-2`).
pub fn service_name(spiffe_id: &str, taken: &BTreeSet<String>) -> String {
    let base = base_name(spiffe_id);
    if !taken.contains(&base) {
        return base;
    }
    (2..).map(|n| format!("{base}-{n}")).find(|name| !taken.contains(name)).expect("some suffix is free")
}

fn base_name(spiffe_id: &str) -> String {
    let path = spiffe_id.strip_prefix("spiffe://").and_then(|rest| rest.split_once('/')).map_or("", |(_, p)| p);
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let joined = match segments.as_slice() {
        ["ns", namespace, "sa", account] => format!("{namespace}-{account}"),
        other => other.join("-"),
    };
    let name = sanitize(&joined);
    if name.is_empty() { FALLBACK.to_string() } else { name }
}

fn sanitize(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars().flat_map(char::to_lowercase) {
        let c = if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' };
        if !(c == '-' && (out.is_empty() || out.ends_with('-'))) {
            out.push(c);
        }
    }
    out.trim_end_matches('-').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_spiffe_paths() {
        let none = BTreeSet::new();
        assert_eq!(service_name("spiffe://corp.example/ns/batch/sa/etl", &none), "batch-etl");
        assert_eq!(service_name("spiffe://corp.example/jobs/Nightly_Report", &none), "jobs-nightly-report");
        assert_eq!(service_name("spiffe://corp.example/ns/a/sa/b/extra", &none), "ns-a-sa-b-extra");
        assert_eq!(service_name("spiffe://corp.example/--x..y--", &none), "x-y");
        assert_eq!(service_name("spiffe://corp.example/%%%", &none), "unclaimed");
    }

    #[test]
    fn taken_names_get_a_numeric_suffix() {
        let taken: BTreeSet<String> = ["batch-etl", "batch-etl-2"].iter().map(|s| s.to_string()).collect();
        assert_eq!(service_name("spiffe://corp.example/ns/batch/sa/etl", &taken), "batch-etl-3");
    }
}
