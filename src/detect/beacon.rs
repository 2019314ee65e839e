//! Beaconing per (identity, destination): how regular the requests are, RITA-style.
//!
//! The score (0..1) is the weighted mean of a timing score (2/3) and, when at least half the
//! requests carried a body size, a size score (1/3); then scaled by the destination's context.
//! * timing: the mean of four parts over the inter-arrival intervals of distinct timestamps (one
//!   second apart at least): 1 - |Bowley skewness|; 1 - 2 MAD/median; 1 - 2 |mean/median - 1|
//!   (the median interval explains the span: random arrivals and bursts with long gaps score
//!   low); and the hourly histogram's spread (hours with requests, times 1 - their counts'
//!   coefficient of variation). A series is scored once it spans `minSpan` (default 1 h), at
//!   most every 5 minutes.
//! * sizes: 1 - |Bowley skewness|, 1 - MAD/median and smallness (1 - median / 64 KiB).
//! * context: 1 for a denied or would-deny destination; an allowed one is expected to be called,
//!   so 0.9, less up to 0.4 more as its registrable domain is reached by up to 10% of services.
//!   The signal says which applied.

use std::collections::VecDeque;

use super::signal::{Evidence, Signal, SignalKind};
use super::stats::{bowley_skew, mad, quartiles};
use super::{Admission, Scratch};
use crate::policy::detection::DetectionConfig;

/// A request without a known body size.
const UNKNOWN: u32 = u32::MAX;
/// Evaluate a series at most this often (event time).
const EVALUATE_EVERY_MS: i64 = 5 * 60_000;

/// The requests of one (identity, destination) over the window.
#[derive(Debug, Default)]
pub struct BeaconSeries {
    /// Distinct request times, unix seconds, ascending (u32: seconds until 2106).
    times: VecDeque<u32>,
    /// Body sizes of the requests at `times`; `UNKNOWN` where not known.
    sizes: VecDeque<u32>,
    requests: u64,
    /// The last request's second, port and admission: a repeat of it adds nothing but a count.
    last: Option<(u32, u16, Admission)>,
    last_evaluated_ms: i64,
    signaled_ms: Option<i64>,
}

/// What a signal needs to know about the destination besides the series.
pub struct Context<'a> {
    pub admission: Admission,
    /// Subjects (services) that reached the registrable domain, and all subjects seen.
    pub prevalence: (usize, usize),
    pub service: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
    pub destination: &'a str,
}

/// Unix seconds of unix milliseconds, as a series keeps them.
fn second(time_ms: i64) -> u32 {
    time_ms.div_euclid(1000).clamp(0, i64::from(u32::MAX)) as u32
}

