//! Typed documents -> `CompiledPolicy` (phase two): every semantic check, each error at its
//! `FILE:LINE:COL`, then the matcher and identity index the hot path uses.

use std::collections::HashMap;
use std::sync::Arc;

use ipnet::IpNet;
use serde_saphyr::Spanned;

use super::compiled::{Action, Canary, CompiledPolicy, GroupInfo, RollbackGuard, RuleInfo, ServiceIdx, ServiceInfo};
use super::diagnostic::{Diagnostic, Diagnostics, SourceLoc};
use super::fqdn::HostPattern;
use super::load::{Located, ParsedDocs, parse_documents};
use super::matcher::{Matcher, RuleConstraints, TableId};
use super::model::{DestinationGroupDoc, RollbackGuardDoc, RuleDoc, ServicePolicyDoc};
use super::source::PolicySource;
use super::terms::{Mode, Protocol, TunnelTls};
use crate::identity::{IdentityIndex, IdentityPattern};

/// Compiles a policy set. `now` (unix seconds) only decides which `expires` dates earn a warning;
/// expiry itself is checked at decision time.
pub fn compile(source: &PolicySource, now: i64) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    compile_with(source, now, Placeholders::Reject)
}

/// What a `TODO` justification is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placeholders {
    /// An error: such a policy is not reviewed yet and must not be served (`serve`, `validate`).
    Reject,
    /// A warning: the review commands (`learn`, `discover`, `plan`) read a policy mid-review,
    /// with the allows `learn` wrote still waiting for their reasons.
    Warn,
}

/// `compile`, choosing what a placeholder justification is.
pub fn compile_with(
    source: &PolicySource,
    now: i64,
    placeholders: Placeholders,
) -> Result<CompiledPolicy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::default();
    let docs = parse_documents(source, &mut diags);
    let mut compiler = Compiler::new(source, now, &mut diags);
    compiler.placeholders = placeholders;
    let policy = compiler.run(docs);
    if diags.has_errors() {
        return Err(diags.into_sorted());
    }
    let mut policy = policy.expect("a compiler that reported no error produced a policy");
    policy.warnings = diags.into_sorted();
    Ok(policy)
}

/// A rule's destination after validation.
enum Dest {
    Host(HostPattern),
    Cidr(IpNet),
    Group(String, SourceLoc),
    Any,
}

/// A validated rule, not yet placed in a table.
struct CheckedRule {
    dest: Dest,
    constraints: RuleConstraints,
    justification: Option<String>,
    ports: Option<Vec<u16>>,
    protocols: Vec<Protocol>,
    expires: Option<String>,
    expires_loc: Option<SourceLoc>,
    loc: SourceLoc,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RuleContext {
    Allow,
    Deny,
    GroupDestination,
}

struct CheckedGroup {
    info: GroupInfo,
    destinations: Vec<CheckedRule>,
}

/// What a service inherits from MeshDefaults when it does not say.
struct ServiceDefaults {
    mode: Mode,
    canary: Option<u8>,
    tunnel_tls: TunnelTls,
}

struct Compiler<'d> {
    /// The policy version (a content hash of the source).
    version: String,
    origin: Arc<str>,
    now: i64,
    diags: &'d mut Diagnostics,
    matcher: Matcher,
    rules: Vec<RuleInfo>,
    placeholders: Placeholders,
    /// The service whose rules are being placed (`None`: mesh-wide denies).
    current_service: Option<ServiceIdx>,
}

impl<'d> Compiler<'d> {
    fn new(source: &PolicySource, now: i64, diags: &'d mut Diagnostics) -> Self {
        let origin: Arc<str> = source.origin.as_str().into();
        Compiler {
            version: source.version(),
            origin,
            now,
            diags,
            matcher: Matcher::new(),
            rules: Vec::new(),
            placeholders: Placeholders::Reject,
            current_service: None,
        }
    }

