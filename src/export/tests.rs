//! Each target on one small policy: an exact host, a wildcard, CIDR allows, a mesh-wide CIDR deny
//! inside an allowed block, host denies (one under the wildcard), a port deny, a dry-run service
//! and identities that are not `ns/X/sa/Y`.

use serde_json::Value;

use super::*;
use crate::policy::{PolicySource, compile};

const POLICY: &str = r#"kind: MeshDefaults
trustDomain: corp.example
deny:
  - ports: [22]
    justification: no ssh
  - cidr: 10.20.5.0/24
    justification: the vault subnet
  - host: bad.cdn.example.com
    justification: a tenant we do not trust
  - host: pastebin.com
    justification: paste sites
---
kind: ServicePolicy
service: shop
identities:
  - spiffe://corp.example/ns/shop/sa/web
  - spiffe://corp.example/legacy/vm-7
allow:
  - host: api.example.com
    ports: [443]
    justification: the API
  - host: "*.cdn.example.com"
    ports: [443]
    protocols: [https]
    justification: "images, \"quoted\""
  - cidr: 10.20.0.0/16
    justification: internal services
  - host: old.example.com
    ports: [443]
    expires: 2020-01-31
    justification: migration
---
kind: ServicePolicy
service: batch
mode: dry-run
identities:
  - spiffe://corp.example/ns/jobs/sa/*
  - spiffe://corp.example/ns/*
allow:
  - host: api.example.com
    ports: [443, 8443]
    justification: the same API
  - cidr: 192.168.7.0/24
    ports: [5432]
    justification: the jobs database
"#;

const NOW: i64 = 1_800_000_000; // 2027-01-15

fn policy() -> (PolicySource, CompiledPolicy) {
    let source = PolicySource::from_text("p.yaml", POLICY);
    let policy = compile(&source, NOW).unwrap_or_else(|d| panic!("{d:?}"));
    (source, policy)
}

fn run(target: Target, options: &Options) -> Export {
    let (source, policy) = policy();
    export_with_source(&policy, &source, target, options)
}

fn opts() -> Options {
    Options { now: Some(NOW), ..Options::default() }
}

fn find<'e>(export: &'e Export, kind: &str, namespace: &str, name: &str) -> &'e Value {
    export
        .objects
        .iter()
        .find(|o| o["kind"] == kind && o["metadata"]["namespace"] == namespace && o["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {namespace}/{name} in {:#?}", export.objects))
}

fn warned<'e>(export: &'e Export, needle: &str) -> &'e Warning {
    export
        .warnings
        .iter()
        .find(|w| w.message.contains(needle))
        .unwrap_or_else(|| panic!("no warning with `{needle}` in:\n{}", lines(&export.warnings)))
}

fn lines(warnings: &[Warning]) -> String {
    warnings.iter().map(|w| w.to_string()).collect::<Vec<_>>().join("\n")
}

fn rule_ids(object: &Value) -> Vec<String> {
    let text = object["metadata"]["annotations"][keys::RULES].as_str().expect("rules annotation");
    let rules: Vec<Value> = serde_json::from_str(text).expect("rules annotation is JSON");
    rules.iter().map(|r| r["id"].as_str().unwrap().to_string()).collect()
}

