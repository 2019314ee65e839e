//! `networkpolicy`: the egress gateway as the choke point. Per namespace of the services'
//! identities, one `networking.k8s.io/v1` NetworkPolicy (`policyTypes: [Egress]`) that lets the
//! namespace's pods reach only the egress gateway pods (on the gateway's ports), DNS (UDP and
//! TCP 53) and the CIDR allows of the services that run there; everything else is dropped.
//!
//! NetworkPolicy selects pods by label, not by service account: the policy selects every pod of
//! the namespace (said in its `egressd.io/pod-selection` annotation, and warned), and when a
//! namespace runs several services it allows the union of their CIDR allows (warned). Mesh-wide
//! and service CIDR denies inside an allowed block become `except` entries; denies that cover a
//! block on some ports take those ports away (port ranges with `endPort`).

use std::collections::BTreeMap;

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{Cx, PortSet, ServicePlan, describe, effective, protocols};
use crate::policy::RuleInfo;

const KIND: &str = "NetworkPolicy";

/// One ipBlock peer and its ports, with the rules it came from.
struct Block<'p> {
    cidr: IpNet,
    except: Vec<IpNet>,
    ports: PortSet,
    rules: Vec<&'p RuleInfo>,
}

pub fn export(cx: &mut Cx<'_>) -> Vec<Value> {
    let mut by_namespace: BTreeMap<String, Vec<usize>> = BTreeMap::new();
    for (i, plan) in cx.services.iter().enumerate() {
        for ns in plan.namespaces() {
            by_namespace.entry(ns.to_string()).or_default().push(i);
        }
    }
    let gateway_ports = cx.options.gateway_ports(cx.policy);
    let mut objects = Vec::new();
    for (namespace, members) in by_namespace {
        let plans: Vec<&ServicePlan<'_>> = members.iter().map(|&i| &cx.services[i]).collect();
        let mut warnings: Vec<(crate::policy::SourceLoc, String)> = Vec::new();
        let first_loc = |plan: &ServicePlan<'_>| {
            plan.workloads.iter().find(|w| w.namespace == namespace).map(|w| w.loc.clone()).unwrap_or_default()
        };
        if plans.len() > 1 {
            let names: Vec<&str> = plans.iter().map(|p| p.svc.name.as_str()).collect();
            warnings.push((
                first_loc(plans[1]),
                format!(
                    "namespace `{namespace}` runs services {}: NetworkPolicy cannot tell their pods apart, so one \
                     policy for the namespace allows the union of their CIDR allows",
                    names.join(", ")
                ),
            ));
        }
        let by_account: Vec<&str> = plans
            .iter()
            .flat_map(|p| p.workloads.iter())
            .filter(|w| w.namespace == namespace && w.service_account.is_some())
            .map(|w| w.identity.as_str())
            .collect();
        if let Some(plan) =
            plans.iter().find(|p| p.workloads.iter().any(|w| w.namespace == namespace && w.service_account.is_some()))
        {
            warnings.push((
                first_loc(plan),
                format!(
                    "NetworkPolicy cannot select pods by service account: the policy for namespace `{namespace}` \
                     applies to every pod there, not only to {}",
                    by_account.join(", ")
                ),
            ));
        }

        let mut blocks: Vec<Block<'_>> = Vec::new();
        let mut rules: Vec<&RuleInfo> = Vec::new();
        for plan in &plans {
            let denies: Vec<&RuleInfo> = cx.mesh_denies.iter().copied().chain(plan.denies.iter().copied()).collect();
            for allow in plan.allows.iter().copied().filter(|r| r.cidr.is_some()) {
                let cidr = allow.cidr.expect("filtered");
                let eff = effective(allow, &denies);
                for deny in &eff.protocols {
                    warnings.push((
                        deny.loc.clone(),
                        format!(
                            "{} denies protocols {} only: NetworkPolicy cannot tell protocols apart, so {} is \
                             exported without it",
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
                            "{} is limited to protocols {}: NetworkPolicy cannot tell them apart and allows any TCP \
                             connection to {cidr} {}",
                            describe(allow),
                            protocols(&allow.protocols),
                            super::on_ports(&eff.ports)
                        ),
                    ));
                }
                if let IpNet::V6(v6) = cidr
                    && v6.contains(&"::ffff:0:0/96".parse::<ipnet::Ipv6Net>().expect("literal"))
                {
                    warnings.push((
                        allow.loc.clone(),
                        format!(
                            "{} also allows all of IPv4 in egressd (IPv4-mapped addresses are IPv4); the ipBlock \
                             {cidr} allows IPv6 only",
                            describe(allow)
                        ),
                    ));
                }
                rules.push(allow);
                rules.extend(eff.applied.iter().copied());
                let mut except = Vec::new();
                let mut extra = Vec::new();
                for (deny, deny_ports) in &eff.inside {
                    let inner = deny.cidr.expect("an inside deny of a CIDR allow is a CIDR");
                    rules.push(deny);
                    except.push(inner);
                    let left = eff.ports.subtract(deny_ports);
                    if !deny_ports.is_all() && !left.is_empty() {
                        // The deny holds on some ports only: the block inside it keeps the others.
                        extra.push(Block { cidr: inner, except: Vec::new(), ports: left, rules: vec![allow, deny] });
                    }
                }
                except.sort();
                except.dedup();
                merge(&mut blocks, Block { cidr, except, ports: eff.ports.clone(), rules: vec![allow] });
                for block in extra {
                    merge(&mut blocks, block);
                }
            }
        }

        let mut egress = vec![
            json!({
                "to": [{
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": cx.options.gateway_namespace } },
                    "podSelector": { "matchLabels": cx.options.gateway_labels },
                }],
                "ports": gateway_ports.iter().map(|p| json!({ "protocol": "TCP", "port": p })).collect::<Vec<_>>(),
            }),
            json!({
                "to": [{
                    "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": cx.options.dns_namespace } },
                    "podSelector": { "matchLabels": cx.options.dns_labels },
                }],
                "ports": [{ "protocol": "UDP", "port": 53 }, { "protocol": "TCP", "port": 53 }],
            }),
        ];
        blocks.sort_by(|a, b| (a.cidr, &a.except, &a.ports).cmp(&(b.cidr, &b.except, &b.ports)));
        for block in &blocks {
            let mut peer = json!({ "cidr": block.cidr.to_string() });
            if !block.except.is_empty() {
                peer["except"] = block.except.iter().map(|e| e.to_string()).collect::<Vec<_>>().into();
            }
            egress.push(json!({ "to": [{ "ipBlock": peer }], "ports": np_ports(&block.ports) }));
        }

        let services: Vec<&str> = plans.iter().map(|p| p.svc.name.as_str()).collect();
        let selection = if by_account.is_empty() {
            format!("every pod of namespace {namespace} (its identities claim every service account)")
        } else {
            format!(
                "every pod of namespace {namespace}: NetworkPolicy cannot select by service account (identities: {})",
                by_account.join(", ")
            )
        };
        let scope = format!(
            "pods may egress only to the egress gateway ({}/{}, TCP {}), DNS ({}/{}, UDP and TCP 53) and the CIDR \
             allows of {}; everything else is dropped",
            cx.options.gateway_namespace,
            selector_text(&cx.options.gateway_labels),
            gateway_ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "),
            cx.options.dns_namespace,
            selector_text(&cx.options.dns_labels),
            services.join(", ")
        );
        let name = cx.names.unique(KIND, &namespace, "egressd-egress");
        let metadata = cx.metadata(
            &name,
            &namespace,
            &rules,
            &[],
            &[cx.service_notes(&plans), ("egressd.io/pod-selection", selection), ("egressd.io/scope", scope)],
        );
        objects.push(json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": KIND,
            "metadata": metadata,
            "spec": { "podSelector": {}, "policyTypes": ["Egress"], "egress": egress },
        }));
        for (loc, message) in warnings {
            cx.warn(&loc, message);
        }
    }
    objects
}

/// Adds `block`, joining the ports of a block with the same CIDR and excepts.
fn merge<'p>(blocks: &mut Vec<Block<'p>>, block: Block<'p>) {
    match blocks.iter_mut().find(|b| b.cidr == block.cidr && b.except == block.except) {
        Some(b) => {
            b.ports = b.ports.union(&block.ports);
            b.rules.extend(block.rules);
        }
        None => blocks.push(block),
    }
}

/// NetworkPolicy ports: `[{protocol: TCP}]` for every port, else a port or `port`..`endPort` each.
fn np_ports(ports: &PortSet) -> Vec<Value> {
    if ports.is_all() {
        return vec![json!({ "protocol": "TCP" })];
    }
    ports
        .ranges()
        .iter()
        .map(|&(a, b)| {
            if a == b {
                json!({ "protocol": "TCP", "port": a })
            } else {
                json!({ "protocol": "TCP", "port": a, "endPort": b })
            }
        })
        .collect()
}

fn selector_text(labels: &BTreeMap<String, String>) -> String {
    labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}
