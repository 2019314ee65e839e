//! `cilium`: one `cilium.io/v2` CiliumNetworkPolicy per service and namespace of its identities,
//! selecting its pods by `k8s:io.kubernetes.pod.namespace` and, for identities of specific
//! service accounts, `k8s:io.cilium.k8s.policy.serviceaccount`.
//!
//! Egress: the DNS rule Cilium needs to see lookups (kube-dns, port 53 ANY, `rules.dns:
//! [{matchPattern: "*"}]`); `toFQDNs` for host allows (`matchName` for exact hosts; for `*.x`,
//! `matchPattern: "**.x"`, which Cilium 1.19 and later read as one or more labels, egressd's
//! meaning; see `Options::cilium_multi_level_wildcards`); `toCIDRSet` for CIDR allows; `toPorts`
//! with TCP ports (none: the rule holds for every port and protocol). `egressDeny`: mesh-wide and
//! service CIDR denies (`toCIDRSet`) and port-only denies (`toEntities: [world]`), on port ANY.
//! Cilium cannot deny by name: host denies that cover an allow take its ports away, those under
//! an allowed wildcard are warned. Cilium enforces: dry-run and canary services are warned.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::istio::canary_text;
use super::names::label_value;
use super::{Cx, PortSet, ServicePlan, describe, effective, protocols};
use crate::policy::fqdn::HostPattern;
use crate::policy::{Mode, RuleInfo, SourceLoc};

const KIND: &str = "CiliumNetworkPolicy";
const NS_LABEL: &str = "k8s:io.kubernetes.pod.namespace";
const SA_LABEL: &str = "k8s:io.cilium.k8s.policy.serviceaccount";

pub fn export(cx: &mut Cx<'_>) -> Vec<Value> {
    let mut warnings: Vec<(SourceLoc, String)> = Vec::new();
    let mut objects = Vec::new();
    host_deny_notes(cx, &mut warnings);
    namespace_overlaps(cx, &mut warnings);
    for i in 0..cx.services.len() {
        let plan = &cx.services[i];
        let svc = plan.svc;
        if plan.workloads.is_empty() {
            continue;
        }
        let mode_loc = svc.mode_loc.clone().unwrap_or_else(|| svc.name_loc.clone());
        match svc.mode {
            Mode::Enforce => {}
            Mode::DryRun => warnings.push((
                mode_loc,
                format!(
                    "service `{}` is in dry-run, but Cilium enforces: its CiliumNetworkPolicy drops what egressd only \
                     records as would-deny (apply it when the service moves to enforce, or run the endpoints in \
                     Cilium's policy audit mode)",
                    svc.name
                ),
            )),
            Mode::Canary => warnings.push((
                mode_loc,
                format!(
                    "service `{}` is a canary ({}), which Cilium cannot express: its CiliumNetworkPolicy enforces \
                     for every request and workload",
                    svc.name,
                    canary_text(&svc.canary)
                ),
            )),
        }
        let (egress, deny, rules) = rules_of(cx, plan, &mut warnings);
        for namespace in plan.namespaces() {
            let here: Vec<&super::Workload> = plan.workloads.iter().filter(|w| w.namespace == namespace).collect();
            let mut accounts: Vec<&str> = Vec::new();
            let whole = here.iter().any(|w| w.service_account.is_none());
            if !whole {
                accounts = here.iter().filter_map(|w| w.service_account.as_deref()).collect();
                accounts.sort_unstable();
                accounts.dedup();
            }
            let mut selector = json!({ "matchLabels": { NS_LABEL: namespace } });
            match accounts.as_slice() {
                [] => {}
                [one] => selector["matchLabels"][SA_LABEL] = json!(one),
                many => {
                    selector["matchExpressions"] = json!([{ "key": SA_LABEL, "operator": "In", "values": many }]);
                }
            }
            let mut spec = json!({
                "description": format!("egressd service {} ({}), policy {}", svc.name, svc.mode, cx.policy.version),
                "endpointSelector": selector,
                "egress": egress,
            });
            if !deny.is_empty() {
                spec["egressDeny"] = json!(deny);
            }
            let name = cx.names.unique(KIND, namespace, &format!("egressd-{}", svc.name));
            let metadata = cx.metadata(
                &name,
                namespace,
                &rules,
                &[(super::keys::SERVICE_LABEL, label_value(&svc.name))],
                &[cx.service_notes(&[plan])],
            );
            objects.push(json!({ "apiVersion": "cilium.io/v2", "kind": KIND, "metadata": metadata, "spec": spec }));
        }
    }
    for (loc, message) in warnings {
        cx.warn(&loc, message);
    }
    objects
}

