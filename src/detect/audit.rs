//! `egressd detect`: the detectors over audit logs. Decision records, stream totals (the
//! gateway's access log over ALS) and DNS query records become observations, ordered by their
//! own `time` (several logs, from several replicas, interleave), and run through one `Detector`.
//!
//! Whether an allow came from an exact-host rule is read from the rule id in the given policy
//! (ids are stable within a policy version); without a policy every allow counts as a pattern.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Deserialize;

use super::{Admission, Detector, Event, Observation, Signal};
use crate::flows::audit_log::{BadLine, ReadError, files_of, for_each_line, record_time_ms};
use crate::policy::{CompiledPolicy, Outcome};

const MAX_REPORTED_BAD_LINES: usize = 20;

/// What reading the logs found.
#[derive(Debug, Default, Clone, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectReport {
    pub files: Vec<PathBuf>,
    pub records: u64,
    pub observations: u64,
    /// Records that are not about a request of a known caller (signals, tunnel checks, records
    /// without a caller or destination).
    pub skipped: u64,
    pub bad_lines: u64,
    /// The first bad lines, as `FILE:LINE: what`.
    pub first_bad_lines: Vec<String>,
}

/// One observation with its strings interned.
#[derive(Debug, Clone, Copy)]
struct Stored {
    time_ms: i64,
    service: Option<u32>,
    spiffe_id: Option<u32>,
    source: Option<u32>,
    host: u32,
    port: u16,
    event: Event,
}

#[derive(Default)]
struct Strings {
    ids: FxHashMap<Box<str>, u32>,
    names: Vec<Box<str>>,
}

impl Strings {
    fn id(&mut self, s: &str) -> u32 {
        if let Some(&id) = self.ids.get(s) {
            return id;
        }
        let id = self.names.len() as u32;
        self.names.push(s.into());
        self.ids.insert(s.into(), id);
        id
    }
}

/// Observations read from audit logs, in time order once `sorted`.
#[derive(Default)]
pub struct AuditObservations {
    stored: Vec<Stored>,
    strings: Strings,
    /// Ids of the given policy's rules that name an exact host.
    exact_rules: FxHashSet<String>,
    pub report: DetectReport,
}

impl AuditObservations {
    pub fn new(policy: Option<&CompiledPolicy>) -> Self {
        let exact_rules = policy
            .map(|p| {
                p.rules.iter().filter(|r| super::names_exact_host(r.host.as_ref())).map(|r| r.id.clone()).collect()
            })
            .unwrap_or_default();
        AuditObservations { exact_rules, ..Default::default() }
    }

    /// Reads every file of every path (with rotations, oldest first).
    pub fn read_paths(&mut self, paths: &[PathBuf]) -> Result<(), ReadError> {
        for path in paths {
            for file in files_of(path) {
                let err = |source| ReadError { path: file.clone(), source };
                let f = File::open(&file).map_err(err)?;
                self.read(f, &file).map_err(err)?;
            }
        }
        Ok(())
    }

    /// Reads one log from `input`, reported as `path`.
    pub fn read(&mut self, input: impl std::io::Read, path: &Path) -> std::io::Result<()> {
        self.report.files.push(path.to_path_buf());
        for_each_line(input, |number, line| {
            let parsed = match line {
                Some(text) => self.parse(text),
                None => {
                    Err(format!("longer than {} MiB: not an audit record", crate::flows::audit_log::MAX_LINE >> 20))
                }
            };
            match parsed {
                Ok(true) => {
                    self.report.records += 1;
                    self.report.observations += 1;
                }
                Ok(false) => {
                    self.report.records += 1;
                    self.report.skipped += 1;
                }
                Err(error) => {
                    self.report.bad_lines += 1;
                    if self.report.first_bad_lines.len() < MAX_REPORTED_BAD_LINES {
                        self.report
                            .first_bad_lines
                            .push(BadLine { path: path.to_path_buf(), line: number, error }.to_string());
                    }
                }
            }
        })
    }