impl BeaconSeries {
    /// Approximate heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.times.capacity() * 4 + self.sizes.capacity() * 4
    }

    /// Whether `requests` requests at `time_ms` to `port` repeat the series' last request (same
    /// second, port and admission): counted, and nothing else to do for any detector, since each
    /// keys on distinct seconds, names or destinations. Otherwise remembered as the last.
    pub fn repeats(&mut self, time_ms: i64, port: u16, admission: Admission, requests: u64) -> bool {
        let now = (second(time_ms), port, admission);
        if self.last == Some(now) {
            self.requests += requests;
            return true;
        }
        self.last = Some(now);
        false
    }

    /// Adds `requests` requests at `time_ms` (one second); returns a signal when the series now
    /// scores as a beacon.
    pub fn observe<'c>(
        &mut self,
        time_ms: i64,
        requests: u64,
        size: Option<u64>,
        config: &DetectionConfig,
        scratch: &mut Scratch,
        context: impl FnOnce() -> Context<'c>,
    ) -> Option<Signal> {
        self.push(time_ms, requests, size, config);
        let span_ms = i64::from(self.times.back().unwrap_or(&0) - self.times.front().unwrap_or(&0)) * 1000;
        if self.times.len() < config.beacon_min_timestamps
            || span_ms < config.beacon_min_span_ms
            || time_ms - self.last_evaluated_ms < EVALUATE_EVERY_MS
            || self.signaled_ms.is_some_and(|s| time_ms - s < config.beacon_window_ms)
        {
            return None;
        }
        self.last_evaluated_ms = time_ms;
        let score = self.score(scratch);
        let ctx = context();
        let weight = context_weight(ctx.admission, ctx.prevalence);
        let total = score.total * weight;
        if total < config.beacon_threshold {
            return None;
        }
        self.signaled_ms = Some(time_ms);
        Some(self.signal(&score, weight, total, &ctx))
    }

    fn push(&mut self, time_ms: i64, requests: u64, size: Option<u64>, config: &DetectionConfig) {
        self.requests += requests;
        let t = second(time_ms);
        // Requests in the same second (or a little out of order) are one timestamp, as in RITA.
        if self.times.back().is_some_and(|&last| t <= last) {
            return;
        }
        self.times.push_back(t);
        self.sizes.push_back(size.map_or(UNKNOWN, |s| s.min(u64::from(UNKNOWN - 1)) as u32));
        let oldest = i64::from(t) - config.beacon_window_ms / 1000;
        while self.times.front().is_some_and(|&f| i64::from(f) < oldest) || self.times.len() > config.max_timestamps {
            self.times.pop_front();
            self.sizes.pop_front();
        }
    }

    fn score(&self, scratch: &mut Scratch) -> Score {
        let times = &self.times;
        let intervals = &mut scratch.a;
        intervals.clear();
        intervals.extend(times.iter().zip(times.iter().skip(1)).map(|(a, b)| f64::from(b - a)));
        let q = quartiles(intervals).unwrap_or_default();
        let skew = 1.0 - bowley_skew(q).abs();
        let median = q.1.max(1.0);
        let spread = mad(intervals, q.1, &mut scratch.b);
        let madm = 1.0 - (2.0 * spread / median).min(1.0);
        let span = f64::from(times.back().unwrap_or(&0) - times.front().unwrap_or(&0));
        // Regular series: the mean interval is the median. Random arrivals: ~1.44x; bursts with
        // long gaps: many times.
        let mean = span / intervals.len().max(1) as f64;
        let count = 1.0 - (2.0 * (mean / median - 1.0).abs()).min(1.0);
        let hist = hourly_spread(times);
        let timing = (skew + madm + count + hist) / 4.0;

        let sizes = &mut scratch.a;
        sizes.clear();
        sizes.extend(self.sizes.iter().filter(|&&s| s != UNKNOWN).map(|&s| f64::from(s)));
        let size = if sizes.len() * 2 >= self.sizes.len() && !sizes.is_empty() {
            let q = quartiles(sizes).unwrap_or_default();
            let skew = 1.0 - bowley_skew(q).abs();
            let spread = mad(sizes, q.1, &mut scratch.b);
            let madm = if q.1 > 0.0 { 1.0 - (spread / q.1).min(1.0) } else { 1.0 };
            let small = 1.0 - (q.1 / 65_536.0).min(1.0);
            Some(((skew + madm + small) / 3.0, q.1))
        } else {
            None
        };
        let total = match size {
            Some((s, _)) => (2.0 * timing + s) / 3.0,
            None => timing,
        };
        Score { total, timing, skew, madm, count, hist, median, spread, span, size }
    }

    fn signal(&self, s: &Score, weight: f64, total: f64, ctx: &Context<'_>) -> Signal {
        let n = self.times.len();
        let hours = s.span / 3600.0;
        let mut summary = format!(
            "{} requests ({n} distinct seconds) over {hours:.1} h, one every ~{:.0} s (MAD {:.0} s)",
            self.requests, s.median, s.spread
        );
        if let Some((_, size)) = s.size {
            summary.push_str(&format!(", bodies ~{size:.0} B"));
        }
        let mut evidence: Vec<(&'static str, Evidence)> = vec![
            ("requests", self.requests.into()),
            ("timestamps", n.into()),
            ("median_interval_s", s.median.into()),
            ("mad_interval_s", s.spread.into()),
            ("span_s", s.span.into()),
            ("timing_score", s.timing.into()),
            ("skew_score", s.skew.into()),
            ("madm_score", s.madm.into()),
            ("count_score", s.count.into()),
            ("histogram_score", s.hist.into()),
        ];
        if let Some((score, size)) = s.size {
            evidence.push(("size_score", score.into()));
            evidence.push(("median_size_bytes", size.into()));
        }
        evidence.push(("raw_score", s.total.into()));
        evidence.push(("context_weight", weight.into()));
        evidence.push(("services_reaching", ctx.prevalence.0.into()));
        evidence.push(("services_seen", ctx.prevalence.1.into()));
        let (first, last) = (self.times.front().copied().unwrap_or(0), self.times.back().copied().unwrap_or(0));
        Signal {
            kind: SignalKind::Beaconing,
            service: ctx.service.map(str::to_string),
            spiffe_id: ctx.spiffe_id.map(str::to_string),
            source: None,
            destination: ctx.destination.to_string(),
            score: round3(total),
            first: i64::from(first) * 1000,
            last: i64::from(last) * 1000,
            summary,
            evidence,
            context: format!(
                "{}; reached by {} of {} services (context weight {weight:.2})",
                ctx.admission.describe(),
                ctx.prevalence.0,
                ctx.prevalence.1
            ),
        }
    }
}

