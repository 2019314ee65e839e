//! A proposal as new texts of the policy files, made by inserting lines into the text as it is.
//!
//! No YAML is re-serialized: comments, key order, quoting and spacing outside the inserted lines
//! stay byte for byte, so a reviewer's diff shows only what learning adds. Appending at the end of
//! a service's `allow:` list also keeps every existing rule id (`payments/allow/2`) as it was.
//!
//! The text is read only as far as needed: the service's document starts at the line the loader
//! recorded (`ServiceInfo::loc`) and ends at the next `---`/`...` marker; its top-level keys are
//! the lines at the document's own indentation; the `allow:` list is every line after that key up
//! to the next top-level key, whether its items are indented under `allow:` or flush with it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::render::{self, Indent};
use super::{NewService, Proposal, ServiceAllows};
use crate::policy::PolicySource;

/// One file's text before and after the edit. `before` is `None` for a new file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileEdit {
    pub path: PathBuf,
    pub before: Option<String>,
    pub after: String,
}

/// Why a proposal could not be turned into edits. Nothing is edited when any service fails.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EditError {
    #[error("{file}: service `{service}` is defined in this file, but the file is not among the policy files read")]
    FileNotRead { file: String, service: String },
    #[error(
        "{file}:{line}: the ServicePolicy document of service `{service}` no longer starts here: the file changed since the policy was compiled; run learn again"
    )]
    DocumentMoved { file: String, line: u32, service: String },
    #[error(
        "{file}:{line}: `allow: {value}` of service `{service}` is not a block list: write it as `allow:` followed by `- host: ...` lines so learned allows can be appended"
    )]
    NotABlockList { file: String, line: u32, service: String, value: String },
    #[error(
        "{file}:{line}: the allow list of service `{service}` seems to end here, before its rule at line {rule_line}: its layout is not one learn can edit safely; move the rule or add the allows by hand"
    )]
    AllowListUnclear { file: String, line: u32, service: String, rule_line: u32 },
}

/// The edits that carry out `proposal` on the files of `source`: each service's own file edited in
/// place, and each new service in `services/<name>.yaml` under `policy_dir` (appended as a
/// further document should that file exist). Sorted by path; files that would not change are left
/// out.
pub fn edits(proposal: &Proposal, source: &PolicySource, policy_dir: &Path) -> Result<Vec<FileEdit>, EditError> {
    let mut pending: BTreeMap<PathBuf, Pending<'_>> = BTreeMap::new();
    for service in &proposal.services {
        let file = source.files.iter().find(|f| *f.name == *service.loc.file).ok_or_else(|| {
            EditError::FileNotRead { file: service.loc.file.to_string(), service: service.service.clone() }
        })?;
        let splice = service_splice(&file.text, service)?;
        pending.entry(PathBuf::from(&*file.name)).or_insert_with(|| Pending::existing(&file.text)).splices.push(splice);
    }
    for service in &proposal.new_services {
        let path = policy_dir.join("services").join(format!("{}.yaml", service.name));
        let existing = source.files.iter().find(|f| Path::new(&*f.name) == path);
        let entry = pending.entry(path).or_insert_with(|| match existing {
            Some(f) => Pending::existing(&f.text),
            None => Pending { before: None, splices: Vec::new(), appended: Vec::new() },
        });
        entry.appended.push(service);
    }
    Ok(pending
        .into_iter()
        .filter_map(|(path, p)| {
            let after = p.after();
            (p.before.as_deref() != Some(after.as_str())).then_some(FileEdit { path, before: p.before, after })
        })
        .collect())
}

/// What will be done to one file.
struct Pending<'p> {
    before: Option<String>,
    splices: Vec<Splice>,
    /// New services written as further documents at the end (or as the whole new file).
    appended: Vec<&'p NewService>,
}

impl Pending<'_> {
    fn existing(text: &str) -> Self {
        Pending { before: Some(text.to_string()), splices: Vec::new(), appended: Vec::new() }
    }

    fn after(&self) -> String {
        let before = self.before.as_deref().unwrap_or("");
        let nl = newline_of(before);
        let mut text = before.to_string();
        let mut splices: Vec<&Splice> = self.splices.iter().collect();
        // Back to front, so the byte offsets of the ones still to do stay valid.
        splices.sort_by_key(|s| std::cmp::Reverse(s.start));
        for s in splices {
            text.replace_range(s.start..s.end, &s.text);
        }
        for service in &self.appended {
            if !text.is_empty() {
                if !text.ends_with('\n') {
                    text.push_str(nl);
                }
                text.push_str("---");
                text.push_str(nl);
            }
            text.push_str(&render::new_service_document(service, nl));
        }
        text
    }
}

