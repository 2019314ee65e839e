//! The compiled destination matcher: the part of the hot path whose cost must not grow with policy.
//!
//! * Hosts: one reversed-label trie for the whole policy (`com` -> `stripe` -> `api`), shared by all
//!   services. A lookup walks the request host's labels once (cost ~ label count) and then asks one
//!   hash map, per visited node, for the rules a given rule table has there.
//! * CIDRs: rules are keyed by (table, prefix length, masked address), so an IP is matched with one
//!   hash lookup per distinct prefix length the table uses (at most 33 for IPv4), not per rule.
//!
//! A *rule table* is one ordered list of rules with one action: the mesh-wide denies, a service's
//! denies, a service's allows.

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

use super::fqdn::HostPattern;

mod names;

pub type RuleIdx = u32;
pub type TableId = u32;
type NodeId = u32;

const ROOT: NodeId = 0;

/// What a candidate rule still has to satisfy once its destination matched.
#[derive(Debug, Clone)]
pub struct RuleConstraints {
    /// `None`: any port.
    pub ports: Option<Box<[u16]>>,
    /// Bit set of `Protocol::bit()`; 0 means any protocol.
    pub protocols: u8,
    /// Unix seconds from which the rule no longer matches; `i64::MAX` if it never expires.
    pub expires_at: i64,
}

/// Why a rule whose destination matched did not decide (reported as a near miss on denies).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Miss {
    Port,
    Protocol,
    Expired,
}

impl RuleConstraints {
    pub fn check(&self, port: u16, protocol_bit: u8, now: i64) -> Result<(), Miss> {
        if let Some(ports) = &self.ports
            && !ports.contains(&port)
        {
            return Err(Miss::Port);
        }
        if self.protocols != 0 && self.protocols & protocol_bit == 0 {
            return Err(Miss::Protocol);
        }
        if now >= self.expires_at {
            return Err(Miss::Expired);
        }
        Ok(())
    }
}

