//! Large uploads per (identity, destination): request body bytes (HTTP `content-length`) and the
//! client-to-upstream bytes of CONNECT tunnels (from the gateway's access log, at close) summed
//! over a sliding window of `SLOTS` slots. Fires at `uploadBytes` in the window, or at
//! `uploadBaselineFactor` times the identity's own baseline: the median of its last completed
//! windows (all destinations together), once it has `BASELINE_WINDOWS` of them.

use std::collections::VecDeque;

use super::beacon::round3;
use super::names::over_threshold;
use super::signal::{Evidence, Signal, SignalKind};
use crate::policy::detection::DetectionConfig;

const SLOTS: i64 = 16;
/// Completed windows the baseline is the median of.
const BASELINE_WINDOWS: usize = 3;
const KEEP_WINDOWS: usize = 7;

/// Bytes one identity sent one destination, by slot.
#[derive(Debug, Default)]
pub struct UploadWindow {
    /// (slot index, bytes), oldest first.
    slots: VecDeque<(i64, u64)>,
    first_ms: i64,
    transfers: u64,
    signaled_ms: Option<i64>,
}

/// An identity's upload totals per fixed window, for its baseline.
#[derive(Debug, Default)]
pub struct Baseline {
    window: i64,
    total: u64,
    completed: VecDeque<u64>,
}

impl Baseline {
    fn add(&mut self, time_ms: i64, bytes: u64, config: &DetectionConfig) {
        let w = time_ms.div_euclid(config.upload_window_ms);
        if self.window != w {
            if self.window != 0 || self.total > 0 {
                // Windows without uploads count as zero, at most KEEP_WINDOWS of them.
                let gap = (w - self.window - 1).clamp(0, KEEP_WINDOWS as i64);
                self.completed.push_back(self.total);
                for _ in 0..gap {
                    self.completed.push_back(0);
                }
                while self.completed.len() > KEEP_WINDOWS {
                    self.completed.pop_front();
                }
            }
            self.window = w;
            self.total = 0;
        }
        self.total += bytes;
    }

    /// The median of the completed windows, once there are enough.
    pub fn value(&self) -> Option<u64> {
        if self.completed.len() < BASELINE_WINDOWS {
            return None;
        }
        let mut v: Vec<u64> = self.completed.iter().copied().collect();
        v.sort_unstable();
        Some(v[v.len() / 2])
    }
}

impl UploadWindow {
    pub fn heap_bytes(&self) -> usize {
        self.slots.capacity() * 16
    }

    /// Adds `bytes` sent at `time_ms`; `baseline` is the identity's (updated here too).
    pub fn observe(
        &mut self,
        time_ms: i64,
        bytes: u64,
        baseline: &mut Baseline,
        config: &DetectionConfig,
        who: (Option<&str>, Option<&str>, &str),
    ) -> Option<Signal> {
        let prior = baseline.value();
        baseline.add(time_ms, bytes, config);
        let slot_ms = (config.upload_window_ms / SLOTS).max(1);
        let slot = time_ms.div_euclid(slot_ms);
        if self.transfers == 0 {
            self.first_ms = time_ms;
        }
        self.transfers += 1;
        match self.slots.back_mut() {
            Some((s, b)) if *s == slot => *b += bytes,
            _ => self.slots.push_back((slot, bytes)),
        }
        while self.slots.front().is_some_and(|(s, _)| *s <= slot - SLOTS) {
            self.slots.pop_front();
        }
        if bytes == 0 || self.signaled_ms.is_some_and(|s| time_ms - s < config.upload_window_ms) {
            return None;
        }
        let sum: u64 = self.slots.iter().map(|(_, b)| b).sum();
        let by_size = sum >= config.upload_bytes;
        let baseline_limit = prior
            .map(|b| (b as f64 * config.upload_baseline_factor) as u64)
            .filter(|_| sum >= config.upload_baseline_min_bytes);
        let by_baseline = baseline_limit.is_some_and(|limit| sum >= limit.max(1));
        if !by_size && !by_baseline {
            return None;
        }
        self.signaled_ms = Some(time_ms);
        let limit = if by_size { config.upload_bytes } else { baseline_limit.unwrap_or(1).max(1) };
        Some(self.signal(time_ms, sum, limit, by_size, prior, config, who))
    }

