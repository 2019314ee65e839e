//! Tunnel-like names per (service, registrable domain): many distinct subdomains over the window
//! (a HyperLogLog++ sketch per quarter of the window, so memory stays small whatever the count),
//! or many distinct long names (a label of at least `namesLongLabel` characters) in a few minutes.
//! Label entropy is evidence and part of the score: encoded data reads as random characters.
//! DNS queries add two more: many TXT/NULL queries (the record types tunnels carry data in) making
//! most of a domain's queries, and many large answers (a tunnel's downstream), per window.

use std::collections::VecDeque;

use cardinality_estimator::CardinalityEstimator;

use super::beacon::round3;
use super::signal::{Evidence, Signal, SignalKind};
use super::stats::entropy;
use crate::policy::detection::DetectionConfig;

/// The window is covered by this many sketches; the oldest is dropped as time moves on.
const SLICES: usize = 4;

type Sketch = CardinalityEstimator<str>;

/// A quarter of the window: its distinct names and what its DNS queries were.
#[derive(Debug)]
struct Slice {
    start: i64,
    names: Sketch,
    dns: DnsCounts,
}

/// DNS queries counted in a slice.
#[derive(Debug, Default, Clone, Copy)]
struct DnsCounts {
    queries: u64,
    txt_null: u64,
    large_answers: u64,
}

/// What a DNS query adds to a name: its type and the answer's size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DnsFacts {
    /// A TXT or NULL query.
    pub txt_null: bool,
    pub answer_bytes: u64,
}

/// Which rule fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fired {
    Distinct,
    Long,
    TxtNull,
    LargeAnswers,
}

#[derive(Debug, Default)]
pub struct NameStats {
    /// The window's slices, oldest first.
    slices: VecDeque<Slice>,
    /// Recent long names: (time, hash of the name), oldest first.
    long: VecDeque<(i64, u64)>,
    queries: u64,
    entropy_sum: f64,
    longest_label: usize,
    first_ms: i64,
    signaled_ms: Option<i64>,
    example: Option<Box<str>>,
}

/// The part of `name` left of its registrable domain (`x7f.data` of `x7f.data.evil.example`).
pub fn subdomain<'a>(name: &'a str, registrable: &str) -> Option<&'a str> {
    let rest = name.strip_suffix(registrable)?.strip_suffix('.')?;
    (!rest.is_empty()).then_some(rest)
}

impl NameStats {
    pub fn heap_bytes(&self) -> usize {
        self.slices.iter().map(|s| s.names.size_of()).sum::<usize>() + self.long.capacity() * 16 + 64
    }

    /// One name under `registrable` asked for (a request's host, a DNS query with its facts) by
    /// a subject.
    #[allow(clippy::too_many_arguments)]
    pub fn observe(
        &mut self,
        time_ms: i64,
        name: &str,
        sub: &str,
        dns: Option<DnsFacts>,
        config: &DetectionConfig,
        who: (Option<&str>, Option<&str>),
        registrable: &str,
    ) -> Option<Signal> {
        if self.queries == 0 {
            self.first_ms = time_ms;
        }
        self.queries += 1;
        let hash = xxhash_rust::xxh3::xxh3_64(name.as_bytes());
        let slice_ms = (config.names_window_ms / SLICES as i64).max(1);
        let slice_start = time_ms - time_ms.rem_euclid(slice_ms);
        if self.slices.back().is_none_or(|s| s.start < slice_start) {
            self.slices.push_back(Slice { start: slice_start, names: Sketch::new(), dns: DnsCounts::default() });
        }
        while self.slices.front().is_some_and(|s| s.start + config.names_window_ms <= time_ms) {
            self.slices.pop_front();
        }
        if let Some(slice) = self.slices.back_mut() {
            slice.names.insert_hash(hash);
            if let Some(d) = dns {
                slice.dns.queries += 1;
                slice.dns.txt_null += u64::from(d.txt_null);
                slice.dns.large_answers += u64::from(d.answer_bytes >= config.names_large_answer_bytes);
            }
        }
        self.entropy_sum += entropy(sub);
        let longest = sub.split('.').map(str::len).max().unwrap_or(0);
        self.longest_label = self.longest_label.max(longest);
        if longest >= config.names_long_label {
            self.long.push_back((time_ms, hash));
            if self.long.len() > config.names_long * 4 {
                self.long.pop_front();
            }
            if self.example.is_none() {
                self.example = Some(name.into());
            }
        }
        while self.long.front().is_some_and(|(t, _)| *t + config.names_long_window_ms <= time_ms) {
            self.long.pop_front();
        }
        if self.signaled_ms.is_some_and(|s| time_ms - s < config.names_window_ms) {
            return None;
        }
        let fired = self.fired(config)?;
        self.signaled_ms = Some(time_ms);
        if self.example.is_none() {
            self.example = Some(name.into());
        }
        Some(self.signal(time_ms, fired, config, who, registrable))
    }

