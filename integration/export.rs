//! `egressd export` on the example mesh (`mesh-config/`):
//!
//! - semantics: for a table of destinations (allowed exact hosts, names under an allowed
//!   wildcard one and two labels deep, a wildcard's apex, mesh-wide and service denies, an
//!   unlisted host; ports 443 and a mesh-denied 22), every service's view through the exported
//!   Istio ServiceEntries and Cilium toFQDNs (matched here by Istio's and Cilium's documented
//!   rules) admits exactly what `decide` allows for one of its identities; NetworkPolicy ipBlocks
//!   are the CIDR allows;
//! - the binary: every target on stdout (the YAML reads back as the library's objects, the
//!   warnings on stderr as `egressd: warning: FILE:LINE:COL: message`) and with `--out`; exit 2
//!   when the policy does not load or `--out` cannot be written;
//! - schemas: every object of every target, for the example mesh and for
//!   `integration/export/edge-cases/` (port ranges, excepts, IPv6, long names...), validated by
//!   `integration/export/validate.mjs` against the Kubernetes, Istio and Cilium schemas of the
//!   `kubernetes-models` packages, plus the ServiceEntry CEL rules ajv does not run. The packages
//!   must be installed (the test installs nothing): see `schemas::INSTALL`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use egressd::export::{self, Export, Options, Target};
use egressd::policy::fqdn::Host;
use egressd::policy::{CompiledPolicy, Destination, Outcome, PolicySource, Protocol, compile};
use serde_json::Value;

// A path attribute, not `mod support { .. }`: rustfmt would look for the module under the
// fixtures directory `integration/export/`.
#[path = "support/schemas.rs"]
mod schemas;

use schemas::validate;

const BIN: &str = env!("CARGO_BIN_EXE_egressd");
const ROOT: &str = env!("CARGO_MANIFEST_DIR");
/// What CI runs (from the repository root) before `cargo test --test export`.
/// 2026-06-01: before the example's one `expires` (2027-06-30).
const NOW: i64 = 1_780_272_000;

fn mesh_config() -> PathBuf {
    Path::new(ROOT).join("mesh-config")
}

fn edge_cases() -> PathBuf {
    Path::new(ROOT).join("integration/export/edge-cases")
}

fn load(dir: &Path) -> (PolicySource, CompiledPolicy) {
    let source = PolicySource::from_dir(dir).expect("policy directory");
    let policy = compile(&source, NOW).unwrap_or_else(|d| panic!("{}", egressd::policy::format_diagnostics(&d)));
    (source, policy)
}

fn exported(dir: &Path, target: Target, options: &Options) -> Export {
    let (source, policy) = load(dir);
    export::export_with_source(&policy, &source, target, options)
}

fn options() -> Options {
    Options { now: Some(NOW), ..Options::default() }
}

// ---------------------------------------------------------------------------------------------
// Istio's and Cilium's matching, per their documentation.

/// Istio ServiceEntry `hosts` (istio pkg/config/host: `Name.Matches`): `*` matches every name,
/// `*.suffix` every name that ends in `.suffix` (any depth, never `suffix` itself), else equality;
/// DNS names compare case-insensitively.
fn istio_host_matches(pattern: &str, host: &str) -> bool {
    let (pattern, host) = (pattern.to_ascii_lowercase(), host.to_ascii_lowercase());
    match pattern.strip_prefix('*') {
        Some("") => true,
        Some(suffix) => host.ends_with(suffix) && host.len() > suffix.len(),
        None => pattern == host,
    }
}

/// Whether a sidecar in `namespace` may send to `host:port` under REGISTRY_ONLY: some
/// ServiceEntry exported to the namespace names the host and the port.
fn istio_admits(objects: &[Value], namespace: &str, host: &str, port: u16) -> bool {
    objects.iter().filter(|o| o["kind"] == "ServiceEntry").any(|se| {
        let spec = &se["spec"];
        let exported = match spec["exportTo"].as_array() {
            None => true,
            Some(list) => list.iter().any(|n| n == "*" || n == namespace),
        };
        exported
            && strings(&spec["hosts"]).iter().any(|h| istio_host_matches(h, host))
            && spec["ports"].as_array().unwrap().iter().any(|p| p["number"] == port)
    })
}