    /// Ok(true): an observation was kept; Ok(false): a record that is not one.
    fn parse(&mut self, text: &[u8]) -> Result<bool, String> {
        let r: Line<'_> = sonic_rs::from_slice(text).map_err(|e| format!("not an audit record: {e}"))?;
        let time = r.time.as_deref().ok_or("not an audit record: no `time`")?;
        let time_ms = record_time_ms(time).map_err(|e| format!("`time` is not an RFC 3339 timestamp: {e}"))?;
        if r.signal || r.tunnel_start.is_some() {
            return Ok(false);
        }
        let mut time_ms = time_ms;
        let event = if let Some(kind) = r.record.as_deref() {
            // A tunnel's final totals (progress reports are running totals of the same bytes);
            // a plain request's body was counted from its decision record's `content-length`.
            if kind != "stream-totals" || r.method.as_deref() != Some("CONNECT") {
                return Ok(false);
            }
            // `time` is the stream's start; the bytes were sent by its end.
            time_ms += (r.duration_us.unwrap_or(0.0) / 1000.0) as i64;
            Event::StreamTotals { bytes_sent: r.bytes_sent.unwrap_or(0) }
        } else if let Some(decision) = r.decision.as_deref() {
            let outcome = decision.parse::<Outcome>().map_err(|e| format!("`egress.decision`: {e}"))?;
            let break_glass = r.reason.as_deref() == Some("break-glass");
            let admission = Admission::from_parts(outcome, break_glass, || {
                r.rule.as_deref().is_some_and(|id| self.exact_rules.contains(id))
            });
            if r.qname.is_some() {
                let facts = crate::detect::DnsFacts {
                    txt_null: crate::detect::is_txt_null(r.qtype.as_deref().unwrap_or_default()),
                    answer_bytes: r.answer_bytes.unwrap_or(0),
                };
                Event::DnsQuery { admission, facts }
            } else {
                Event::Request { admission, body_bytes: r.body_size }
            }
        } else {
            return Ok(false);
        };
        let host = r.qname.as_deref().or(r.host.as_deref()).unwrap_or_default();
        if host.is_empty()
            || (r.service.is_none() && r.spiffe_id.is_none() && (r.qname.is_none() || r.client.is_none()))
        {
            return Ok(false);
        }
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let stored = Stored {
            time_ms,
            service: r.service.as_deref().map(|s| self.strings.id(s)),
            spiffe_id: r.spiffe_id.as_deref().map(|s| self.strings.id(s)),
            source: r.client.as_deref().map(|s| self.strings.id(s)),
            host: self.strings.id(&host),
            port: r.port.unwrap_or(0),
            event,
        };
        self.stored.push(stored);
        Ok(true)
    }

    /// Runs every observation, in time order, through `detector`; returns the signals.
    pub fn detect(mut self, detector: &mut Detector) -> (Vec<Signal>, DetectReport) {
        self.stored.sort_by_key(|s| s.time_ms);
        let name = |id: u32| &*self.strings.names[id as usize];
        let mut signals = Vec::new();
        for s in &self.stored {
            let o = Observation {
                time_ms: s.time_ms,
                service: s.service.map(name),
                spiffe_id: s.spiffe_id.map(name),
                source: s.source.map(name),
                host: name(s.host),
                port: s.port,
                event: s.event,
            };
            detector.observe(&o, &mut signals);
        }
        (signals, self.report)
    }
}

/// The fields of an audit record the detectors read; the others are skipped unread.
#[derive(Default)]
struct Line<'a> {
    time: Option<Cow<'a, str>>,
    decision: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    spiffe_id: Option<Cow<'a, str>>,
    service: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    port: Option<u16>,
    rule: Option<Cow<'a, str>>,
    tunnel_start: Option<Cow<'a, str>>,
    body_size: Option<u64>,
    record: Option<Cow<'a, str>>,
    bytes_sent: Option<u64>,
    method: Option<Cow<'a, str>>,
    duration_us: Option<f64>,
    qname: Option<Cow<'a, str>>,
    qtype: Option<Cow<'a, str>>,
    answer_bytes: Option<u64>,
    client: Option<Cow<'a, str>>,
    signal: bool,
}

impl<'de> Deserialize<'de> for Line<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Line<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("an audit record (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Line<'de>, A::Error> {
                let mut l = Line::default();
                while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                    let text = |map: &mut A| map.next_value::<Option<Cow<'de, str>>>();
                    match &*key {
                        "time" => l.time = text(&mut map)?,
                        "egress.decision" => l.decision = text(&mut map)?,
                        "egress.reason" => l.reason = text(&mut map)?,
                        "egress.spiffe_id" => l.spiffe_id = text(&mut map)?,
                        "egress.service" => l.service = text(&mut map)?,
                        "server.address" => l.host = text(&mut map)?,
                        "server.port" => l.port = map.next_value()?,
                        "egress.rule.id" => l.rule = text(&mut map)?,
                        "egress.tunnel.start" => l.tunnel_start = text(&mut map)?,
                        "http.request.body.size" => l.body_size = map.next_value()?,
                        "egress.record" => l.record = text(&mut map)?,
                        "egress.bytes_sent" => l.bytes_sent = map.next_value()?,
                        "http.request.method" => l.method = text(&mut map)?,
                        "duration_us" => l.duration_us = map.next_value()?,
                        "dns.question.name" => l.qname = text(&mut map)?,
                        "dns.question.type" => l.qtype = text(&mut map)?,
                        "dns.answer_bytes" => l.answer_bytes = map.next_value()?,
                        "client.address" => l.client = text(&mut map)?,
                        "egress.signal" => {
                            l.signal = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        _ => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(l)
            }
        }
        d.deserialize_map(V)
    }
}
