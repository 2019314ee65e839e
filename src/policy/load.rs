//! YAML text -> typed documents, with every syntax or shape error reported at `FILE:LINE:COL`.
//!
//! This is the only module that knows the YAML library (serde-saphyr), so it can be swapped here.
//! Multi-document files are split on `---` by hand instead of through an internally tagged serde
//! enum: serde buffers tagged enums, which would throw away every value's source location.

use std::sync::Arc;

use serde::de::DeserializeOwned;

use super::diagnostic::{Diagnostics, SourceLoc};
use super::model::{DestinationGroupDoc, DnsFirewallDoc, GatewayDoc, KindProbe, MeshDefaultsDoc, ServicePolicyDoc};
use super::source::PolicySource;

/// A parsed document and the file it came from.
#[derive(Debug)]
pub struct Located<T> {
    pub file: Arc<str>,
    /// Where the document starts (its first line).
    pub loc: SourceLoc,
    pub doc: T,
}

/// Every document of a policy set, grouped by kind, in file order.
#[derive(Debug, Default)]
pub struct ParsedDocs {
    pub mesh_defaults: Vec<Located<MeshDefaultsDoc>>,
    pub groups: Vec<Located<DestinationGroupDoc>>,
    pub services: Vec<Located<ServicePolicyDoc>>,
    pub gateways: Vec<Located<GatewayDoc>>,
    pub dns_firewalls: Vec<Located<DnsFirewallDoc>>,
    /// A MeshDefaults document was present but failed to parse (already reported).
    pub mesh_defaults_failed: bool,
}

pub const KINDS: &str = "MeshDefaults, DestinationGroup, ServicePolicy, Gateway or DnsFirewall";

/// How much policy egressd reads: limits a policy set written by people never nears, which keep
/// a generated or hostile one from costing unbounded memory and time (each document is parsed
/// behind its file's earlier lines, as blank lines, so its line numbers are the file's).
pub mod limits {
    /// Bytes per policy file.
    pub const MAX_FILE_BYTES: usize = 4 << 20;
    /// Bytes of all files together.
    pub const MAX_POLICY_BYTES: usize = 64 << 20;
    /// Documents per file.
    pub const MAX_DOCUMENTS_PER_FILE: usize = 1_000;
    /// Documents of all files together.
    pub const MAX_DOCUMENTS: usize = 100_000;
}

/// Parses every document of every file. Problems go to `diags`; documents that parse are returned
/// even when others fail, so later checks can still report what they find. A file past the limits
/// (`limits`) is an error at its first line (or at the first document too many) and is not read.
pub fn parse_documents(source: &PolicySource, diags: &mut Diagnostics) -> ParsedDocs {
    use limits::*;
    let mut out = ParsedDocs::default();
    let (mut bytes, mut documents) = (0usize, 0usize);
    for file in &source.files {
        let at = |line| SourceLoc::new(&file.name, line, 1);
        let size = file.text.len();
        bytes += size;
        if size > MAX_FILE_BYTES {
            diags.error(
                at(1),
                format!(
                    "the file is {size} bytes, more than the {MAX_FILE_BYTES} egressd reads per policy file: split it"
                ),
            );
            continue;
        }
        if bytes > MAX_POLICY_BYTES {
            diags.error(
                at(1),
                format!("the policy is more than {MAX_POLICY_BYTES} bytes in all files: not read past here"),
            );
            break;
        }
        let docs = split_documents(&file.text);
        if let Some(extra) = docs.get(MAX_DOCUMENTS_PER_FILE) {
            let message = format!("more than {MAX_DOCUMENTS_PER_FILE} documents in one file: split it");
            diags.error(at(extra.first_line), message);
            continue;
        }
        documents += docs.len();
        if documents > MAX_DOCUMENTS {
            diags.error(at(1), format!("the policy has more than {MAX_DOCUMENTS} documents: not read past here"));
            break;
        }
        for doc in docs {
            parse_document(&file.name, &doc, &mut out, diags);
        }
    }
    out
}

/// One YAML document: its lines, and how many blank lines put them where they are in the file
/// (added when it is parsed, so parser line numbers are the file's line numbers).
struct DocText {
    first_line: u32,
    lines_before: usize,
    body: String,
}

impl DocText {
    /// The text the parser reads; made per parse and dropped after it, so a file of many
    /// documents never holds all of them padded at once.
    fn padded(&self) -> String {
        let mut text = String::with_capacity(self.lines_before + self.body.len());
        text.extend(std::iter::repeat_n('\n', self.lines_before));
        text.push_str(&self.body);
        text
    }
}