    fn run(mut self, docs: ParsedDocs) -> Option<CompiledPolicy> {
        // MeshDefaults: exactly one.
        let mut mesh_iter = docs.mesh_defaults.into_iter();
        let Some(mesh) = mesh_iter.next() else {
            if docs.mesh_defaults_failed {
                return None; // its parse error is the one to fix
            }
            self.diags.error(
                SourceLoc::new(&self.origin, 0, 0),
                "no MeshDefaults document: a policy set needs exactly one (trustDomain, mode, mesh-wide denies)",
            );
            return None;
        };
        for extra in mesh_iter {
            self.diags.error(extra.loc, format!("a second MeshDefaults document (the first is at {})", mesh.loc));
        }
        let trust_domain = match spiffe::TrustDomain::new(&mesh.doc.trust_domain.value) {
            Ok(td) => td.as_str().to_string(),
            Err(e) => {
                self.diags
                    .error(SourceLoc::of(&mesh.file, &mesh.doc.trust_domain), format!("invalid trustDomain: {e}"));
                String::new()
            }
        };
        let defaults = ServiceDefaults {
            mode: mesh.doc.mode.as_ref().map(|m| m.value).unwrap_or(Mode::Enforce),
            canary: self.canary_percent(&mesh.file, mesh.doc.canary_percent.as_ref()),
            tunnel_tls: mesh.doc.tunnel_tls.unwrap_or_default(),
        };
        if defaults.mode == Mode::Canary && defaults.canary.is_none() {
            self.diags.error(mesh.loc.clone(), "mode canary needs canaryPercent (0..=100)");
        }

        let groups = self.check_groups(docs.groups);
        let trust_xfcc = mesh.doc.trust_forwarded_client_cert.as_ref().is_some_and(|t| t.value);
        let (gateways, external_gateways) = super::gateway::compile_gateways(docs.gateways, trust_xfcc, self.diags);

        // Mesh-wide denies: the floor under every service.
        let mesh_deny_table = self.matcher.add_table();
        let mut mesh_deny_rules = 0;
        for (i, rule) in mesh.doc.deny.iter().enumerate() {
            if let Some(checked) = self.check_rule(&mesh.file, rule, RuleContext::Deny) {
                mesh_deny_rules +=
                    self.place(mesh_deny_table, Action::Deny, &format!("mesh/deny/{i}"), checked, &groups);
            }
        }

        let mut identities = IdentityIndex::default();
        let mut claims: Vec<(IdentityPattern, usize, SourceLoc)> = Vec::new();
        let mut exact_principals = rustc_hash::FxHashMap::default();
        let mut services: Vec<ServiceInfo> = Vec::new();
        let mut by_name: HashMap<String, SourceLoc> = HashMap::new();
        for svc in docs.services {
            let index = services.len();
            let idx = ServiceIdx::new(index);
            if let Some(info) = self.check_service(&svc, idx, &trust_domain, &defaults, &groups, &mut by_name) {
                for id in &svc.doc.identities {
                    let loc = SourceLoc::of(&svc.file, id);
                    let Ok(pattern) = IdentityPattern::parse(id.value.trim()) else { continue };
                    if pattern.trust_domain() != trust_domain {
                        continue; // reported by check_service
                    }
                    match identities.insert(&pattern, index as u32) {
                        Ok(()) => {
                            if let IdentityPattern::Exact { .. } = pattern {
                                exact_principals.insert(pattern.to_string().into_boxed_str(), index as u32);
                            }
                            claims.push((pattern, index, loc))
                        }
                        Err(owner) if owner as usize == index => {
                            self.diags.warning(loc, format!("identity `{}` is listed twice", id.value));
                        }
                        Err(owner) => self.diags.error(
                            loc,
                            format!(
                                "identity `{}` is already claimed by service `{}` ({}): an identity belongs to one service",
                                id.value, services[owner as usize].name, services[owner as usize].loc
                            ),
                        ),
                    }
                }
                services.push(info);
            }
        }
        self.warn_overlapping_claims(&claims, &services);
        let dns = super::dns::compile_dns_firewall(docs.dns_firewalls, &services, &mut self.matcher, self.diags);
        super::gateway::firewall_address_needs_an_ip(&gateways, dns.as_ref(), self.diags);
        let service_by_name = services.iter().map(|s| (s.name.clone(), s.index)).collect();
        let admin_identities = self.check_admin_identities(&mesh.file, &mesh.doc.admin_identities);

        Some(CompiledPolicy {
            version: self.version,
            origin: self.origin.to_string(),
            trust_domain,
            default_mode: defaults.mode,
            trust_forwarded_client_cert: trust_xfcc,
            unclaimed_identities: mesh.doc.unclaimed_identities.as_ref().map(|u| u.value).unwrap_or_default(),
            mesh_loc: mesh.loc.clone(),
            trust_forwarded_client_cert_loc: mesh
                .doc
                .trust_forwarded_client_cert
                .as_ref()
                .map(|t| SourceLoc::of(&mesh.file, t)),
            unclaimed_identities_loc: mesh.doc.unclaimed_identities.as_ref().map(|u| SourceLoc::of(&mesh.file, u)),
            admin_identities,
            detection: super::detection::compile(mesh.doc.detection.as_ref(), &mesh.file, self.diags),
            services,
            groups: sorted_by_name(groups.into_values().map(|g| g.info).collect()),
            rule_hits: super::hits::RuleHits::new(self.rules.len()),
            compiled_unix: self.now,
            rules: self.rules,
            mesh_deny_table,
            mesh_deny_rules,
            gateways,
            external_gateways,
            dns,
            warnings: Vec::new(),
            identities,
            exact_principals,
            service_by_name,
            matcher: self.matcher,
        })
    }