/// Cilium `toFQDNs.matchPattern` (docs: policy language, DNS based): `*` alone matches every
/// name; a leading `**.` matches one or more labels (Cilium 1.19+); elsewhere `*` matches zero
/// or more DNS characters within one label (`*.cilium.io` matches `sub.cilium.io`, not
/// `cilium.io` or `sub.sub.cilium.io`). Case-insensitive, trailing dot ignored.
fn cilium_pattern_matches(pattern: &str, name: &str) -> bool {
    let pattern = pattern.trim_end_matches('.').to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    if pattern == "*" {
        return true;
    }
    let labels: Vec<&str> = name.split('.').collect();
    if let Some(rest) = pattern.strip_prefix("**.") {
        let rest: Vec<&str> = rest.split('.').collect();
        return labels.len() > rest.len()
            && labels[labels.len() - rest.len()..].iter().zip(&rest).all(|(l, p)| label_glob(p, l));
    }
    let parts: Vec<&str> = pattern.split('.').collect();
    parts.len() == labels.len() && parts.iter().zip(&labels).all(|(p, l)| label_glob(p, l))
}

/// One label against one pattern label: `*` is zero or more of `[-a-z0-9_]`.
fn label_glob(pattern: &str, label: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == label,
        Some((head, tail)) => {
            label.len() >= head.len()
                && label.starts_with(head)
                && (head.len()..=label.len()).any(|i| {
                    label[head.len()..i].bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                        && label_glob(tail, &label[i..])
                })
        }
    }
}

/// Whether a `toPorts` list (absent: every port) lets TCP `port` through.
fn cilium_ports_admit(to_ports: &Value, port: u16) -> bool {
    let Some(rules) = to_ports.as_array() else { return true };
    rules.iter().any(|r| {
        r["ports"].as_array().unwrap().iter().any(|p| {
            let protocol = p["protocol"].as_str().unwrap_or("ANY");
            let start: u16 = p["port"].as_str().unwrap().parse().unwrap();
            let end = p["endPort"].as_u64().map(|e| e as u16).unwrap_or(start);
            (protocol == "TCP" || protocol == "ANY") && (start == 0 || (start <= port && port <= end))
        })
    })
}

/// Whether an endpointSelector selects a pod of `namespace` running as `account`.
fn cilium_selects(selector: &Value, namespace: &str, account: &str) -> bool {
    let labels = |key: &str| match key {
        "k8s:io.kubernetes.pod.namespace" => Some(namespace),
        "k8s:io.cilium.k8s.policy.serviceaccount" => Some(account),
        _ => None,
    };
    let by_label = selector["matchLabels"].as_object().is_none_or(|m| m.iter().all(|(k, v)| labels(k) == v.as_str()));
    let by_expression = selector["matchExpressions"].as_array().is_none_or(|list| {
        list.iter().all(|e| {
            assert_eq!(e["operator"], "In", "{e}");
            labels(e["key"].as_str().unwrap()).is_some_and(|v| strings(&e["values"]).iter().any(|x| x == v))
        })
    });
    by_label && by_expression
}

/// Whether the Cilium policies let a pod (namespace, account) reach `host:port`: some policy
/// that selects it allows the name on the port, and no egressDeny for the world holds the port.
fn cilium_admits(objects: &[Value], namespace: &str, account: &str, host: &str, port: u16) -> bool {
    let mine: Vec<&Value> = objects
        .iter()
        .filter(|o| {
            o["kind"] == "CiliumNetworkPolicy"
                && o["metadata"]["namespace"] == namespace
                && cilium_selects(&o["spec"]["endpointSelector"], namespace, account)
        })
        .collect();
    let allowed = mine.iter().any(|p| {
        p["spec"]["egress"].as_array().unwrap().iter().any(|rule| {
            rule["toFQDNs"].as_array().is_some_and(|sels| {
                sels.iter().any(|s| match (s["matchName"].as_str(), s["matchPattern"].as_str()) {
                    (Some(name), _) => name.eq_ignore_ascii_case(host),
                    (_, Some(pattern)) => cilium_pattern_matches(pattern, host),
                    _ => false,
                })
            }) && cilium_ports_admit(&rule["toPorts"], port)
        })
    });
    let denied = mine.iter().any(|p| {
        p["spec"]["egressDeny"].as_array().is_some_and(|rules| {
            rules.iter().any(|rule| {
                strings(&rule["toEntities"]).iter().any(|e| e == "world" || e == "all")
                    && cilium_ports_admit(&rule["toPorts"], port)
            })
        })
    });
    allowed && !denied
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|s| s.as_str().unwrap().to_string()).collect()).unwrap_or_default()
}

