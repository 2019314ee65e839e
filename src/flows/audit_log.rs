//! Flows from audit logs: the JSON lines `serve --audit-log` writes (schema in the README).
//!
//! A path names its rotated files too: `PATH.N` ... `PATH.1` (oldest first), then `PATH`. A line
//! that is not a decision record (torn by a crash, edited by hand, another program's) is counted and
//! reported with its file and line number, and reading goes on: one bad line must not hide a month
//! of good ones. Records of another kind (`egress.record` present and not `decision`: the stream
//! totals the gateway's access log becomes) are counted apart and are neither flows nor bad.

use std::borrow::Cow;
use std::fs::File;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::{FlowTable, Observation, SubjectRef};
use crate::policy::{Outcome, Protocol};

/// Bad lines kept with their text position; more are only counted.
const MAX_REPORTED_BAD_LINES: usize = 20;

/// An audit log that could not be read at all.
#[derive(Debug, thiserror::Error)]
#[error("audit log {}", path.display())]
pub struct ReadError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

/// A line that is not a decision record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadLine {
    pub path: PathBuf,
    /// 1-based.
    pub line: u64,
    pub error: String,
}

impl std::fmt::Display for BadLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}: {}", self.path.display(), self.line, self.error)
    }
}

/// What reading found, besides the flows.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReadReport {
    /// Files read, in order.
    pub files: Vec<PathBuf>,
    /// Decision records read (good lines).
    pub records: u64,
    /// Records that are not decisions (`egress.record`: stream totals and progress; `egress.signal`:
    /// detector signals): not flows.
    pub other_records: u64,
    /// Records that became observations of a flow.
    pub observed: u64,
    /// Tunnel checks: the second decision of a CONNECT already counted by its first.
    pub tunnel_checks: u64,
    /// Requests with no identity the policy accepts, or no destination: not anyone's flow.
    pub unattributed: u64,
    /// Older than `--since`.
    pub too_old: u64,
    pub bad_lines: u64,
    /// The first bad lines, with their position.
    pub first_bad_lines: Vec<BadLine>,
}

impl ReadReport {
    /// Folds another file's report into this one.
    fn add(&mut self, other: ReadReport) {
        self.files.extend(other.files);
        self.records += other.records;
        self.other_records += other.other_records;
        self.observed += other.observed;
        self.tunnel_checks += other.tunnel_checks;
        self.unattributed += other.unattributed;
        self.too_old += other.too_old;
        self.bad_lines += other.bad_lines;
        let room = MAX_REPORTED_BAD_LINES.saturating_sub(self.first_bad_lines.len());
        self.first_bad_lines.extend(other.first_bad_lines.into_iter().take(room));
    }
}

/// The files `path` stands for, oldest first: its rotated files that exist, then itself.
pub fn files_of(path: &Path) -> Vec<PathBuf> {
    let numbered = |n: u32| {
        let mut p = path.as_os_str().to_owned();
        p.push(format!(".{n}"));
        PathBuf::from(p)
    };
    let mut rotated: Vec<PathBuf> = (1..).map(numbered).take_while(|p| p.exists()).collect();
    rotated.reverse();
    rotated.push(path.to_path_buf());
    rotated
}

/// Reads every file of every path (with its rotations) into `table`. Records before `since_ms`
/// (unix milliseconds) are skipped. A missing or unreadable file is an error; bad lines are not.
pub fn read_paths(paths: &[PathBuf], since_ms: Option<i64>, table: &mut FlowTable) -> Result<ReadReport, ReadError> {
    let mut report = ReadReport::default();
    for path in paths {
        for file in files_of(path) {
            report.add(read_file(&file, since_ms, table)?);
        }
    }
    Ok(report)
}

/// The longest line read as a record. Audit records are a few hundred bytes; a longer line is
/// reported as bad and skipped to its end, never buffered whole.
pub const MAX_LINE: usize = 1 << 20;
/// Bytes read from the file at a time.
const CHUNK: usize = 1 << 20;

