//! Findings as text (one per line, for people and editors), JSON, and SARIF 2.1.0 (GitHub code
//! scanning and other SARIF viewers).

use serde_json::{Value, json};

use super::{CHECKS, Finding};

/// `FILE:LINE:COL: warning[EGR007]: message` and `  hint: ...` under it, one finding after another.
pub fn text(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out += &format!("{}: {}[{}]: {}\n  hint: {}\n", f.loc, f.severity.as_str(), f.id, f.message, f.hint);
    }
    out
}

/// An array of `{id, severity, file, line, column, message, hint}`.
pub fn json(findings: &[Finding]) -> Value {
    Value::Array(
        findings
            .iter()
            .map(|f| {
                json!({
                    "id": f.id,
                    "severity": f.severity,
                    "file": &*f.loc.file,
                    "line": f.loc.line.max(1),
                    "column": f.loc.column.max(1),
                    "message": f.message,
                    "hint": f.hint,
                })
            })
            .collect(),
    )
}

/// A SARIF 2.1.0 log with one run: `tool.driver` describes every check, `results` the findings.
/// Artifact URIs are the findings' file names relative to `root` (where `egressd lint` runs,
/// normally the repository root, which is what code scanning resolves them against), with `/`
/// separators; a file name that is absolute and not under `root` becomes a `file://` URI.
pub fn sarif(findings: &[Finding], root: Option<&std::path::Path>) -> Value {
    let rules: Vec<Value> = CHECKS
        .iter()
        .map(|c| {
            json!({
                "id": c.id,
                "name": c.name,
                "shortDescription": { "text": c.short },
                "fullDescription": { "text": c.full },
                "help": { "text": c.help },
                "defaultConfiguration": { "level": c.level.as_str() },
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let rule_index = CHECKS.iter().position(|c| c.id == f.id).unwrap_or(0);
            json!({
                "ruleId": f.id,
                "ruleIndex": rule_index,
                "level": f.severity.as_str(),
                "message": { "text": format!("{} (fix: {})", f.message, f.hint) },
                "locations": [{
                    "physicalLocation": {
                        "artifactLocation": { "uri": uri(&f.loc.file, root) },
                        "region": { "startLine": f.loc.line.max(1), "startColumn": f.loc.column.max(1) },
                    }
                }],
            })
        })
        .collect();
    json!({
        "$schema": "https://docs.oasis-open.org/sarif/sarif/v2.1.0/errata01/os/schemas/sarif-schema-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {
                "driver": {
                    "name": "egressd",
                    "version": env!("CARGO_PKG_VERSION"),
                    "rules": rules,
                }
            },
            "results": results,
        }],
    })
}

/// A file name as a URI reference: `/` separators, no leading `./`, spaces and `%`, `#`, `?`
/// escaped; absolute paths as `file://` URIs.
fn uri(file: &str, root: Option<&std::path::Path>) -> String {
    let file = match root.and_then(|r| std::path::Path::new(file).strip_prefix(r).ok()) {
        Some(relative) => relative.to_string_lossy().into_owned(),
        None => file.to_string(),
    };
    let path = file.replace('\\', "/");
    let path = path.trim_start_matches("./");
    let mut escaped = String::with_capacity(path.len());
    for c in path.chars() {
        match c {
            ' ' => escaped += "%20",
            '%' => escaped += "%25",
            '#' => escaped += "%23",
            '?' => escaped += "%3F",
            c => escaped.push(c),
        }
    }
    if escaped.starts_with('/') { format!("file://{escaped}") } else { escaped }
}
