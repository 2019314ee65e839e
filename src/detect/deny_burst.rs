//! Deny bursts per identity: many distinct denied (or would-deny) destinations in a short window,
//! the pattern of a workload probing for an open path.

use std::collections::VecDeque;

use super::beacon::round3;
use super::names::over_threshold;
use super::signal::{Evidence, Signal, SignalKind};
use crate::policy::detection::DetectionConfig;

/// Destinations named in the signal.
const NAMED: usize = 5;

#[derive(Debug, Default)]
pub struct DenyBurst {
    /// (time, destination host, port), oldest first; at most 4x the threshold.
    recent: VecDeque<(i64, Box<str>, u16)>,
    signaled_ms: Option<i64>,
}

impl DenyBurst {
    pub fn heap_bytes(&self) -> usize {
        self.recent.iter().map(|(_, d, _)| d.len() + 32).sum()
    }

    pub fn observe(
        &mut self,
        time_ms: i64,
        (host, port): (&str, u16),
        config: &DetectionConfig,
        (service, spiffe_id): (Option<&str>, Option<&str>),
    ) -> Option<Signal> {
        while self.recent.front().is_some_and(|(t, _, _)| *t + config.deny_burst_window_ms <= time_ms) {
            self.recent.pop_front();
        }
        if !self.recent.iter().any(|(_, h, p)| &**h == host && *p == port) {
            self.recent.push_back((time_ms, host.into(), port));
            if self.recent.len() > config.deny_burst_destinations * 4 {
                self.recent.pop_front();
            }
        }
        let distinct = self.recent.len();
        if distinct < config.deny_burst_destinations
            || self.signaled_ms.is_some_and(|s| time_ms - s < config.deny_burst_window_ms)
        {
            return None;
        }
        self.signaled_ms = Some(time_ms);
        let named: Vec<String> = self.recent.iter().rev().take(NAMED).map(|(_, h, p)| format!("{h}:{p}")).collect();
        let minutes = config.deny_burst_window_ms as f64 / 60_000.0;
        Some(Signal {
            kind: SignalKind::DenyBurst,
            service: service.map(str::to_string),
            spiffe_id: spiffe_id.map(str::to_string),
            source: None,
            destination: format!("{} destinations", distinct),
            score: round3(over_threshold(distinct as f64 / config.deny_burst_destinations as f64)),
            first: self.recent.front().map(|(t, _, _)| *t).unwrap_or(time_ms),
            last: time_ms,
            summary: format!(
                "{distinct} distinct destinations denied in {minutes:.0} min, latest: {}",
                named.join(", ")
            ),
            evidence: vec![
                ("distinct_denied", Evidence::from(distinct)),
                ("window_s", ((config.deny_burst_window_ms / 1000) as u64).into()),
                ("latest", named.join(",").into()),
            ],
            context: "denied or would-deny".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn who() -> (Option<&'static str>, Option<&'static str>) {
        (Some("web"), None)
    }

    #[test]
    fn twenty_distinct_denied_destinations_in_ten_minutes_fire_once() {
        let config = DetectionConfig::default();
        let mut d = DenyBurst::default();
        let mut signals = Vec::new();
        for i in 0..40 {
            signals.extend(d.observe(i * 10_000, (&format!("h{i}.example"), 443), &config, who()));
        }
        assert_eq!(signals.len(), 1);
        assert!(signals[0].summary.starts_with("20 distinct destinations denied"), "{}", signals[0].summary);
    }

    #[test]
    fn one_destination_denied_again_and_again_or_slow_probing_do_not_fire() {
        let config = DetectionConfig::default();
        let mut d = DenyBurst::default();
        for i in 0..1000 {
            assert_eq!(d.observe(i * 1000, ("legacy.example", 443), &config, who()), None);
        }
        let mut d = DenyBurst::default();
        for i in 0..100 {
            // One new destination a minute: 10 in any 10 minutes.
            assert_eq!(d.observe(i * 60_000, (&format!("h{i}.example"), 443), &config, who()), None);
        }
    }
}
