//! `istio`: what a mesh with `outboundTrafficPolicy: REGISTRY_ONLY` needs to admit exactly the
//! policy's destinations, and to send every request through egressd at the egress gateway.
//!
//! - One `networking.istio.io/v1` ServiceEntry per allowed destination, however many services
//!   allow it: `location: MESH_EXTERNAL`; exact hosts `resolution: DNS`, wildcards (`*.x`: one
//!   or more labels before `x`, never `x` itself, as in egressd) and CIDRs (`addresses`, under a
//!   made-up host `cidr-A-B-C-D-N.egressd.internal`) `resolution: NONE`; ports named
//!   `PROTOCOL-PORT` with `https`/`tls` -> TLS, `http` -> HTTP, `tcp` -> TCP (no protocols: 80
//!   HTTP, 443 TLS, others TCP; CIDRs always TCP); `exportTo` the namespaces of the services that
//!   allow it and the gateway's namespace.
//! - One `security.istio.io/v1` AuthorizationPolicy, `action: CUSTOM`, `provider.name: egressd`,
//!   on the egress gateway pods: egressd decides every request there, modes and identities
//!   included.
//!
//! ServiceEntries are visible per namespace, for every request: a dry-run or canary service's
//! unlisted destinations are refused by the registry, and service accounts of one namespace are
//! not told apart (warned). A rule without ports is exported on the ports its protocols imply.

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use serde_json::{Value, json};

use super::{Cx, describe, effective, protocols};
use crate::policy::fqdn::HostPattern;
use crate::policy::{Mode, Protocol, RuleInfo};

/// The destination of a ServiceEntry.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum Dest {
    Host(String),
    Wildcard(String),
    Cidr(IpNet),
}

struct Entry<'p> {
    ports: BTreeMap<u16, &'static str>,
    /// Per service, the ports it allows (the entry carries their union).
    by_service: BTreeMap<String, BTreeSet<u16>>,
    namespaces: BTreeSet<String>,
    services: BTreeSet<String>,
    rules: Vec<&'p RuleInfo>,
}