/// Reads one file (no rotations).
pub fn read_file(path: &Path, since_ms: Option<i64>, table: &mut FlowTable) -> Result<ReadReport, ReadError> {
    let err = |source| ReadError { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(err)?;
    read_from(file, path, since_ms, table).map_err(err)
}

/// `read_file` on bytes in memory, reported as the file `path` (fuzzing and tests).
pub fn read_bytes(bytes: &[u8], path: &Path, since_ms: Option<i64>, table: &mut FlowTable) -> ReadReport {
    read_from(bytes, path, since_ms, table).expect("reading from a slice cannot fail")
}

fn read_from(
    input: impl std::io::Read,
    path: &Path,
    since_ms: Option<i64>,
    table: &mut FlowTable,
) -> std::io::Result<ReadReport> {
    let mut lines = LineReader::new(input);
    let mut report = ReadReport { files: vec![path.to_path_buf()], ..Default::default() };
    let mut number = 0u64;
    while let Some(line) = lines.next_line()? {
        number += 1;
        let parsed = match line {
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(text) => parse_line(text),
            Line::TooLong => Err(format!("longer than {} MiB: not a decision record", MAX_LINE >> 20)),
        };
        match parsed {
            Ok(None) => report.other_records += 1,
            Ok(Some(record)) => {
                report.records += 1;
                match record.observation(since_ms) {
                    Ok(obs) => {
                        report.observed += 1;
                        table.record(&obs);
                    }
                    Err(Skip::Tunnel) => report.tunnel_checks += 1,
                    Err(Skip::Unattributed) => report.unattributed += 1,
                    Err(Skip::TooOld) => report.too_old += 1,
                }
            }
            Err(error) => {
                report.bad_lines += 1;
                if report.first_bad_lines.len() < MAX_REPORTED_BAD_LINES {
                    report.first_bad_lines.push(BadLine { path: path.to_path_buf(), line: number, error });
                }
            }
        }
    }
    Ok(report)
}

/// Calls `f` with each line of `input` and its number (from 1): the text without its `\n`, or
/// `None` for a line longer than `MAX_LINE`. Blank lines are skipped. For other readers of the
/// audit log (`detect::audit`).
pub(crate) fn for_each_line(input: impl std::io::Read, mut f: impl FnMut(u64, Option<&[u8]>)) -> std::io::Result<()> {
    let mut lines = LineReader::new(input);
    let mut number = 0u64;
    while let Some(line) = lines.next_line()? {
        number += 1;
        match line {
            Line::Text(text) if text.iter().all(u8::is_ascii_whitespace) => {}
            Line::Text(text) => f(number, Some(text)),
            Line::TooLong => f(number, None),
        }
    }
    Ok(())
}

/// Unix milliseconds of an audit record's `time`.
pub(crate) fn record_time_ms(text: &str) -> Result<i64, jiff::Error> {
    timestamp_ms(text)
}

enum Line<'a> {
    /// Without its `\n`.
    Text(&'a [u8]),
    /// A line longer than `MAX_LINE`, skipped.
    TooLong,
}

/// Lines of a file, handed out in place from one buffer (no copy per line, no `BufReader`
/// underneath), each at most `MAX_LINE` bytes.
struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    eof: bool,
    /// Inside a too-long line: its bytes are dropped up to its end.
    skipping: bool,
}

impl<R: std::io::Read> LineReader<R> {
    fn new(inner: R) -> Self {
        LineReader { inner, buf: vec![0; MAX_LINE + CHUNK], start: 0, end: 0, eof: false, skipping: false }
    }