fn split_documents(text: &str) -> Vec<DocText> {
    let mut docs = Vec::new();
    let mut current = String::new();
    let mut first_line = 1;
    let mut lines_before = 0;
    let mut has_content = false;
    let mut flush = |current: &mut String, first_line: u32, lines_before: usize, has_content: &mut bool| {
        if *has_content {
            docs.push(DocText { first_line, lines_before, body: std::mem::take(current) });
        }
        current.clear();
        *has_content = false;
    };
    for (index, line) in text.lines().enumerate() {
        let line_no = index as u32 + 1;
        let is_start = line == "---" || line.starts_with("--- ") || line.starts_with("---\t");
        let is_end = line == "..." || line.starts_with("... ");
        if is_start || is_end {
            flush(&mut current, first_line, lines_before, &mut has_content);
            // Everything before the next document becomes blank lines when it is parsed.
            lines_before = index + 1;
            if is_start {
                // Keep anything after the marker (a comment, say) at its column, on its line.
                lines_before = index;
                current.push_str("   ");
                current.push_str(&line[3..]);
                current.push('\n');
            }
            first_line = line_no + 1;
            continue;
        }
        let trimmed = line.trim_start();
        if !has_content && !trimmed.is_empty() && !trimmed.starts_with('#') && !trimmed.starts_with('%') {
            has_content = true;
            first_line = line_no;
        }
        current.push_str(line);
        current.push('\n');
    }
    flush(&mut current, first_line, lines_before, &mut has_content);
    docs
}

fn parse_document(file: &Arc<str>, doc: &DocText, out: &mut ParsedDocs, diags: &mut Diagnostics) {
    let start = SourceLoc::new(file, doc.first_line, 1);
    let probe: KindProbe = match parse_yaml(file, &doc.padded(), &start, diags) {
        Some(p) => p,
        None => return,
    };
    let Some(kind) = probe.kind else {
        diags.error(start, format!("document has no `kind`: expected {KINDS}"));
        return;
    };
    match kind.value.as_str() {
        "MeshDefaults" => match parse_located(file, doc, &start, diags) {
            Some(d) => out.mesh_defaults.push(d),
            None => out.mesh_defaults_failed = true,
        },
        "DestinationGroup" => out.groups.extend(parse_located(file, doc, &start, diags)),
        "ServicePolicy" => out.services.extend(parse_located(file, doc, &start, diags)),
        "Gateway" => out.gateways.extend(parse_located(file, doc, &start, diags)),
        "DnsFirewall" => out.dns_firewalls.extend(parse_located(file, doc, &start, diags)),
        other => diags.error(SourceLoc::of(file, &kind), format!("unknown kind `{other}`: expected {KINDS}")),
    }
}

fn parse_located<T: DeserializeOwned>(
    file: &Arc<str>,
    doc: &DocText,
    start: &SourceLoc,
    diags: &mut Diagnostics,
) -> Option<Located<T>> {
    let parsed = parse_yaml(file, &doc.padded(), start, diags)?;
    Some(Located { file: file.clone(), loc: start.clone(), doc: parsed })
}

fn parse_yaml<T: DeserializeOwned>(
    file: &Arc<str>,
    text: &str,
    fallback: &SourceLoc,
    diags: &mut Diagnostics,
) -> Option<T> {
    match serde_saphyr::from_str::<T>(text) {
        Ok(v) => Some(v),
        Err(err) => {
            let loc = err
                .location()
                .filter(|l| l.line() > 0)
                .map(|l| SourceLoc::new(file, l.line() as u32, l.column() as u32))
                .unwrap_or_else(|| fallback.clone());
            diags.error(loc, strip_location_suffix(&err.without_snippet().to_string()));
            None
        }
    }
}

/// serde-saphyr appends " at line N, column M" to its messages; we print the location up front.
fn strip_location_suffix(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) if message[i..].contains(", column ") => message[..i].to_string(),
        _ => message.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> (ParsedDocs, Vec<String>) {
        let mut diags = Diagnostics::default();
        let docs = parse_documents(&PolicySource::from_text("p.yaml", text), &mut diags);
        (docs, diags.into_sorted().iter().map(|d| d.to_string()).collect())
    }

    #[test]
    fn multi_document_lines_are_absolute() {
        let text = "# header\nkind: MeshDefaults\ntrustDomain: corp.example\n---\n\nkind: ServicePolicy\nservice: a\nidentities: []\nallow:\n  - host: x.example.com\n    justification: j\n";
        let (docs, errors) = parse(text);
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.mesh_defaults.len(), 1);
        assert_eq!(docs.services[0].loc.line, 6);
        assert_eq!(docs.services[0].doc.allow[0].value.host.as_ref().unwrap().referenced.line(), 10);
    }

    #[test]
    fn unknown_keys_and_kinds_are_located() {
        let text = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: a\nidentities: []\nallow:\n  - host: x.example.com\n    portz: [1]\n---\nkind: Bogus\n---\nfoo: bar\n";
        let (_, errors) = parse(text);
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(errors[0].starts_with("p.yaml:9:5: unknown field `portz`"), "{}", errors[0]);
        assert!(errors[1].starts_with("p.yaml:11:7: unknown kind `Bogus`"), "{}", errors[1]);
        assert!(errors[2].starts_with("p.yaml:13:1: document has no `kind`"), "{}", errors[2]);
    }

    #[test]
    fn camel_case_keys_only() {
        let (_, errors) = parse("kind: MeshDefaults\ntrust_domain: corp.example\n");
        assert!(errors[0].contains("unknown field `trust_domain`"), "{errors:?}");
    }

    #[test]
    fn empty_documents_are_skipped() {
        let (docs, errors) = parse("---\n# nothing\n---\nkind: MeshDefaults\ntrustDomain: corp.example\n...\n");
        assert!(errors.is_empty(), "{errors:?}");
        assert_eq!(docs.mesh_defaults.len(), 1);
    }
}