pub fn export(cx: &mut Cx<'_>) -> Vec<Value> {
    // Istio's egress gateway is described as an external Gateway; a policy may instead only have
    // egressd's own (the ports are then the same by construction).
    let external = cx.policy.external_gateways.first().map(|g| g.tls_upstream_port);
    let tls_port = external.or(cx.policy.gateways.first().map(|g| g.tls_upstream_port)).unwrap_or(443);
    let mut entries: BTreeMap<Dest, Entry<'_>> = BTreeMap::new();
    let mut warnings: Vec<(crate::policy::SourceLoc, String)> = Vec::new();
    for plan in &cx.services {
        let namespaces = plan.namespaces();
        if namespaces.is_empty() {
            continue;
        }
        let svc = plan.svc;
        let mode_loc = svc.mode_loc.clone().unwrap_or_else(|| svc.name_loc.clone());
        match svc.mode {
            Mode::Enforce => {}
            Mode::DryRun => warnings.push((
                mode_loc,
                format!(
                    "service `{}` is in dry-run, which ServiceEntries cannot express: under REGISTRY_ONLY the \
                     sidecars refuse every destination it does not allow, where egressd only records a would-deny",
                    svc.name
                ),
            )),
            Mode::Canary => warnings.push((
                mode_loc,
                format!(
                    "service `{}` is a canary ({}), which ServiceEntries cannot express: under REGISTRY_ONLY every \
                     request and workload is held to its allows",
                    svc.name,
                    canary_text(&svc.canary)
                ),
            )),
        }
        if let Some(w) = plan.workloads.iter().find(|w| w.service_account.is_some()) {
            warnings.push((
                w.loc.clone(),
                format!(
                    "service `{}`: ServiceEntries are visible per namespace (exportTo {}), not per service account: \
                     every workload there can reach its destinations through the registry (egressd at the gateway \
                     still checks each identity)",
                    svc.name,
                    namespaces.join(", ")
                ),
            ));
        }
        let denies: Vec<&RuleInfo> = cx.mesh_denies.iter().copied().chain(plan.denies.iter().copied()).collect();
        for allow in plan.allows.iter().copied() {
            let dest = match (&allow.host, allow.cidr) {
                (Some(HostPattern::Exact(h)), _) => Dest::Host(h.clone()),
                (Some(HostPattern::Wildcard(s)), _) => Dest::Wildcard(s.clone()),
                (None, Some(net)) => Dest::Cidr(net),
                (None, None) => continue,
            };
            let eff = effective(allow, &denies);
            for deny in &eff.protocols {
                warnings.push((
                    deny.loc.clone(),
                    format!(
                        "{} denies protocols {} only: the ServiceEntry for {} still admits them (egressd at the \
                         gateway denies)",
                        describe(deny),
                        protocols(&deny.protocols),
                        describe(allow)
                    ),
                ));
            }
            for (deny, _) in &eff.inside {
                warnings.push((
                    deny.loc.clone(),
                    format!(
                        "{} lies inside {}: a ServiceEntry cannot carve it out, so the registry admits it (egressd \
                         at the gateway denies)",
                        describe(deny),
                        describe(allow)
                    ),
                ));
            }
            if let Some(warning) = eff.denied_everywhere(allow) {
                warnings.push(warning);
                continue;
            }
            let ports = match eff.ports.ports(64) {
                Some(list) if !eff.ports.is_all() => list,
                _ => {
                    let implied = implied_ports(&allow.protocols, tls_port);
                    let list: Vec<u16> = implied.into_iter().filter(|p| eff.ports.contains(*p)).collect();
                    let text: Vec<String> = list
                        .iter()
                        .map(|p| {
                            let protocol =
                                if allow.cidr.is_some() { "TCP" } else { istio_protocol(*p, &allow.protocols).0 };
                            format!("{p} ({protocol})")
                        })
                        .collect();
                    warnings.push((
                        allow.loc.clone(),
                        if list.is_empty() {
                            format!(
                                "{} allows any port, which a ServiceEntry cannot express, and its protocols {} \
                                 imply none: not exported",
                                describe(allow),
                                protocols(&allow.protocols)
                            )
                        } else {
                            format!(
                                "{} allows any port, which a ServiceEntry cannot express: exported on {}",
                                describe(allow),
                                text.join(", ")
                            )
                        },
                    ));
                    if list.is_empty() {
                        continue;
                    }
                    list
                }
            };
            let entry = entries.entry(dest.clone()).or_insert_with(|| Entry {
                ports: BTreeMap::new(),
                by_service: BTreeMap::new(),
                namespaces: BTreeSet::new(),
                services: BTreeSet::new(),
                rules: Vec::new(),
            });
            let cidr = matches!(dest, Dest::Cidr(_));
            entry.by_service.entry(svc.name.clone()).or_default().extend(ports.iter().copied());
            for port in ports {
                // Addresses are matched by IP and port: TCP, whatever the rule's protocols.
                let (protocol, conflict) = if cidr { ("TCP", false) } else { istio_protocol(port, &allow.protocols) };
                if conflict {
                    warnings.push((
                        allow.loc.clone(),
                        format!(
                            "{} names protocols {} for port {port}: a ServiceEntry port has one protocol, exported \
                             as {protocol}",
                            describe(allow),
                            protocols(&allow.protocols)
                        ),
                    ));
                }
                match entry.ports.get(&port) {
                    Some(existing) if *existing != protocol => warnings.push((
                        allow.loc.clone(),
                        format!(
                            "{} wants port {port} as {protocol}, but another rule for {} made it {existing}: a \
                             ServiceEntry port has one protocol",
                            describe(allow),
                            allow.target
                        ),
                    )),
                    Some(_) => {}
                    None => {
                        entry.ports.insert(port, protocol);
                    }
                }
            }
            entry.namespaces.extend(namespaces.iter().map(|n| n.to_string()));
            entry.services.insert(svc.name.clone());
            entry.rules.push(allow);
            if allow.ports.is_some() {
                entry.rules.extend(eff.applied.iter().copied());
            }
        }
    }

    let gateway_ns = cx.options.gateway_namespace.clone();
    let mut objects = Vec::new();
    for (dest, entry) in &entries {
        let sets: BTreeSet<&BTreeSet<u16>> = entry.by_service.values().collect();
        if sets.len() > 1 {
            let each: Vec<String> = entry.by_service.iter().map(|(svc, ports)| format!("`{svc}` {ports:?}")).collect();
            warnings.push((
                entry.rules[0].loc.clone(),
                format!(
                    "one ServiceEntry for {} carries the ports of {}: the registry admits every one of them to each \
                     of their namespaces (egressd at the gateway still checks each service's ports)",
                    hosts_text(dest),
                    each.join(", ")
                ),
            ));
        }
        let (raw_name, hosts, resolution, addresses) = match dest {
            Dest::Host(h) => (format!("egressd-{h}"), vec![h.clone()], "DNS", None),
            Dest::Wildcard(s) => (format!("egressd-wildcard-{s}"), vec![format!("*.{s}")], "NONE", None),
            Dest::Cidr(net) => {
                let label = super::names::dns_label(&net.to_string());
                (format!("egressd-cidr-{net}"), vec![format!("cidr-{label}.egressd.internal")], "NONE", Some(net))
            }
        };
        let mut export_to: Vec<String> = entry.namespaces.iter().cloned().collect();
        if !export_to.contains(&gateway_ns) {
            export_to.push(gateway_ns.clone());
            export_to.sort();
        }
        let ports: Vec<Value> = entry
            .ports
            .iter()
            .map(|(port, protocol)| {
                json!({ "number": port, "name": format!("{}-{port}", protocol.to_ascii_lowercase()), "protocol": protocol })
            })
            .collect();
        let mut spec = json!({
            "hosts": hosts,
            "location": "MESH_EXTERNAL",
            "resolution": resolution,
            "ports": ports,
            "exportTo": export_to,
        });
        if let Some(net) = addresses {
            spec["addresses"] = json!([net.to_string()]);
        }
        let name = cx.names.unique("ServiceEntry", &gateway_ns, &raw_name);
        let services: Vec<&str> = entry.services.iter().map(String::as_str).collect();
        let metadata =
            cx.metadata(&name, &gateway_ns, &entry.rules, &[], &[(super::keys::SERVICES, services.join(", "))]);
        objects.push(json!({ "apiVersion": "networking.istio.io/v1", "kind": "ServiceEntry", "metadata": metadata, "spec": spec }));
    }

    let authz_port = cx.policy.gateways.first().map(|g| g.authz().port()).unwrap_or(18000);
    let all_rules: Vec<&RuleInfo> = cx.policy.rules.iter().collect();
    let services: Vec<&str> = cx.policy.services.iter().map(|s| s.name.as_str()).collect();
    let name = cx.names.unique("AuthorizationPolicy", &gateway_ns, "egressd-ext-authz");
    let metadata = cx.metadata(
        &name,
        &gateway_ns,
        &all_rules,
        &[],
        &[
            (super::keys::SERVICES, services.join(", ")),
            (
                "egressd.io/requires",
                format!(
                    "meshConfig.extensionProviders: [{{name: {}, envoyExtAuthzGrpc: {{service: EGRESSD_SERVICE, port: \
                     {authz_port}}}}}] and meshConfig.outboundTrafficPolicy.mode: REGISTRY_ONLY",
                    cx.options.authz_provider
                ),
            ),
        ],
    );
    objects.push(json!({
        "apiVersion": "security.istio.io/v1",
        "kind": "AuthorizationPolicy",
        "metadata": metadata,
        "spec": {
            "selector": { "matchLabels": cx.options.gateway_labels },
            "action": "CUSTOM",
            "provider": { "name": cx.options.authz_provider },
            "rules": [{}],
        },
    }));
    for (loc, message) in warnings {
        cx.warn(&loc, message);
    }
    objects
}

