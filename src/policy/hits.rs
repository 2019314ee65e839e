//! Live rule hits: how often each compiled rule decided a Check, and when first and last.
//!
//! One slot per rule, indexed by the rule's position, so the Check path counts a hit with one
//! relaxed `fetch_add` and no lookup, lock or allocation. First and last hit are unix seconds:
//! the last hit is written only when the second changed, so a hot rule's slot is not rewritten
//! on every Check. The slots belong to one compiled policy: the counts restart with each policy
//! version, which is right, since rule ids are positional and a reload may renumber them.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};

#[derive(Debug, Default)]
struct Slot {
    hits: AtomicU64,
    /// Unix seconds; 0: never hit.
    first: AtomicI64,
    last: AtomicI64,
}

/// The hit counters of one policy version's rules.
#[derive(Debug, Default)]
pub struct RuleHits {
    slots: Box<[Slot]>,
}

/// What one rule's counters say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HitCount {
    pub hits: u64,
    /// Unix seconds; `None` when the rule never decided.
    pub first_hit: Option<i64>,
    pub last_hit: Option<i64>,
}

impl RuleHits {
    pub fn new(rules: usize) -> Self {
        RuleHits { slots: (0..rules).map(|_| Slot::default()).collect() }
    }

    /// Counts a decision by `rule` at `now` (unix seconds). An index out of range (it cannot be:
    /// decisions name rules of this policy) is ignored rather than trusted.
    #[inline]
    pub fn record(&self, rule: usize, now: i64) {
        let Some(slot) = self.slots.get(rule) else { return };
        slot.hits.fetch_add(1, Relaxed);
        if slot.last.load(Relaxed) != now {
            slot.last.fetch_max(now, Relaxed);
            if slot.first.load(Relaxed) == 0 {
                let _ = slot.first.compare_exchange(0, now, Relaxed, Relaxed);
            }
        }
    }

    pub fn get(&self, rule: usize) -> HitCount {
        let Some(slot) = self.slots.get(rule) else { return HitCount { hits: 0, first_hit: None, last_hit: None } };
        let when = |v: i64| (v != 0).then_some(v);
        HitCount {
            hits: slot.hits.load(Relaxed),
            first_hit: when(slot.first.load(Relaxed)),
            last_hit: when(slot.last.load(Relaxed)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_count_with_first_and_last_time() {
        let hits = RuleHits::new(3);
        hits.record(1, 100);
        hits.record(1, 100);
        hits.record(1, 105);
        hits.record(1, 103); // a late thread's clock: the last hit stays the latest
        hits.record(7, 100); // no such rule
        assert_eq!(hits.get(1), HitCount { hits: 4, first_hit: Some(100), last_hit: Some(105) });
        assert_eq!(hits.get(0), HitCount { hits: 0, first_hit: None, last_hit: None });
        assert_eq!(hits.get(9).hits, 0);
    }

    #[test]
    fn counts_from_many_threads_add_up() {
        let hits = std::sync::Arc::new(RuleHits::new(1));
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let hits = hits.clone();
                std::thread::spawn(move || (0..10_000).for_each(|i| hits.record(0, 1_000 + t + i % 3)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let got = hits.get(0);
        assert_eq!(got.hits, 40_000);
        assert_eq!((got.first_hit.is_some(), got.last_hit), (true, Some(1_005)));
    }
}
