//! `report matrix`: the egress allowlist matrix reviewers and auditors ask for, built from the
//! compiled policy so it shows exactly what the Check path enforces, not what the YAML seems to
//! say. One row per compiled rule: a group reference is a row per destination (named by its
//! group), a mesh-wide deny is a row of the service `(mesh)`; each says who the rule is for, what
//! it lets through or stops, why, until when and where it is written, and, when observed flows
//! were read, how often it decided a request in the window. Beside it, per service, the third
//! parties it depends on (the registrable domains and address ranges of its allows): the
//! company's service inventory.
//!
//! `Matrix` is the domain value and its JSON face (serde); `markdown`, `csv` and `html` are its
//! other faces. They share one column list (`COLUMNS`), so the formats cannot drift apart.

mod csv_out;
mod html;
mod markdown;
#[cfg(test)]
mod tests;

use serde::Serialize;

use super::usage::Usage;
use crate::flows::json::rfc3339;
use crate::policy::fqdn::HostPattern;
use crate::policy::{Action, CompiledPolicy, Mode, Protocol, RuleInfo, ServiceInfo};

pub use csv_out::csv;
pub use html::html;
pub use markdown::markdown;

/// The service column of a mesh-wide deny: it applies under every service.
pub const MESH: &str = "(mesh)";

/// The matrix of one policy.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Matrix {
    /// Content hash of the policy's files (`sha256:…`), as stamped on every decision.
    pub policy_version: String,
    /// Where the policy was loaded from.
    pub origin: String,
    /// When the matrix was built (RFC 3339).
    pub generated: String,
    /// What the hit columns count; absent when no flows were read (no hit columns then).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hits: Option<HitsScope>,
    pub rows: Vec<Row>,
    /// Per service (policy order): its third-party dependencies.
    pub services: Vec<ServiceSummary>,
}

/// The flows the hit columns were counted from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HitsScope {
    /// The age flows were counted within (`30d`), when the caller said (`with_window`).
    pub window: Option<String>,
    /// Flows last seen in the window, and flows read.
    pub flows_in_window: usize,
    pub flows: usize,
}

/// One compiled rule.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Row {
    /// The service whose rule this is, or `(mesh)`.
    pub service: String,
    pub owner: Option<String>,
    /// The SPIFFE ID patterns the service claims (none for a mesh deny).
    pub identities: Vec<String>,
    /// The service's mode (none for a mesh deny: it applies under each service's own).
    pub mode: Option<Mode>,
    /// The destination group the rule was expanded from.
    pub group: Option<String>,
    pub action: Action,
    /// `api.stripe.com`, `*.pythonhosted.org`, `10.20.0.0/16` or `any destination`.
    pub destination: String,
    pub kind: DestinationKind,
    /// `None`: any port.
    pub ports: Option<Vec<u16>>,
    /// Empty: any protocol.
    pub protocols: Vec<Protocol>,
    pub justification: Option<String>,
    /// `YYYY-MM-DD`.
    pub expires: Option<String>,
    /// `payments/allow/1/observability-saas/0`.
    pub rule_id: String,
    /// `FILE:LINE:COL` of the deciding text.
    pub location: String,
    /// Present when flows were read.
    #[serde(flatten)]
    pub usage: Option<RowUsage>,
}

/// How a rule was used by the flows read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RowUsage {
    /// Requests of the flows in the window this rule decides.
    pub hits: u64,
    /// RFC 3339 of the latest flow it decides, in the window or before; `None`: never.
    pub last_seen: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DestinationKind {
    Host,
    Wildcard,
    Cidr,
    Any,
}

impl DestinationKind {
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Host => "host",
            DestinationKind::Wildcard => "wildcard",
            DestinationKind::Cidr => "cidr",
            DestinationKind::Any => "any",
        }
    }
}

/// A service and the third parties its allows reach.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceSummary {
    pub service: String,
    pub owner: Option<String>,
    pub mode: Mode,
    pub allows: usize,
    pub denies: usize,
    /// Registrable domains of its host allows (`stripe.com`), by name, with the rules for each.
    pub domains: Vec<Dependency>,
    /// Its CIDR allows, by address, with the rules for each.
    pub cidrs: Vec<Dependency>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dependency {
    pub name: String,
    pub rules: usize,
}