fn hosts_text(dest: &Dest) -> String {
    match dest {
        Dest::Host(h) => h.clone(),
        Dest::Wildcard(s) => format!("*.{s}"),
        Dest::Cidr(net) => net.to_string(),
    }
}

/// The ServiceEntry protocol of `port` for a rule's protocols, and whether they disagreed (then
/// the port's usual protocol if they name it, else the first one's).
fn istio_protocol(port: u16, list: &[Protocol]) -> (&'static str, bool) {
    if list.is_empty() {
        return (
            match port {
                80 => "HTTP",
                443 => "TLS",
                _ => "TCP",
            },
            false,
        );
    }
    let mapped: Vec<&'static str> = list
        .iter()
        .map(|p| match p {
            Protocol::Http => "HTTP",
            Protocol::Https | Protocol::Tls => "TLS",
            Protocol::Tcp => "TCP",
        })
        .collect();
    let conflict = mapped.iter().any(|m| *m != mapped[0]);
    // Disagreeing protocols: the port's usual one when they name it (443 TLS, 80 HTTP).
    let usual = match port {
        80 => Some("HTTP"),
        443 => Some("TLS"),
        _ => None,
    };
    let chosen = usual.filter(|u| mapped.contains(u)).unwrap_or(mapped[0]);
    (chosen, conflict)
}

/// The ports a rule without ports is exported on: what its protocols imply (http 80, https 443,
/// tls the gateway's TLS upstream port; tcp none), or 80 and 443 without protocols.
fn implied_ports(list: &[Protocol], tls_port: u16) -> Vec<u16> {
    let mut out: Vec<u16> = if list.is_empty() {
        vec![80, 443]
    } else {
        list.iter()
            .filter_map(|p| match p {
                Protocol::Http => Some(80),
                Protocol::Https => Some(443),
                Protocol::Tls => Some(tls_port),
                Protocol::Tcp => None,
            })
            .collect()
    };
    out.sort_unstable();
    out.dedup();
    out
}

pub(crate) fn canary_text(canary: &crate::policy::Canary) -> String {
    let mut parts = Vec::new();
    if let Some(p) = canary.request_percent {
        parts.push(format!("{p}% of requests"));
    }
    if !canary.workloads.is_empty() {
        parts.push(format!("{} named workload(s)", canary.workloads.len()));
    }
    if let Some(p) = canary.workload_percent {
        parts.push(format!("{p}% of workloads"));
    }
    format!("{} enforced", parts.join(" and "))
}