    /// The first rule that fires now, cheapest checks first.
    fn fired(&self, config: &DetectionConfig) -> Option<Fired> {
        if self.distinct_long() >= config.names_long {
            return Some(Fired::Long);
        }
        let dns = self.dns_counts();
        if dns.txt_null >= config.names_txt_null
            && dns.txt_null as f64 >= config.names_txt_null_share * dns.queries as f64
        {
            return Some(Fired::TxtNull);
        }
        if dns.large_answers >= config.names_large_answers {
            return Some(Fired::LargeAnswers);
        }
        // The sum of the slices' counts bounds the union's from above: merge only when it could fire.
        let upper: usize = self.slices.iter().map(|s| s.names.estimate()).sum();
        (upper as u64 >= config.names_distinct && self.distinct() as u64 >= config.names_distinct)
            .then_some(Fired::Distinct)
    }

    fn dns_counts(&self) -> DnsCounts {
        self.slices.iter().fold(DnsCounts::default(), |a, s| DnsCounts {
            queries: a.queries + s.dns.queries,
            txt_null: a.txt_null + s.dns.txt_null,
            large_answers: a.large_answers + s.dns.large_answers,
        })
    }

    fn distinct(&self) -> usize {
        let mut union = Sketch::new();
        for s in &self.slices {
            union.merge(&s.names);
        }
        union.estimate()
    }

    fn distinct_long(&self) -> usize {
        let mut hashes: Vec<u64> = self.long.iter().map(|(_, h)| *h).collect();
        hashes.sort_unstable();
        hashes.dedup();
        hashes.len()
    }

    fn signal(
        &self,
        time_ms: i64,
        fired: Fired,
        config: &DetectionConfig,
        (service, spiffe_id): (Option<&str>, Option<&str>),
        registrable: &str,
    ) -> Signal {
        let (distinct, long, dns) = (self.distinct(), self.distinct_long(), self.dns_counts());
        let mean_entropy = self.entropy_sum / self.queries as f64;
        let ratio = match fired {
            Fired::Distinct => distinct as f64 / config.names_distinct as f64,
            Fired::Long => long as f64 / config.names_long as f64,
            Fired::TxtNull => dns.txt_null as f64 / config.names_txt_null as f64,
            Fired::LargeAnswers => dns.large_answers as f64 / config.names_large_answers as f64,
        };
        let score = (over_threshold(ratio) + (mean_entropy / 4.0).min(1.0)) / 2.0;
        let window_h = config.names_window_ms as f64 / 3_600_000.0;
        let long_min = config.names_long_window_ms as f64 / 60_000.0;
        let summary = match fired {
            Fired::Distinct => format!("~{distinct} distinct names under {registrable} in {window_h:.0} h"),
            Fired::Long => format!(
                "{long} distinct names with a label of {}+ characters in {long_min:.0} min",
                config.names_long_label
            ),
            Fired::TxtNull => format!(
                "{} of {} DNS queries under {registrable} in {window_h:.0} h were TXT or NULL",
                dns.txt_null, dns.queries
            ),
            Fired::LargeAnswers => format!(
                "{} DNS answers of {}+ bytes under {registrable} in {window_h:.0} h",
                dns.large_answers, config.names_large_answer_bytes
            ),
        } + &format!(
            "; mean entropy {mean_entropy:.2} bits/char, longest label {}, e.g. {}",
            self.longest_label,
            self.example.as_deref().unwrap_or("-")
        );
        Signal {
            kind: SignalKind::DnsTunnel,
            service: service.map(str::to_string),
            spiffe_id: spiffe_id.map(str::to_string),
            source: None,
            destination: registrable.to_string(),
            score: round3(score),
            first: self.first_ms,
            last: time_ms,
            summary,
            evidence: vec![
                ("distinct_names", Evidence::from(distinct)),
                ("distinct_long_names", long.into()),
                ("queries", self.queries.into()),
                ("dns_queries", dns.queries.into()),
                ("txt_null_queries", dns.txt_null.into()),
                ("large_answers", dns.large_answers.into()),
                ("mean_entropy", mean_entropy.into()),
                ("longest_label", self.longest_label.into()),
            ],
            context: "names under one registrable domain".into(),
        }
    }
}

