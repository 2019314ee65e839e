//! `egressd export`: the same policy compiled for another enforcement layer. Kubernetes
//! NetworkPolicy (`networkpolicy`: the egress gateway as the only way out), Istio ServiceEntries
//! and the gateway's AuthorizationPolicy (`istio`), CiliumNetworkPolicy per service (`cilium`).
//!
//! Domain in, typed objects out: `export` reads a `CompiledPolicy` and returns Kubernetes objects
//! as `serde_json::Value`s (apiVersion, kind, metadata, spec) and the warnings about what the
//! layer cannot express, each with the `FILE:LINE:COL` it is about. Nothing is silently dropped:
//! what is not exported, or exported wider or narrower than egressd decides, is a warning.
//!
//! Shared by the three targets (one file each under `export/`):
//! - identities (`identity`): `spiffe://TD/ns/X/sa/Y` is namespace X, service account Y;
//!   `ns/X/sa/*` and `ns/X/*` are every service account of X; anything else is a warning and
//!   contributes nothing (the service is exported for the identities that map);
//! - denies (`deny_effect`): how a mesh-wide or service deny bears on an allow at L3/L4;
//! - ports (`ports::PortSet`), names (`names`: DNS-1123, deduplicated), metadata (policy version,
//!   the rules an object was built from with their justifications, `managed-by` label).

mod cilium;
mod identity;
mod istio;
mod names;
mod networkpolicy;
mod ports;
pub mod rpz;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;

use serde_json::{Value, json};

use crate::policy::fqdn::HostPattern;
use crate::policy::{
    Action, CompiledPolicy, PolicySource, Protocol, RuleInfo, ServiceInfo, SourceLoc, UnclaimedIdentities,
};

pub(crate) use identity::Workload;
pub(crate) use ports::PortSet;

/// The layer to export for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// `networking.k8s.io/v1` NetworkPolicy per namespace: egress only to the gateway, DNS and
    /// the services' CIDR allows.
    NetworkPolicy,
    /// `networking.istio.io/v1` ServiceEntry per allowed destination and a `security.istio.io/v1`
    /// AuthorizationPolicy (CUSTOM, provider egressd) on the egress gateway.
    Istio,
    /// `cilium.io/v2` CiliumNetworkPolicy per service and namespace.
    Cilium,
}

impl Target {
    pub const ALL: [Target; 3] = [Target::NetworkPolicy, Target::Istio, Target::Cilium];

    pub fn as_str(self) -> &'static str {
        match self {
            Target::NetworkPolicy => "networkpolicy",
            Target::Istio => "istio",
            Target::Cilium => "cilium",
        }
    }

    /// The kinds this target writes, in output order.
    pub fn kinds(self) -> &'static [&'static str] {
        match self {
            Target::NetworkPolicy => &["NetworkPolicy"],
            Target::Istio => &["ServiceEntry", "AuthorizationPolicy"],
            Target::Cilium => &["CiliumNetworkPolicy"],
        }
    }
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Target {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Target::ALL
            .into_iter()
            .find(|t| t.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| format!("unknown export target `{s}`: expected networkpolicy, istio or cilium"))
    }
}

/// Where the cluster's parts are. Every field has a documented default (`Options::default()`).
#[derive(Debug, Clone)]
pub struct Options {
    /// Namespace of the egress gateway pods; Istio objects (ServiceEntries, the
    /// AuthorizationPolicy) are written there too. Default `istio-system`.
    pub gateway_namespace: String,
    /// Labels of the egress gateway pods. Default `istio: egressgateway`.
    pub gateway_labels: BTreeMap<String, String>,
    /// TCP ports of the gateway pods that workloads connect to. `None` (the default): the
    /// listener ports of the policy's `kind: Gateway` documents, or 15001 and 15443 when it has
    /// none.
    pub gateway_ports: Option<Vec<u16>>,
    /// Namespace of the DNS pods workloads resolve with. Default `kube-system`.
    pub dns_namespace: String,
    /// Labels of those DNS pods. Default `k8s-app: kube-dns`.
    pub dns_labels: BTreeMap<String, String>,
    /// The Istio `meshConfig.extensionProviders` entry that points at egressd. Default `egressd`.
    pub authz_provider: String,
    /// Unix seconds: allows whose `expires` day is over are left out (with a warning). `None`
    /// (the default): every allow is exported, as if none had expired.
    pub now: Option<i64>,
    /// Cilium: a policy wildcard `*.x` (one or more labels) becomes `matchPattern: "**.x"`,
    /// which Cilium 1.19 and later read as one or more labels (older versions as exactly one:
    /// narrower, never wider). `false`: `*.x`, exactly one label in every Cilium version, and a
    /// warning per wildcard. Default `true`.
    pub cilium_multi_level_wildcards: bool,
    /// Cilium: also allow egress to the gateway pods (`gateway_labels` in `gateway_namespace`,
    /// `gateway_ports`), for workloads that also go through the egressd gateway. Default `false`.
    pub cilium_allow_gateway: bool,
}