#[test]
fn the_layers_matchers_read_the_documented_semantics() {
    assert!(istio_host_matches("*.example.com", "a.example.com"));
    assert!(istio_host_matches("*.example.com", "a.b.example.com"));
    assert!(!istio_host_matches("*.example.com", "example.com"));
    assert!(!istio_host_matches("*.example.com", "badexample.com"));
    assert!(istio_host_matches("*", "anything.test"));
    assert!(cilium_pattern_matches("*.cilium.io", "sub.cilium.io"));
    assert!(!cilium_pattern_matches("*.cilium.io", "cilium.io"));
    assert!(!cilium_pattern_matches("*.cilium.io", "sub.sub.cilium.io"));
    assert!(cilium_pattern_matches("part*ial.com", "partial.com"));
    assert!(cilium_pattern_matches("part*ial.com", "part-extra-ial.com"));
    assert!(cilium_pattern_matches("**.cilium.io", "app.cilium.io"));
    assert!(cilium_pattern_matches("**.cilium.io", "test.app.cilium.io"));
    assert!(!cilium_pattern_matches("**.cilium.io", "cilium.io"));
    assert!(cilium_pattern_matches("*", "x.y"));
}

// ---------------------------------------------------------------------------------------------
// Semantics on the example mesh.

/// One identity per service of `mesh-config/`, with the pod it is in Kubernetes terms.
const CALLERS: &[(&str, &str, &str)] = &[
    ("spiffe://corp.example/ns/checkout/sa/web", "checkout", "web"),
    ("spiffe://corp.example/ns/ci/sa/builder", "ci", "builder"),
    ("spiffe://corp.example/ns/payments/sa/api", "payments", "api"),
    ("spiffe://corp.example/ns/payments/sa/worker", "payments", "worker"),
    ("spiffe://corp.example/ns/search/sa/indexer", "search", "indexer"),
];

/// (host, why it is in the table)
const HOSTS: &[(&str, &str)] = &[
    ("api.stripe.com", "exact allow (payments)"),
    ("api.partner.test", "exact allow without ports (checkout) and with (search)"),
    ("github.com", "exact allow (ci-runners)"),
    ("pypi.org", "exact allow from a group (ci-runners, search)"),
    ("files.pythonhosted.org", "one label under an allowed wildcard (a group)"),
    ("a.b.pythonhosted.org", "two labels under an allowed wildcard"),
    ("pythonhosted.org", "the wildcard's apex: not allowed"),
    ("img.cdn.partner.test", "under checkout's wildcard"),
    ("cdn.partner.test", "the apex of checkout's wildcard"),
    ("us5.datadoghq.com", "under payments' wildcard (a group, https/tls)"),
    ("pastebin.com", "mesh-wide host deny"),
    ("uploads.stripe.com", "payments' own deny"),
    ("admin.partner.test", "checkout's own deny"),
    ("unlisted.example.org", "not in the policy"),
];

fn egressd_allows(policy: &CompiledPolicy, identity: &str, host: &str, port: u16) -> bool {
    let protocol = if port == 443 { Protocol::Https } else { Protocol::Tcp };
    let dest = Destination { host: Host::Name(host.into()), port, protocol };
    policy.decide(Some(identity), Ok(&dest), None, NOW).outcome == Outcome::Allow
}