/// Replace `start..end` (byte offsets of the original text) with `text`; an insertion when empty.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Splice {
    start: usize,
    end: usize,
    text: String,
}

/// One line of a file: its bytes `start..end` (newline included) and its text without the newline.
#[derive(Debug, Clone, Copy)]
struct Line<'t> {
    start: usize,
    end: usize,
    text: &'t str,
    has_newline: bool,
}

fn split_lines(text: &str) -> Vec<Line<'_>> {
    let mut lines = Vec::new();
    let mut start = 0;
    for raw in text.split_inclusive('\n') {
        let has_newline = raw.ends_with('\n');
        let body = raw.strip_suffix('\n').unwrap_or(raw);
        let body = body.strip_suffix('\r').unwrap_or(body);
        lines.push(Line { start, end: start + raw.len(), text: body, has_newline });
        start += raw.len();
    }
    lines
}

/// The file's own line ending, so inserted lines do not mix styles.
fn newline_of(text: &str) -> &'static str {
    match text.find('\n') {
        Some(i) if text[..i].ends_with('\r') => "\r\n",
        _ => "\n",
    }
}

fn indent_of(text: &str) -> usize {
    text.len() - text.trim_start_matches(' ').len()
}

fn is_blank(text: &str) -> bool {
    text.trim().is_empty()
}

/// A comment line at `base` or shallower: it may as well introduce what follows, so inserted
/// lines go before it, not after.
fn is_shallow_comment(text: &str, base: usize) -> bool {
    text.trim_start().starts_with('#') && indent_of(text) <= base
}

/// The document markers the loader splits on.
fn is_document_marker(text: &str) -> bool {
    text == "---" || text.starts_with("--- ") || text.starts_with("---\t") || text == "..." || text.starts_with("... ")
}

/// A sequence item: `-` then a space or the end of the line.
fn is_item(rest: &str) -> bool {
    rest == "-" || rest.starts_with("- ") || rest.starts_with("-\t")
}

/// What follows `key:` on a top-level line (at indentation `base`), if the line is that key.
fn key_value<'t>(text: &'t str, base: usize, key: &str) -> Option<&'t str> {
    if indent_of(text) != base {
        return None;
    }
    let rest = text[base..].strip_prefix(key)?.trim_start_matches(' ').strip_prefix(':')?;
    (rest.is_empty() || rest.starts_with([' ', '\t'])).then_some(rest)
}

/// `value  # comment` -> (`value`, `  # comment`): a `#` starts a comment at the start or after
/// whitespace.
fn split_comment(rest: &str) -> (&str, &str) {
    let bytes = rest.as_bytes();
    let hash = (0..bytes.len()).find(|&i| bytes[i] == b'#' && (i == 0 || bytes[i - 1].is_ascii_whitespace()));
    let value_end = hash.unwrap_or(rest.len());
    let comment = match hash {
        // The comment keeps the whitespace before it.
        Some(_) => &rest[rest[..value_end].trim_end().len()..],
        None => "",
    };
    (rest[..value_end].trim(), comment)
}

/// Strips one pair of YAML quotes.
fn unquote(value: &str) -> &str {
    for q in ['"', '\''] {
        if let Some(inner) = value.strip_prefix(q).and_then(|v| v.strip_suffix(q)) {
            return inner;
        }
    }
    value
}

/// A service's document, located in its file's lines.
struct Document<'l, 't> {
    lines: &'l [Line<'t>],
    /// Index of the first line, and one past the last.
    first: usize,
    end: usize,
    /// The indentation of its top-level keys.
    base: usize,
}

