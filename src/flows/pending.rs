//! Observations the Check path has made and the live table has not taken yet, aggregated per
//! thread.
//!
//! Sending every decision to the telemetry thread cost the Check path 4-9% (a copy of the
//! request's strings, a boxed event, a cross-thread free per check). Most checks repeat a flow
//! seen a moment ago, so instead each thread counts into its own small map: a repeat is one hash
//! lookup on borrowed strings and three integer updates, no allocation. The map's mutex is the
//! thread's own; only a drain (when the live table is read or the telemetry thread flushes)
//! ever waits on it, for the time of a `mem::take`.
//!
//! The detectors read the same maps: with detection on and nothing queued, each observation also
//! keeps a `Timeline` (its hits and body bytes per second), handed to them when the telemetry
//! thread drains (a drain for a read of the table holds timelines back for that one).

use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::Mutex;

use hashbrown::{Equivalent, HashMap};
use rustc_hash::FxBuildHasher;
use thread_local::ThreadLocal;

use super::{Observation, SubjectRef};
use crate::policy::{Outcome, Protocol};

/// Distinct observations one thread holds between two drains; beyond it, observations of new
/// flows are dropped (and counted) until the next drain.
pub const MAX_PENDING_PER_THREAD: usize = 16_384;

/// An observation's identity, owned: who, which workload, where, and what was decided.
#[derive(Debug, PartialEq, Eq)]
struct Key {
    unclaimed: bool,
    subject: Box<str>,
    workload: Option<Box<str>>,
    host: Box<str>,
    port: u16,
    protocol: Protocol,
    decision: Outcome,
    reason: Box<str>,
    rule: Option<Box<str>>,
}

/// The same identity, borrowed from an observation (hashed and compared like `Key`).
struct Probe<'o, 'a>(&'o Observation<'a>);

fn subject_parts<'a>(subject: SubjectRef<'a>) -> (bool, &'a str) {
    match subject {
        SubjectRef::Service(s) => (false, s),
        SubjectRef::Unclaimed(id) => (true, id),
    }
}

/// One hash for `Key` and `Probe`: the fields in one order, strings as `str`.
#[allow(clippy::too_many_arguments)]
fn hash_parts<H: Hasher>(
    h: &mut H,
    (unclaimed, subject): (bool, &str),
    workload: Option<&str>,
    host: &str,
    port: u16,
    protocol: Protocol,
    decision: Outcome,
    reason: &str,
    rule: Option<&str>,
) {
    (unclaimed, subject, workload, host, port, protocol.as_str(), decision.as_str(), reason, rule).hash(h);
}

impl Hash for Key {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let (w, r) = (self.workload.as_deref(), self.rule.as_deref());
        let subject = (self.unclaimed, &*self.subject);
        hash_parts(h, subject, w, &self.host, self.port, self.protocol, self.decision, &self.reason, r);
    }
}

impl Hash for Probe<'_, '_> {
    fn hash<H: Hasher>(&self, h: &mut H) {
        let o = self.0;
        hash_parts(h, subject_parts(o.subject), o.workload, o.host, o.port, o.protocol, o.decision, o.reason, o.rule);
    }
}

impl Equivalent<Key> for Probe<'_, '_> {
    fn equivalent(&self, k: &Key) -> bool {
        let o = self.0;
        (k.unclaimed, &*k.subject) == subject_parts(o.subject)
            && k.port == o.port
            && k.protocol == o.protocol
            && k.decision == o.decision
            && *k.host == *o.host
            && k.workload.as_deref() == o.workload
            && *k.reason == *o.reason
            && k.rule.as_deref() == o.rule
    }
}

impl Key {
    fn of(o: &Observation<'_>) -> Key {
        let (unclaimed, subject) = subject_parts(o.subject);
        Key {
            unclaimed,
            subject: subject.into(),
            workload: o.workload.map(Into::into),
            host: o.host.into(),
            port: o.port,
            protocol: o.protocol,
            decision: o.decision,
            reason: o.reason.into(),
            rule: o.rule.map(Into::into),
        }
    }

    fn observation(&self, time_ms: i64) -> Observation<'_> {
        Observation {
            time_ms,
            subject: if self.unclaimed {
                SubjectRef::Unclaimed(&self.subject)
            } else {
                SubjectRef::Service(&self.subject)
            },
            workload: self.workload.as_deref(),
            host: &self.host,
            port: self.port,
            protocol: self.protocol,
            decision: self.decision,
            reason: &self.reason,
            rule: self.rule.as_deref(),
        }
    }
}