#[test]
fn istio_and_cilium_admit_exactly_what_the_policy_allows() {
    let (_, policy) = load(&mesh_config());
    let istio = exported(&mesh_config(), Target::Istio, &options());
    let cilium = exported(&mesh_config(), Target::Cilium, &options());
    let mut table = String::new();
    let mut wrong = Vec::new();
    let mut allowed = 0;
    for &(identity, namespace, account) in CALLERS {
        for &(host, why) in HOSTS {
            for port in [443, 22] {
                let want = egressd_allows(&policy, identity, host, port);
                let by_istio = istio_admits(&istio.objects, namespace, host, port);
                let by_cilium = cilium_admits(&cilium.objects, namespace, account, host, port);
                allowed += want as usize;
                table.push_str(&format!(
                    "{identity} {host}:{port} ({why}): egressd {want} istio {by_istio} cilium {by_cilium}\n"
                ));
                if by_istio != want || by_cilium != want {
                    wrong.push(format!(
                        "{identity} -> {host}:{port} ({why}): egressd {want}, istio {by_istio}, cilium {by_cilium}"
                    ));
                }
            }
        }
    }
    assert!(wrong.is_empty(), "layers disagree with the policy:\n{}\n\nwhole table:\n{table}", wrong.join("\n"));
    // The table is not vacuous: each kind of destination is allowed somewhere and denied elsewhere.
    assert!(allowed >= 10, "{table}");
    for host in ["files.pythonhosted.org", "a.b.pythonhosted.org", "img.cdn.partner.test", "us5.datadoghq.com"] {
        assert!(CALLERS.iter().any(|c| egressd_allows(&policy, c.0, host, 443)), "{host}");
    }
    for host in ["pythonhosted.org", "cdn.partner.test", "pastebin.com", "uploads.stripe.com", "unlisted.example.org"] {
        assert!(!CALLERS.iter().any(|c| egressd_allows(&policy, c.0, host, 443)), "{host}");
    }
}

#[test]
fn networkpolicy_ip_blocks_are_the_cidr_allows() {
    let (_, policy) = load(&mesh_config());
    let np = exported(&mesh_config(), Target::NetworkPolicy, &options());
    let namespaces: BTreeSet<&str> = CALLERS.iter().map(|c| c.1).collect();
    let objects: Vec<&Value> = np.objects.iter().collect();
    assert_eq!(objects.len(), namespaces.len());
    for object in objects {
        let namespace = object["metadata"]["namespace"].as_str().unwrap();
        assert!(namespaces.contains(namespace), "{namespace}");
        let spec = &object["spec"];
        assert_eq!(spec["podSelector"], serde_json::json!({}));
        assert_eq!(spec["policyTypes"], serde_json::json!(["Egress"]));
        let egress = spec["egress"].as_array().unwrap();
        // The gateway (ports of the example's Gateway document) and DNS come first.
        assert_eq!(egress[0]["to"][0]["podSelector"]["matchLabels"]["istio"], "egressgateway");
        assert_eq!(
            egress[0]["ports"],
            serde_json::json!([{ "protocol": "TCP", "port": 10080 }, { "protocol": "TCP", "port": 10443 }])
        );
        assert_eq!(
            egress[1]["to"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
            "kube-system"
        );
        let blocks: BTreeSet<String> =
            egress[2..].iter().map(|e| e["to"][0]["ipBlock"]["cidr"].as_str().unwrap().to_string()).collect();
        let mut want = BTreeSet::new();
        for svc in &policy.services {
            if !svc.identities.iter().any(|i| i.contains(&format!("/ns/{namespace}/"))) {
                continue;
            }
            for rule in policy.rules.iter().filter(|r| r.service == Some(svc.index) && r.action_str() == "allow") {
                if let Some(net) = rule.cidr {
                    want.insert(net.to_string());
                }
            }
        }
        assert_eq!(blocks, want, "{namespace}");
        // No mesh-wide CIDR deny lies inside these blocks: no excepts.
        assert!(egress.iter().all(|e| e["to"][0]["ipBlock"].get("except").is_none()));
    }
    let payments = np.objects.iter().find(|o| o["metadata"]["namespace"] == "payments").unwrap();
    assert_eq!(
        payments["spec"]["egress"][2],
        serde_json::json!({ "to": [{ "ipBlock": { "cidr": "10.20.0.0/16" } }], "ports": [{ "protocol": "TCP", "port": 5432 }] })
    );
}

// ---------------------------------------------------------------------------------------------
// The binary.

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).current_dir(ROOT).output().expect("run egressd")
}