struct Score {
    total: f64,
    timing: f64,
    skew: f64,
    madm: f64,
    count: f64,
    hist: f64,
    median: f64,
    spread: f64,
    span: f64,
    size: Option<(f64, f64)>,
}

/// Hours of the series' span with requests, times 1 - the coefficient of variation of the
/// per-hour counts: 1 for requests spread evenly over every hour.
fn hourly_spread(times: &VecDeque<u32>) -> f64 {
    let (Some(&first), Some(&last)) = (times.front(), times.back()) else { return 0.0 };
    let hours = ((last - first) / 3600 + 1) as usize;
    let mut counts = vec![0u32; hours.min(24 * 31)];
    for t in times {
        let h = (((t - first) / 3600) as usize).min(counts.len() - 1);
        counts[h] += 1;
    }
    let n = counts.len() as f64;
    let covered = counts.iter().filter(|&&c| c > 0).count() as f64 / n;
    let mean = counts.iter().map(|&c| f64::from(c)).sum::<f64>() / n;
    let var = counts.iter().map(|&c| (f64::from(c) - mean).powi(2)).sum::<f64>() / n;
    let cv = if mean > 0.0 { var.sqrt() / mean } else { 1.0 };
    covered * (1.0 - cv.min(1.0))
}

/// How much an allowed, widely used destination discounts a regular series.
pub fn context_weight(admission: Admission, (reaching, seen): (usize, usize)) -> f64 {
    if !admission.is_allowed() {
        return 1.0;
    }
    let share = if seen == 0 { 0.0 } else { reaching as f64 / seen as f64 };
    0.9 - 0.4 * (share / 0.1).min(1.0)
}

pub fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

#[cfg(test)]
mod tests_support {
    pub use super::*;
    pub fn ctx() -> Context<'static> {
        Context {
            admission: Admission::Denied,
            prevalence: (1, 50),
            service: Some("batch"),
            spiffe_id: None,
            destination: "c2.example",
        }
    }
    pub fn run(
        offsets: impl IntoIterator<Item = f64>,
        size: Option<u64>,
        admission: Admission,
        prevalence: (usize, usize),
    ) -> Option<Signal> {
        let config = DetectionConfig::default();
        let mut series = BeaconSeries::default();
        let mut scratch = Scratch::default();
        let start = 1_800_000_000_000i64;
        let mut found = None;
        for off in offsets {
            let t = start + (off * 1000.0) as i64;
            let c = move || Context { admission, prevalence, ..ctx() };
            if let Some(s) = series.observe(t, 1, size, &config, &mut scratch, c) {
                found.get_or_insert(s);
            }
        }
        found
    }
    pub fn jitter(i: u64) -> f64 {
        let h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        (h % 20_001) as f64 / 10_000.0 - 1.0
    }
}

