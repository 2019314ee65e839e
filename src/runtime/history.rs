//! The tally sampled over time: a ring of cumulative per-service counts, one sample a second,
//! covering the longest window anything looks at. Counts over a window are the difference
//! between its newest sample and the sample at (or just before) its start.

use std::collections::{HashMap, VecDeque};

use super::tally::Counts;

#[derive(Debug)]
struct Sample {
    at: i64,
    by_service: HashMap<String, Counts>,
}

#[derive(Debug, Default)]
pub struct History {
    samples: VecDeque<Sample>,
}

impl History {
    /// Adds the counts at `now`, keeping one sample at or before `now - keep_seconds` as the
    /// baseline of the longest window.
    pub fn push(&mut self, now: i64, by_service: HashMap<String, Counts>, keep_seconds: i64) {
        self.samples.push_back(Sample { at: now, by_service });
        while self.samples.get(1).is_some_and(|s| s.at <= now - keep_seconds) {
            self.samples.pop_front();
        }
    }

    /// Counts of `service` since `since`, and the seconds they cover. The baseline is the newest
    /// sample at or before `since` (the whole window is covered), else the oldest one (the
    /// history is shorter than the window).
    pub fn since(&self, service: &str, since: i64) -> Option<(Counts, u64)> {
        let newest = self.samples.back()?;
        let oldest = self.samples.iter().rev().find(|s| s.at <= since).or(self.samples.front())?;
        delta(oldest, newest, service)
    }

    /// Counts of `service` from the first sample at or after `start` (what followed a reset).
    pub fn after(&self, service: &str, start: i64) -> Option<(Counts, u64)> {
        let base = self.samples.iter().find(|s| s.at >= start)?;
        delta(base, self.samples.back()?, service)
    }
}

fn delta(oldest: &Sample, newest: &Sample, service: &str) -> Option<(Counts, u64)> {
    let (a, b) = (oldest.by_service.get(service).copied().unwrap_or([0; 3]), newest.by_service.get(service)?);
    Some(([0, 1, 2].map(|i| b[i].saturating_sub(a[i])), (newest.at - oldest.at) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(checks: u64, denies: u64, would: u64) -> HashMap<String, Counts> {
        [("s".to_string(), [checks, denies, would])].into_iter().collect()
    }

    #[test]
    fn windows_take_the_baseline_at_or_before_their_start() {
        let mut h = History::default();
        for (at, c) in [(100, 0), (101, 10), (102, 25), (103, 40)] {
            h.push(at, counts(c, c / 5, 0), 60);
        }
        assert_eq!(h.since("s", 101), Some(([30, 6, 0], 2)));
        assert_eq!(h.since("s", 50), Some(([40, 8, 0], 3)), "shorter than the window: from the oldest");
        assert_eq!(h.after("s", 102), Some(([15, 3, 0], 1)));
        assert_eq!(h.since("other", 100), None);
    }

    #[test]
    fn old_samples_go_but_the_baseline_stays() {
        let mut h = History::default();
        for at in 0..100 {
            h.push(at, counts(at as u64, 0, 0), 10);
        }
        assert_eq!(h.samples.len(), 11, "ten seconds and their baseline");
        assert_eq!(h.since("s", 89), Some(([10, 0, 0], 10)));
    }
}