    fn canary_percent(&mut self, file: &Arc<str>, value: Option<&Spanned<i64>>) -> Option<u8> {
        self.percent(file, value?, "canaryPercent")
    }

    fn percent(&mut self, file: &Arc<str>, v: &Spanned<i64>, what: &str) -> Option<u8> {
        match u8::try_from(v.value) {
            Ok(p) if p <= 100 => Some(p),
            _ => {
                self.diags.error(SourceLoc::of(file, v), format!("{what} {} is outside 0..=100", v.value));
                None
            }
        }
    }

    fn rollback_guard(&mut self, file: &Arc<str>, g: &Spanned<RollbackGuardDoc>, mode: Mode) -> Option<RollbackGuard> {
        if mode != Mode::Canary {
            self.diags.warning(SourceLoc::of(file, g), format!("rollbackGuard is ignored: service mode is {mode}"));
        }
        let g_doc = &g.value;
        let rate = &g_doc.max_deny_rate;
        if !(rate.value > 0.0 && rate.value <= 1.0) {
            self.diags.error(SourceLoc::of(file, rate), format!("maxDenyRate {} is outside (0, 1]", rate.value));
            return None;
        }
        let mut positive = |v: Option<&Spanned<i64>>, default: u64, what: &str| match v {
            None => Some(default),
            Some(s) if s.value > 0 => Some(s.value as u64),
            Some(s) => {
                self.diags.error(SourceLoc::of(file, s), format!("{what} {} must be positive", s.value));
                None
            }
        };
        let window_seconds = positive(g_doc.window_seconds.as_ref(), 300, "windowSeconds")?;
        let min_checks = positive(g_doc.min_checks.as_ref(), 20, "minChecks")?;
        Some(RollbackGuard { max_deny_rate: rate.value, window_seconds, min_checks })
    }

    fn check_groups(&mut self, docs: Vec<Located<DestinationGroupDoc>>) -> HashMap<String, CheckedGroup> {
        let mut groups: HashMap<String, CheckedGroup> = HashMap::new();
        for g in docs {
            let name_loc = SourceLoc::of(&g.file, &g.doc.name);
            let name = g.doc.name.value.trim().to_string();
            if name.is_empty() {
                self.diags.error(name_loc, "a DestinationGroup needs a name");
                continue;
            }
            if let Some(existing) = groups.get(&name) {
                self.diags
                    .error(name_loc, format!("DestinationGroup `{name}` is already defined at {}", existing.info.loc));
                continue;
            }
            let justification = match self.justification(&g.file, g.doc.justification.as_ref()) {
                Some(j) => j,
                None => {
                    self.diags.error(
                        g.loc.clone(),
                        format!("DestinationGroup `{name}` has no justification: say why services may reach these destinations"),
                    );
                    String::new()
                }
            };
            if g.doc.destinations.is_empty() {
                self.diags.error(g.loc.clone(), format!("DestinationGroup `{name}` has no destinations"));
            }
            let destinations: Vec<CheckedRule> = g
                .doc
                .destinations
                .iter()
                .filter_map(|d| self.check_rule(&g.file, d, RuleContext::GroupDestination))
                .collect();
            let info = GroupInfo {
                name: name.clone(),
                justification,
                description: g.doc.description.clone(),
                destinations: destinations.len(),
                loc: name_loc,
            };
            groups.insert(name, CheckedGroup { info, destinations });
        }
        groups
    }

