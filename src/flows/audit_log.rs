//! Flows from audit logs: the JSON lines `serve --audit-log` writes (schema in the README).
//!
//! A path names its rotated files too: `PATH.N` ... `PATH.1` (oldest first), then `PATH`. A line
//! that is not a decision record (torn by a crash, edited by hand, another program's) is counted and
//! reported with its file and line number, and reading goes on: one bad line must not hide a month
//! of good ones.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader};
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

/// Reads one file (no rotations).
pub fn read_file(path: &Path, since_ms: Option<i64>, table: &mut FlowTable) -> Result<ReadReport, ReadError> {
    let err = |source| ReadError { path: path.to_path_buf(), source };
    let file = File::open(path).map_err(err)?;
    let mut reader = BufReader::with_capacity(256 * 1024, file);
    let mut report = ReadReport { files: vec![path.to_path_buf()], ..Default::default() };
    let mut line = Vec::with_capacity(1024);
    let mut number = 0u64;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line).map_err(err)? == 0 {
            break;
        }
        number += 1;
        let text = line.strip_suffix(b"\n").unwrap_or(&line);
        if text.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match parse_line(text) {
            Ok(record) => {
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

/// The fields of an audit record that flows use; the others are skipped unread.
#[derive(Debug, Deserialize)]
struct AuditLine<'a> {
    #[serde(borrow)]
    time: Cow<'a, str>,
    #[serde(rename = "egress.decision", borrow)]
    decision: Cow<'a, str>,
    #[serde(rename = "egress.reason", borrow)]
    reason: Cow<'a, str>,
    #[serde(rename = "egress.spiffe_id", borrow, default)]
    spiffe_id: Option<Cow<'a, str>>,
    #[serde(rename = "egress.service", borrow, default)]
    service: Option<Cow<'a, str>>,
    #[serde(rename = "server.address", borrow, default)]
    host: Option<Cow<'a, str>>,
    #[serde(rename = "server.port", default)]
    port: Option<u16>,
    #[serde(rename = "egress.protocol", default)]
    protocol: Option<Protocol>,
    #[serde(rename = "egress.rule.id", borrow, default)]
    rule: Option<Cow<'a, str>>,
    #[serde(rename = "egress.break_glass.grant", borrow, default)]
    grant: Option<Cow<'a, str>>,
    #[serde(rename = "egress.tunnel.start", borrow, default)]
    tunnel_start: Option<Cow<'a, str>>,
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

fn parse_line(text: &[u8]) -> Result<Record<'_>, String> {
    let line: AuditLine<'_> = sonic_rs::from_slice(text).map_err(|e| format!("not a decision record: {e}"))?;
    let time_ms = line
        .time
        .parse::<jiff::Timestamp>()
        .map_err(|e| format!("`time` is not an RFC 3339 timestamp: {e}"))?
        .as_millisecond();
    let decision = line.decision.parse::<Outcome>().map_err(|e| format!("`egress.decision`: {e}"))?;
    Ok(Record { line, time_ms, decision })
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
        let subject = match (&l.service, &l.spiffe_id) {
            (Some(service), _) => SubjectRef::Service(service),
            (None, Some(id)) if !UNATTRIBUTED_REASONS.contains(&l.reason.as_ref()) => SubjectRef::Unclaimed(id),
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
            reason: &l.reason,
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
    fn a_missing_file_is_an_error_naming_it() {
        let e = read_paths(&[PathBuf::from("/nonexistent/audit.log")], None, &mut FlowTable::default()).unwrap_err();
        assert_eq!(e.to_string(), "audit log /nonexistent/audit.log");
        let cause = std::error::Error::source(&e).map(|s| s.to_string());
        assert!(cause.is_some_and(|c| c.contains("No such file")));
    }
}