/// Every object: managed-by label, the policy version, a DNS-1123 name, and YAML that reads back
/// as the same objects.
fn common(export: &Export, version: &str) {
    for object in &export.objects {
        let meta = &object["metadata"];
        assert_eq!(meta["labels"][keys::MANAGED_BY], "egressd", "{object:#}");
        assert_eq!(meta["annotations"][keys::POLICY_VERSION], version);
        let name = meta["name"].as_str().unwrap();
        assert!(names::is_dns_label(name), "{name}");
        assert!(meta["annotations"][keys::RULES].is_string());
    }
    let yaml = export.to_yaml().unwrap();
    let back: Vec<Value> = serde_saphyr::from_multiple(&yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    assert_eq!(back, export.objects, "{yaml}");
    let files = export.files().unwrap();
    let from_files: usize =
        files.iter().map(|(_, text)| serde_saphyr::from_multiple::<Value>(text).unwrap().len()).sum();
    assert_eq!(from_files, export.objects.len());
}

#[test]
fn identities_that_are_not_kubernetes_shaped_are_warned_where_written() {
    let export = run(Target::NetworkPolicy, &opts());
    let vm = warned(&export, "identity `spiffe://corp.example/legacy/vm-7` is not of the form");
    assert_eq!(vm.to_string().split(": ").next().unwrap(), "p.yaml:17:5");
    let all = warned(&export, "identity `spiffe://corp.example/ns/*` claims every namespace");
    assert_eq!((all.location.line, all.location.column), (38, 5));
    // Without the source: the service's `service:` key.
    let (_, policy) = policy();
    let plain = crate::export::export(&policy, Target::NetworkPolicy, &opts());
    let vm = warned(&plain, "legacy/vm-7");
    assert_eq!((vm.location.line, vm.location.column), (14, 10));
    // The services are exported for the identities that map.
    let namespaces: Vec<&str> = export.objects.iter().map(|o| o["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(namespaces, ["jobs", "shop"]);
}

#[test]
fn networkpolicy_is_the_gateway_dns_and_cidr_allows() {
    let export = run(Target::NetworkPolicy, &opts());
    let (_, policy) = policy();
    common(&export, &policy.version);
    let shop = find(&export, "NetworkPolicy", "shop", "egressd-egress");
    let spec = &shop["spec"];
    assert_eq!(spec["policyTypes"], serde_json::json!(["Egress"]));
    assert_eq!(spec["podSelector"], serde_json::json!({}));
    let egress = spec["egress"].as_array().unwrap();
    assert_eq!(egress.len(), 3, "{egress:#?}");
    // The gateway: its namespace and pod labels together, the default ports (no Gateway document).
    assert_eq!(
        egress[0]["to"][0],
        serde_json::json!({
            "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": "istio-system" } },
            "podSelector": { "matchLabels": { "istio": "egressgateway" } },
        })
    );
    assert_eq!(
        egress[0]["ports"],
        serde_json::json!([{ "protocol": "TCP", "port": 15001 }, { "protocol": "TCP", "port": 15443 }])
    );
    assert_eq!(egress[1]["to"][0]["podSelector"]["matchLabels"]["k8s-app"], "kube-dns");
    assert_eq!(
        egress[1]["ports"],
        serde_json::json!([{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }])
    );
    // The CIDR allow without ports: every TCP port but the mesh-wide deny's 22; the vault subnet
    // (a mesh-wide deny inside the block) is an `except`.
    assert_eq!(
        egress[2],
        serde_json::json!({
            "to": [{ "ipBlock": { "cidr": "10.20.0.0/16", "except": ["10.20.5.0/24"] } }],
            "ports": [
                { "protocol": "TCP", "port": 1, "endPort": 21 },
                { "protocol": "TCP", "port": 23, "endPort": 65535 },
            ],
        })
    );
    assert_eq!(rule_ids(shop), ["shop/allow/2", "mesh/deny/0", "mesh/deny/1"]);
    let selection = shop["metadata"]["annotations"]["egressd.io/pod-selection"].as_str().unwrap();
    assert!(selection.contains("cannot select by service account"), "{selection}");
    warned(&export, "NetworkPolicy cannot select pods by service account: the policy for namespace `shop`");
    // batch claims every account of `jobs`: no such warning, its own CIDR allow.
    let jobs = find(&export, "NetworkPolicy", "jobs", "egressd-egress");
    assert_eq!(
        jobs["spec"]["egress"][2],
        serde_json::json!({
            "to": [{ "ipBlock": { "cidr": "192.168.7.0/24" } }],
            "ports": [{ "protocol": "TCP", "port": 5432 }],
        })
    );
    assert!(!export.warnings.iter().any(|w| w.message.contains("namespace `jobs` applies")));
    // NetworkPolicy exports no host allows: nothing to say about the expired one, or the expiry
    // of allows it does not carry.
    assert!(!export.warnings.iter().any(|w| w.message.contains("expire")), "{}", lines(&export.warnings));
}

#[test]
fn networkpolicy_unions_services_of_one_namespace_and_takes_gateway_ports_from_options() {
    let text = format!(
        "{POLICY}---\nkind: ServicePolicy\nservice: shop-admin\nidentities: [spiffe://corp.example/ns/shop/sa/admin]\n\
         allow:\n  - cidr: 172.16.0.0/12\n    ports: [443]\n    justification: admin backends\n"
    );
    let source = PolicySource::from_text("p.yaml", &text);
    let policy = compile(&source, NOW).unwrap();
    let options = Options { gateway_ports: Some(vec![8443, 8080, 8080]), ..opts() };
    let export = export_with_source(&policy, &source, Target::NetworkPolicy, &options);
    let shop = find(&export, "NetworkPolicy", "shop", "egressd-egress");
    let egress = shop["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[0]["ports"],
        serde_json::json!([{ "protocol": "TCP", "port": 8080 }, { "protocol": "TCP", "port": 8443 }])
    );
    let blocks: Vec<&str> = egress[2..].iter().map(|e| e["to"][0]["ipBlock"]["cidr"].as_str().unwrap()).collect();
    assert_eq!(blocks, ["10.20.0.0/16", "172.16.0.0/12"]);
    warned(&export, "namespace `shop` runs services shop, shop-admin");
    assert_eq!(shop["metadata"]["annotations"][keys::SERVICES], "shop (enforce), shop-admin (enforce)");
}

#[test]
fn istio_service_entries_per_destination_and_the_gateway_authorization() {
    let export = run(Target::Istio, &opts());
    let (_, policy) = policy();
    common(&export, &policy.version);
    // api.example.com: allowed by both services, one entry with the union of their ports.
    let api = find(&export, "ServiceEntry", "istio-system", "egressd-api-example-com");
    assert_eq!(
        api["spec"],
        serde_json::json!({
            "hosts": ["api.example.com"],
            "location": "MESH_EXTERNAL",
            "resolution": "DNS",
            "ports": [
                { "number": 443, "name": "tls-443", "protocol": "TLS" },
                { "number": 8443, "name": "tcp-8443", "protocol": "TCP" },
            ],
            "exportTo": ["istio-system", "jobs", "shop"],
        })
    );
    assert_eq!(rule_ids(api), ["shop/allow/0", "batch/allow/0"]);
    assert_eq!(api["metadata"]["annotations"][keys::SERVICES], "batch, shop");
    let cdn = find(&export, "ServiceEntry", "istio-system", "egressd-wildcard-cdn-example-com");
    assert_eq!(cdn["spec"]["hosts"], serde_json::json!(["*.cdn.example.com"]));
    assert_eq!(cdn["spec"]["resolution"], "NONE");
    assert_eq!(cdn["spec"]["exportTo"], serde_json::json!(["istio-system", "shop"]));
    let justification = cdn["metadata"]["annotations"][keys::RULES].as_str().unwrap();
    assert!(justification.contains(r#"images, \"quoted\""#), "{justification}");
    // CIDRs: addresses under a made-up host, TCP.
    let db = find(&export, "ServiceEntry", "istio-system", "egressd-cidr-192-168-7-0-24");
    assert_eq!(db["spec"]["addresses"], serde_json::json!(["192.168.7.0/24"]));
    assert_eq!(db["spec"]["hosts"], serde_json::json!(["cidr-192-168-7-0-24.egressd.internal"]));
    assert_eq!(db["spec"]["ports"], serde_json::json!([{ "number": 5432, "name": "tcp-5432", "protocol": "TCP" }]));
    let internal = find(&export, "ServiceEntry", "istio-system", "egressd-cidr-10-20-0-0-16");
    assert_eq!(internal["spec"]["ports"][0]["protocol"], "TCP");
    warned(
        &export,
        "shop/allow/2 (10.20.0.0/16) allows any port, which a ServiceEntry cannot express: exported on 80 (TCP), 443 (TCP)",
    );
    // No entry for the expired allow, and said so.
    warned(&export, "shop/allow/3 expired on 2020-01-31: not exported");
    assert!(!export.objects.iter().any(|o| o["metadata"]["name"] == "egressd-old-example-com"));

    let authz = find(&export, "AuthorizationPolicy", "istio-system", "egressd-ext-authz");
    assert_eq!(
        authz["spec"],
        serde_json::json!({
            "selector": { "matchLabels": { "istio": "egressgateway" } },
            "action": "CUSTOM",
            "provider": { "name": "egressd" },
            "rules": [{}],
        })
    );
    assert_eq!(export.objects.last().unwrap()["kind"], "AuthorizationPolicy");

    warned(&export, "one ServiceEntry for api.example.com carries the ports of `batch` {443, 8443}, `shop` {443}");
    warned(&export, "service `batch` is in dry-run, which ServiceEntries cannot express");
    warned(
        &export,
        "service `shop`: ServiceEntries are visible per namespace (exportTo shop), not per service account",
    );
    warned(&export, "mesh/deny/2 (bad.cdn.example.com) lies inside shop/allow/1");
    warned(&export, "mesh/deny/1 (10.20.5.0/24) lies inside shop/allow/2");
    assert!(!export.warnings.iter().any(|w| w.message.contains("pastebin")), "{}", lines(&export.warnings));
}

#[test]
fn cilium_policy_per_service_with_fqdns_cidrs_and_denies() {
    let export = run(Target::Cilium, &opts());
    let (_, policy) = policy();
    common(&export, &policy.version);
    let shop = find(&export, "CiliumNetworkPolicy", "shop", "egressd-shop");
    assert_eq!(shop["metadata"]["labels"][keys::SERVICE_LABEL], "shop");
    let spec = &shop["spec"];
    assert_eq!(
        spec["endpointSelector"],
        serde_json::json!({ "matchLabels": {
            "k8s:io.kubernetes.pod.namespace": "shop",
            "k8s:io.cilium.k8s.policy.serviceaccount": "web",
        } })
    );
    let egress = spec["egress"].as_array().unwrap();
    assert_eq!(
        egress[0],
        serde_json::json!({
            "toEndpoints": [{ "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            } }],
            "toPorts": [{ "ports": [{ "port": "53", "protocol": "ANY" }], "rules": { "dns": [{ "matchPattern": "*" }] } }],
        })
    );
    assert_eq!(
        egress[1],
        serde_json::json!({
            "toFQDNs": [{ "matchName": "api.example.com" }, { "matchPattern": "**.cdn.example.com" }],
            "toPorts": [{ "ports": [{ "port": "443", "protocol": "TCP" }] }],
        })
    );
    // A CIDR allow without ports: no toPorts (every port and protocol; the denies below win).
    assert_eq!(egress[2], serde_json::json!({ "toCIDRSet": [{ "cidr": "10.20.0.0/16" }] }));
    assert_eq!(egress.len(), 3);
    assert_eq!(
        spec["egressDeny"],
        serde_json::json!([
            { "toEntities": ["world"], "toPorts": [{ "ports": [{ "port": "22", "protocol": "ANY" }] }] },
            { "toCIDRSet": [{ "cidr": "10.20.5.0/24" }] },
        ])
    );
    // batch: every account of `jobs`, dry-run warned.
    let batch = find(&export, "CiliumNetworkPolicy", "jobs", "egressd-batch");
    assert_eq!(
        batch["spec"]["endpointSelector"],
        serde_json::json!({ "matchLabels": { "k8s:io.kubernetes.pod.namespace": "jobs" } })
    );
    assert_eq!(
        batch["spec"]["egress"][1]["toPorts"],
        serde_json::json!([{ "ports": [{ "port": "443", "protocol": "TCP" }, { "port": "8443", "protocol": "TCP" }] }])
    );
    warned(&export, "service `batch` is in dry-run, but Cilium enforces");
    // Host denies: one under the wildcard (a gap), one no allow admits (default deny holds).
    let gap = warned(&export, "mesh/deny/2 (bad.cdn.example.com) cannot be exported");
    assert!(gap.message.contains("`shop` through shop/allow/1"), "{gap}");
    assert_eq!((gap.location.line, gap.location.column), (8, 5));
    warned(&export, "mesh/deny/3 (pastebin.com) is not exported: Cilium cannot deny by name");
    warned(&export, "shop/allow/1 (*.cdn.example.com ports [443] protocols [https]) is limited to protocols [https]");
}

#[test]
fn cilium_single_level_wildcards_and_the_gateway_when_asked() {
    let options = Options { cilium_multi_level_wildcards: false, cilium_allow_gateway: true, ..opts() };
    let export = run(Target::Cilium, &options);
    let shop = find(&export, "CiliumNetworkPolicy", "shop", "egressd-shop");
    let egress = shop["spec"]["egress"].as_array().unwrap();
    assert_eq!(
        egress[1],
        serde_json::json!({
            "toEndpoints": [{ "matchLabels": { "k8s:io.kubernetes.pod.namespace": "istio-system", "k8s:istio": "egressgateway" } }],
            "toPorts": [{ "ports": [{ "port": "15001", "protocol": "TCP" }, { "port": "15443", "protocol": "TCP" }] }],
        })
    );
    assert_eq!(egress[2]["toFQDNs"][1], serde_json::json!({ "matchPattern": "*.cdn.example.com" }));
    warned(&export, "Cilium's `*.cdn.example.com` matches exactly one label");
}

#[test]
fn host_denies_that_cover_an_allow_take_it_away() {
    let text = "kind: MeshDefaults\ntrustDomain: td\ndeny:\n  - host: \"*.evil.example\"\n    ports: [80]\n    \
                justification: plaintext\n---\nkind: ServicePolicy\nservice: Weird_Name.v2\nidentities: \
                [spiffe://td/ns/x/sa/y]\nallow:\n  - host: a.evil.example\n    ports: [80]\n    justification: a\n  \
                - host: b.evil.example\n    ports: [80, 443]\n    justification: b\n";
    let policy = compile(&PolicySource::from_text("p.yaml", text), NOW).unwrap();
    // NetworkPolicy exports no host allows (they go through the gateway).
    for target in [Target::Istio, Target::Cilium] {
        let export = crate::export::export(&policy, target, &opts());
        warned(&export, "a.evil.example ports [80]) is denied on all its ports by mesh/deny/0");
        let json = serde_json::to_string(&export.objects).unwrap();
        assert!(!json.contains("\"a.evil.example"), "{target}: {json}");
    }
    let cilium = crate::export::export(&policy, Target::Cilium, &opts());
    let object = find(&cilium, "CiliumNetworkPolicy", "x", "egressd-weird-name-v2");
    assert_eq!(object["metadata"]["labels"][keys::SERVICE_LABEL], "Weird_Name.v2");
    assert_eq!(
        object["spec"]["egress"][1],
        serde_json::json!({ "toFQDNs": [{ "matchName": "b.evil.example" }], "toPorts": [{ "ports": [{ "port": "443", "protocol": "TCP" }] }] })
    );
    let istio = crate::export::export(&policy, Target::Istio, &opts());
    let b = find(&istio, "ServiceEntry", "istio-system", "egressd-b-evil-example");
    assert_eq!(b["spec"]["ports"], serde_json::json!([{ "number": 443, "name": "tls-443", "protocol": "TLS" }]));
}

#[test]
fn names_are_deduplicated() {
    let text = "kind: MeshDefaults\ntrustDomain: td\n---\nkind: ServicePolicy\nservice: a.b\nidentities: \
                [spiffe://td/ns/x/sa/one]\nallow:\n  - host: a.example\n    justification: a\n---\nkind: \
                ServicePolicy\nservice: a-b\nidentities: [spiffe://td/ns/x/sa/two]\nallow:\n  - host: b.example\n    \
                justification: b\n";
    let policy = compile(&PolicySource::from_text("p.yaml", text), NOW).unwrap();
    let export = crate::export::export(&policy, Target::Cilium, &opts());
    let names: Vec<&str> = export.objects.iter().map(|o| o["metadata"]["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 2);
    assert_ne!(names[0], names[1]);
    assert!(names.iter().all(|n| names::is_dns_label(n) && n.starts_with("egressd-a-b")), "{names:?}");
}

#[test]
fn targets_parse_and_files_are_per_kind() {
    assert_eq!("Cilium".parse::<Target>(), Ok(Target::Cilium));
    assert!("calico".parse::<Target>().is_err());
    let export = run(Target::Istio, &opts());
    let files: Vec<String> = export.files().unwrap().into_iter().map(|(name, _)| name).collect();
    assert_eq!(files, ["serviceentry.yaml", "authorizationpolicy.yaml"]);
    let yaml = export.to_yaml().unwrap();
    assert!(yaml.starts_with("---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\n"), "{yaml}");
}

#[test]
fn observed_unclaimed_callers_are_warned_per_layer() {
    let text = "kind: MeshDefaults\ntrustDomain: td\nunclaimedIdentities: observe\n---\nkind: ServicePolicy\nservice: \
                s\nidentities: [spiffe://td/ns/s/sa/a]\nallow:\n  - host: a.example\n    justification: a\n";
    let policy = compile(&PolicySource::from_text("p.yaml", text), NOW).unwrap();
    for (target, what) in [
        (Target::NetworkPolicy, "get no NetworkPolicy"),
        (Target::Istio, "reach no destination"),
        (Target::Cilium, "Cilium does not restrict them"),
    ] {
        let export = crate::export::export(&policy, target, &opts());
        let w = warned(&export, what);
        assert!(w.message.starts_with("unclaimedIdentities: observe"), "{w}");
        assert_eq!((w.location.line, w.location.column), (3, 22));
    }
}