fn stderr_warnings(output: &Output) -> Vec<String> {
    let text = String::from_utf8(output.stderr.clone()).unwrap();
    let mut warnings = Vec::new();
    for line in text.lines() {
        if let Some(w) = line.strip_prefix("egressd: warning: ") {
            // FILE:LINE:COL: message
            let mut parts = w.splitn(4, ':');
            let (file, line_no, col, message) = (parts.next(), parts.next(), parts.next(), parts.next());
            assert!(file.is_some_and(|f| f.ends_with(".yaml")), "{line}");
            assert!(line_no.is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)), "{line}");
            assert!(col.is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)), "{line}");
            assert!(message.is_some_and(|m| m.starts_with(' ') && m.len() > 10), "{line}");
            warnings.push(w.to_string());
        } else {
            assert!(line.starts_with("egressd: export "), "unexpected standard error line: {line}");
        }
    }
    warnings
}

#[test]
fn the_binary_writes_each_target_to_stdout_and_to_files() {
    let dir = mesh_config();
    let dir_arg = dir.to_str().unwrap();
    let (source, policy) = egressd::policy::PolicySource::from_dir(&dir)
        .map(|s| {
            let p = compile(&s, egressd::clock::unix_now()).unwrap();
            (s, p)
        })
        .unwrap();
    for target in Target::ALL {
        // The binary exports as of now: so does the library it is compared with.
        let library = export::export_with_source(
            &policy,
            &source,
            target,
            &Options { now: Some(egressd::clock::unix_now()), ..Options::default() },
        );
        let output = run(&["export", target.as_str(), "--policy", dir_arg]);
        assert!(output.status.success(), "{target}: {}\n{}", output.status, String::from_utf8_lossy(&output.stderr));
        let yaml = String::from_utf8(output.stdout.clone()).unwrap();
        assert!(yaml.starts_with("---\napiVersion: "), "{yaml}");
        let objects: Vec<Value> =
            serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("{target}: {e}\n{yaml}"));
        assert_eq!(objects, library.objects, "{target}: the YAML stream is the library's objects");
        let warnings = stderr_warnings(&output);
        let expected: Vec<String> = policy
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.loc, w.message))
            .chain(library.warnings.iter().map(|w| w.to_string()))
            .collect();
        assert_eq!(warnings, expected, "{target}");
        assert!(!library.warnings.is_empty(), "{target}: the example mesh has things no layer expresses");

        let out = tempfile::tempdir().unwrap();
        let out_dir = out.path().join("nested/out");
        let output = run(&["export", target.as_str(), "--policy", dir_arg, "--out", out_dir.to_str().unwrap()]);
        assert!(output.status.success(), "{target}: {}", String::from_utf8_lossy(&output.stderr));
        let mut names: Vec<String> =
            std::fs::read_dir(&out_dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        let mut want: Vec<String> = target.kinds().iter().map(|k| format!("{}.yaml", k.to_ascii_lowercase())).collect();
        want.sort();
        assert_eq!(names, want, "{target}");
        let mut from_files = Vec::new();
        for kind in target.kinds() {
            let text = std::fs::read_to_string(out_dir.join(format!("{}.yaml", kind.to_ascii_lowercase()))).unwrap();
            let objects: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap();
            assert!(objects.iter().all(|o| o["kind"] == *kind), "{kind}");
            from_files.extend(objects);
        }
        assert_eq!(from_files, library.objects, "{target}: --out holds the same objects, by kind");
        let stdout = String::from_utf8(output.stdout.clone()).unwrap();
        assert!(stdout.lines().all(|l| l.starts_with("wrote ")), "{stdout}");
        assert_eq!(stderr_warnings(&output).len(), warnings.len());
    }
}

