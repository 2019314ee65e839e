//! First-seen and rare destinations, by registrable domain.
//!
//! Each subject (a service, or an unclaimed identity) has a history of the registrable domains it
//! reached (bounded, least recently used dropped); the history is what `first-seen` compares with,
//! and is kept across restarts (`history`). The prevalence of a domain is the number of subjects
//! whose history holds it: `rare` is a domain reached by at most `rareMaxServicePercent` of them.
//! A destination the subject reaches by an exact-host allow rule was reviewed when the rule was
//! written: neither detector signals it.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::beacon::round3;
use super::signal::{Evidence, Signal, SignalKind};
use super::{Admission, Lru, lru};
use crate::policy::detection::DetectionConfig;

/// A (subject, domain) pair signals `rare` at most once in this long.
const RARE_REPEAT_MS: i64 = 24 * 3_600_000;
/// Registrable domains remembered per subject.
pub const DOMAINS_PER_SUBJECT: usize = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Seen {
    pub first_ms: i64,
    pub last_ms: i64,
    #[serde(skip)]
    rare_signaled_ms: Option<i64>,
}

#[derive(Debug)]
struct SubjectHistory {
    since_ms: i64,
    domains: Lru<Seen>,
}

#[derive(Debug)]
pub struct Novelty {
    subjects: Lru<SubjectHistory>,
    prevalence: FxHashMap<Box<str>, u32>,
    pub dirty: bool,
    pub evicted: u64,
}

/// Who reached what, for the signal.
pub struct Reach<'a> {
    pub time_ms: i64,
    pub subject: &'a str,
    pub domain: &'a str,
    pub host: &'a str,
    pub admission: Admission,
    pub service: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
}

impl Novelty {
    pub fn new(max_subjects: usize) -> Self {
        Novelty { subjects: lru(max_subjects), prevalence: FxHashMap::default(), dirty: false, evicted: 0 }
    }

    pub fn set_capacity(&mut self, max_subjects: usize) {
        while self.subjects.len() > max_subjects.max(1) {
            self.evict_subject();
        }
        self.subjects.set_capacity(max_subjects.max(1));
    }

    /// Subjects reaching `domain`, and subjects known.
    pub fn prevalence(&self, domain: &str) -> (usize, usize) {
        (self.prevalence.get(domain).copied().unwrap_or(0) as usize, self.subjects.len())
    }

    pub fn heap_bytes(&self) -> usize {
        let domains: usize = self.subjects.iter().map(|(k, h)| k.len() + 64 + h.domains.len() * 80).sum();
        domains + self.prevalence.len() * 48
    }

    /// Records one request; returns a `first-seen` and/or a `rare` signal.
    pub fn observe(&mut self, r: &Reach<'_>, config: &DetectionConfig, out: &mut Vec<Signal>) {
        if !self.subjects.contains_key(r.subject) && self.subjects.len() >= self.subjects.capacity() {
            self.evict_subject();
        }
        let history = self
            .subjects
            .entry(r.subject.into())
            .or_insert_with(|| SubjectHistory { since_ms: r.time_ms, domains: lru(DOMAINS_PER_SUBJECT) });
        let since_ms = history.since_ms;
        let known = history.domains.len();
        let mut dropped = None;
        let new = match history.domains.get_mut(r.domain) {
            Some(seen) => {
                seen.last_ms = seen.last_ms.max(r.time_ms);
                false
            }
            None => {
                if history.domains.len() >= DOMAINS_PER_SUBJECT {
                    dropped = history.domains.remove_lru().map(|(d, _)| d);
                }
                let seen = Seen { first_ms: r.time_ms, last_ms: r.time_ms, rare_signaled_ms: None };
                history.domains.insert(r.domain.into(), seen);
                true
            }
        };
        if let Some(d) = dropped {
            self.forget(&d);
        }
        if new {
            self.dirty = true;
            *self.prevalence.entry(r.domain.into()).or_default() += 1;
        }
        if r.admission == Admission::Exact {
            return;
        }
        // Until the subject's history is a learning period old, neither its history nor the
        // fleet's prevalence is mature: nothing is new or rare yet.
        if r.time_ms - since_ms < config.first_seen_learning_ms {
            return;
        }
        if new {
            out.push(self.first_seen(r, since_ms, known));
        }
        let (reaching, seen) = self.prevalence(r.domain);
        let rare = seen >= config.rare_min_services
            && (reaching as f64) <= seen as f64 * config.rare_max_service_percent / 100.0;
        if !rare {
            return;
        }
        let Some(entry) = self.subjects.get_mut(r.subject).and_then(|h| h.domains.get_mut(r.domain)) else { return };
        if entry.rare_signaled_ms.is_some_and(|s| r.time_ms - s < RARE_REPEAT_MS) {
            return;
        }
        entry.rare_signaled_ms = Some(r.time_ms);
        let first = entry.first_ms;
        out.push(self.rare(r, first, reaching, seen, config));
    }

