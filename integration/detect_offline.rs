//! `egressd detect` over the labelled corpus (`egressd::detect::corpus`, at test size): every
//! detector meets recall >= 0.95 at precision >= 0.95, and the command's faces (JSON lines, the
//! evaluation table, filters, exit codes, a corrupt line reported and skipped) hold, run as the real
//! binary.

use std::path::Path;
use std::process::Command;

use egressd::detect::audit::AuditObservations;
use egressd::detect::corpus::{CorpusSize, write};
use egressd::detect::evaluate::{Label, evaluate};
use egressd::detect::{Detector, SignalKind};

const SIZE: CorpusSize = CorpusSize { services: 50, days: 2, metrics_interval: 120.0, seed: 7 };

/// The corpus, written once for both tests (it is the slow part).
fn corpus() -> &'static Path {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let written = write(dir.path(), SIZE).unwrap();
        assert!(written.records > 100_000, "{written:?}");
        dir
    })
    .path()
}

fn egressd(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_egressd")).args(args).output().expect("run egressd")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_detector_finds_its_attacks_in_the_corpus_without_false_signals() {
    let dir = corpus();
    let policy = egressd::policy::load_dir(&dir.join("policy")).unwrap();
    let mut input = AuditObservations::new(Some(&policy));
    input.read_paths(&[dir.join("audit.log")]).unwrap();
    let mut detector = Detector::new(policy.detection.clone());
    let (signals, report) = input.detect(&mut detector);
    assert_eq!(report.bad_lines, 0);
    let labels: Vec<Label> = serde_json::from_slice(&std::fs::read(dir.join("labels.json")).unwrap()).unwrap();
    let scores = evaluate(&labels, &signals);
    for kind in SignalKind::ALL {
        let s = &scores[&kind];
        assert!(s.labels > 0, "the corpus has {} attacks", kind.as_str());
        assert!(
            s.recall >= 0.95 && s.precision >= 0.95,
            "{}: {s:?}\n{}",
            kind.as_str(),
            egressd::detect::evaluate::table(&scores)
        );
    }
}

#[test]
fn the_command_writes_json_lines_filters_evaluates_and_exits_as_documented() {
    // The corpus's log copied, to tear one of its lines.
    let dir = tempfile::tempdir().unwrap();
    let (policy, log, labels) = (corpus().join("policy"), dir.path().join("audit.log"), corpus().join("labels.json"));
    // A torn line in the middle of the log is reported with its position and skipped.
    let mut text = std::fs::read_to_string(corpus().join("audit.log")).unwrap();
    let cut = text.find('\n').unwrap() + 1;
    text.insert_str(cut, "{\"time\":\"2026-12-01T00:0\n");
    std::fs::write(&log, &text).unwrap();

    let out = egressd(&[
        "detect",
        "--policy",
        path(&policy),
        "--audit-log",
        path(&log),
        "--format",
        "json",
        "--labels",
        path(&labels),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("audit.log:2:"), "the bad line named: {stderr}");
    assert!(stderr.contains("1 bad line(s)"), "{stderr}");
    assert!(stderr.contains("| beaconing |") && stderr.contains("precision"), "the evaluation table: {stderr}");
    let signals: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect();
    assert!(!signals.is_empty());
    for s in &signals {
        for field in
            ["kind", "spiffe_id", "service", "destination", "score", "first", "last", "summary", "evidence", "context"]
        {
            assert!(s.get(field).is_some(), "{field} in {s}");
        }
    }
    let beacon = signals.iter().find(|s| s["kind"] == "beaconing").expect("a beacon");
    assert!(beacon["evidence"]["median_interval_s"].as_f64().unwrap() > 0.0, "{beacon}");

    // The filter over the corpus's bodies and tunnel totals alone (what uploads are made of).
    let uploads = dir.path().join("uploads.log");
    let lines: Vec<&str> =
        text.lines().filter(|l| l.contains("http.request.body.size") || l.contains("stream-totals")).collect();
    std::fs::write(&uploads, lines.join("\n")).unwrap();
    let only = egressd(&[
        "detect",
        "--policy",
        path(&policy),
        "--audit-log",
        path(&uploads),
        "--kind",
        "large-upload",
        "--fail-on-signal",
    ]);
    assert_eq!(only.status.code(), Some(3), "signals fired with --fail-on-signal");
    let text = String::from_utf8_lossy(&only.stdout);
    assert!(!text.is_empty() && text.lines().all(|l| l.contains(" large-upload ")), "{text}");

    let bad = egressd(&["detect", "--audit-log", path(&log), "--kind", "ufo"]);
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("unknown signal kind `ufo`"));
    let missing = egressd(&["detect", "--audit-log", "/nonexistent/audit.log"]);
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("/nonexistent/audit.log"));
}