/// The ports workloads reach the gateway on when the policy has no Gateway document.
pub const DEFAULT_GATEWAY_PORTS: [u16; 2] = [15001, 15443];

impl Default for Options {
    fn default() -> Self {
        Options {
            gateway_namespace: "istio-system".to_string(),
            gateway_labels: BTreeMap::from([("istio".to_string(), "egressgateway".to_string())]),
            gateway_ports: None,
            dns_namespace: "kube-system".to_string(),
            dns_labels: BTreeMap::from([("k8s-app".to_string(), "kube-dns".to_string())]),
            authz_provider: "egressd".to_string(),
            now: None,
            cilium_multi_level_wildcards: true,
            cilium_allow_gateway: false,
        }
    }
}

impl Options {
    /// The gateway ports workloads connect to (see `gateway_ports`).
    pub fn gateway_ports(&self, policy: &CompiledPolicy) -> Vec<u16> {
        if let Some(ports) = &self.gateway_ports {
            let mut ports = ports.clone();
            ports.sort_unstable();
            ports.dedup();
            return ports;
        }
        let own = policy.gateways.iter().map(|g| (g.http_listen, g.tls_listen));
        let external = policy.external_gateways.iter().map(|g| (g.http_listen, g.tls_listen));
        let mut ports: Vec<u16> = own
            .chain(external)
            .flat_map(|(http, tls)| std::iter::once(http.port()).chain(tls.map(|l| l.port())))
            .collect();
        if ports.is_empty() {
            ports = DEFAULT_GATEWAY_PORTS.to_vec();
        }
        ports.sort_unstable();
        ports.dedup();
        ports
    }
}

/// Something the layer cannot express (or expresses differently), where the policy says it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Warning {
    pub location: SourceLoc,
    pub message: String,
}

impl fmt::Display for Warning {
    /// `FILE:LINE:COL: message`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.location, self.message)
    }
}

/// What `export` produced: Kubernetes objects, in output order, and the warnings.
#[derive(Debug, Clone)]
pub struct Export {
    pub target: Target,
    pub objects: Vec<Value>,
    /// Sorted by location, then message; no duplicates.
    pub warnings: Vec<Warning>,
}

impl Export {
    /// The objects as one YAML stream, documents separated by `---`.
    pub fn to_yaml(&self) -> Result<String, serde_saphyr::SerializeError> {
        yaml_stream(&self.objects)
    }

    /// One file per kind that has objects: `networkpolicy.yaml`, `serviceentry.yaml`,
    /// `authorizationpolicy.yaml`, `ciliumnetworkpolicy.yaml`; (file name, YAML stream).
    pub fn files(&self) -> Result<Vec<(String, String)>, serde_saphyr::SerializeError> {
        let mut files = Vec::new();
        for kind in self.target.kinds() {
            let objects: Vec<Value> = self.objects.iter().filter(|o| o["kind"] == *kind).cloned().collect();
            if !objects.is_empty() {
                files.push((format!("{}.yaml", kind.to_ascii_lowercase()), yaml_stream(&objects)?));
            }
        }
        Ok(files)
    }
}

fn yaml_stream(objects: &[Value]) -> Result<String, serde_saphyr::SerializeError> {
    let mut options = serde_saphyr::SerializerOptions::default();
    // Annotations (JSON, justifications) stay one plain or quoted line each: no folding.
    options.prefer_block_scalars = false;
    let mut out = String::new();
    for object in objects {
        out.push_str("---\n");
        out.push_str(&serde_saphyr::to_string_with_options(object, options.clone())?);
    }
    Ok(out)
}

/// The policy compiled for `target`. Identity warnings point at the service's `service:` key;
/// `export_with_source` points them at the identity's own line.
pub fn export(policy: &CompiledPolicy, target: Target, options: &Options) -> Export {
    run(policy, None, target, options)
}

/// As `export`, with the source the policy was compiled from (to locate identity entries).
pub fn export_with_source(policy: &CompiledPolicy, source: &PolicySource, target: Target, options: &Options) -> Export {
    run(policy, Some(source), target, options)
}