    fn check_service(
        &mut self,
        svc: &Located<ServicePolicyDoc>,
        index: ServiceIdx,
        trust_domain: &str,
        defaults: &ServiceDefaults,
        groups: &HashMap<String, CheckedGroup>,
        by_name: &mut HashMap<String, SourceLoc>,
    ) -> Option<ServiceInfo> {
        let file = &svc.file;
        let doc = &svc.doc;
        let name_loc = SourceLoc::of(file, &doc.service);
        let name = doc.service.value.trim().to_string();
        if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c == '/') {
            self.diags.error(name_loc, "service name must be non-empty, without spaces or '/'");
            return None;
        }
        if let Some(first) = by_name.get(&name) {
            self.diags.error(name_loc, format!("service `{name}` is already defined at {first}"));
            return None;
        }
        by_name.insert(name.clone(), name_loc.clone());

        if doc.identities.is_empty() {
            self.diags
                .error(name_loc.clone(), format!("service `{name}` has no identities: nothing could ever use it"));
        }
        for id in &doc.identities {
            match IdentityPattern::parse(id.value.trim()) {
                Err(e) => self.diags.error(SourceLoc::of(file, id), e),
                Ok(p) if p.trust_domain() != trust_domain => self.diags.error(
                    SourceLoc::of(file, id),
                    format!(
                        "identity is in trust domain `{}`, but the mesh accepts `{trust_domain}`",
                        p.trust_domain()
                    ),
                ),
                Ok(_) => {}
            }
        }

        let mode = doc.mode.as_ref().map(|m| m.value).unwrap_or(defaults.mode);
        let own_canary = self.canary_percent(file, doc.canary_percent.as_ref());
        if let Some(cp) = &doc.canary_percent
            && mode != Mode::Canary
        {
            self.diags.warning(SourceLoc::of(file, cp), format!("canaryPercent is ignored: service mode is {mode}"));
        }
        let workload_percent =
            doc.canary_workload_percent.as_ref().and_then(|v| self.percent(file, v, "canaryWorkloadPercent"));
        let workloads: Vec<String> = doc.canary_workloads.iter().map(|w| w.value.trim().to_string()).collect();
        for (w, raw) in workloads.iter().zip(&doc.canary_workloads) {
            if !doc.identities.iter().any(|i| i.value.trim() == w) {
                self.diags.error(
                    SourceLoc::of(file, raw),
                    format!("canary workload `{w}` is not one of the service's identities"),
                );
            }
        }
        let by_workload = !workloads.is_empty() || workload_percent.is_some();
        if by_workload && mode != Mode::Canary {
            self.diags.warning(
                svc.loc.clone(),
                format!("canaryWorkloads/canaryWorkloadPercent are ignored: service mode is {mode}"),
            );
        }
        // A service that selects by workload does not inherit the mesh's per-request share.
        let request_percent = if by_workload { own_canary } else { own_canary.or(defaults.canary) };
        if mode == Mode::Canary && request_percent.is_none() && !by_workload && doc.canary_percent.is_none() {
            self.diags.error(
                svc.loc.clone(),
                "mode canary needs canaryPercent (0..=100), canaryWorkloads or canaryWorkloadPercent",
            );
        }
        let rollback_guard = doc.rollback_guard.as_ref().and_then(|g| self.rollback_guard(file, g, mode));