/// 0.5 at the threshold, 1 at twice it.
pub fn over_threshold(ratio: f64) -> f64 {
    (0.5 + 0.5 * (ratio - 1.0)).clamp(0.5, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(names: impl IntoIterator<Item = (i64, String)>) -> Option<Signal> {
        let config = DetectionConfig::default();
        let mut stats = NameStats::default();
        let mut first = None;
        for (t, name) in names {
            let sub = subdomain(&name, "evil.example").unwrap_or("");
            if let Some(s) = stats.observe(t, &name, sub, None, &config, (Some("ci"), None), "evil.example") {
                first.get_or_insert(s);
            }
        }
        first
    }

    fn encoded(i: u64, len: usize) -> String {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        let mut h = xxhash_rust::xxh3::xxh3_64(&i.to_le_bytes());
        (0..len)
            .map(|k| {
                if k % 12 == 0 {
                    h = xxhash_rust::xxh3::xxh3_64(&h.to_le_bytes());
                }
                let c = alphabet[(h & 31) as usize] as char;
                h >>= 5;
                c
            })
            .collect()
    }

    #[test]
    fn a_hundred_distinct_names_in_a_day_fire() {
        let names = (0..150u64).map(|i| (i as i64 * 300_000, format!("{}.evil.example", encoded(i, 20))));
        let s = feed(names).expect("fires");
        assert_eq!(s.kind, SignalKind::DnsTunnel);
        assert!(s.summary.contains("distinct names under evil.example"), "{}", s.summary);
        assert!(s.score > 0.7);
    }

    #[test]
    fn fifteen_long_names_in_five_minutes_fire() {
        let names = (0..16u64).map(|i| (i as i64 * 10_000, format!("{}.evil.example", encoded(i, 60))));
        let s = feed(names).expect("fires");
        assert!(s.summary.contains("label of 50+"), "{}", s.summary);
    }

    #[test]
    fn few_names_asked_often_do_not_fire() {
        let names = (0..5000u64).map(|i| (i as i64 * 1000, format!("api{}.evil.example", i % 20)));
        assert_eq!(feed(names), None);
    }

    #[test]
    fn long_names_spread_over_hours_do_not_fire_by_the_burst_rule() {
        let names = (0..40u64).map(|i| (i as i64 * 3_600_000, format!("{}.evil.example", encoded(i, 60))));
        assert_eq!(feed(names), None);
    }

    #[test]
    fn the_subdomain_is_what_is_left_of_the_registrable_domain() {
        assert_eq!(subdomain("a.b.evil.example", "evil.example"), Some("a.b"));
        assert_eq!(subdomain("evil.example", "evil.example"), None);
        assert_eq!(subdomain("notevil.example", "evil.example"), None);
    }

    fn feed_dns(queries: impl IntoIterator<Item = (i64, String, DnsFacts)>) -> Option<Signal> {
        let config = DetectionConfig::default();
        let mut stats = NameStats::default();
        let mut first = None;
        for (t, name, facts) in queries {
            let sub = subdomain(&name, "evil.example").unwrap_or("");
            if let Some(s) = stats.observe(t, &name, sub, Some(facts), &config, (Some("ci"), None), "evil.example") {
                first.get_or_insert(s);
            }
        }
        first
    }

    const TXT: DnsFacts = DnsFacts { txt_null: true, answer_bytes: 120 };
    const A: DnsFacts = DnsFacts { txt_null: false, answer_bytes: 60 };

    #[test]
    fn txt_null_queries_making_most_of_a_domains_queries_fire() {
        // 60 TXT queries for 30 names (under the distinct-names rule) over a day, among 20 A queries.
        let queries = (0..80u64).map(|i| {
            let facts = if i % 4 == 3 { A } else { TXT };
            (i as i64 * 900_000, format!("{}.evil.example", encoded(i % 30, 12)), facts)
        });
        let s = feed_dns(queries).expect("fires");
        assert!(s.summary.contains("50 of 66 DNS queries under evil.example"), "{}", s.summary);
        let evidence: std::collections::BTreeMap<_, _> = s.evidence.iter().cloned().collect();
        assert_eq!(evidence["txt_null_queries"], Evidence::from(50u64));
    }

    #[test]
    fn txt_queries_that_are_a_minority_do_not_fire() {
        // 60 TXT queries, but 200 A queries beside them: a mail or verification service's mix.
        let queries = (0..260u64).map(|i| {
            let facts = if i % 13 < 3 { TXT } else { A };
            (i as i64 * 300_000, format!("host{}.evil.example", i % 25), facts)
        });
        assert_eq!(feed_dns(queries), None);
    }

    #[test]
    fn many_large_answers_fire_and_requests_never_count_as_dns() {
        let big = DnsFacts { txt_null: false, answer_bytes: 1400 };
        let queries = (0..20u64).map(|i| (i as i64 * 60_000, format!("d{}.evil.example", i % 3), big));
        let s = feed_dns(queries).expect("fires");
        assert!(s.summary.contains("20 DNS answers of 1024+ bytes"), "{}", s.summary);

        // The same names as HTTP hosts (no DNS facts): nothing to count.
        let names = (0..20u64).map(|i| (i as i64 * 60_000, format!("d{}.evil.example", i % 3)));
        assert_eq!(feed(names), None);
    }
}