    fn first_seen(&self, r: &Reach<'_>, since_ms: i64, known: usize) -> Signal {
        let (reaching, seen) = self.prevalence(r.domain);
        let days = (r.time_ms - since_ms) as f64 / 86_400_000.0;
        Signal {
            kind: SignalKind::FirstSeen,
            service: r.service.map(str::to_string),
            spiffe_id: r.spiffe_id.map(str::to_string),
            source: None,
            destination: r.domain.to_string(),
            score: if r.admission.is_allowed() || r.admission == Admission::WouldDeny { 0.8 } else { 0.6 },
            first: r.time_ms,
            last: r.time_ms,
            summary: format!(
                "{} reached {} ({}) for the first time in {days:.1} days of history ({known} domains known); \
                 {reaching} of {seen} services reach it",
                r.subject, r.domain, r.host
            ),
            evidence: vec![
                ("history_days", Evidence::from(days)),
                ("domains_known", known.into()),
                ("services_reaching", reaching.into()),
                ("services_seen", seen.into()),
                ("host", r.host.into()),
            ],
            context: r.admission.describe().to_string(),
        }
    }

    fn rare(&self, r: &Reach<'_>, first: i64, reaching: usize, seen: usize, config: &DetectionConfig) -> Signal {
        let share = 100.0 * reaching as f64 / seen as f64;
        Signal {
            kind: SignalKind::Rare,
            service: r.service.map(str::to_string),
            spiffe_id: r.spiffe_id.map(str::to_string),
            source: None,
            destination: r.domain.to_string(),
            score: round3(1.0 - share / 100.0),
            first,
            last: r.time_ms,
            summary: format!(
                "{} is reached by {reaching} of {seen} services ({share:.1}%, at most {}% is rare), here by {} ({})",
                r.domain, config.rare_max_service_percent, r.subject, r.host
            ),
            evidence: vec![
                ("services_reaching", Evidence::from(reaching)),
                ("services_seen", seen.into()),
                ("share_percent", share.into()),
                ("host", r.host.into()),
            ],
            context: r.admission.describe().to_string(),
        }
    }

    fn evict_subject(&mut self) {
        if let Some((_, history)) = self.subjects.remove_lru() {
            self.evicted += 1;
            for (domain, _) in history.domains.iter() {
                self.forget(domain);
            }
        }
    }

    fn forget(&mut self, domain: &str) {
        if let Some(n) = self.prevalence.get_mut(domain) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.prevalence.remove(domain);
            }
        }
    }

    /// The history as written to the state file.
    pub fn snapshot(&self) -> HistoryFile {
        let subjects = self
            .subjects
            .iter()
            .map(|(name, h)| SubjectRecord {
                name: name.to_string(),
                since: h.since_ms,
                domains: h.domains.iter().map(|(d, s)| (d.to_string(), s.first_ms, s.last_ms)).collect(),
            })
            .collect();
        HistoryFile { version: HISTORY_VERSION, subjects }
    }

    /// Takes in a saved history (least recently used first, as `snapshot` writes it).
    pub fn restore(&mut self, file: HistoryFile) {
        for s in file.subjects {
            if self.subjects.len() >= self.subjects.capacity() {
                self.evict_subject();
            }
            let mut domains = lru(DOMAINS_PER_SUBJECT);
            for (d, first_ms, last_ms) in s.domains.into_iter().take(DOMAINS_PER_SUBJECT) {
                *self.prevalence.entry(d.as_str().into()).or_default() += 1;
                domains.insert(d.into_boxed_str(), Seen { first_ms, last_ms, rare_signaled_ms: None });
            }
            self.subjects.insert(s.name.into_boxed_str(), SubjectHistory { since_ms: s.since, domains });
        }
    }
}

pub const HISTORY_VERSION: u32 = 1;