/// A service's egress and egressDeny rules, and the policy rules they came from.
fn rules_of<'p>(
    cx: &Cx<'p>,
    plan: &ServicePlan<'p>,
    warnings: &mut Vec<(SourceLoc, String)>,
) -> (Vec<Value>, Vec<Value>, Vec<&'p RuleInfo>) {
    let options = cx.options;
    let dns_labels: serde_json::Map<String, Value> =
        std::iter::once((NS_LABEL.to_string(), json!(options.dns_namespace)))
            .chain(options.dns_labels.iter().map(|(k, v)| (cilium_key(k), json!(v))))
            .collect();
    let mut egress = vec![json!({
        "toEndpoints": [{ "matchLabels": dns_labels }],
        "toPorts": [{ "ports": [{ "port": "53", "protocol": "ANY" }], "rules": { "dns": [{ "matchPattern": "*" }] } }],
    })];
    if options.cilium_allow_gateway {
        let labels: serde_json::Map<String, Value> =
            std::iter::once((NS_LABEL.to_string(), json!(options.gateway_namespace)))
                .chain(options.gateway_labels.iter().map(|(k, v)| (cilium_key(k), json!(v))))
                .collect();
        let ports: Vec<u16> = options.gateway_ports(cx.policy);
        egress.push(json!({
            "toEndpoints": [{ "matchLabels": labels }],
            "toPorts": [{ "ports": ports.iter().map(|p| json!({ "port": p.to_string(), "protocol": "TCP" })).collect::<Vec<_>>() }],
        }));
    }
    let mut rules: Vec<&'p RuleInfo> = Vec::new();
    // Host denies are applied to the allows they cover (Cilium has no FQDN deny); CIDR and port
    // denies become egressDeny rules of their own.
    let host_denies: Vec<&'p RuleInfo> =
        cx.mesh_denies.iter().chain(&plan.denies).copied().filter(|d| d.host.is_some()).collect();
    let mut fqdns: BTreeMap<PortSet, Vec<Value>> = BTreeMap::new();
    let mut cidrs: BTreeMap<PortSet, Vec<Value>> = BTreeMap::new();
    for allow in plan.allows.iter().copied() {
        let eff = effective(allow, &host_denies);
        for deny in &eff.protocols {
            warnings.push((
                deny.loc.clone(),
                format!(
                    "{} denies protocols {} only, which Cilium cannot tell apart: {} is exported without it",
                    describe(deny),
                    protocols(&deny.protocols),
                    describe(allow)
                ),
            ));
        }
        if let Some(warning) = eff.denied_everywhere(allow) {
            warnings.push(warning);
            continue;
        }
        if !allow.protocols.is_empty() {
            warnings.push((
                allow.loc.clone(),
                format!(
                    "{} is limited to protocols {}, which Cilium's toPorts cannot tell apart: any TCP connection {} is \
                     allowed",
                    describe(allow),
                    protocols(&allow.protocols),
                    super::on_ports(&eff.ports)
                ),
            ));
        }
        rules.push(allow);
        rules.extend(eff.applied.iter().copied());
        match (&allow.host, allow.cidr) {
            (Some(HostPattern::Exact(name)), _) => {
                fqdns.entry(eff.ports).or_default().push(json!({ "matchName": name }));
            }
            (Some(HostPattern::Wildcard(suffix)), _) => {
                let pattern = if options.cilium_multi_level_wildcards {
                    format!("**.{suffix}")
                } else {
                    warnings.push((
                        allow.loc.clone(),
                        format!(
                            "{}: Cilium's `*.{suffix}` matches exactly one label, egressd's one or more: names deeper \
                             under {suffix} are not admitted (multi-level `**.` patterns need Cilium 1.19)",
                            describe(allow)
                        ),
                    ));
                    format!("*.{suffix}")
                };
                fqdns.entry(eff.ports).or_default().push(json!({ "matchPattern": pattern }));
            }
            (None, Some(net)) => cidrs.entry(eff.ports).or_default().push(json!({ "cidr": net.to_string() })),
            (None, None) => {}
        }
    }
    for (ports, selectors) in fqdns {
        let mut rule = json!({ "toFQDNs": dedup(selectors) });
        if let Some(to_ports) = to_ports(&ports, "TCP") {
            rule["toPorts"] = to_ports;
        }
        egress.push(rule);
    }
    for (ports, sets) in cidrs {
        let mut rule = json!({ "toCIDRSet": dedup(sets) });
        if let Some(to_ports) = to_ports(&ports, "TCP") {
            rule["toPorts"] = to_ports;
        }
        egress.push(rule);
    }

    let mut deny = Vec::new();
    for d in cx.mesh_denies.iter().chain(&plan.denies).copied() {
        if d.host.is_some() {
            continue;
        }
        if !d.protocols.is_empty() {
            warnings.push((
                d.loc.clone(),
                format!(
                    "{} is limited to protocols {}, which Cilium cannot tell apart: not exported (egressd at the \
                     gateway still denies)",
                    describe(d),
                    protocols(&d.protocols)
                ),
            ));
            continue;
        }
        let mut rule = match d.cidr {
            Some(net) => json!({ "toCIDRSet": [{ "cidr": net.to_string() }] }),
            None => json!({ "toEntities": ["world"] }),
        };
        if let Some(to_ports) = to_ports(&PortSet::of(d.ports.as_deref()), "ANY") {
            rule["toPorts"] = to_ports;
        }
        rules.push(d);
        deny.push(rule);
    }
    (egress, deny, rules)
}