/// How often, and between when, one observation was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Counted {
    pub hits: u64,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The seconds of those hits, when the Check path noted them (`TimelineNote`).
    pub timeline: Option<Timeline>,
}

/// What the Check path adds to an observation for the detectors (`detect`), which need the
/// seconds of a flow's requests and their bodies, not just the count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineNote {
    /// Admitted by an exact-host rule: the same for every hit, the rule being part of the flow.
    pub exact_host: bool,
    /// The request's body size (`content-length`), 0 when none or unknown.
    pub body_bytes: u64,
}

/// Distinct seconds one thread holds for one flow between two drains. Drains come every 200 ms,
/// so two are the usual most; should the telemetry thread fall behind, later hits count in the
/// last second held (counts and bytes kept, their times coarsened).
pub const TIMELINE_SECONDS: usize = 4;

/// A flow's hits by second (between two drains), with their body bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeline {
    pub exact_host: bool,
    seconds: [Second; TIMELINE_SECONDS],
    len: u8,
}

/// One second of a flow's hits.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Unix seconds.
    pub unix: i64,
    pub hits: u64,
    pub body_bytes: u64,
}

impl Timeline {
    fn new(note: TimelineNote, unix: i64) -> Self {
        let mut t = Timeline { exact_host: note.exact_host, seconds: Default::default(), len: 0 };
        t.add(unix, note.body_bytes);
        t
    }

    fn add(&mut self, unix: i64, body_bytes: u64) {
        let len = usize::from(self.len);
        match self.seconds[..len].iter_mut().find(|s| s.unix == unix) {
            Some(s) => {
                s.hits += 1;
                s.body_bytes += body_bytes;
            }
            None if len < TIMELINE_SECONDS => {
                self.seconds[len] = Second { unix, hits: 1, body_bytes };
                self.len += 1;
            }
            None => {
                let last = &mut self.seconds[TIMELINE_SECONDS - 1];
                (last.unix, last.hits, last.body_bytes) =
                    (last.unix.max(unix), last.hits + 1, last.body_bytes + body_bytes);
            }
        }
    }

    /// The seconds held, in the order first seen.
    pub fn seconds(&self) -> &[Second] {
        &self.seconds[..usize::from(self.len)]
    }
}

#[derive(Debug, Default)]
struct Shard {
    observations: HashMap<Key, Counted, FxBuildHasher>,
    dropped: u64,
}

/// What reads the timelines a drain takes (`drain_with_timelines`).
type TimelineReader<'f> = dyn FnMut(&Observation<'_>, &Timeline) + 'f;

/// Every thread's pending observations.
#[derive(Debug, Default)]
pub struct Pending {
    shards: ThreadLocal<Mutex<Shard>>,
    /// Timelines drained for the flow table (`drain`) that the detectors have not read yet
    /// (`drain_with_timelines`), bounded like one thread's map.
    held: Mutex<Vec<(Key, Timeline)>>,
}

impl Pending {
    /// Counts `obs` in this thread's map (the Check path), with its second and body for the
    /// detectors when `timeline` is given.
    pub fn note(&self, obs: &Observation<'_>, timeline: Option<TimelineNote>) {
        let shard = self.shards.get_or_default();
        // A poisoned shard (a panic mid-update) is still a map of counts.
        let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
        let probe = Probe(obs);
        let hash = shard.observations.hasher().hash_one(&probe);
        let full = shard.observations.len() >= MAX_PENDING_PER_THREAD;
        match shard.observations.raw_entry_mut().from_hash(hash, |k| probe.equivalent(k)) {
            hashbrown::hash_map::RawEntryMut::Occupied(mut e) => {
                let c = e.get_mut();
                c.hits += 1;
                c.first_ms = c.first_ms.min(obs.time_ms);
                c.last_ms = c.last_ms.max(obs.time_ms);
                if let Some(note) = timeline {
                    let unix = obs.time_ms.div_euclid(1000);
                    match &mut c.timeline {
                        Some(t) => t.add(unix, note.body_bytes),
                        None => c.timeline = Some(Timeline::new(note, unix)),
                    }
                }
            }
            hashbrown::hash_map::RawEntryMut::Vacant(_) if full => shard.dropped += 1,
            hashbrown::hash_map::RawEntryMut::Vacant(e) => {
                let timeline = timeline.map(|note| Timeline::new(note, obs.time_ms.div_euclid(1000)));
                let counted = Counted { hits: 1, first_ms: obs.time_ms, last_ms: obs.time_ms, timeline };
                e.insert_hashed_nocheck(hash, Key::of(obs), counted);
            }
        }
    }

