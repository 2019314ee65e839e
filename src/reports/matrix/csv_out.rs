//! The matrix as CSV for spreadsheets and audit tooling: a header row of the column keys (the JSON
//! field names), then one row per rule, quoted as RFC 4180 says (by the `csv` crate), so a
//! justification with a comma, a quote or a line break comes back as written. The dependency
//! summary is left out: it is not one row per rule (`--format json` has it).

use super::{Matrix, columns};

pub fn csv(matrix: &Matrix) -> String {
    let columns = columns(matrix);
    let mut writer = ::csv::WriterBuilder::new().terminator(::csv::Terminator::CRLF).from_writer(Vec::new());
    let mut lines = vec![columns.iter().map(|c| c.key.to_string()).collect::<Vec<_>>()];
    lines.extend(matrix.rows.iter().map(|row| columns.iter().map(|c| (c.text)(row)).collect()));
    for line in lines {
        // Writing to a Vec cannot fail; `csv` reports only I/O errors for it.
        if writer.write_record(&line).is_err() {
            break;
        }
    }
    let bytes = writer.into_inner().unwrap_or_default();
    // Every field is a `String`, so the bytes are UTF-8.
    String::from_utf8(bytes).unwrap_or_default()
}
