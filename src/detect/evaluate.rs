//! Precision and recall of the detectors against labelled attacks (the synthetic corpus of
//! `examples/detect_corpus.rs`).
//!
//! A label names an attack: its kind, who (SPIFFE ID, else service) and destination (a host for
//! `beaconing` and `large-upload`, a registrable domain for `dns-tunnel`, `first-seen`, `rare`;
//! ignored for `deny-burst`). Signals are counted once per (kind, who, destination): a signal is
//! true when a label of its kind matches it; recall is the share of labels some signal matched.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use super::{Signal, SignalKind};

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Label {
    pub kind: SignalKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spiffe_id: Option<String>,
    #[serde(default)]
    pub destination: String,
}

impl Label {
    fn matches(&self, s: &Signal) -> bool {
        let who = match (&self.spiffe_id, &self.service) {
            (Some(id), _) => s.spiffe_id.as_ref() == Some(id),
            (None, Some(svc)) => s.service.as_ref() == Some(svc),
            (None, None) => true,
        };
        self.kind == s.kind && who && (self.kind == SignalKind::DenyBurst || self.destination == s.destination)
    }
}

impl<'de> Deserialize<'de> for SignalKind {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Score {
    pub labels: usize,
    pub detected: usize,
    pub signals: usize,
    pub true_signals: usize,
    pub precision: f64,
    pub recall: f64,
}

/// Per kind: labels, how many were detected, distinct signals, how many were true.
pub fn evaluate(labels: &[Label], signals: &[Signal]) -> BTreeMap<SignalKind, Score> {
    // A deny burst names how many destinations it saw, not one: who it is about is the signal.
    let key = |s: &Signal| {
        let destination = if s.kind == SignalKind::DenyBurst { "" } else { s.destination.as_str() };
        (s.kind, s.spiffe_id.clone(), s.service.clone(), destination.to_string())
    };
    let distinct: BTreeSet<_> = signals.iter().map(key).collect();
    let mut out: BTreeMap<SignalKind, Score> = SignalKind::ALL.iter().map(|k| (*k, Score::default())).collect();
    for k in &distinct {
        let score = out.get_mut(&k.0).expect("every kind");
        score.signals += 1;
        let first = signals.iter().find(|s| key(s) == *k);
        if first.is_some_and(|s| labels.iter().any(|l| l.matches(s))) {
            score.true_signals += 1;
        }
    }
    for label in labels {
        let score = out.get_mut(&label.kind).expect("every kind");
        score.labels += 1;
        if signals.iter().any(|s| label.matches(s)) {
            score.detected += 1;
        }
    }
    for score in out.values_mut() {
        score.precision = if score.signals == 0 { 1.0 } else { score.true_signals as f64 / score.signals as f64 };
        score.recall = if score.labels == 0 { 1.0 } else { score.detected as f64 / score.labels as f64 };
    }
    out
}

/// The table the README and the note show.
pub fn table(scores: &BTreeMap<SignalKind, Score>) -> String {
    let mut t = String::from(
        "| detector | attacks | detected | signals | true | precision | recall |\n|---|---|---|---|---|---|---|\n",
    );
    for (kind, s) in scores {
        t.push_str(&format!(
            "| {} | {} | {} | {} | {} | {:.3} | {:.3} |\n",
            kind.as_str(),
            s.labels,
            s.detected,
            s.signals,
            s.true_signals,
            s.precision,
            s.recall
        ));
    }
    t
}