impl<'t> Document<'_, 't> {
    fn top_level(&self, key: &str) -> Option<(usize, &'t str)> {
        (self.first..self.end).find_map(|i| key_value(self.lines[i].text, self.base, key).map(|v| (i, v)))
    }

    /// The last line in `from..self.end` that belongs to what precedes it: not blank and not a
    /// shallow comment. `from - 1` when there is none.
    fn last_content(&self, from: usize) -> usize {
        (from..self.end)
            .rev()
            .find(|&i| !is_blank(self.lines[i].text) && !is_shallow_comment(self.lines[i].text, self.base))
            .unwrap_or(from.saturating_sub(1))
    }

    /// The last line of the block value of the key at line `key`, and its first item's line.
    fn block_after(&self, key: usize) -> (usize, Option<usize>) {
        let (mut last, mut first_item) = (key, None);
        for i in key + 1..self.end {
            let text = self.lines[i].text;
            if is_blank(text) {
                continue;
            }
            let indent = indent_of(text);
            let rest = &text[indent..];
            if rest.starts_with('#') {
                if indent > self.base {
                    last = i;
                }
                continue;
            }
            let item = is_item(rest);
            if indent > self.base || (indent == self.base && item) {
                last = i;
                if item && first_item.is_none() {
                    first_item = Some(i);
                }
                continue;
            }
            break;
        }
        (last, first_item)
    }

    /// How the item at line `i` is laid out: its dash's column and its keys' column.
    fn item_indent(&self, i: usize) -> Indent {
        let text = self.lines[i].text;
        let dash = indent_of(text);
        let after = &text[dash + 1..];
        let gap = after.len() - after.trim_start_matches(' ').len();
        let inline_key = !after.trim().is_empty() && !after.trim_start().starts_with('#');
        let key = if inline_key {
            dash + 1 + gap
        } else {
            // `-` alone: the keys are on the next lines.
            (i + 1..self.end).map(|j| self.lines[j].text).find(|t| !is_blank(t)).map_or(dash + 2, indent_of)
        };
        Indent { dash, key: key.max(dash + 2) }
    }

    /// The layout of the document's first list item (`identities:`, say), for a list it does
    /// not have yet.
    fn any_item_indent(&self) -> Indent {
        (self.first..self.end)
            .find(|&i| {
                let t = self.lines[i].text;
                is_item(&t[indent_of(t)..])
            })
            .map(|i| self.item_indent(i))
            .filter(|indent| indent.dash >= self.base)
            .unwrap_or(Indent { dash: self.base + Indent::DEFAULT.dash, key: self.base + Indent::DEFAULT.key })
    }
}

/// Finds `service`'s document and the place for its new allows.
fn service_splice(text: &str, service: &ServiceAllows) -> Result<Splice, EditError> {
    let lines = split_lines(text);
    let file = service.loc.file.to_string();
    let moved =
        || EditError::DocumentMoved { file: file.clone(), line: service.loc.line, service: service.service.clone() };
    let first = (service.loc.line as usize).checked_sub(1).filter(|&i| i < lines.len()).ok_or_else(moved)?;
    let end = (first + 1..lines.len()).find(|&i| is_document_marker(lines[i].text)).unwrap_or(lines.len());
    let doc = Document { lines: &lines, first, end, base: indent_of(lines[first].text) };
    let named = doc.top_level("service").map(|(_, v)| unquote(split_comment(v).0));
    if !starts_document(&lines, first) || named != Some(service.service.as_str()) {
        return Err(moved());
    }
    let nl = newline_of(text);
    let items = |indent| render::allow_items(&service.allows, &service.service, indent, nl);
    let Some((key, rest)) = doc.top_level("allow") else {
        // No allow list yet: one at the end of the document.
        let indent = doc.any_item_indent();
        let list = format!("{}allow:{nl}{}", " ".repeat(doc.base), items(indent));
        return Ok(insert_after(&lines[doc.last_content(first)], list, nl));
    };
    let (value, comment) = split_comment(rest);
    match value {
        "" => {
            let (last, first_item) = doc.block_after(key);
            if let Some(rule_line) = service.last_allow_line.filter(|&l| l as usize > last + 1) {
                return Err(EditError::AllowListUnclear {
                    file,
                    line: last as u32 + 1,
                    service: service.service.clone(),
                    rule_line,
                });
            }
            let indent = first_item.map_or_else(|| doc.any_item_indent(), |i| doc.item_indent(i));
            Ok(insert_after(&lines[last], items(indent), nl))
        }
        "[]" => {
            // An empty flow list becomes a block list; the line's comment stays on it.
            let line = &lines[key];
            let list = format!("{}allow:{comment}{nl}{}", " ".repeat(doc.base), items(doc.any_item_indent()));
            Ok(Splice { start: line.start, end: line.end, text: list })
        }
        other => Err(EditError::NotABlockList {
            file,
            line: key as u32 + 1,
            service: service.service.clone(),
            value: other.to_string(),
        }),
    }
}

/// Whether line `first` is where a document's content starts, as the loader counts it: a content
/// line with only blank lines, comments and directives between it and the previous marker.
fn starts_document(lines: &[Line<'_>], first: usize) -> bool {
    let ignorable = |t: &str| is_blank(t) || t.trim_start().starts_with('#') || t.starts_with('%');
    let text = lines[first].text;
    !is_document_marker(text)
        && !ignorable(text)
        && lines[..first].iter().rev().take_while(|l| !is_document_marker(l.text)).all(|l| ignorable(l.text))
}

/// Inserts `text` after `line` (after its newline, or with one when it is the file's last line
/// and has none).
fn insert_after(line: &Line<'_>, text: String, nl: &str) -> Splice {
    let text = if line.has_newline { text } else { format!("{nl}{text}") };
    Splice { start: line.end, end: line.end, text }
}