        let since = doc.since.as_ref().and_then(|s| match date_start(s.value.trim()) {
            Ok(_) => Some(s.value.trim().to_string()),
            Err(()) => {
                self.diags.error(
                    SourceLoc::of(file, s),
                    format!("invalid since `{}`: expected a date YYYY-MM-DD", s.value.trim()),
                );
                None
            }
        });
        self.current_service = Some(index);
        let deny_table = self.matcher.add_table();
        let allow_table = self.matcher.add_table();
        let (mut allow_rules, mut deny_rules) = (0, 0);
        for (i, rule) in doc.deny.iter().enumerate() {
            if let Some(c) = self.check_rule(file, rule, RuleContext::Deny) {
                deny_rules += self.place(deny_table, Action::Deny, &format!("{name}/deny/{i}"), c, groups);
            }
        }
        for (i, rule) in doc.allow.iter().enumerate() {
            if let Some(c) = self.check_rule(file, rule, RuleContext::Allow) {
                allow_rules += self.place(allow_table, Action::Allow, &format!("{name}/allow/{i}"), c, groups);
            }
        }
        Some(ServiceInfo {
            index,
            name,
            owner: doc.owner.clone(),
            description: doc.description.clone(),
            mode,
            canary: Canary { request_percent, workloads, workload_percent },
            rollback_guard,
            tunnel_tls: doc.tunnel_tls.unwrap_or(defaults.tunnel_tls),
            identities: doc.identities.iter().map(|i| i.value.trim().to_string()).collect(),
            since,
            loc: svc.loc.clone(),
            name_loc,
            mode_loc: doc.mode.as_ref().map(|m| SourceLoc::of(file, m)),
            since_loc: doc.since.as_ref().map(|s| SourceLoc::of(file, s)),
            allow_rules,
            deny_rules,
            allow_table,
            deny_table,
        })
    }

    /// Checks one rule's fields for its context. `None` when it has errors (already reported).
    fn check_rule(&mut self, file: &Arc<str>, rule: &Spanned<RuleDoc>, ctx: RuleContext) -> Option<CheckedRule> {
        let loc = SourceLoc::of(file, rule);
        let r = &rule.value;
        let errors_before = self.diags.error_count();
        let named = [r.host.is_some(), r.cidr.is_some(), r.group.is_some()].iter().filter(|b| **b).count();
        if named > 1 {
            self.diags.error(loc.clone(), "a rule names one destination: host, cidr or group, not several");
        }
        let dest = if let Some(h) = &r.host {
            match HostPattern::parse(&h.value) {
                Ok(p) => Dest::Host(p),
                Err(e) => {
                    self.diags.error(SourceLoc::of(file, h), e.to_string());
                    Dest::Any
                }
            }
        } else if let Some(c) = &r.cidr {
            match parse_cidr(c.value.trim()) {
                Ok(net) => {
                    if ctx != RuleContext::Deny {
                        self.warn_ipv4_images(SourceLoc::of(file, c), net);
                    }
                    Dest::Cidr(net)
                }
                Err(e) => {
                    self.diags.error(SourceLoc::of(file, c), e);
                    Dest::Any
                }
            }
        } else if let Some(g) = &r.group {
            if ctx == RuleContext::GroupDestination {
                self.diags.error(SourceLoc::of(file, g), "a group destination cannot name another group");
            }
            if r.ports.is_some() || r.protocols.is_some() {
                self.diags
                    .error(loc.clone(), "ports and protocols of a group come from its destinations: set them there");
            }
            Dest::Group(g.value.trim().to_string(), SourceLoc::of(file, g))
        } else {
            match ctx {
                RuleContext::Allow => self.diags.error(loc.clone(), "an allow must name host, cidr or group"),
                RuleContext::GroupDestination => {
                    self.diags.error(loc.clone(), "a group destination must name host or cidr")
                }
                RuleContext::Deny if r.ports.is_none() && r.protocols.is_none() => self.diags.error(
                    loc.clone(),
                    "a deny must name host, cidr, group, ports or protocols: an empty deny would deny everything",
                ),
                RuleContext::Deny => {}
            }
            Dest::Any
        };

        let justification = self.justification(file, r.justification.as_ref());
        let is_group = matches!(dest, Dest::Group(..));
        if ctx == RuleContext::Allow && justification.is_none() && !is_group {
            self.diags.error(
                loc.clone(),
                "allow has no justification: say why this destination is needed (an allow nobody can explain is not reviewable)",
            );
        }

        let ports = r.ports.as_ref().map(|ports| {
            if ports.is_empty() {
                self.diags.error(loc.clone(), "an empty ports list matches nothing: omit ports to match any port");
            }
            let mut out = Vec::with_capacity(ports.len());
            for p in ports {
                match u16::try_from(p.value) {
                    Ok(port) if port > 0 => out.push(port),
                    _ => {
                        self.diags.error(SourceLoc::of(file, p), format!("port {} is out of range 1..=65535", p.value))
                    }
                }
            }
            out.sort_unstable();
            out.dedup();
            out
        });
        let protocols = r.protocols.clone().unwrap_or_default();
        if r.protocols.as_ref().is_some_and(|p| p.is_empty()) {
            self.diags.error(loc.clone(), "an empty protocols list matches nothing: omit protocols to match any");
        }

        let mut expires_at = i64::MAX;
        if let Some(e) = &r.expires {
            match expiry_deadline(e.value.trim()) {
                Ok(deadline) => {
                    expires_at = deadline;
                    if deadline <= self.now {
                        self.diags.warning(
                            SourceLoc::of(file, e),
                            format!(
                                "this rule expired on {}: it no longer matches; remove or renew it",
                                e.value.trim()
                            ),
                        );
                    }
                }
                Err(msg) => self.diags.error(SourceLoc::of(file, e), msg),
            }
        }

        if self.diags.error_count() != errors_before {
            return None;
        }
        let constraints = RuleConstraints {
            ports: ports.clone().map(Vec::into_boxed_slice),
            protocols: protocols.iter().fold(0, |acc, p| acc | p.bit()),
            expires_at,
        };
        Some(CheckedRule {
            dest,
            constraints,
            justification,
            ports,
            protocols,
            expires: r.expires.as_ref().map(|e| e.value.trim().to_string()),
            expires_loc: r.expires.as_ref().map(|e| SourceLoc::of(file, e)),
            loc,
        })
    }

    /// A justification as written, trimmed; `None` when absent or blank (the caller decides whether
    /// one is required). A placeholder is an error at the value itself: `egressd learn` proposes
    /// allows justified `TODO: …` precisely so that review cannot pass them without a human
    /// writing the reason, so such a policy must not load, let alone be served.
    fn justification(&mut self, file: &Arc<str>, written: Option<&Spanned<String>>) -> Option<String> {
        let written = written?;
        let text = written.value.trim();
        if text.is_empty() {
            return None;
        }
        if is_placeholder(text) {
            let loc = SourceLoc::of(file, written);
            let message = "justification is a placeholder (`TODO...`): write why this destination is needed before this policy can be served";
            match self.placeholders {
                Placeholders::Reject => self.diags.error(loc, message),
                Placeholders::Warn => self.diags.warning(loc, message),
            }
        }
        Some(text.to_string())
    }

    /// Puts a checked rule (expanding a group reference) into `table`; returns how many rules it became.
    fn place(
        &mut self,
        table: TableId,
        action: Action,
        id: &str,
        rule: CheckedRule,
        groups: &HashMap<String, CheckedGroup>,
    ) -> usize {
        let service = self.current_service;
        match rule.dest {
            Dest::Group(name, name_loc) => {
                let Some(group) = groups.get(&name) else {
                    let mut known: Vec<&str> = groups.keys().map(String::as_str).collect();
                    known.sort_unstable();
                    self.diags
                        .error(name_loc, format!("unknown group `{name}` (defined groups: {})", known.join(", ")));
                    return 0;
                };
                for (j, d) in group.destinations.iter().enumerate() {
                    // The referencing rule's justification, if any, overrides the group's.
                    let justification = rule
                        .justification
                        .clone()
                        .or_else(|| d.justification.clone())
                        .or_else(|| Some(group.info.justification.clone()));
                    let info = |index| RuleInfo {
                        index,
                        id: format!("{id}/{name}/{j}"),
                        action,
                        loc: d.loc.clone(),
                        justification,
                        target: describe(&d.dest),
                        ports: d.ports.clone(),
                        protocols: d.protocols.clone(),
                        expires: rule.expires.clone().or_else(|| d.expires.clone()),
                        group: Some(name.clone()),
                        service,
                        group_ref_loc: Some(rule.loc.clone()),
                        host: host_of(&d.dest),
                        cidr: cidr_of(&d.dest),
                        expires_loc: rule.expires_loc.clone().or_else(|| d.expires_loc.clone()),
                    };
                    let mut constraints = d.constraints.clone();
                    constraints.expires_at = constraints.expires_at.min(rule.constraints.expires_at);
                    self.add(table, &d.dest, constraints, info);
                }
                group.destinations.len()
            }
            ref dest => {
                let info = |index| RuleInfo {
                    index,
                    id: id.to_string(),
                    action,
                    loc: rule.loc.clone(),
                    justification: rule.justification.clone(),
                    target: describe(dest),
                    ports: rule.ports.clone(),
                    protocols: rule.protocols.clone(),
                    expires: rule.expires.clone(),
                    group: None,
                    service,
                    group_ref_loc: None,
                    host: host_of(dest),
                    cidr: cidr_of(dest),
                    expires_loc: rule.expires_loc.clone(),
                };
                self.add(table, dest, rule.constraints.clone(), info);
                1
            }
        }
    }

    /// Adds a rule to the matcher and its description to `rules`, at the same index.
    fn add(&mut self, table: TableId, dest: &Dest, constraints: RuleConstraints, info: impl FnOnce(usize) -> RuleInfo) {
        let idx = match dest {
            Dest::Host(p) => self.matcher.add_host(table, p, constraints),
            Dest::Cidr(net) => self.matcher.add_cidr(table, *net, constraints),
            Dest::Any => self.matcher.add_any(table, constraints),
            Dest::Group(..) => unreachable!("groups are expanded by place()"),
        };
        debug_assert_eq!(idx as usize, self.rules.len());
        self.rules.push(info(idx as usize));
    }

    /// An IPv6 allow that holds embedded IPv4 addresses (`::/0`, `::ffff:0:0/96`) also allows
    /// those IPv4 addresses: requests are matched in canonical form (`addr`). Say so.
    fn warn_ipv4_images(&mut self, loc: SourceLoc, net: IpNet) {
        let images = super::addr::ipv4_images(net);
        if !images.is_empty() {
            let list = images.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(", ");
            self.diags.warning(
                loc,
                format!("`{net}` holds IPv4-mapped/NAT64/compatible addresses, so it also allows IPv4 {list}"),
            );
        }
    }

    /// MeshDefaults `adminIdentities`: exact SPIFFE IDs (a pattern would hand the admin API to
    /// every workload it matches), each once.
    fn check_admin_identities(&mut self, file: &Arc<str>, ids: &[Spanned<String>]) -> Vec<String> {
        let mut out: Vec<String> = Vec::with_capacity(ids.len());
        for id in ids {
            let loc = SourceLoc::of(file, id);
            match IdentityPattern::parse(id.value.trim()) {
                Ok(IdentityPattern::Exact { .. }) => {
                    let id = id.value.trim().to_string();
                    if out.contains(&id) {
                        self.diags.warning(loc, format!("admin identity `{id}` is listed twice"));
                    } else {
                        out.push(id);
                    }
                }
                Ok(_) => self
                    .diags
                    .error(loc, format!("admin identity `{}` must be one exact SPIFFE ID, not a pattern", id.value)),
                Err(e) => self.diags.error(loc, format!("admin identity: {e}")),
            }
        }
        out
    }

    /// Nested claims (`/ns/ci/*` and `/ns/ci/sa/deployer` in different services) are legal: the
    /// most specific claim wins. Say so, because a reviewer may not expect it.
    /// Warns about each claim inside another service's wildcard claim. Wildcard claims are
    /// indexed by path, so each claim looks up only its own ancestors (all pairs took 20 s on
    /// 10,000 services).
    fn warn_overlapping_claims(&mut self, claims: &[(IdentityPattern, usize, SourceLoc)], services: &[ServiceInfo]) {
        let mut wide_by_path: HashMap<&str, Vec<usize>> = HashMap::new();
        for (i, (wide, _, _)) in claims.iter().enumerate() {
            if let IdentityPattern::Prefix { path, .. } = wide {
                wide_by_path.entry(path.as_str()).or_default().push(i);
            }
        }
        for (narrow, narrow_svc, loc) in claims {
            let path = match narrow {
                IdentityPattern::Exact { path, .. } => path.clone(),
                IdentityPattern::Prefix { path, .. } => format!("{path}/x"),
            };
            let ancestors = path.match_indices('/').filter_map(|(i, _)| wide_by_path.get(&path[..i]));
            let mut wider: Vec<usize> = ancestors.flatten().copied().collect();
            wider.sort_unstable(); // in claim order, as written
            for (wide, wide_svc, _) in wider.into_iter().map(|i| &claims[i]) {
                if wide_svc != narrow_svc && wide != narrow && wide.covers(&path) {
                    self.diags.warning(
                        loc.clone(),
                        format!(
                            "`{narrow}` of service `{}` is inside `{wide}` of service `{}`: the more specific claim wins",
                            services[*narrow_svc].name, services[*wide_svc].name
                        ),
                    );
                }
            }
        }
    }
}

