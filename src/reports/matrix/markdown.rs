//! The matrix as Markdown (GitHub-flavoured tables), for a review or an audit ticket: a header
//! that says which policy and what the hits count, the rule table, the dependency summary.
//! Policy text is escaped so that it reads as written: a `|` in a justification must not split
//! its cell, nor `*` or `<b>` format it.

use std::fmt::Write;

use super::{Matrix, ServiceSummary, columns, hits_sentence};

pub fn markdown(matrix: &Matrix) -> String {
    let mut out = String::new();
    header(&mut out, matrix);
    rules(&mut out, matrix);
    dependencies(&mut out, &matrix.services);
    out
}

fn header(out: &mut String, m: &Matrix) {
    let _ = writeln!(out, "# Egress allowlist matrix\n");
    let _ = writeln!(out, "- Policy version: `{}`", m.policy_version);
    let _ = writeln!(out, "- Origin: {}", text(&m.origin));
    let _ = writeln!(out, "- Generated: {}", m.generated);
    let _ = writeln!(out, "- Hits: {}", text(&hits_sentence(m)));
    let _ = writeln!(out, "- Rules: {} ({} allow(s), {} deny(s))\n", m.rows.len(), m.allows(), m.denies());
}

fn rules(out: &mut String, m: &Matrix) {
    let columns = columns(m);
    out.push_str("## Rules\n\n");
    table_row(out, columns.iter().map(|c| c.title.to_string()));
    table_row(out, columns.iter().map(|c| if c.numeric { "---:" } else { "---" }.to_string()));
    for row in &m.rows {
        table_row(out, columns.iter().map(|c| text(&(c.text)(row))));
    }
    out.push('\n');
}

fn dependencies(out: &mut String, services: &[ServiceSummary]) {
    out.push_str("## Third-party dependencies\n\n");
    out.push_str("Registrable domains of each service's host allows, with the number of rules for each, and its CIDR allows.\n\n");
    table_row(
        out,
        ["Service", "Owner", "Mode", "Allows", "Denies", "Domains (rules)", "CIDRs (rules)"].map(String::from),
    );
    table_row(out, ["---", "---", "---", "---:", "---:", "---", "---"].map(String::from));
    for s in services {
        let list = |deps: &[super::Dependency]| {
            deps.iter().map(|d| format!("{} ({})", text(&d.name), d.rules)).collect::<Vec<_>>().join(", ")
        };
        table_row(
            out,
            [
                text(&s.service),
                text(s.owner.as_deref().unwrap_or("")),
                s.mode.to_string(),
                s.allows.to_string(),
                s.denies.to_string(),
                list(&s.domains),
                list(&s.cidrs),
            ],
        );
    }
}

/// `| a | b |` of already escaped cells.
fn table_row(out: &mut String, cells: impl IntoIterator<Item = String>) {
    out.push('|');
    for cell in cells {
        out.push(' ');
        out.push_str(&cell);
        out.push_str(" |");
    }
    out.push('\n');
}

/// `raw` as Markdown text: the punctuation that would format it or end a cell is backslash-escaped,
/// and line breaks (which would end the table) become `<br>`.
pub(super) fn text(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut chars = raw.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' => {
                out.push('\\');
                out.push(c);
            }
            '\r' if chars.peek() == Some(&'\n') => {}
            '\r' | '\n' => out.push_str("<br>"),
            c => out.push(c),
        }
    }
    out
}
