//! Golden files of what users see, so a refactor cannot change it unnoticed: `egressd check`
//! (text and JSON) on the example policy, including the README's worked examples verbatim; the
//! compiled example policy; the xDS snapshot of the example Gateway; `egressd --help` and
//! `egressd serve --help`. Snapshots live in `integration/snapshots/` (insta); after an intended
//! change, regenerate with `INSTA_UPDATE=always cargo test --test golden` and review the diff.

mod support {
    pub mod render;
}

use std::path::Path;
use std::process::Command;

use egressd::explain;
use egressd::policy::GatewaySpec;
use egressd::policy::{CompiledPolicy, PolicySource, compile};
use egressd::xds::snapshot::Snapshot;

/// 2026-12-01T00:00:00Z: a fixed clock, so `expires` dates do not move the goldens.
const NOW: i64 = 1_796_083_200;

fn example() -> CompiledPolicy {
    compile(&PolicySource::embedded(), NOW).expect("the example policy is valid")
}

fn egressd(args: &[&str]) -> (String, i32) {
    let out = Command::new(env!("CARGO_BIN_EXE_egressd"))
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .output()
        .expect("run egressd");
    (String::from_utf8(out.stdout).unwrap() + &String::from_utf8(out.stderr).unwrap(), out.status.code().unwrap_or(-1))
}

/// (name, from, to, protocol, request id) of an explained case.
type Case = (&'static str, &'static str, &'static str, Option<&'static str>, Option<&'static str>);

const CASES: &[Case] = &[
    ("canary-near-miss", "spiffe://corp.example/ns/payments/sa/api", "api.stripe.com:80", None, Some("abc")),
    ("canary-no-request-id", "spiffe://corp.example/ns/payments/sa/worker", "evil.example.org:443", None, None),
    ("group-allow", "spiffe://corp.example/ns/ci/sa/builder", "files.pythonhosted.org", None, None),
    ("mesh-deny-port", "spiffe://corp.example/ns/ci/sa/builder", "evil.example.com:22", None, None),
    (
        "mesh-deny-metadata-mapped",
        "spiffe://corp.example/ns/checkout/sa/web",
        "[::ffff:169.254.169.254]:80",
        None,
        None,
    ),
    ("cidr-allow", "spiffe://corp.example/ns/payments/sa/api", "10.20.1.5:5432", None, Some("x")),
    ("service-deny", "spiffe://corp.example/ns/checkout/sa/web", "admin.partner.test:443", None, None),
    ("protocol-miss", "spiffe://corp.example/ns/checkout/sa/web", "img.cdn.partner.test:443", Some("tcp"), None),
    ("dry-run", "spiffe://corp.example/ns/search/sa/indexer", "evil.example.org:443", None, None),
    ("unknown-service", "spiffe://corp.example/ns/nobody/sa/x", "api.partner.test:443", None, None),
    ("foreign-trust-domain", "spiffe://other.example/ns/checkout/sa/web", "api.partner.test:443", None, None),
];

#[test]
fn explanations_of_the_example_policy() {
    let policy = example();
    for (name, from, to, protocol, request_id) in CASES {
        let protocol = protocol.map(|p| p.parse().expect("a protocol"));
        let dest = explain::cli_destination(to, protocol).expect("a destination");
        let decision = policy.decide(Some(from), Ok(&dest), *request_id, NOW);
        insta::assert_snapshot!(format!("explain-{name}"), explain::text(&policy, from, &dest, &decision, *request_id));
        let json = explain::json(&policy, from, &dest, &decision, *request_id);
        insta::assert_snapshot!(format!("explain-{name}-json"), serde_json::to_string_pretty(&json).unwrap());
    }
}

/// The README's worked `egressd check` examples are the binary's output, verbatim.
#[test]
fn the_readme_shows_what_egressd_check_prints() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let commands: [&[&str]; 3] = [
        &[
            "check",
            "--from",
            "spiffe://corp.example/ns/payments/sa/api",
            "--to",
            "api.stripe.com:80",
            "--request-id",
            "abc",
        ],
        &["check", "--from", "spiffe://corp.example/ns/ci/sa/builder", "--to", "files.pythonhosted.org"],
        &["check", "--from", "spiffe://corp.example/ns/ci/sa/builder", "--to", "evil.example.com:22"],
    ];
    for (i, args) in commands.iter().enumerate() {
        let (out, code) = egressd(args);
        insta::assert_snapshot!(format!("readme-check-{i}"), format!("{out}exit {code}"));
        let shown = format!("$ egressd {}\n{out}", args.join(" "));
        assert!(
            readme.contains(&shown),
            "README.md does not show the output of `egressd {}`:\n{shown}",
            args.join(" ")
        );
    }
}

#[test]
fn the_compiled_example_policy() {
    let p = example();
    let dump = serde_json::json!({
        "version": p.version,
        "origin": p.origin,
        "trustDomain": p.trust_domain,
        "defaultMode": p.default_mode,
        "trustForwardedClientCert": p.trust_forwarded_client_cert,
        "services": p.services,
        "groups": p.groups,
        "rules": p.rules,
        "gateways": p.gateways,
        "warnings": p.warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>(),
    });
    insta::assert_snapshot!("compiled-example-policy", serde_json::to_string_pretty(&dump).unwrap());
}

#[test]
fn the_xds_snapshot_of_the_example_gateway() {
    let p = example();
    let set = egressd::xds::snapshot::SnapshotSet::build(&p, &GatewaySpec::local("127.0.0.1:18000".parse().unwrap()));
    let snapshot: &Snapshot = &set.default;
    let mut text = format!("profile {} version {}\n", snapshot.profile, snapshot.version);
    for (type_url, t) in snapshot.types() {
        text += &format!("\n## {type_url} (version {})\n", t.version);
        for (name, r) in &t.resources {
            text += &format!("\n### {name} (version {})\n{}\n", r.version, support::render::any(&r.any));
        }
    }
    insta::assert_snapshot!("xds-example-gateway", text);
}

#[test]
fn help_texts() {
    for (name, args) in [("help", &["--help"][..]), ("serve-help", &["serve", "--help"][..])] {
        let (out, code) = egressd(args);
        assert_eq!(code, 0, "{out}");
        insta::assert_snapshot!(name, out);
    }
}