/// Whether a (trimmed) justification is a `TODO` placeholder: `TODO`, `todo: ask alice`,
/// `TODO(bob)`. The word must end there, so a reason that merely starts with those letters
/// (`Todoist webhooks`) is a reason.
fn is_placeholder(text: &str) -> bool {
    text.get(..4).is_some_and(|head| head.eq_ignore_ascii_case("todo"))
        && !text[4..].starts_with(|c: char| c.is_alphanumeric() || c == '_')
}

/// Groups in a stable order (a hash map's is not): by name.
fn sorted_by_name(mut groups: Vec<GroupInfo>) -> Vec<GroupInfo> {
    groups.sort_by(|a, b| a.name.cmp(&b.name));
    groups
}

fn host_of(dest: &Dest) -> Option<HostPattern> {
    match dest {
        Dest::Host(p) => Some(p.clone()),
        _ => None,
    }
}

fn cidr_of(dest: &Dest) -> Option<IpNet> {
    match dest {
        Dest::Cidr(n) => Some(*n),
        _ => None,
    }
}

fn describe(dest: &Dest) -> String {
    match dest {
        Dest::Host(p) => p.to_string(),
        Dest::Cidr(n) => n.to_string(),
        Dest::Group(g, _) => format!("group {g}"),
        Dest::Any => "any destination".to_string(),
    }
}