/// One warning per mesh-wide host deny (Cilium cannot deny by name), and one per service host
/// deny under one of the service's own wildcards.
fn host_deny_notes(cx: &Cx<'_>, warnings: &mut Vec<(SourceLoc, String)>) {
    for deny in cx.mesh_denies.iter().filter(|d| d.host.is_some()) {
        let mut gaps = Vec::new();
        for plan in cx.services.iter().filter(|p| !p.workloads.is_empty()) {
            let eff_denies = [*deny];
            for allow in &plan.allows {
                if effective(allow, &eff_denies).inside.iter().any(|(d, _)| d.index == deny.index) {
                    gaps.push(format!("`{}` through {}", plan.svc.name, describe(allow)));
                }
            }
        }
        let message = if gaps.is_empty() {
            format!(
                "{} is not exported: Cilium cannot deny by name (egressDeny has no toFQDNs); no exported allow admits \
                 it, so Cilium's default deny holds",
                describe(deny)
            )
        } else {
            format!(
                "{} cannot be exported: Cilium cannot deny by name (egressDeny has no toFQDNs), and it is admitted to \
                 {} (only egressd at the gateway denies it)",
                describe(deny),
                gaps.join(", ")
            )
        };
        warnings.push((deny.loc.clone(), message));
    }
    for plan in cx.services.iter().filter(|p| !p.workloads.is_empty()) {
        for deny in plan.denies.iter().filter(|d| d.host.is_some()) {
            for allow in &plan.allows {
                if !effective(allow, &[*deny]).inside.is_empty() {
                    warnings.push((
                        deny.loc.clone(),
                        format!(
                            "{} lies under {}: Cilium cannot deny by name (egressDeny has no toFQDNs), so the \
                             CiliumNetworkPolicy admits it",
                            describe(deny),
                            describe(allow)
                        ),
                    ));
                }
            }
        }
    }
}

/// Policies add up in Cilium: a service that selects a whole namespace gives its allows to every
/// other service's pods there.
fn namespace_overlaps(cx: &Cx<'_>, warnings: &mut Vec<(SourceLoc, String)>) {
    for plan in &cx.services {
        for w in plan.workloads.iter().filter(|w| w.service_account.is_none()) {
            let others: Vec<&str> = cx
                .services
                .iter()
                .filter(|o| o.svc.index != plan.svc.index && o.workloads.iter().any(|x| x.namespace == w.namespace))
                .map(|o| o.svc.name.as_str())
                .collect();
            if !others.is_empty() {
                warnings.push((
                    w.loc.clone(),
                    format!(
                        "service `{}` selects every pod of namespace `{}`, where {} also run: Cilium adds policies \
                         up, so their pods may reach `{}`'s destinations too",
                        plan.svc.name,
                        w.namespace,
                        others.join(", "),
                        plan.svc.name
                    ),
                ));
            }
        }
    }
}

/// `toPorts` for a port set (`None` for every port: an L3-only rule holds for every port and
/// protocol).
fn to_ports(ports: &PortSet, protocol: &str) -> Option<Value> {
    if ports.is_all() {
        return None;
    }
    let list: Vec<Value> = ports
        .ranges()
        .iter()
        .map(|&(a, b)| {
            if a == b {
                json!({ "port": a.to_string(), "protocol": protocol })
            } else {
                json!({ "port": a.to_string(), "endPort": b, "protocol": protocol })
            }
        })
        .collect();
    Some(json!([{ "ports": list }]))
}

/// A Kubernetes label key as a Cilium endpoint label (`k8s:` source prefix).
fn cilium_key(key: &str) -> String {
    if key.contains(':') { key.to_string() } else { format!("k8s:{key}") }
}

fn dedup(mut values: Vec<Value>) -> Vec<Value> {
    let mut seen = std::collections::HashSet::new();
    values.retain(|v| seen.insert(v.to_string()));
    values
}
