//! The audit log: one JSON object per line per decision, appended by the telemetry thread.
//!
//! Keys are the decision span's attribute names plus `time`, `trace_id`, `span_id`,
//! `parent_span_id`, `sampled` and `duration_us`; the schema is documented in the README and is
//! what allowlist learning reads. Rotation is by size (`PATH` -> `PATH.1` -> ... `PATH.N`).

use std::fs::{File, OpenOptions};
use std::io::{self, BufWriter, Write};
use std::path::PathBuf;

use serde::ser::SerializeMap;

use super::json_line::JsonLine;
use super::record::{DecisionRecord, Value};
use super::spans::SpanIds;

/// When the audit log is fsynced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Leave it to the OS (records are still written out at least every flush interval).
    Never,
    /// After each batch: at most one flush interval (200 ms) of records is at risk on power loss.
    Batch,
    /// After every record (slowest; the telemetry queue absorbs bursts, drops are counted).
    Always,
}

impl std::str::FromStr for FsyncPolicy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "never" => Ok(FsyncPolicy::Never),
            "batch" => Ok(FsyncPolicy::Batch),
            "always" => Ok(FsyncPolicy::Always),
            _ => Err(format!("unknown fsync policy `{s}`: expected never, batch or always")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct AuditConfig {
    pub path: PathBuf,
    /// Rotate once the file would grow past this many bytes.
    pub max_bytes: u64,
    /// Rotated files kept (`PATH.1` is the newest).
    pub keep: u32,
    pub fsync: FsyncPolicy,
}

#[derive(Debug, thiserror::Error)]
#[error("audit log {path}: {source}")]
pub struct AuditError {
    pub path: String,
    #[source]
    pub source: io::Error,
}

pub struct AuditLog {
    config: AuditConfig,
    file: BufWriter<File>,
    size: u64,
    line: Vec<u8>,
}

impl AuditLog {
    pub fn open(config: AuditConfig) -> Result<Self, AuditError> {
        let err = |source| AuditError { path: config.path.display().to_string(), source };
        let file = OpenOptions::new().create(true).append(true).open(&config.path).map_err(err)?;
        let size = file.metadata().map_err(err)?.len();
        Ok(AuditLog { config, file: BufWriter::with_capacity(64 * 1024, file), size, line: Vec::with_capacity(1024) })
    }

    /// Appends one record (buffered; `flush` writes it out).
    pub fn append(&mut self, record: &DecisionRecord<'_>, ids: &SpanIds) -> io::Result<()> {
        self.append_with(|line| encode(line, record, ids))
    }

    /// Appends one record already encoded as a JSON object (a detector signal).
    pub fn append_json(&mut self, record: &serde_json::Value) -> io::Result<()> {
        self.append_with(|line| serde_json::to_writer(line, record).map_err(io::Error::other))
    }

    /// Appends the one line `write` encodes (without its newline): records of other kinds (stream
    /// totals, DNS queries) share the file, its rotation and its fsync policy.
    pub fn append_with(&mut self, write: impl FnOnce(&mut Vec<u8>) -> io::Result<()>) -> io::Result<()> {
        self.line.clear();
        write(&mut self.line)?;
        self.line.push(b'\n');
        if self.size > 0 && self.size + self.line.len() as u64 > self.config.max_bytes {
            self.rotate()?;
        }
        self.file.write_all(&self.line)?;
        self.size += self.line.len() as u64;
        if self.config.fsync == FsyncPolicy::Always {
            self.file.flush()?;
            self.file.get_ref().sync_data()?;
        }
        Ok(())
    }

    /// Writes buffered records to the file, and fsyncs unless the policy is `never`.
    pub fn flush(&mut self) -> io::Result<()> {
        self.file.flush()?;
        if self.config.fsync != FsyncPolicy::Never {
            self.file.get_ref().sync_data()?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()?;
        let numbered = |n: u32| {
            let mut p = self.config.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if self.config.keep == 0 {
            std::fs::remove_file(&self.config.path)?;
        } else {
            for n in (1..self.config.keep).rev() {
                match std::fs::rename(numbered(n), numbered(n + 1)) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                }
            }
            std::fs::rename(&self.config.path, numbered(1))?;
        }
        let file = OpenOptions::new().create(true).append(true).open(&self.config.path)?;
        self.file = BufWriter::with_capacity(64 * 1024, file);
        self.size = 0;
        Ok(())
    }
}

/// One audit line (without the newline) into `out`, written directly (`json_line`): this runs for
/// every decision.
pub fn encode(out: &mut Vec<u8>, record: &DecisionRecord<'_>, ids: &SpanIds) -> io::Result<()> {
    let mut line = JsonLine::begin(out);
    match jiff::Timestamp::try_from(record.event.start) {
        Ok(time) => line.display("time", time),
        Err(_) => line.str("time", ""),
    }
    line.hex("trace_id", &ids.trace_id.to_bytes());
    line.hex("span_id", &ids.span_id.to_bytes());
    if let Some(parent) = &ids.parent {
        line.hex("parent_span_id", &parent.span_id().to_bytes());
    }
    line.bool("sampled", ids.sampled);
    line.f64("duration_us", record.event.duration.as_nanos() as f64 / 1e3);
    record.visit(&mut |key, value| match value {
        Value::Str(s) => line.str(key, s),
        Value::Int(i) => line.int(key, i),
        Value::Bool(b) => line.bool(key, b),
    });
    line.end();
    Ok(())
}

/// Serializes into `map` every field `visit` names (records of every kind list their fields
/// through a visitor, shared with their spans); the first error stops it.
pub(super) fn serialize_fields<M: SerializeMap>(
    map: &mut M,
    visit: impl FnOnce(&mut dyn FnMut(&'static str, Value<'_>)),
) -> Result<(), M::Error> {
    let mut result = Ok(());
    visit(&mut |key, value| {
        if result.is_ok() {
            result = match value {
                Value::Str(s) => map.serialize_entry(key, s),
                Value::Int(i) => map.serialize_entry(key, &i),
                Value::Bool(b) => map.serialize_entry(key, &b),
            };
        }
    });
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};
    use crate::telemetry::record::CheckEvent;
    use crate::telemetry::spans::{DecisionSampler, parse_sampler};
    use std::sync::Arc;
    use std::time::Duration;

    fn event(i: usize) -> CheckEvent {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let id = format!("req-{i}");
        let request = crate::testing::http_check(
            "spiffe://corp.example/ns/payments/sa/api",
            "GET",
            "api.stripe.com",
            &[("x-request-id", &id)],
        );
        let (verdict, facts) = crate::testing::checked(&policy, &request, &Default::default());
        CheckEvent { facts, verdict, policy, start: crate::clock::wall_now(), duration: Duration::from_micros(3) }
    }

    /// The line serde_json writes for a record (what `encode` wrote before it wrote lines itself).
    fn serde_line(record: &DecisionRecord<'_>, ids: &SpanIds) -> Vec<u8> {
        use serde::ser::Serializer;
        let mut out = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut out);
        let mut map = ser.serialize_map(None).unwrap();
        let time = jiff::Timestamp::try_from(record.event.start).map(|t| t.to_string()).unwrap_or_default();
        map.serialize_entry("time", &time).unwrap();
        map.serialize_entry("trace_id", &ids.trace_id.to_string()).unwrap();
        map.serialize_entry("span_id", &ids.span_id.to_string()).unwrap();
        if let Some(parent) = &ids.parent {
            map.serialize_entry("parent_span_id", &parent.span_id().to_string()).unwrap();
        }
        map.serialize_entry("sampled", &ids.sampled).unwrap();
        map.serialize_entry("duration_us", &(record.event.duration.as_nanos() as f64 / 1e3)).unwrap();
        serialize_fields(&mut map, |f| record.visit(f)).unwrap();
        map.end().unwrap();
        out
    }

    #[test]
    fn a_line_is_byte_for_byte_what_serde_json_writes() {
        let sampler = || DecisionSampler::new(parse_sampler("always_on", None).unwrap(), false);
        let mut e = event(7);
        // A sub-microsecond duration; with and without a parent span (escaping: `json_line`).
        e.duration = Duration::from_nanos(921);
        let mut text = String::new();
        for parent in [None, Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")] {
            let ids = match parent {
                None => sampler().sample(None, e.verdict.outcome),
                Some(tp) => {
                    let headers: std::collections::HashMap<String, String> =
                        [("traceparent".to_string(), tp.to_string())].into_iter().collect();
                    let cx = opentelemetry_sdk::propagation::TraceContextPropagator::new();
                    let parent = opentelemetry::propagation::TextMapPropagator::extract(&cx, &headers);
                    use opentelemetry::trace::TraceContextExt;
                    sampler().sample(Some(parent.span().span_context().clone()), e.verdict.outcome)
                }
            };
            let record = DecisionRecord::describe_in(&e, &mut text);
            let mut ours = Vec::new();
            encode(&mut ours, &record, &ids).unwrap();
            assert_eq!(String::from_utf8(ours).unwrap(), String::from_utf8(serde_line(&record, &ids)).unwrap());
        }
    }

    fn write(log: &mut AuditLog, i: usize) {
        let e = event(i);
        let ids =
            DecisionSampler::new(parse_sampler("always_on", None).unwrap(), false).sample(None, e.verdict.outcome);
        log.append(&DecisionRecord::describe_in(&e, &mut String::new()), &ids).unwrap();
    }

    #[test]
    fn rotates_by_size_and_keeps_n_files_without_losing_or_splitting_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig { path: path.clone(), max_bytes: 2_000, keep: 2, fsync: FsyncPolicy::Batch };
        let mut log = AuditLog::open(config).unwrap();
        for i in 0..40 {
            write(&mut log, i);
        }
        log.flush().unwrap();
        let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap_or_default();
        let files = [path.clone(), dir.path().join("audit.jsonl.1"), dir.path().join("audit.jsonl.2")];
        assert!(!dir.path().join("audit.jsonl.3").exists(), "only `keep` rotated files");
        let mut ids = vec![];
        for f in &files {
            let text = read(f);
            assert!(!text.is_empty() && text.len() <= 2_000, "{} has {} bytes", f.display(), text.len());
            for line in text.lines() {
                let v: serde_json::Value = serde_json::from_str(line).expect("whole JSON lines");
                ids.push(v["egress.request_id"].as_str().unwrap().trim_start_matches("req-").parse::<usize>().unwrap());
            }
        }
        ids.sort_unstable();
        // The newest records are all there, contiguous, each once; the oldest rotated away.
        assert_eq!(ids.last(), Some(&39));
        assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "{ids:?}");
    }

    #[test]
    fn appends_to_an_existing_log_across_restarts() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.jsonl");
        let config = AuditConfig { path: path.clone(), max_bytes: 1 << 20, keep: 1, fsync: FsyncPolicy::Always };
        for round in 0..2 {
            let mut log = AuditLog::open(config.clone()).unwrap();
            write(&mut log, round);
            log.flush().unwrap();
        }
        assert_eq!(std::fs::read_to_string(&path).unwrap().lines().count(), 2);
    }

    #[test]
    fn an_unwritable_path_is_a_clear_error() {
        let config = AuditConfig {
            path: "/nonexistent-dir/audit.jsonl".into(),
            max_bytes: 1,
            keep: 1,
            fsync: FsyncPolicy::Never,
        };
        let err = AuditLog::open(config).err().expect("cannot open").to_string();
        assert!(err.starts_with("audit log /nonexistent-dir/audit.jsonl: "), "{err}");
    }
}