fn parse_cidr(raw: &str) -> Result<IpNet, String> {
    let net: IpNet = if raw.contains('/') {
        raw.parse().map_err(|_| format!("invalid CIDR `{raw}`: expected ADDRESS/PREFIX such as 10.20.0.0/16"))?
    } else {
        let ip: std::net::IpAddr =
            raw.parse().map_err(|_| format!("invalid CIDR `{raw}`: expected ADDRESS/PREFIX such as 10.20.0.0/16"))?;
        IpNet::from(ip)
    };
    if net.trunc() != net {
        return Err(format!("CIDR `{raw}` has host bits set: did you mean {}?", net.trunc()));
    }
    Ok(net)
}

/// `YYYY-MM-DD` -> its first second (UTC): `since:` dates.
fn date_start(raw: &str) -> Result<i64, ()> {
    let date: jiff::civil::Date = raw.parse().map_err(|_| ())?;
    Ok(date.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| ())?.timestamp().as_second())
}

/// `YYYY-MM-DD` -> the first second (UTC) after that day: an allow is good through its expiry date.
fn expiry_deadline(raw: &str) -> Result<i64, String> {
    let bad = || format!("invalid expires `{raw}`: expected a date YYYY-MM-DD");
    let date: jiff::civil::Date = raw.parse().map_err(|_| bad())?;
    let next = date.tomorrow().map_err(|_| bad())?;
    let ts = next.to_zoned(jiff::tz::TimeZone::UTC).map_err(|_| bad())?.timestamp();
    Ok(ts.as_second())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn todo_placeholders() {
        for placeholder in ["TODO", "todo", "TODO: why?", "Todo - ask the team", "TODO(alice)", "TODO…"] {
            assert!(is_placeholder(placeholder), "{placeholder}");
        }
        for reason in ["Todoist webhooks", "to do the payouts", "payouts; TODO: narrow", "TOD", "todo_list api"] {
            assert!(!is_placeholder(reason), "{reason}");
        }
    }

    #[test]
    fn cidr_parsing() {
        assert_eq!(parse_cidr("10.20.0.0/16").unwrap().to_string(), "10.20.0.0/16");
        assert_eq!(parse_cidr("10.20.1.5").unwrap().to_string(), "10.20.1.5/32");
        assert!(parse_cidr("10.20.1.0/16").unwrap_err().contains("did you mean 10.20.0.0/16"));
        assert!(parse_cidr("10.300.0.0/16").is_err());
        assert!(parse_cidr("fd00::/8").is_ok());
    }

    #[test]
    fn expiry_is_end_of_day_utc() {
        // 2027-06-30 is good through 23:59:59 UTC; 2027-07-01T00:00:00Z = 1814313600.
        assert_eq!(expiry_deadline("2027-06-30").unwrap(), 1_814_400_000);
        assert!(expiry_deadline("2027-02-30").is_err());
        assert!(expiry_deadline("next week").is_err());
    }
}