fn run(policy: &CompiledPolicy, source: Option<&PolicySource>, target: Target, options: &Options) -> Export {
    let mut cx = Cx::new(policy, source, target, options);
    let objects = match target {
        Target::NetworkPolicy => networkpolicy::export(&mut cx),
        Target::Istio => istio::export(&mut cx),
        Target::Cilium => cilium::export(&mut cx),
    };
    let mut warnings = cx.warnings;
    warnings.sort();
    warnings.dedup();
    Export { target, objects, warnings }
}

/// One service as the layers see it: its workloads (identities that map to Kubernetes), and the
/// allows that are still in force.
pub(crate) struct ServicePlan<'p> {
    pub svc: &'p ServiceInfo,
    pub workloads: Vec<Workload>,
    pub allows: Vec<&'p RuleInfo>,
    pub denies: Vec<&'p RuleInfo>,
}

impl ServicePlan<'_> {
    /// The namespaces of its workloads, sorted, each once.
    pub fn namespaces(&self) -> Vec<&str> {
        let mut out: Vec<&str> = self.workloads.iter().map(|w| w.namespace.as_str()).collect();
        out.sort_unstable();
        out.dedup();
        out
    }
}

/// Export state shared by the targets: the policy, options, services, names and warnings.
pub(crate) struct Cx<'p> {
    pub policy: &'p CompiledPolicy,
    pub options: &'p Options,
    pub target: Target,
    pub services: Vec<ServicePlan<'p>>,
    pub mesh_denies: Vec<&'p RuleInfo>,
    pub names: names::Names,
    pub warnings: Vec<Warning>,
}

impl<'p> Cx<'p> {
    fn new(policy: &'p CompiledPolicy, source: Option<&PolicySource>, target: Target, options: &'p Options) -> Self {
        let mut cx = Cx {
            policy,
            options,
            target,
            services: Vec::new(),
            mesh_denies: policy.rules.iter().filter(|r| r.service.is_none() && r.action == Action::Deny).collect(),
            names: names::Names::default(),
            warnings: Vec::new(),
        };
        if policy.unclaimed_identities == UnclaimedIdentities::Observe {
            let loc = policy.unclaimed_identities_loc.clone().unwrap_or_else(|| policy.mesh_loc.clone());
            let what = match target {
                Target::NetworkPolicy => {
                    "namespaces where no service runs get no NetworkPolicy, so their pods are not held to the gateway"
                }
                Target::Istio => {
                    "ServiceEntries are exported to the services' namespaces only, so under REGISTRY_ONLY their \
                     sidecars reach no destination"
                }
                Target::Cilium => "no CiliumNetworkPolicy selects their pods, so Cilium does not restrict them",
            };
            cx.warn(
                &loc,
                format!("unclaimedIdentities: observe lets callers no service claims through egressd (as would-deny); {what}"),
            );
        }
        for svc in &policy.services {
            let workloads = identity::workloads(svc, source, &mut cx.warnings);
            if workloads.is_empty() {
                cx.warn(
                    &svc.name_loc,
                    format!(
                        "service `{}`: no identity maps to a Kubernetes namespace and service account \
                         (spiffe://{}/ns/NAMESPACE/sa/ACCOUNT): nothing is exported for it",
                        svc.name, policy.trust_domain
                    ),
                );
            }
            let rules = policy.rules.iter().filter(|r| r.service == Some(svc.index));
            let mut allows = Vec::new();
            let mut denies = Vec::new();
            for rule in rules {
                match rule.action {
                    Action::Deny => denies.push(rule),
                    Action::Allow if cx.expired(rule) => {}
                    Action::Allow => allows.push(rule),
                }
            }
            cx.services.push(ServicePlan { svc, workloads, allows, denies });
        }
        cx
    }

    pub fn warn(&mut self, location: &SourceLoc, message: impl Into<String>) {
        self.warnings.push(Warning { location: location.clone(), message: message.into() });
    }

    /// Whether an allow's `expires` day is over at `options.now` (then it is warned about and left
    /// out); an allow that expires later is warned about once per layer, which does not expire it.
    fn expired(&mut self, rule: &RuleInfo) -> bool {
        let Some(date) = &rule.expires else { return false };
        // NetworkPolicy exports CIDR allows only (names go through the gateway).
        let exported_here = self.target != Target::NetworkPolicy || rule.cidr.is_some();
        let loc = rule.expires_loc.as_ref().unwrap_or(&rule.loc).clone();
        let deadline = expiry_deadline(date);
        if let (Some(now), Some(deadline)) = (self.options.now, deadline)
            && now >= deadline
        {
            if exported_here {
                self.warn(&loc, format!("{} expired on {date}: not exported", rule.id));
            }
            return true;
        }
        if !exported_here {
            return false;
        }
        self.warn(
            &loc,
            format!(
                "{} expires on {date}, but {} objects do not expire: export again after that day",
                rule.id,
                self.target.as_str()
            ),
        );
        false
    }

