//! The policy loader: arbitrary bytes as one or several YAML files (split on NUL bytes, at most
//! eight), loaded and compiled as `serve` would; a policy that compiles is then decided against,
//! and its Gateway documents turned into xDS snapshots.
//!
//! Invariants: a rejected policy has at least one error; an accepted one has none among its
//! warnings and carries the source's version; every diagnostic names one of the files (or the
//! set's origin) and formats.
#![no_main]

use egressd::policy::fqdn::{Host, HostPattern};
use egressd::policy::{Destination, PolicySource, Protocol, Severity, compile, gateway_defaults};
use egressd::xds::snapshot::SnapshotSet;
use libfuzzer_sys::fuzz_target;

const NOW: i64 = 1_790_000_000;
const MAX_FILES: usize = 8;

fuzz_target!(|data: &[u8]| {
    // `SourceFile` is not exported: each file is made by `from_text` (the names sort as given).
    let files = data
        .split(|&b| b == 0)
        .take(MAX_FILES)
        .enumerate()
        .flat_map(|(i, text)| PolicySource::from_text(&format!("f{i}.yaml"), &String::from_utf8_lossy(text)).files)
        .collect();
    let source = PolicySource { origin: "fuzz/".to_string(), files };
    let known_file = |file: &str| file == source.origin || source.files.iter().any(|f| &*f.name == file);
    match compile(&source, NOW) {
        Err(diags) => {
            assert!(diags.iter().any(|d| d.severity == Severity::Error), "rejected without an error: {diags:?}");
            for d in &diags {
                assert!(known_file(&d.loc.file), "diagnostic names an unknown file: {d}");
                let _ = d.to_string();
            }
        }
        Ok(policy) => {
            assert_eq!(policy.version, source.version());
            for d in &policy.warnings {
                assert_eq!(d.severity, Severity::Warning, "accepted with an error: {d}");
                assert!(known_file(&d.loc.file), "diagnostic names an unknown file: {d}");
                let _ = d.to_string();
            }
            // Decide each service's first identity against each rule's host (bounded).
            let principals: Vec<&str> =
                policy.services.iter().filter_map(|s| s.identities.first().map(String::as_str)).take(8).collect();
            for rule in policy.rules.iter().take(16) {
                let Some(pattern) = &rule.host else { continue };
                let name = match pattern {
                    HostPattern::Exact(n) => n.clone(),
                    HostPattern::Wildcard(n) => format!("x.{n}"),
                };
                let Ok(host) = egressd::policy::fqdn::normalize_host(&name) else { continue };
                let port = rule.ports.as_ref().and_then(|p| p.first().copied()).unwrap_or(443);
                let dest = Destination { host: host.clone(), port, protocol: Protocol::Https };
                for principal in principals.iter().copied().map(Some).chain([None]) {
                    let a = policy.decide(principal, Ok(&dest), Some("fuzz-request"), NOW).verdict();
                    let b = policy.decide(principal, Ok(&dest), Some("fuzz-request"), NOW).verdict();
                    assert_eq!(a, b, "decide is not deterministic");
                }
                assert!(matches!(host, Host::Name(_)));
            }
            let fallback = egressd::policy::GatewaySpec::local(gateway_defaults::AUTHZ_ADDRESS);
            let _ = SnapshotSet::build(&policy, &fallback);
        }
    }
});