    fn next_line(&mut self) -> std::io::Result<Option<Line<'_>>> {
        loop {
            if let Some(i) = memchr::memchr(b'\n', &self.buf[self.start..self.end]) {
                let line = self.start..self.start + i;
                self.start += i + 1;
                if std::mem::take(&mut self.skipping) || line.len() > MAX_LINE {
                    return Ok(Some(Line::TooLong));
                }
                return Ok(Some(Line::Text(&self.buf[line])));
            }
            if self.eof {
                let rest = self.start..self.end;
                self.start = self.end;
                return Ok(match (std::mem::take(&mut self.skipping), rest.is_empty()) {
                    (true, _) => Some(Line::TooLong),
                    (false, true) => None,
                    (false, false) if rest.len() > MAX_LINE => Some(Line::TooLong),
                    (false, false) => Some(Line::Text(&self.buf[rest])),
                });
            }
            if self.end - self.start > MAX_LINE {
                self.skipping = true;
                self.start = self.end;
            }
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.end += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// The fields of an audit record that flows use; the others are skipped unread.
#[derive(Debug, Default)]
struct AuditLine<'a> {
    time: Option<Cow<'a, str>>,
    decision: Option<Cow<'a, str>>,
    reason: Option<Cow<'a, str>>,
    spiffe_id: Option<Cow<'a, str>>,
    service: Option<Cow<'a, str>>,
    host: Option<Cow<'a, str>>,
    port: Option<u16>,
    protocol: Option<Protocol>,
    rule: Option<Cow<'a, str>>,
    grant: Option<Cow<'a, str>>,
    tunnel_start: Option<Cow<'a, str>>,
    /// A signal or a stream-totals record, not a decision.
    not_a_decision: bool,
    /// `egress.record`: absent on decision records.
    kind: Option<Cow<'a, str>>,
}

/// The keys `AuditLine` reads. A record has some twenty keys and this is the reader's hottest
/// loop: keys are told apart by length first, so most unknown keys cost one integer compare.
#[derive(Debug, Clone, Copy)]
enum Key {
    Time,
    Decision,
    Reason,
    SpiffeId,
    Service,
    Host,
    Port,
    Protocol,
    Rule,
    Grant,
    TunnelStart,
    /// `egress.signal`, `egress.record`: a record that is not a decision.
    NotADecision,
    Kind,
    Other,
}

impl Key {
    fn of(key: &[u8]) -> Key {
        match (key.len(), key) {
            (4, b"time") => Key::Time,
            (11, b"server.port") => Key::Port,
            (13, b"egress.reason") => Key::Reason,
            (13, b"egress.signal") => Key::NotADecision,
            (13, b"egress.record") => Key::Kind,
            (14, b"egress.service") => Key::Service,
            (14, b"server.address") => Key::Host,
            (14, b"egress.rule.id") => Key::Rule,
            (15, b"egress.decision") => Key::Decision,
            (15, b"egress.protocol") => Key::Protocol,
            (16, b"egress.spiffe_id") => Key::SpiffeId,
            (19, b"egress.tunnel.start") => Key::TunnelStart,
            (24, b"egress.break_glass.grant") => Key::Grant,
            _ => Key::Other,
        }
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl serde::de::Visitor<'_> for KeyVisitor {
            type Value = Key;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                Ok(Key::of(v.as_bytes()))
            }
        }
        d.deserialize_identifier(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for AuditLine<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct LineVisitor;
        impl<'de> serde::de::Visitor<'de> for LineVisitor {
            type Value = AuditLine<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a decision record (a JSON object)")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<AuditLine<'de>, A::Error> {
                let mut line = AuditLine::default();
                while let Some(key) = map.next_key::<Key>()? {
                    let text = |map: &mut A| map.next_value::<Option<Cow<'de, str>>>();
                    match key {
                        Key::Time => line.time = text(&mut map)?,
                        Key::Decision => line.decision = text(&mut map)?,
                        Key::Reason => line.reason = text(&mut map)?,
                        Key::SpiffeId => line.spiffe_id = text(&mut map)?,
                        Key::Service => line.service = text(&mut map)?,
                        Key::Host => line.host = text(&mut map)?,
                        Key::Rule => line.rule = text(&mut map)?,
                        Key::Grant => line.grant = text(&mut map)?,
                        Key::TunnelStart => line.tunnel_start = text(&mut map)?,
                        Key::Kind => line.kind = text(&mut map)?,
                        Key::Port => line.port = map.next_value()?,
                        Key::Protocol => line.protocol = map.next_value()?,
                        Key::NotADecision => {
                            line.not_a_decision = true;
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                        Key::Other => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                        }
                    }
                }
                Ok(line)
            }
        }
        d.deserialize_map(LineVisitor)
    }
}

/// A decision record, its time and decision checked.
struct Record<'a> {
    line: AuditLine<'a>,
    time_ms: i64,
    decision: Outcome,
}

enum Skip {
    Tunnel,
    Unattributed,
    TooOld,
}

/// Reason codes of requests that are nobody's flow: the caller is not known to be anyone, or the
/// request named no usable destination.
const UNATTRIBUTED_REASONS: [&str; 3] = ["unauthenticated", "malformed-request", "unsupported-scheme"];

/// A decision record; `None` for a record of another kind (stream totals, a detector signal).
fn parse_line(text: &[u8]) -> Result<Option<Record<'_>>, String> {
    let line: AuditLine<'_> = sonic_rs::from_slice(text).map_err(|e| format!("not a decision record: {e}"))?;
    if line.not_a_decision || line.kind.as_deref().is_some_and(|k| k != "decision") {
        return Ok(None);
    }
    let time = line.time.as_deref().ok_or("not a decision record: no `time`")?;
    let time_ms = timestamp_ms(time).map_err(|e| format!("`time` is not an RFC 3339 timestamp: {e}"))?;
    let decision = line.decision.as_deref().ok_or("not a decision record: no `egress.decision`")?;
    let decision = decision.parse::<Outcome>().map_err(|e| format!("`egress.decision`: {e}"))?;
    if line.reason.is_none() {
        return Err("not a decision record: no `egress.reason`".into());
    }
    Ok(Some(Record { line, time_ms, decision }))
}