/// The matrix of `policy`; with `usage` (of the same policy), its hit columns.
pub fn build(policy: &CompiledPolicy, usage: Option<&Usage>) -> Matrix {
    Matrix {
        policy_version: policy.version.clone(),
        origin: policy.origin.clone(),
        generated: rfc3339(crate::clock::unix_now().saturating_mul(1000)),
        hits: usage.map(|u| HitsScope { window: None, flows_in_window: u.flows_in_window, flows: u.flows }),
        rows: ordered_rules(policy).into_iter().map(|r| row(policy, r, usage)).collect(),
        services: policy.services.iter().map(|s| summary(policy, s)).collect(),
    }
}

impl Matrix {
    /// Names the age the hits were counted within (`--window`); nothing without hits.
    pub fn with_window(mut self, window: &str) -> Matrix {
        if let Some(hits) = &mut self.hits {
            hits.window = Some(window.to_string());
        }
        self
    }

    /// Keeps the rows and summary of `service`, and the mesh denies (they apply to it too).
    pub fn retain_service(&mut self, service: &str) {
        self.rows.retain(|r| r.service == service || r.service == MESH);
        self.services.retain(|s| s.service == service);
    }

    pub fn allows(&self) -> usize {
        self.rows.iter().filter(|r| r.action == Action::Allow).count()
    }

    pub fn denies(&self) -> usize {
        self.rows.len() - self.allows()
    }
}

/// Mesh denies first, then each service in policy order: its allows, then its denies, each in
/// rule order (the compiled order is denies first, which is how they are decided, not read).
fn ordered_rules(policy: &CompiledPolicy) -> Vec<&RuleInfo> {
    let mut mesh = Vec::new();
    let mut by_service: Vec<Vec<&RuleInfo>> = vec![Vec::new(); policy.services.len()];
    for rule in &policy.rules {
        match rule.service.and_then(|s| by_service.get_mut(s.get())) {
            Some(rules) => rules.push(rule),
            None => mesh.push(rule),
        }
    }
    for rules in &mut by_service {
        rules.sort_by_key(|r| (r.action != Action::Allow, r.index));
    }
    mesh.into_iter().chain(by_service.into_iter().flatten()).collect()
}

fn row(policy: &CompiledPolicy, rule: &RuleInfo, usage: Option<&Usage>) -> Row {
    let service = rule.service.and_then(|s| policy.services.get(s.get()));
    Row {
        service: service.map_or_else(|| MESH.to_string(), |s| s.name.clone()),
        owner: service.and_then(|s| s.owner.clone()),
        identities: service.map(|s| s.identities.clone()).unwrap_or_default(),
        mode: service.map(|s| s.mode),
        group: rule.group.clone(),
        action: rule.action,
        destination: rule.target.clone(),
        kind: kind(rule),
        ports: rule.ports.clone(),
        protocols: rule.protocols.clone(),
        justification: rule.justification.clone(),
        expires: rule.expires.clone(),
        rule_id: rule.id.clone(),
        location: rule.loc.to_string(),
        usage: usage.map(|u| row_usage(u, rule.index)),
    }
}

fn kind(rule: &RuleInfo) -> DestinationKind {
    match (&rule.host, &rule.cidr) {
        (Some(HostPattern::Exact(_)), _) => DestinationKind::Host,
        (Some(HostPattern::Wildcard(_)), _) => DestinationKind::Wildcard,
        (None, Some(_)) => DestinationKind::Cidr,
        (None, None) => DestinationKind::Any,
    }
}

fn row_usage(usage: &Usage, rule: usize) -> RowUsage {
    match usage.rules.get(rule) {
        Some(u) => RowUsage { hits: u.hits, last_seen: u.last_seen_ms.map(rfc3339) },
        None => RowUsage { hits: 0, last_seen: None },
    }
}

fn summary(policy: &CompiledPolicy, service: &ServiceInfo) -> ServiceSummary {
    use std::collections::BTreeMap;
    let mut domains: BTreeMap<String, usize> = BTreeMap::new();
    let mut cidrs: BTreeMap<ipnet::IpNet, usize> = BTreeMap::new();
    let (mut allows, mut denies) = (0, 0);
    for rule in policy.rules.iter().filter(|r| r.service == Some(service.index)) {
        if rule.action == Action::Deny {
            denies += 1;
            continue;
        }
        allows += 1;
        if let Some(host) = &rule.host {
            *domains.entry(registrable_domain(host).to_string()).or_default() += 1;
        } else if let Some(net) = rule.cidr {
            *cidrs.entry(net).or_default() += 1;
        }
    }
    ServiceSummary {
        service: service.name.clone(),
        owner: service.owner.clone(),
        mode: service.mode,
        allows,
        denies,
        domains: domains.into_iter().map(|(name, rules)| Dependency { name, rules }).collect(),
        cidrs: cidrs.into_iter().map(|(net, rules)| Dependency { name: net.to_string(), rules }).collect(),
    }
}

