//! The audit-log reader of the learning commands (`observe`, `learn`, `discover`): arbitrary
//! bytes as one audit log file (`audit_log::read_bytes`, the reader `read_file` uses).
//!
//! Invariants: every line that is not blank is counted once, as a record or as a bad line; every
//! record is observed or skipped for one reason; the first bad lines are kept in order with their
//! line numbers; the flow table holds exactly the observed records.
#![no_main]

use std::path::Path;

use egressd::flows::FlowTable;
use egressd::flows::audit_log::{MAX_LINE, read_bytes};
use libfuzzer_sys::fuzz_target;

/// 2026-09-21: the seed records (2026-11) are observed, older ones are too old.
const SINCE_MS: i64 = 1_790_000_000_000;
const MAX_REPORTED_BAD_LINES: u64 = 20;

fuzz_target!(|data: &[u8]| {
    let path = Path::new("fuzz-audit.log");
    let mut table = FlowTable::default();
    let report = read_bytes(data, path, Some(SINCE_MS), &mut table);

    let mut lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();
    if lines.last().is_some_and(|l| l.is_empty()) {
        lines.pop();
    }
    let counted = lines.iter().filter(|l| l.len() > MAX_LINE || !l.iter().all(u8::is_ascii_whitespace)).count();
    assert_eq!(
        report.records + report.other_records + report.bad_lines,
        counted as u64,
        "lines counted neither good nor bad: {report:?}"
    );
    assert_eq!(
        report.records,
        report.observed + report.tunnel_checks + report.unattributed + report.too_old,
        "records neither observed nor skipped: {report:?}"
    );
    assert_eq!(report.first_bad_lines.len() as u64, report.bad_lines.min(MAX_REPORTED_BAD_LINES));
    assert!(report.first_bad_lines.windows(2).all(|w| w[0].line < w[1].line));
    for bad in &report.first_bad_lines {
        assert!(bad.line >= 1 && bad.line <= lines.len() as u64, "{bad}");
        let text = lines[bad.line as usize - 1];
        assert!(text.len() > MAX_LINE || !text.iter().all(u8::is_ascii_whitespace), "a blank line is bad: {bad}");
        assert_eq!(bad.path, path);
    }
    assert_eq!(report.files, [path]);
    let flows = table.into_sorted();
    assert_eq!(flows.iter().map(|f| f.stats.hits).sum::<u64>(), report.observed, "observations lost");
    for flow in &flows {
        assert!(flow.stats.first_seen_ms <= flow.stats.last_seen_ms, "{flow:?}");
        assert!(flow.stats.first_seen_ms >= SINCE_MS, "a record older than --since became a flow: {flow:?}");
    }
});