/// Unix milliseconds of an RFC 3339 timestamp. The audit log writes UTC as
/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z`; that shape is read directly (a tenth of the reader's time
/// went to the general parser), anything else by `jiff`.
fn timestamp_ms(text: &str) -> Result<i64, jiff::Error> {
    match utc_timestamp_ms(text.as_bytes()) {
        Some(ms) => Ok(ms),
        None => Ok(text.parse::<jiff::Timestamp>()?.as_millisecond()),
    }
}

fn utc_timestamp_ms(b: &[u8]) -> Option<i64> {
    let digits = |range: std::ops::Range<usize>| -> Option<i64> {
        b.get(range)?.iter().try_fold(0i64, |n, &c| c.is_ascii_digit().then(|| n * 10 + i64::from(c - b'0')))
    };
    let shape = b.len() >= 20 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':';
    if !shape || b.last() != Some(&b'Z') {
        return None;
    }
    let (year, month, day) = (digits(0..4)?, digits(5..7)?, digits(8..10)?);
    let (hour, minute, second) = (digits(11..13)?, digits(14..16)?, digits(17..19)?);
    let millis = match &b[19..b.len() - 1] {
        [] => 0,
        [b'.', fraction @ ..] if (1..=9).contains(&fraction.len()) => {
            let ms = digits(20..20 + fraction.len().min(3))?;
            digits(20..b.len() - 1)?; // every fraction digit is a digit
            ms * 10i64.pow(3u32.saturating_sub(fraction.len() as u32))
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if day < 1 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (the era-based civil-to-days method).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    Some(((days * 24 + hour) * 60 + minute) * 60_000 + second * 1000 + millis)
}

impl<'a> Record<'a> {
    fn observation(&'a self, since_ms: Option<i64>) -> Result<Observation<'a>, Skip> {
        let l = &self.line;
        if since_ms.is_some_and(|since| self.time_ms < since) {
            return Err(Skip::TooOld);
        }
        if l.tunnel_start.is_some() {
            return Err(Skip::Tunnel);
        }
        let reason = l.reason.as_deref().unwrap_or_default(); // present: `parse_line` checked
        let subject = match (&l.service, &l.spiffe_id) {
            (Some(service), _) => SubjectRef::Service(service),
            (None, Some(id)) if !UNATTRIBUTED_REASONS.contains(&reason) => SubjectRef::Unclaimed(id),
            _ => return Err(Skip::Unattributed),
        };
        let (Some(host), Some(port), Some(protocol)) = (&l.host, l.port, l.protocol) else {
            return Err(Skip::Unattributed);
        };
        Ok(Observation {
            time_ms: self.time_ms,
            subject,
            workload: l.spiffe_id.as_deref(),
            host,
            port,
            protocol,
            decision: self.decision,
            reason,
            // A break-glass decision has no rule: its grant stands in (see `Observation::rule`).
            rule: l.rule.as_deref().or(l.grant.as_deref()),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flows::Subject;
    use std::io::Write;

    const ALLOW: &str = r#"{"time":"2026-11-21T20:10:33.0281Z","trace_id":"4b","sampled":true,"duration_us":3.1,"egress.check":"http","egress.spiffe_id":"spiffe://corp.example/ns/payments/sa/api","egress.service":"payments","server.address":"api.stripe.com","egress.protocol":"https","http.request.method":"CONNECT","egress.decision":"allow","egress.mode":"enforce","egress.rule.id":"payments/allow/0","egress.reason":"allowed","server.port":443,"egress.enforced":true}"#;
    const UNCLAIMED: &str = r#"{"time":"2026-11-21T20:11:00Z","egress.spiffe_id":"spiffe://corp.example/ns/batch/sa/etl","server.address":"s3.eu-west-1.amazonaws.com","egress.protocol":"https","egress.decision":"would-deny","egress.reason":"unknown-service","server.port":443}"#;
    const UNAUTHENTICATED: &str = r#"{"time":"2026-11-21T20:11:00Z","egress.spiffe_id":"spiffe://other.example/x","server.address":"a.test","egress.protocol":"https","egress.decision":"deny","egress.reason":"unauthenticated","server.port":443}"#;
    const TUNNEL: &str = r#"{"time":"2026-11-21T20:10:33.1Z","egress.spiffe_id":"spiffe://corp.example/ns/payments/sa/api","egress.service":"payments","server.address":"api.stripe.com","egress.protocol":"tls","egress.decision":"allow","egress.reason":"tunnel-verified","server.port":443,"egress.tunnel.start":"tls"}"#;

    fn write(lines: &[&str]) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        for l in lines {
            writeln!(f, "{l}").unwrap();
        }
        f
    }

    /// A stream-totals record as the telemetry thread writes it (its own encoder), then progress.
    fn totals_lines() -> [String; 2] {
        use crate::telemetry::totals::{StreamDecision, StreamPhase, StreamTotals};
        let t = StreamTotals {
            phase: StreamPhase::End,
            start: std::time::SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_795_000_000),
            duration: Some(std::time::Duration::from_secs(3)),
            method: Some("CONNECT"),
            host: Some("api.stripe.com".into()),
            port: Some(443),
            spiffe_id: Some("spiffe://corp.example/ns/payments/sa/api".into()),
            client: Some("10.1.2.3:40000".parse().unwrap()),
            request_id: Some("r-1".into()),
            bytes_sent: 3 << 20,
            bytes_received: 10,
            response_code: Some(200),
            decision: StreamDecision {
                decision: Some("allow".into()),
                service: Some("payments".into()),
                rule: Some("payments/allow/0".into()),
                reason: Some("allowed".into()),
            },
        };
        let line = |t: &StreamTotals| {
            let mut out = vec![];
            crate::telemetry::totals::encode(&mut out, t, None).unwrap();
            String::from_utf8(out).unwrap()
        };
        [line(&t), line(&StreamTotals { phase: StreamPhase::Progress, ..t.clone() })]
    }

    #[test]
    fn stream_totals_records_are_neither_flows_nor_bad_lines() {
        let [end, progress] = totals_lines();
        assert!(end.contains(r#""egress.record":"stream-totals""#), "{end}");
        let f = write(&[ALLOW, &end, &progress, ALLOW]);
        let mut table = FlowTable::default();
        let report = read_file(f.path(), None, &mut table).unwrap();
        assert_eq!((report.records, report.other_records, report.bad_lines), (2, 2, 0), "{report:?}");
        assert_eq!(report.observed, 2);
        let flows = table.into_sorted();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].stats.hits, 2, "the tunnel's totals are not another hit");
        // An explicit decision kind is a decision record like any other.
        let tagged = ALLOW.replacen('{', r#"{"egress.record":"decision","#, 1);
        let report = read_file(write(&[&tagged]).path(), None, &mut FlowTable::default()).unwrap();
        assert_eq!((report.records, report.observed, report.other_records), (1, 1, 0));
    }

    #[test]
    fn records_become_flows_and_bad_lines_are_reported_with_their_position() {
        let f = write(&[ALLOW, "{\"time\":\"2026-11-21T2", ALLOW, "", UNCLAIMED, UNAUTHENTICATED, TUNNEL, "[1,2]"]);
        let mut table = FlowTable::default();
        let report = read_file(f.path(), None, &mut table).unwrap();
        assert_eq!(report.records, 5);
        assert_eq!(report.observed, 3);
        assert_eq!((report.tunnel_checks, report.unattributed), (1, 1));
        assert_eq!(report.bad_lines, 2);
        assert_eq!(report.first_bad_lines.iter().map(|b| b.line).collect::<Vec<_>>(), [2, 8]);
        assert!(report.first_bad_lines[0].to_string().contains(":2: not a decision record"), "{report:?}");
        let flows = table.into_sorted();
        assert_eq!(flows.len(), 2);
        assert_eq!(flows[0].key.subject, Subject::Service("payments".into()));
        assert_eq!(flows[0].stats.hits, 2);
        assert_eq!(flows[0].stats.decisions[0].rule.as_deref(), Some("payments/allow/0"));
        assert_eq!(flows[1].key.subject, Subject::Unclaimed("spiffe://corp.example/ns/batch/sa/etl".into()));
    }

    #[test]
    fn a_bad_time_or_decision_is_a_bad_line_not_a_crash() {
        let bad_time = ALLOW.replace("2026-11-21T20:10:33.0281Z", "yesterday");
        let bad_decision = ALLOW.replace(r#""egress.decision":"allow""#, r#""egress.decision":"maybe""#);
        let f = write(&[&bad_time, &bad_decision, "\u{0}\u{1}garbage"]);
        let report = read_file(f.path(), None, &mut FlowTable::default()).unwrap();
        assert_eq!(report.bad_lines, 3);
        assert!(report.first_bad_lines[0].error.contains("RFC 3339"));
        assert!(report.first_bad_lines[1].error.contains("maybe"));
    }

    #[test]
    fn rotated_files_are_read_oldest_first_and_since_filters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        std::fs::write(&path, format!("{UNCLAIMED}\n")).unwrap();
        std::fs::write(dir.path().join("audit.log.1"), format!("{ALLOW}\n")).unwrap();
        std::fs::write(dir.path().join("audit.log.2"), format!("{ALLOW}\n")).unwrap();
        let files = files_of(&path);
        let names: Vec<_> = files.iter().map(|p| p.file_name().unwrap().to_str().unwrap()).collect();
        assert_eq!(names, ["audit.log.2", "audit.log.1", "audit.log"]);
        let since = "2026-11-21T20:10:50Z".parse::<jiff::Timestamp>().unwrap().as_millisecond();
        let mut table = FlowTable::default();
        let report = read_paths(&[path], Some(since), &mut table).unwrap();
        assert_eq!((report.records, report.too_old, report.observed), (3, 2, 1));
        assert_eq!(table.len(), 1);
    }

    #[test]
    fn the_written_time_shape_is_read_as_jiff_reads_it_and_other_shapes_fall_back() {
        for text in [
            "2026-11-21T20:10:33Z",
            "2026-11-21T20:10:33.0281Z",
            "2026-11-21T20:10:33.5Z",
            "2026-11-21T20:10:33.123456789Z",
            "1970-01-01T00:00:00Z",
            "1969-12-31T23:59:59.999Z",
            "2024-02-29T12:00:00Z",
            "2000-03-01T00:00:00Z",
            "2100-12-31T23:59:59Z",
            "0001-01-01T00:00:00Z",
            "2026-11-21T21:10:33+01:00",
            "2026-11-21t20:10:33z",
        ] {
            let expected = text.parse::<jiff::Timestamp>().unwrap().as_millisecond();
            assert_eq!(timestamp_ms(text).unwrap(), expected, "{text}");
        }
        for bad in [
            "2026-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-21T24:00:00Z",
            "2026-11-21T20:10:33.Z",
            "2026-11-21T20:1a:33Z",
            "yesterday",
        ] {
            assert_eq!(utc_timestamp_ms(bad.as_bytes()), None, "{bad}");
            assert!(timestamp_ms(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_record_without_its_required_fields_is_a_bad_line() {
        let no_reason = ALLOW.replace(r#","egress.reason":"allowed""#, "");
        let no_time = ALLOW.replace(r#""time":"2026-11-21T20:10:33.0281Z","#, "");
        let f = write(&[&no_reason, &no_time]);
        let report = read_file(f.path(), None, &mut FlowTable::default()).unwrap();
        assert_eq!(report.bad_lines, 2);
        assert!(report.first_bad_lines[0].error.contains("egress.reason"), "{report:?}");
        assert!(report.first_bad_lines[1].error.contains("`time`"), "{report:?}");
    }

    #[test]
    fn lines_across_chunks_a_last_line_without_newline_and_an_over_long_line_are_read_as_written() {
        let long = "x".repeat(MAX_LINE + 10);
        let mut text = String::new();
        // Enough records to cross several chunks, then the long line, then one without `\n`.
        let n = 2 * CHUNK / ALLOW.len() + 3;
        for _ in 0..n {
            text.push_str(ALLOW);
            text.push('\n');
        }
        text.push_str(&long);
        text.push('\n');
        text.push_str(UNCLAIMED);
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(text.as_bytes()).unwrap();
        let mut table = FlowTable::default();
        let report = read_file(f.path(), None, &mut table).unwrap();
        assert_eq!(report.records, n as u64 + 1);
        assert_eq!(report.bad_lines, 1);
        assert_eq!(report.first_bad_lines[0].line, n as u64 + 1);
        assert!(report.first_bad_lines[0].error.contains("longer than 1 MiB"), "{report:?}");
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let e = read_paths(&[PathBuf::from("/nonexistent/audit.log")], None, &mut FlowTable::default()).unwrap_err();
        assert_eq!(e.to_string(), "audit log /nonexistent/audit.log");
        let cause = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(cause.is_some_and(|c| c.contains("No such file")));
    }
}