/// The registrable domain (public suffix + one label, by the Public Suffix List) a host pattern
/// is under: `stripe.com` for `api.stripe.com` and `*.stripe.com`; a name that has none (a bare
/// public suffix or single label) stands for itself.
pub fn registrable_domain(host: &HostPattern) -> &str {
    let name = match host {
        HostPattern::Exact(name) | HostPattern::Wildcard(name) => name.as_str(),
    };
    psl::domain_str(name).unwrap_or(name)
}

/// A column of the rule table, the same in every face: its key (the JSON field name, the CSV
/// header, the HTML `#sort=` name), its title, and its text.
struct Column {
    key: &'static str,
    title: &'static str,
    numeric: bool,
    text: fn(&Row) -> String,
    /// What the column sorts by in HTML when it is not its text (`never` before any date).
    sort: Option<fn(&Row) -> String>,
}

const fn column(key: &'static str, title: &'static str, text: fn(&Row) -> String) -> Column {
    Column { key, title, numeric: false, text, sort: None }
}

fn or_empty(text: &Option<String>) -> String {
    text.clone().unwrap_or_default()
}

/// The rule columns, then the usage columns.
const COLUMNS: [Column; 16] = [
    column("service", "Service", |r| r.service.clone()),
    column("owner", "Owner", |r| or_empty(&r.owner)),
    column("mode", "Mode", |r| r.mode.map(|m| m.as_str().to_string()).unwrap_or_default()),
    column("identities", "Identities", |r| r.identities.join(" ")),
    column("group", "Group", |r| or_empty(&r.group)),
    column("action", "Action", |r| r.action_str().to_string()),
    column("destination", "Destination", |r| r.destination.clone()),
    column("kind", "Kind", |r| r.kind.as_str().to_string()),
    column("ports", "Ports", Row::ports_text),
    column("protocols", "Protocols", Row::protocols_text),
    column("justification", "Justification", |r| or_empty(&r.justification)),
    column("expires", "Expires", |r| or_empty(&r.expires)),
    column("ruleId", "Rule", |r| r.rule_id.clone()),
    column("location", "Location", |r| r.location.clone()),
    Column {
        key: "hits",
        title: "Hits",
        numeric: true,
        text: |r| r.usage.as_ref().map(|u| u.hits.to_string()).unwrap_or_default(),
        sort: None,
    },
    Column {
        key: "lastSeen",
        title: "Last seen",
        numeric: false,
        text: |r| r.usage.as_ref().map(RowUsage::last_seen_text).unwrap_or_default(),
        sort: Some(|r| r.usage.as_ref().and_then(|u| u.last_seen.clone()).unwrap_or_default()),
    },
];
const USAGE_COLUMNS: usize = 2;

/// The columns `matrix` shows: the usage ones only when it has hits.
fn columns(matrix: &Matrix) -> &'static [Column] {
    match matrix.hits {
        Some(_) => &COLUMNS,
        None => &COLUMNS[..COLUMNS.len() - USAGE_COLUMNS],
    }
}

impl Row {
    pub fn action_str(&self) -> &'static str {
        match self.action {
            Action::Allow => "allow",
            Action::Deny => "deny",
        }
    }

    /// `443 8443`, or `any`.
    pub fn ports_text(&self) -> String {
        match &self.ports {
            Some(ports) if !ports.is_empty() => ports.iter().map(u16::to_string).collect::<Vec<_>>().join(" "),
            _ => "any".to_string(),
        }
    }

    /// `https tls`, or `any`.
    pub fn protocols_text(&self) -> String {
        if self.protocols.is_empty() {
            return "any".to_string();
        }
        self.protocols.iter().map(|p| p.as_str()).collect::<Vec<_>>().join(" ")
    }
}

impl RowUsage {
    /// RFC 3339, or `never`.
    pub fn last_seen_text(&self) -> String {
        self.last_seen.clone().unwrap_or_else(|| "never".to_string())
    }
}

/// `hits from 12 of 40 flow(s) last seen within 30d`, or why there are none.
fn hits_sentence(matrix: &Matrix) -> String {
    match &matrix.hits {
        None => "not included (no --audit-log or --server)".to_string(),
        Some(h) => format!(
            "from {} of {} flow(s) read, those last seen {}",
            h.flows_in_window,
            h.flows,
            h.window.as_ref().map_or_else(|| "at any time".to_string(), |w| format!("within {w}"))
        ),
    }
}