#[cfg(test)]
mod tests {
    use super::tests_support::*;

    #[test]
    fn a_jittered_beacon_fires_and_says_why() {
        let mut t = 0.0;
        let beats = (0..300u64).map(|i| {
            t += 60.0 * (1.0 + 0.2 * jitter(i));
            t
        });
        let s = run(beats, Some(180), Admission::Denied, (1, 50)).expect("a 60 s beacon with 20% jitter fires");
        assert_eq!(s.kind, SignalKind::Beaconing);
        assert!(s.score >= 0.7, "{s:?}");
        assert!(s.summary.contains("one every ~"), "{}", s.summary);
        assert!(s.context.contains("denied"), "{}", s.context);
    }

    #[test]
    fn random_arrivals_do_not_fire() {
        // Exponential inter-arrival times (request-driven traffic), mean 30 s.
        let mut t = 0.0;
        let arrivals = (0..3000u64).map(|i| {
            let u = (jitter(i) + 1.0) / 2.0 * 0.999 + 0.0005;
            t += -30.0 * u.ln();
            t
        });
        assert_eq!(run(arrivals, None, Admission::Denied, (1, 50)), None);
    }

    #[test]
    fn bursts_with_long_gaps_do_not_fire() {
        // 50 requests a second apart, every 2 hours and a random bit.
        let offsets = (0..12u64).flat_map(|b| {
            let start = b as f64 * 7200.0 + 600.0 * (jitter(b) + 1.0);
            (0..50).map(move |i| start + i as f64 * 1.0)
        });
        assert_eq!(run(offsets, Some(5000), Admission::Exact, (1, 50)), None);
    }

    #[test]
    fn a_metrics_push_every_10s_to_a_widely_used_allowed_host_is_discounted() {
        let pushes = (0..8640u64).map(|i| i as f64 * 10.0 + jitter(i) * 0.3);
        assert_eq!(run(pushes.clone(), Some(2048), Admission::Exact, (45, 50)), None);
        // The same series to a denied destination is a beacon.
        assert!(run(pushes, Some(2048), Admission::Denied, (1, 50)).is_some());
    }

    #[test]
    fn fewer_than_the_minimum_timestamps_never_fire() {
        assert_eq!(run([0.0, 60.0, 120.0], None, Admission::Denied, (1, 50)), None);
    }

    #[test]
    fn the_weight_falls_with_prevalence_only_for_allowed_destinations() {
        assert_eq!(context_weight(Admission::Denied, (50, 50)), 1.0);
        assert_eq!(context_weight(Admission::Exact, (0, 50)), 0.9);
        assert!((context_weight(Admission::Pattern, (5, 50)) - 0.5).abs() < 1e-9);
    }
}
#[cfg(test)]
mod jitter {
    use super::tests_support::*;

    /// Uniform jitter keeps intervals symmetric around the period: even +-80% scores as a beacon
    /// (what RITA-style scoring sees); random arrivals (exponential intervals) do not (`tests`).
    #[test]
    fn beacons_with_uniform_jitter_up_to_80_percent_fire() {
        for j in [0.0, 0.2, 0.4, 0.6, 0.8] {
            for period in [60.0, 300.0] {
                let mut t = 0.0;
                let mut k = 0u64;
                let beats: Vec<f64> = (0..600)
                    .map(|_| {
                        k += 1;
                        t += period * (1.0 + j * jitter(k));
                        t
                    })
                    .collect();
                assert!(run(beats, None, Admission::Denied, (1, 50)).is_some(), "jitter {j}, period {period} s");
            }
        }
    }
}