    /// `metadata` of an object: name, namespace, the `managed-by` label (plus `labels`), the
    /// policy version, the rules it was built from and `annotations`.
    pub fn metadata(
        &self,
        name: &str,
        namespace: &str,
        rules: &[&RuleInfo],
        labels: &[(&str, String)],
        annotations: &[(&str, String)],
    ) -> Value {
        let mut label_map = serde_json::Map::new();
        label_map.insert(keys::MANAGED_BY.into(), "egressd".into());
        for (k, v) in labels {
            label_map.insert((*k).into(), v.clone().into());
        }
        let mut notes = serde_json::Map::new();
        notes.insert(keys::POLICY_VERSION.into(), self.policy.version.clone().into());
        notes.insert(keys::RULES.into(), rules_annotation(rules).into());
        for (k, v) in annotations {
            notes.insert((*k).into(), v.clone().into());
        }
        json!({ "name": name, "namespace": namespace, "labels": label_map, "annotations": notes })
    }

    /// A note on a per-service object: the service, its mode, and what the layer makes of it.
    pub fn service_notes(&self, plans: &[&ServicePlan<'_>]) -> (&'static str, String) {
        let names: Vec<String> = plans.iter().map(|p| format!("{} ({})", p.svc.name, p.svc.mode)).collect();
        (keys::SERVICES, names.join(", "))
    }
}

/// The rules an object was built from, as a JSON array of `{id, at, justification}` (the
/// `egressd.io/rules` annotation). Past 32 KiB the rest are counted, not listed.
fn rules_annotation(rules: &[&RuleInfo]) -> String {
    const MAX: usize = 32 * 1024;
    let mut seen = std::collections::HashSet::new();
    let mut items: Vec<String> = Vec::new();
    let mut size = 2;
    let mut omitted = 0usize;
    for rule in rules {
        if !seen.insert(rule.index) {
            continue;
        }
        let item =
            json!({ "id": rule.id, "at": rule.loc.to_string(), "justification": rule.justification }).to_string();
        if size + item.len() + 1 > MAX {
            omitted += 1;
            continue;
        }
        size += item.len() + 1;
        items.push(item);
    }
    if omitted > 0 {
        items.push(json!({ "omitted": omitted }).to_string());
    }
    format!("[{}]", items.join(","))
}

/// `YYYY-MM-DD` -> the first second (UTC) after that day: an allow is good through its expiry date.
fn expiry_deadline(raw: &str) -> Option<i64> {
    let date: jiff::civil::Date = raw.parse().ok()?;
    let next = date.tomorrow().ok()?;
    Some(next.to_zoned(jiff::tz::TimeZone::UTC).ok()?.timestamp().as_second())
}

/// How a deny bears on an allow, as far as L3/L4 layers can tell (hosts and CIDRs never match
/// each other, as in egressd).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum DenyEffect {
    /// The deny is about other destinations.
    Disjoint,
    /// Every destination of the allow is denied on these ports (`PortSet::all()`: on every port).
    Covers(PortSet),
    /// The deny holds for part of the allow's destinations: a name under the allow's wildcard, or
    /// a CIDR inside the allow's block; on these ports.
    Inside(PortSet),
    /// The deny is restricted to protocols (http, https, tls, tcp) an L3/L4 layer cannot tell apart.
    Protocols,
}