    #[allow(clippy::too_many_arguments)]
    fn signal(
        &self,
        time_ms: i64,
        sum: u64,
        limit: u64,
        by_size: bool,
        baseline: Option<u64>,
        config: &DetectionConfig,
        (service, spiffe_id, destination): (Option<&str>, Option<&str>, &str),
    ) -> Signal {
        let hours = config.upload_window_ms as f64 / 3_600_000.0;
        let why = if by_size {
            format!("at least {} in {hours:.0} h", mib(config.upload_bytes))
        } else {
            format!(
                "{}x the identity's baseline of {} per {hours:.0} h",
                config.upload_baseline_factor,
                mib(baseline.unwrap_or(0))
            )
        };
        let mut evidence = vec![
            ("bytes_sent", Evidence::from(sum)),
            ("transfers", self.transfers.into()),
            ("threshold_bytes", limit.into()),
            ("window_s", ((config.upload_window_ms / 1000) as u64).into()),
        ];
        if let Some(b) = baseline {
            evidence.push(("baseline_bytes", b.into()));
        }
        Signal {
            kind: SignalKind::LargeUpload,
            service: service.map(str::to_string),
            spiffe_id: spiffe_id.map(str::to_string),
            source: None,
            destination: destination.to_string(),
            score: round3(over_threshold(sum as f64 / limit as f64)),
            first: self.first_ms.max(time_ms - config.upload_window_ms),
            last: time_ms,
            summary: format!("{} sent in {} transfers over the last {hours:.0} h ({why})", mib(sum), self.transfers),
            evidence,
            context: "request bodies and tunnel bytes, client to destination".into(),
        }
    }
}

fn mib(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 30 => format!("{:.2} GiB", b as f64 / (1u64 << 30) as f64),
        b => format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: i64 = 3_600_000;
    const MIB: u64 = 1 << 20;

    fn who() -> (Option<&'static str>, Option<&'static str>, &'static str) {
        (Some("etl"), Some("spiffe://corp.example/ns/etl/sa/job"), "drop.example")
    }

    #[test]
    fn two_gib_trickled_over_six_hours_fires_after_one_gib() {
        let config = DetectionConfig::default();
        let (mut w, mut b) = (UploadWindow::default(), Baseline::default());
        let mut fired = None;
        // 2 GiB in 4 MiB chunks over 6 h.
        for i in 0..512i64 {
            if let Some(s) = w.observe(i * 6 * HOUR / 512, 4 * MIB, &mut b, &config, who()) {
                fired.get_or_insert((i, s));
            }
        }
        let (i, s) = fired.expect("fires");
        assert_eq!(i, 255, "at the 256th chunk: 1 GiB");
        assert!(s.summary.contains("at least 1.00 GiB in 8 h"), "{}", s.summary);
    }

    #[test]
    fn a_steady_backup_below_the_limit_stays_quiet_and_ten_times_its_baseline_fires() {
        let config = DetectionConfig::default();
        let (mut w, mut b) = (UploadWindow::default(), Baseline::default());
        // 50 MiB per 8 h window for four days.
        for i in 0..12i64 {
            assert_eq!(w.observe(i * 8 * HOUR, 50 * MIB, &mut b, &config, who()), None);
        }
        assert_eq!(b.value(), Some(50 * MIB));
        // Then 600 MiB within an hour: under 1 GiB, but 12x the baseline.
        let mut fired = None;
        for k in 0..12i64 {
            if let Some(s) = w.observe(96 * HOUR + k * 5 * 60_000, 50 * MIB, &mut b, &config, who()) {
                fired.get_or_insert(s);
            }
        }
        let s = fired.expect("fires by baseline");
        assert!(s.summary.contains("baseline of 50.0 MiB"), "{}", s.summary);
    }

    #[test]
    fn uploads_spread_wider_than_the_window_stay_quiet() {
        let config = DetectionConfig::default();
        let (mut w, mut b) = (UploadWindow::default(), Baseline::default());
        // 3 GiB over three days: 128 MiB every 3 h is 341 MiB per 8 h.
        for i in 0..24i64 {
            assert_eq!(w.observe(i * 3 * HOUR, 128 * MIB, &mut b, &config, who()), None);
        }
    }
}