    /// Takes every thread's pending observations: `each` sees every distinct observation once
    /// with its counts (at its last time). Timelines are held back for the detectors
    /// (`drain_with_timelines`). Returns the observations dropped for lack of room.
    pub fn drain(&self, each: impl FnMut(&Observation<'_>, Counted)) -> u64 {
        self.drain_inner(each, None)
    }

    /// Like `drain`, and `timeline` then sees every timeline: the ones held back by earlier
    /// drains first, then those of this one.
    pub fn drain_with_timelines(
        &self,
        each: impl FnMut(&Observation<'_>, Counted),
        mut timeline: impl FnMut(&Observation<'_>, &Timeline),
    ) -> u64 {
        let held = std::mem::take(&mut *self.held.lock().unwrap_or_else(|e| e.into_inner()));
        for (key, t) in &held {
            timeline(&key.observation(t.seconds().last().map_or(0, |s| s.unix * 1000)), t);
        }
        self.drain_inner(each, Some(&mut timeline))
    }

    fn drain_inner(
        &self,
        mut each: impl FnMut(&Observation<'_>, Counted),
        mut timeline: Option<&mut TimelineReader<'_>>,
    ) -> u64 {
        let mut dropped = 0;
        for shard in self.shards.iter() {
            let taken = {
                let mut shard = shard.lock().unwrap_or_else(|e| e.into_inner());
                dropped += std::mem::take(&mut shard.dropped);
                std::mem::take(&mut shard.observations)
            };
            let mut held = Vec::new();
            for (key, counted) in taken {
                let obs = key.observation(counted.last_ms);
                each(&obs, counted);
                match (counted.timeline, timeline.as_mut()) {
                    (Some(t), Some(f)) => f(&obs, &t),
                    (Some(t), None) => held.push((key, t)),
                    (None, _) => {}
                }
            }
            if !held.is_empty() {
                let mut all = self.held.lock().unwrap_or_else(|e| e.into_inner());
                let room = MAX_PENDING_PER_THREAD.saturating_sub(all.len());
                dropped += held.len().saturating_sub(room) as u64;
                all.extend(held.into_iter().take(room));
            }
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn obs<'a>(host: &'a str, workload: &'a str, t: i64) -> Observation<'a> {
        Observation {
            time_ms: t,
            subject: SubjectRef::Service("payments"),
            workload: Some(workload),
            host,
            port: 443,
            protocol: Protocol::Https,
            decision: Outcome::Allow,
            reason: "allowed",
            rule: Some("payments/allow/0"),
        }
    }

    fn drained(p: &Pending) -> Vec<(String, String, Counted)> {
        let mut out = Vec::new();
        p.drain(|o, c| out.push((o.host.to_string(), o.workload.unwrap().to_string(), c)));
        out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        out
    }

    #[test]
    fn repeats_are_counted_once_per_distinct_observation_with_their_times() {
        let p = Pending::default();
        p.note(&obs("a.test", "w1", 20), None);
        p.note(&obs("a.test", "w1", 10), None);
        p.note(&obs("a.test", "w1", 30), None);
        p.note(&obs("a.test", "w2", 15), None);
        p.note(&obs("b.test", "w1", 40), None);
        let got = drained(&p);
        assert_eq!(got.len(), 3);
        assert_eq!(got[0].2, Counted { hits: 3, first_ms: 10, last_ms: 30, timeline: None });
        assert_eq!(got[1].2.hits, 1);
        assert!(drained(&p).is_empty(), "a drain takes everything");
    }

    #[test]
    fn every_field_tells_observations_apart() {
        let p = Pending::default();
        let base = obs("a.test", "w1", 1);
        let variants = [
            base,
            Observation { subject: SubjectRef::Unclaimed("payments"), ..base },
            Observation { port: 8443, ..base },
            Observation { protocol: Protocol::Tls, ..base },
            Observation { decision: Outcome::WouldDeny, ..base },
            Observation { reason: "break-glass", ..base },
            Observation { rule: None, ..base },
            Observation { workload: None, ..base },
        ];
        for v in &variants {
            p.note(v, None);
            p.note(v, None);
        }
        let mut n = 0;
        p.drain(|_, c| {
            assert_eq!(c.hits, 2);
            n += 1;
        });
        assert_eq!(n, variants.len());
    }

    #[test]
    fn a_full_thread_map_drops_new_observations_counted_and_still_counts_known_ones() {
        let p = Pending::default();
        let hosts: Vec<String> = (0..=MAX_PENDING_PER_THREAD).map(|i| format!("h{i}.test")).collect();
        for h in &hosts {
            p.note(&obs(h, "w1", 1), None);
        }
        p.note(&obs(&hosts[0], "w1", 2), None); // known: counted
        let mut distinct = 0;
        let mut first_hits = 0;
        let dropped = p.drain(|o, c| {
            distinct += 1;
            if o.host == hosts[0] {
                first_hits = c.hits;
            }
        });
        assert_eq!((distinct, dropped, first_hits), (MAX_PENDING_PER_THREAD, 1, 2));
        p.note(&obs(&hosts[MAX_PENDING_PER_THREAD], "w1", 3), None);
        assert_eq!(p.drain(|_, _| {}), 0, "room again after a drain");
    }

    #[test]
    fn threads_count_apart_and_one_drain_takes_them_all() {
        let p = std::sync::Arc::new(Pending::default());
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let p = p.clone();
                std::thread::spawn(move || (0..1000).for_each(|i| p.note(&obs("a.test", "w1", i), None)))
            })
            .collect();
        threads.into_iter().for_each(|t| t.join().unwrap());
        let mut hits = 0;
        p.drain(|_, c| hits += c.hits);
        assert_eq!(hits, 4000);
    }

    #[test]
    fn timelines_count_hits_and_bytes_per_second_and_wait_for_the_detectors() {
        let p = Pending::default();
        let note = |bytes| Some(TimelineNote { exact_host: true, body_bytes: bytes });
        p.note(&obs("a.test", "w1", 1_000), note(10));
        p.note(&obs("a.test", "w1", 1_500), note(5));
        p.note(&obs("a.test", "w1", 2_000), note(0));
        p.note(&obs("b.test", "w1", 2_000), None);
        // A drain for the flow table holds the timeline back; the next one with timelines gets it.
        let mut flows = 0;
        p.drain(|_, c| {
            flows += 1;
            assert_eq!(c.hits, if c.timeline.is_some() { 3 } else { 1 });
        });
        assert_eq!(flows, 2);
        p.note(&obs("a.test", "w1", 9_000), note(7));
        let mut seen = Vec::new();
        p.drain_with_timelines(
            |_, _| {},
            |o, t| {
                assert!(t.exact_host);
                seen.push((o.host.to_string(), t.seconds().to_vec()));
            },
        );
        let second = |unix, hits, body_bytes| Second { unix, hits, body_bytes };
        assert_eq!(
            seen,
            vec![
                ("a.test".to_string(), vec![second(1, 2, 15), second(2, 1, 0)]),
                ("a.test".to_string(), vec![second(9, 1, 7)]),
            ]
        );
        let mut again = 0;
        p.drain_with_timelines(|_, _| {}, |_, _| again += 1);
        assert_eq!(again, 0, "each timeline is read once");
    }

    #[test]
    fn a_timeline_past_its_seconds_counts_late_hits_in_its_last() {
        let p = Pending::default();
        for s in 0..10 {
            p.note(&obs("a.test", "w1", s * 1000), Some(TimelineNote { exact_host: false, body_bytes: 1 }));
        }
        let mut seconds = Vec::new();
        p.drain_with_timelines(|_, _| {}, |_, t| seconds = t.seconds().to_vec());
        assert_eq!(seconds.len(), TIMELINE_SECONDS);
        let last = seconds[TIMELINE_SECONDS - 1];
        assert_eq!((last.unix, last.hits, last.body_bytes), (9, 7, 7));
        assert_eq!(seconds.iter().map(|s| s.hits).sum::<u64>(), 10);
    }
}