#[test]
fn the_binary_exits_2_when_the_policy_does_not_load_or_out_cannot_be_written() {
    let bad = tempfile::tempdir().unwrap();
    std::fs::write(bad.path().join("mesh.yaml"), "kind: MeshDefaults\ntrustDomain: td\nbogus: 1\n").unwrap();
    let output = run(&["export", "istio", "--policy", bad.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(output.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("mesh.yaml:3:1"),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    let output = run(&["export", "cilium", "--policy", "mesh-config", "--out", file.path().to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2), "{}", String::from_utf8_lossy(&output.stderr));
    assert!(String::from_utf8_lossy(&output.stderr).contains("cannot create the directory"));
}

// ---------------------------------------------------------------------------------------------
// Schemas.

/// The CEL rules of Istio's ServiceEntry CRD (x-kubernetes-validations), which ajv does not run.
fn service_entry_cel(object: &Value) {
    let spec = &object["spec"];
    let hosts = strings(&spec["hosts"]);
    assert!(!hosts.is_empty(), "{object}");
    if spec["resolution"] == "DNS" {
        assert!(hosts.iter().all(|h| !h.starts_with('*')), "wildcard hosts need resolution NONE: {object}");
    }
    if spec.get("addresses").is_some() {
        assert!(matches!(spec["resolution"].as_str(), Some("NONE" | "STATIC")), "CIDR addresses need NONE: {object}");
    }
    let ports = spec["ports"].as_array().unwrap();
    let names: BTreeSet<&str> = ports.iter().map(|p| p["name"].as_str().unwrap()).collect();
    let numbers: BTreeSet<u64> = ports.iter().map(|p| p["number"].as_u64().unwrap()).collect();
    assert_eq!(names.len(), ports.len(), "port names must be unique: {object}");
    assert_eq!(numbers.len(), ports.len(), "port numbers must be unique: {object}");
}

#[test]
fn every_exported_object_is_valid_against_the_real_schemas() {
    let mut objects = Vec::new();
    let variants =
        [options(), Options { cilium_multi_level_wildcards: false, cilium_allow_gateway: true, ..options() }];
    for dir in [mesh_config(), edge_cases()] {
        for target in Target::ALL {
            for options in &variants {
                objects.extend(exported(&dir, target, options).objects);
            }
        }
    }
    let kinds: BTreeSet<&str> = objects.iter().map(|o| o["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, BTreeSet::from(["AuthorizationPolicy", "CiliumNetworkPolicy", "NetworkPolicy", "ServiceEntry"]));
    for object in objects.iter().filter(|o| o["kind"] == "ServiceEntry") {
        service_entry_cel(object);
    }
    let output = validate(&objects);
    assert!(
        output.status.success(),
        "schema validation failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(stdout.contains(&format!("{} object(s) valid", objects.len())), "{stdout}");
}

#[test]
fn the_validator_rejects_what_the_schemas_reject() {
    let mut objects = exported(&mesh_config(), Target::NetworkPolicy, &options()).objects;
    objects.truncate(1);
    objects[0]["spec"]["egress"][0]["ports"][0]["protocol"] = "TCPX".into();
    let mut se = exported(&mesh_config(), Target::Istio, &options()).objects.remove(0);
    se["spec"]["resolution"] = "SOMETIMES".into();
    let mut cnp = exported(&mesh_config(), Target::Cilium, &options()).objects.remove(0);
    cnp["spec"]["egress"][1]["toFQDNs"][0] = serde_json::json!({ "matchName": "not a name!" });
    let unknown = serde_json::json!({ "apiVersion": "example.com/v1", "kind": "Thing", "metadata": { "name": "x" } });
    objects.extend([se, cnp, unknown]);
    let output = validate(&objects);
    assert_eq!(output.status.code(), Some(1), "{}", String::from_utf8_lossy(&output.stderr));
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "/spec/egress/0/ports/0/protocol",
        "/spec/resolution",
        "/spec/egress/1/toFQDNs/0/matchName",
        "no schema for example.com/v1 Thing",
    ] {
        assert!(stderr.contains(needle), "{needle} not in:\n{stderr}");
    }
}