/// The first-seen state file: every subject's registrable domains with first and last contact.
#[derive(Debug, Serialize, Deserialize)]
pub struct HistoryFile {
    pub version: u32,
    pub subjects: Vec<SubjectRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct SubjectRecord {
    pub name: String,
    pub since: i64,
    pub domains: Vec<(String, i64, i64)>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 86_400_000;

    fn reach<'a>(t: i64, subject: &'a str, domain: &'a str, admission: Admission) -> Reach<'a> {
        Reach { time_ms: t, subject, domain, host: domain, admission, service: Some(subject), spiffe_id: None }
    }

    fn kinds(out: &[Signal]) -> Vec<SignalKind> {
        out.iter().map(|s| s.kind).collect()
    }

    #[test]
    fn a_new_domain_after_the_learning_period_is_first_seen_but_not_one_reached_by_an_exact_allow() {
        let config = DetectionConfig::default();
        let mut n = Novelty::new(100);
        let mut out = Vec::new();
        n.observe(&reach(0, "ci", "pypi.org", Admission::Pattern), &config, &mut out);
        n.observe(&reach(DAY / 2, "ci", "npmjs.org", Admission::Pattern), &config, &mut out);
        assert!(out.is_empty(), "learning: {out:?}");
        n.observe(&reach(2 * DAY, "ci", "pypi.org", Admission::Pattern), &config, &mut out);
        assert!(out.is_empty(), "known: {out:?}");
        n.observe(&reach(2 * DAY, "ci", "stripe.com", Admission::Exact), &config, &mut out);
        assert!(out.is_empty(), "exact allow: {out:?}");
        n.observe(&reach(2 * DAY, "ci", "evil.example", Admission::WouldDeny), &config, &mut out);
        assert_eq!(kinds(&out), vec![SignalKind::FirstSeen]);
        assert!(out[0].summary.contains("first time in 2.0 days"), "{}", out[0].summary);
    }

    #[test]
    fn a_domain_one_of_fifty_services_reaches_is_rare_once_a_day_after_the_learning_period() {
        let config = DetectionConfig::default();
        let mut n = Novelty::new(100);
        let mut out = Vec::new();
        let names: Vec<String> = (0..50).map(|i| format!("svc{i}")).collect();
        for name in &names {
            n.observe(&reach(0, name, "common.example", Admission::Pattern), &config, &mut out);
        }
        assert!(out.is_empty());
        // Within the learning period nothing is rare yet (prevalence is still being learned).
        n.observe(&reach(1000, "svc4", "odd.example", Admission::Pattern), &config, &mut out);
        assert!(out.is_empty(), "{out:?}");
        n.observe(&reach(DAY + 1000, "svc3", "other.example", Admission::Pattern), &config, &mut out);
        assert_eq!(kinds(&out), vec![SignalKind::FirstSeen, SignalKind::Rare]);
        out.clear();
        n.observe(&reach(DAY + 2000, "svc3", "other.example", Admission::Pattern), &config, &mut out);
        assert!(out.is_empty(), "once a day: {out:?}");
        n.observe(&reach(2 * DAY + 2000, "svc3", "other.example", Admission::Pattern), &config, &mut out);
        assert_eq!(kinds(&out), vec![SignalKind::Rare]);
    }

    #[test]
    fn too_few_services_make_nothing_rare() {
        let config = DetectionConfig::default();
        let mut n = Novelty::new(100);
        let mut out = Vec::new();
        for i in 0..5 {
            n.observe(&reach(0, &format!("svc{i}"), &format!("own{i}.example"), Admission::Pattern), &config, &mut out);
        }
        assert!(out.is_empty());
    }

    #[test]
    fn the_history_survives_a_snapshot_and_evictions_keep_prevalence_true() {
        let config = DetectionConfig::default();
        let mut n = Novelty::new(2);
        let mut out = Vec::new();
        n.observe(&reach(0, "a", "x.example", Admission::Pattern), &config, &mut out);
        n.observe(&reach(1, "b", "x.example", Admission::Pattern), &config, &mut out);
        assert_eq!(n.prevalence("x.example"), (2, 2));
        n.observe(&reach(2, "c", "y.example", Admission::Pattern), &config, &mut out);
        assert_eq!(n.prevalence("x.example"), (1, 2), "a was evicted");
        assert_eq!(n.evicted, 1);
        let json = serde_json::to_string(&n.snapshot()).unwrap();
        let mut back = Novelty::new(2);
        back.restore(serde_json::from_str(&json).unwrap());
        assert_eq!(back.prevalence("x.example"), (1, 2));
        // b knows x.example after the restart: not first-seen.
        back.observe(&reach(3 * DAY, "b", "x.example", Admission::Pattern), &config, &mut out);
        assert!(out.is_empty());
    }
}