/// How `deny` bears on `allow` (see `DenyEffect`).
pub(crate) fn deny_effect(allow: &RuleInfo, deny: &RuleInfo) -> DenyEffect {
    let overlap = match (&allow.host, &allow.cidr, &deny.host, &deny.cidr) {
        // A deny of any destination (ports and/or protocols only).
        (_, _, None, None) => Overlap::Covers,
        (Some(a), _, Some(d), _) => host_overlap(a, d),
        (_, Some(a), _, Some(d)) => {
            if d.contains(a) {
                Overlap::Covers
            } else if a.contains(d) {
                Overlap::Inside
            } else {
                Overlap::Disjoint
            }
        }
        // An allow of any destination is never exported; host vs CIDR never match.
        _ => Overlap::Disjoint,
    };
    if overlap == Overlap::Disjoint {
        return DenyEffect::Disjoint;
    }
    let allow_ports = PortSet::of(allow.ports.as_deref());
    let deny_ports = PortSet::of(deny.ports.as_deref());
    if !allow_ports.intersects(&deny_ports) {
        return DenyEffect::Disjoint;
    }
    if !deny.protocols.is_empty() {
        let within = !allow.protocols.is_empty() && allow.protocols.iter().all(|p| deny.protocols.contains(p));
        let apart = !allow.protocols.is_empty() && !allow.protocols.iter().any(|p| deny.protocols.contains(p));
        if apart {
            return DenyEffect::Disjoint;
        }
        if !within {
            return DenyEffect::Protocols;
        }
    }
    match overlap {
        Overlap::Covers => DenyEffect::Covers(deny_ports),
        _ => DenyEffect::Inside(deny_ports),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Overlap {
    Disjoint,
    Covers,
    Inside,
}

/// Whether deny pattern `d` covers every name of allow pattern `a`, some of them, or none.
fn host_overlap(a: &HostPattern, d: &HostPattern) -> Overlap {
    match (a, d) {
        (HostPattern::Exact(a), HostPattern::Exact(d)) if a == d => Overlap::Covers,
        (HostPattern::Exact(a), d @ HostPattern::Wildcard(_)) if d.matches(a) => Overlap::Covers,
        (HostPattern::Wildcard(a), HostPattern::Wildcard(d))
            if a == d || HostPattern::Wildcard(d.clone()).matches(a) =>
        {
            Overlap::Covers
        }
        (a @ HostPattern::Wildcard(_), HostPattern::Exact(d)) if a.matches(d) => Overlap::Inside,
        (a @ HostPattern::Wildcard(_), HostPattern::Wildcard(d)) if a.matches(d) => Overlap::Inside,
        _ => Overlap::Disjoint,
    }
}

/// The ports of `allow` that no covering deny takes away, and the denies that did (for the
/// object's rule list). Denies that hold only inside the allow, or by protocol, are reported
/// through `inside` (layer-specific handling) and `protocols` (a warning each).
pub(crate) struct Effective<'p> {
    pub ports: PortSet,
    pub applied: Vec<&'p RuleInfo>,
    pub inside: Vec<(&'p RuleInfo, PortSet)>,
    pub protocols: Vec<&'p RuleInfo>,
}

pub(crate) fn effective<'p>(allow: &RuleInfo, denies: &[&'p RuleInfo]) -> Effective<'p> {
    let mut out = Effective {
        ports: PortSet::of(allow.ports.as_deref()),
        applied: Vec::new(),
        inside: Vec::new(),
        protocols: Vec::new(),
    };
    for deny in denies {
        match deny_effect(allow, deny) {
            DenyEffect::Disjoint => {}
            DenyEffect::Covers(ports) => {
                let left = out.ports.subtract(&ports);
                if left != out.ports {
                    out.applied.push(deny);
                }
                out.ports = left;
            }
            DenyEffect::Inside(ports) => out.inside.push((deny, ports)),
            DenyEffect::Protocols => out.protocols.push(deny),
        }
    }
    out
}

impl Effective<'_> {
    /// The warning for an allow whose every port a deny takes away (it is not exported), if so.
    pub(crate) fn denied_everywhere(&self, allow: &RuleInfo) -> Option<(SourceLoc, String)> {
        if !self.ports.is_empty() {
            return None;
        }
        let by: Vec<String> = self.applied.iter().map(|d| describe(d)).collect();
        Some((
            allow.loc.clone(),
            format!("{} is denied on all its ports by {}: not exported", describe(allow), by.join(", ")),
        ))
    }
}

/// `payments/allow/0 (api.stripe.com ports [443])`: a rule as warnings name it.
pub(crate) fn describe(rule: &RuleInfo) -> String {
    format!("{} ({})", rule.id, rule.content_key())
}

/// `on any port`, `on ports [443]`: a port set in a message.
pub(crate) fn on_ports(ports: &PortSet) -> String {
    if ports.is_all() { "on any port".to_string() } else { format!("on ports {ports}") }
}

/// The protocols of a rule, for messages: `[https, tls]`.
pub(crate) fn protocols(list: &[Protocol]) -> String {
    let names: Vec<&str> = list.iter().map(|p| p.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// `egressd.io/...` annotation keys and the label this module sets.
pub mod keys {
    pub const POLICY_VERSION: &str = "egressd.io/policy-version";
    pub const RULES: &str = "egressd.io/rules";
    pub const SERVICES: &str = "egressd.io/services";
    pub const SERVICE_LABEL: &str = "egressd.io/service";
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
}
