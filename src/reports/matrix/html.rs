//! The matrix as one self-contained HTML file, to attach to an audit or open from a CI artifact:
//! no external asset (the CSS and script are inline, and a Content-Security-Policy forbids
//! fetching anything), every text from the policy HTML-escaped. It holds the services-to-
//! destinations diagram (`diagram`), the rule table (sortable by a click on a column header or a
//! `#sort=KEY` / `#sort=-KEY` fragment, filtered by the box or `#filter=TEXT`) and the dependency
//! summary. The script reads the table from the DOM, so no policy text is ever inside `<script>`.

mod diagram;

use std::fmt::Write;

use super::{Matrix, Row, ServiceSummary, columns, hits_sentence};

#[cfg(test)]
pub(super) use diagram::svg as diagram_svg;

const STYLE: &str = include_str!("html/matrix.css");
const SCRIPT: &str = include_str!("html/matrix.js");
/// Nothing is fetched: not a font, an image, a script or a stylesheet.
const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; script-src 'unsafe-inline'";

pub fn html(matrix: &Matrix) -> String {
    let mut out = String::with_capacity(4096 + matrix.rows.len() * 600);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta http-equiv=\"Content-Security-Policy\" content=\"{CSP}\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>Egress allowlist matrix</title>\n<style>\n{STYLE}</style>\n</head>\n<body>\n"
    );
    header(&mut out, matrix);
    out.push_str("<section>\n<h2>Services and their third parties</h2>\n");
    out.push_str(&diagram::svg(&matrix.services));
    out.push_str("</section>\n");
    rules(&mut out, matrix);
    dependencies(&mut out, &matrix.services);
    let _ = write!(out, "<script>\n{SCRIPT}</script>\n</body>\n</html>\n");
    out
}

fn header(out: &mut String, m: &Matrix) {
    let _ = write!(
        out,
        "<header>\n<h1>Egress allowlist matrix</h1>\n<dl>\n\
         <dt>Policy version</dt><dd><code>{}</code></dd>\n<dt>Origin</dt><dd>{}</dd>\n\
         <dt>Generated</dt><dd>{}</dd>\n<dt>Hits</dt><dd>{}</dd>\n\
         <dt>Rules</dt><dd>{} ({} allow(s), {} deny(s))</dd>\n</dl>\n</header>\n",
        esc(&m.policy_version),
        esc(&m.origin),
        esc(&m.generated),
        esc(&hits_sentence(m)),
        m.rows.len(),
        m.allows(),
        m.denies()
    );
}

fn rules(out: &mut String, m: &Matrix) {
    let columns = columns(m);
    let _ = write!(
        out,
        "<section>\n<h2>Rules</h2>\n<p class=\"controls\"><label>Filter <input id=\"filter\" type=\"search\" \
         placeholder=\"service, host, rule, justification...\" autocomplete=\"off\"></label> \
         <span id=\"shown\" aria-live=\"polite\">{n} of {n} rule(s)</span></p>\n\
         <table id=\"rules\" data-total=\"{n}\">\n<thead><tr>",
        n = m.rows.len()
    );
    for c in columns {
        let _ = write!(
            out,
            "<th scope=\"col\" tabindex=\"0\" data-key=\"{}\" data-type=\"{}\">{}</th>",
            c.key,
            if c.numeric { "num" } else { "text" },
            c.title
        );
    }
    out.push_str("</tr></thead>\n<tbody>\n");
    for (i, row) in m.rows.iter().enumerate() {
        table_row(out, i, row, columns);
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn table_row(out: &mut String, index: usize, row: &Row, columns: &[super::Column]) {
    let _ =
        write!(out, "<tr data-index=\"{index}\" data-rule=\"{}\" class=\"{}\">", esc(&row.rule_id), row.action_str());
    for c in columns {
        let class = if c.numeric { " class=\"num\"" } else { "" };
        match c.sort {
            Some(sort) => {
                let _ = write!(out, "<td{class} data-sort=\"{}\">{}</td>", esc(&sort(row)), esc(&(c.text)(row)));
            }
            None => {
                let _ = write!(out, "<td{class}>{}</td>", esc(&(c.text)(row)));
            }
        }
    }
    out.push_str("</tr>\n");
}

fn dependencies(out: &mut String, services: &[ServiceSummary]) {
    out.push_str(
        "<section>\n<h2>Third-party dependencies</h2>\n<p>Registrable domains of each service's host allows, \
         with the number of rules for each, and its CIDR allows.</p>\n<table id=\"dependencies\">\n\
         <thead><tr><th>Service</th><th>Owner</th><th>Mode</th><th class=\"num\">Allows</th>\
         <th class=\"num\">Denies</th><th>Domains (rules)</th><th>CIDRs (rules)</th></tr></thead>\n<tbody>\n",
    );
    for s in services {
        let list = |deps: &[super::Dependency]| {
            deps.iter().map(|d| format!("{} ({})", esc(&d.name), d.rules)).collect::<Vec<_>>().join(", ")
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td></tr>",
            esc(&s.service),
            esc(s.owner.as_deref().unwrap_or("")),
            s.mode,
            s.allows,
            s.denies,
            list(&s.domains),
            list(&s.cidrs)
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// `raw` as HTML text or a quoted attribute value.
pub(super) fn esc(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for c in raw.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}