#[derive(Debug, Default)]
struct TableShape {
    /// Rules with no destination (a deny on ports alone): they match every host and IP.
    any: Vec<RuleIdx>,
    /// Distinct CIDR prefix lengths used by the table, longest first (most specific wins).
    v4_lens: Vec<u8>,
    v6_lens: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct HostKey {
    table: TableId,
    node: NodeId,
    wildcard: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct CidrKey {
    table: TableId,
    v6: bool,
    len: u8,
    addr: u128,
}

/// The whole policy's destination index. Built once per policy version; read-only afterwards.
#[derive(Debug, Default)]
pub struct Matcher {
    /// Trie nodes: children by label. Node 0 is the root (the empty suffix).
    nodes: Vec<FxHashMap<Box<str>, NodeId>>,
    tables: Vec<TableShape>,
    hosts: FxHashMap<HostKey, Vec<RuleIdx>>,
    cidrs: FxHashMap<CidrKey, Vec<RuleIdx>>,
    pub constraints: Vec<RuleConstraints>,
    /// (table, node) pairs at or above a host rule of the table: the zones its names live in (DNS
    /// SOA/NS queries, `names`). Empty unless a DnsFirewall asked for them.
    zones: rustc_hash::FxHashSet<(TableId, NodeId)>,
}

/// A destination as the matcher sees it.
#[derive(Debug, Clone, Copy)]
pub enum Target<'a> {
    Name(&'a str),
    Ip(IpAddr),
}

/// The trie nodes a host name reaches: the last one is an exact match only if `complete`.
pub struct HostPath {
    nodes: smallvec::SmallVec<[NodeId; 8]>,
    complete: bool,
}

/// The first rule of a table that matched, or the first near miss seen on the way.
#[derive(Debug, Default, Clone, Copy)]
pub struct TableResult {
    pub hit: Option<RuleIdx>,
    pub near_miss: Option<(RuleIdx, Miss)>,
}

impl Matcher {
    pub fn new() -> Self {
        Matcher { nodes: vec![FxHashMap::default()], ..Default::default() }
    }

    pub fn add_table(&mut self) -> TableId {
        self.tables.push(TableShape::default());
        (self.tables.len() - 1) as TableId
    }

    fn add_rule(&mut self, constraints: RuleConstraints) -> RuleIdx {
        self.constraints.push(constraints);
        (self.constraints.len() - 1) as RuleIdx
    }

    pub fn add_host(&mut self, table: TableId, pattern: &HostPattern, c: RuleConstraints) -> RuleIdx {
        let rule = self.add_rule(c);
        let mut node = ROOT;
        for label in pattern.anchor().rsplit('.') {
            node = match self.nodes[node as usize].get(label) {
                Some(&child) => child,
                None => {
                    let child = self.nodes.len() as NodeId;
                    self.nodes.push(FxHashMap::default());
                    self.nodes[node as usize].insert(label.into(), child);
                    child
                }
            };
        }
        let wildcard = matches!(pattern, HostPattern::Wildcard(_));
        self.hosts.entry(HostKey { table, node, wildcard }).or_default().push(rule);
        rule
    }

    /// Adds a CIDR rule. It is keyed under the CIDR and under the IPv4 networks whose embedded
    /// IPv6 forms it holds (`addr::ipv4_images`), because requests are matched in canonical form.
    pub fn add_cidr(&mut self, table: TableId, net: IpNet, c: RuleConstraints) -> RuleIdx {
        let rule = self.add_rule(c);
        let images = super::addr::ipv4_images(net).into_iter().map(IpNet::V4);
        for net in std::iter::once(net).chain(images) {
            self.key_cidr(table, net, rule);
        }
        rule
    }

    fn key_cidr(&mut self, table: TableId, net: IpNet, rule: RuleIdx) {
        let (v6, len, addr) = cidr_parts(net);
        let lens = if v6 { &mut self.tables[table as usize].v6_lens } else { &mut self.tables[table as usize].v4_lens };
        if !lens.contains(&len) {
            lens.push(len);
            lens.sort_unstable_by(|a, b| b.cmp(a));
        }
        let rules = self.cidrs.entry(CidrKey { table, v6, len, addr }).or_default();
        if !rules.contains(&rule) {
            rules.push(rule);
        }
    }

    pub fn add_any(&mut self, table: TableId, c: RuleConstraints) -> RuleIdx {
        let rule = self.add_rule(c);
        self.tables[table as usize].any.push(rule);
        rule
    }

    /// Walks the trie along `name`'s labels, right to left. Done once per check, shared by tables.
    pub fn host_path(&self, name: &str) -> HostPath {
        let mut nodes = smallvec::SmallVec::new();
        let mut node = ROOT;
        let mut complete = true;
        for label in name.rsplit('.') {
            match self.nodes[node as usize].get(label) {
                Some(&child) => {
                    node = child;
                    nodes.push(child);
                }
                None => {
                    complete = false;
                    break;
                }
            }
        }
        HostPath { nodes, complete }
    }

    /// The most specific rule of `table` that matches: an exact host before the deepest wildcard
    /// before shallower ones (or the longest CIDR prefix), then destination-less rules; within one
    /// destination, file order.
    pub fn lookup(&self, table: TableId, target: &TargetPath, port: u16, proto_bit: u8, now: i64) -> TableResult {
        let mut result = TableResult::default();
        let try_rules = |rules: &[RuleIdx], result: &mut TableResult| {
            for &rule in rules {
                match self.constraints[rule as usize].check(port, proto_bit, now) {
                    Ok(()) => {
                        result.hit = Some(rule);
                        return true;
                    }
                    Err(miss) => {
                        result.near_miss.get_or_insert((rule, miss));
                    }
                }
            }
            false
        };
        match target {
            TargetPath::Name(path) => {
                let n = path.nodes.len();
                for (depth, &node) in path.nodes.iter().enumerate().rev() {
                    // The deepest node of a complete walk is the name itself: exact rules only.
                    // Every node above it leaves at least one label uncovered: wildcard rules.
                    let wildcard = !(path.complete && depth + 1 == n);
                    if let Some(rules) = self.hosts.get(&HostKey { table, node, wildcard })
                        && try_rules(rules, &mut result)
                    {
                        return result;
                    }
                }
            }
            TargetPath::Ip(ip) => {
                let shape = &self.tables[table as usize];
                let (v6, lens, bits) = match ip {
                    IpAddr::V4(v4) => (false, &shape.v4_lens, u32::from(*v4) as u128),
                    IpAddr::V6(v6) => (true, &shape.v6_lens, u128::from(*v6)),
                };
                let width = if v6 { 128 } else { 32 };
                for &len in lens {
                    let addr = mask(bits, len, width);
                    if let Some(rules) = self.cidrs.get(&CidrKey { table, v6, len, addr })
                        && try_rules(rules, &mut result)
                    {
                        return result;
                    }
                }
            }
        }
        try_rules(&self.tables[table as usize].any, &mut result);
        result
    }

    /// Prepares a target for `lookup`: the trie walk is done here, once.
    pub fn target_path(&self, target: Target<'_>) -> TargetPath {
        match target {
            Target::Name(name) => TargetPath::Name(self.host_path(name)),
            Target::Ip(ip) => TargetPath::Ip(ip),
        }
    }
}

/// A target with its trie walk already done.
pub enum TargetPath {
    Name(HostPath),
    Ip(IpAddr),
}

fn mask(bits: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        return 0;
    }
    let keep = u128::MAX << (width - len);
    let keep = if width == 32 { keep & 0xffff_ffff } else { keep };
    bits & keep
}

fn cidr_parts(net: IpNet) -> (bool, u8, u128) {
    match net {
        IpNet::V4(n) => (false, n.prefix_len(), mask(u32::from(n.network()) as u128, n.prefix_len(), 32)),
        IpNet::V6(n) => (true, n.prefix_len(), mask(u128::from(n.network()), n.prefix_len(), 128)),
    }
}
