//! Name-only lookups for the DNS firewall. A DNS query has a name and nothing else: no port, no
//! protocol. These walk the same trie as `lookup` (one walk, cost ~ labels) but let the caller say
//! which rules count (`admits`), and answer two questions `lookup` has no use for: the union of
//! many tables' host rules, and whether a name is the zone of some rule. Check decisions never
//! call them, so they cannot change what a Check decides.

use super::{HostKey, HostPath, Matcher, NodeId, ROOT, RuleConstraints, RuleIdx, TableId};

impl Matcher {
    /// A new table holding every host rule of `tables` (the same rules: no new `RuleIdx`), so a
    /// lookup in it finds a rule of whichever table has the name. One pass over the host index.
    pub fn union_of_hosts(&mut self, tables: &[TableId]) -> TableId {
        let union = self.add_table();
        let members: rustc_hash::FxHashSet<TableId> = tables.iter().copied().collect();
        let mut merged: rustc_hash::FxHashMap<HostKey, Vec<RuleIdx>> = rustc_hash::FxHashMap::default();
        for (key, rules) in self.hosts.iter().filter(|(k, _)| members.contains(&k.table)) {
            merged.entry(HostKey { table: union, ..*key }).or_default().extend(rules);
        }
        for (key, mut rules) in merged {
            // Lowest rule index first: file order across tables, whatever the hash map's order.
            rules.sort_unstable();
            rules.dedup();
            self.hosts.insert(key, rules);
        }
        union
    }

    /// Records, for each of `tables`, every trie node on the way to each of its host rules (the
    /// root excluded): the names whose zone holds a name the table has a rule for.
    pub fn index_zones(&mut self, tables: &[TableId]) {
        let mut parent = vec![ROOT; self.nodes.len()];
        for (node, children) in self.nodes.iter().enumerate() {
            for &child in children.values() {
                parent[child as usize] = node as NodeId;
            }
        }
        let members: rustc_hash::FxHashSet<TableId> = tables.iter().copied().collect();
        let anchors: Vec<(TableId, NodeId)> =
            self.hosts.keys().filter(|k| members.contains(&k.table)).map(|k| (k.table, k.node)).collect();
        for (table, mut node) in anchors {
            while node != ROOT && self.zones.insert((table, node)) {
                node = parent[node as usize];
            }
        }
    }

    /// The most specific host rule of `table` matching the walked name that `admits` accepts:
    /// exact before the deepest wildcard before shallower ones, then file order.
    pub fn lookup_name(
        &self,
        table: TableId,
        path: &HostPath,
        admits: impl Fn(&RuleConstraints) -> bool,
    ) -> Option<RuleIdx> {
        let n = path.nodes.len();
        for (depth, &node) in path.nodes.iter().enumerate().rev() {
            let wildcard = !(path.complete && depth + 1 == n);
            if let Some(rules) = self.hosts.get(&HostKey { table, node, wildcard })
                && let Some(&rule) = rules.iter().find(|&&r| admits(&self.constraints[r as usize]))
            {
                return Some(rule);
            }
        }
        None
    }

    /// Whether the walked name is a rule's name of `table` or one of its ancestors (`index_zones`).
    pub fn is_zone(&self, table: TableId, path: &HostPath) -> bool {
        path.complete && path.nodes.last().is_some_and(|&node| self.zones.contains(&(table, node)))
    }
}
