//! One JSON object written straight into a line buffer: what the audit log writes per decision.
//!
//! serde_json escapes a string byte by byte, and the fields it is given as `String`s (the time,
//! the ids) were each formatted into an allocation first: perf showed escaping and those
//! allocations as a quarter of the telemetry thread's time with the audit log on. Almost every
//! value here (reason codes, rule ids, normalized hosts, SPIFFE IDs) has nothing to escape, so a
//! string is scanned for the bytes JSON must escape and copied whole when it has none; the rare
//! one that does is escaped exactly as serde_json escapes (a test compares the two on every byte
//! value). Keys are the writer's own constants and are written as they are.

use std::io::Write as _;

/// Lowercase hex digits, as serde_json writes `\u00XX` and as trace and span ids are written.
const HEX: &[u8; 16] = b"0123456789abcdef";

/// An object being written into `out`; `end` closes it.
pub struct JsonLine<'a> {
    out: &'a mut Vec<u8>,
    first: bool,
}

impl<'a> JsonLine<'a> {
    pub fn begin(out: &'a mut Vec<u8>) -> Self {
        out.push(b'{');
        JsonLine { out, first: true }
    }

    fn key(&mut self, key: &str) {
        debug_assert!(!needs_escape(key.as_bytes()), "keys are plain constants: {key}");
        let open: &[u8] = if self.first { b"\"" } else { b",\"" };
        self.first = false;
        self.out.reserve(open.len() + key.len() + 2);
        self.out.extend_from_slice(open);
        self.out.extend_from_slice(key.as_bytes());
        self.out.extend_from_slice(b"\":");
    }

    pub fn str(&mut self, key: &str, value: &str) {
        self.key(key);
        write_str(self.out, value);
    }

    pub fn int(&mut self, key: &str, value: i64) {
        self.key(key);
        self.out.extend_from_slice(itoa::Buffer::new().format(value).as_bytes());
    }

    pub fn bool(&mut self, key: &str, value: bool) {
        self.key(key);
        self.out.extend_from_slice(if value { b"true" } else { b"false" });
    }

    /// A number as serde_json writes an `f64` (shortest round-trip form).
    pub fn f64(&mut self, key: &str, value: f64) {
        self.key(key);
        // Infallible into a Vec; a non-finite value is written as serde_json writes it (null).
        let _ = serde_json::to_writer(&mut *self.out, &value);
    }

    /// A string value formatted in place (no intermediate `String`); `Display` output is escaped.
    pub fn display(&mut self, key: &str, value: impl std::fmt::Display) {
        self.key(key);
        let start = self.out.len();
        let _ = write!(self.out, "{value}");
        if needs_escape(&self.out[start..]) {
            let text = String::from_utf8_lossy(&self.out[start..]).into_owned();
            self.out.truncate(start);
            write_str(self.out, &text);
        } else {
            self.out.insert(start, b'"');
            self.out.push(b'"');
        }
    }

    /// Bytes as lowercase hex in a string (trace and span ids).
    pub fn hex(&mut self, key: &str, bytes: &[u8]) {
        self.key(key);
        // Ids are 8 or 16 bytes: each 16-byte piece is formatted on the stack and copied once.
        self.out.push(b'"');
        for piece in bytes.chunks(16) {
            let mut text = [0u8; 32];
            for (pair, b) in text.chunks_exact_mut(2).zip(piece) {
                pair.copy_from_slice(&[HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]]);
            }
            self.out.extend_from_slice(&text[..2 * piece.len()]);
        }
        self.out.push(b'"');
    }

    pub fn end(self) {
        self.out.push(b'}');
    }
}

/// Whether JSON requires escaping any of `bytes`: `"`, `\` and the control characters.
fn needs_escape(bytes: &[u8]) -> bool {
    first_escape(bytes).is_some()
}

/// Whether JSON requires escaping the byte `b`.
fn escapes(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

/// Where the first byte JSON must escape is, if any. Eight bytes at a time: audit lines are
/// ~800 bytes of strings that almost never need escaping, and a byte-at-a-time scan was the
/// largest single cost of writing one (perf, `cargo bench --bench telemetry -- audit-json`).
fn first_escape(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // A byte of `x` is zero (exact as to whether one is; the classic bit trick).
    let has_zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS != 0;
    // A byte of `x` is below 0x20 (exact likewise, for bounds up to 0x80).
    let has_control = |x: u64| x.wrapping_sub(ONES * 0x20) & !x & HIGHS != 0;
    let mut start = 0;
    for chunk in bytes.chunks_exact(8) {
        let x = u64::from_ne_bytes(chunk.try_into().expect("chunks of eight"));
        if has_control(x) || has_zero(x ^ (ONES * u64::from(b'"'))) || has_zero(x ^ (ONES * u64::from(b'\\'))) {
            break;
        }
        start += 8;
    }
    bytes[start..].iter().position(|&b| escapes(b)).map(|i| start + i)
}

/// `s` as a JSON string: copied whole when nothing needs escaping, else escaped as serde_json does.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let Some(first) = first_escape(bytes) else {
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    };
    let mut clean = 0;
    for (i, &b) in bytes.iter().enumerate().skip(first) {
        let escape: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0..=0x1f => &[b'\\', b'u', b'0', b'0', HEX[usize::from(b >> 4)], HEX[usize::from(b & 0xf)]],
            _ => continue,
        };
        out.extend_from_slice(&bytes[clean..i]);
        out.extend_from_slice(escape);
        clean = i + 1;
    }
    out.extend_from_slice(&bytes[clean..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ours(s: &str) -> String {
        let mut out = Vec::new();
        write_str(&mut out, s);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn strings_are_escaped_exactly_as_serde_json_escapes_them() {
        // Every byte value that is a char on its own, alone and between text.
        for c in (0u32..=0x7f).chain([0xe9, 0x2028, 0x1f600]).filter_map(char::from_u32) {
            for s in [c.to_string(), format!("a{c}b"), format!("{c}{c}x")] {
                assert_eq!(ours(&s), serde_json::to_string(&s).unwrap(), "{s:?}");
            }
        }
        for s in ["", "spiffe://corp.example/ns/a/sa/b", "quote \" and \\ and \u{7f}", "tab\tnl\ncr\r"] {
            assert_eq!(ours(s), serde_json::to_string(s).unwrap(), "{s:?}");
        }
    }

    proptest::proptest! {
        /// The word-at-a-time scan finds exactly the first byte a byte-at-a-time scan finds: runs
        /// of bytes that need no escaping (ASCII and the high bytes of UTF-8), now and then any byte.
        #[test]
        fn the_fast_scan_finds_the_first_byte_to_escape(bytes in proptest::collection::vec(
            proptest::prop_oneof![20 => 0x23u8..0x5c, 20 => 0x5du8..=0xff, 1 => proptest::prelude::any::<u8>()],
            0..80,
        )) {
            let naive = bytes.iter().position(|&b| b < 0x20 || b == b'"' || b == b'\\');
            proptest::prop_assert_eq!(first_escape(&bytes), naive);
        }

        #[test]
        fn any_string_is_escaped_as_serde_json_escapes_it(s in "(?s).{0,40}") {
            proptest::prop_assert_eq!(ours(&s), serde_json::to_string(&s).unwrap());
        }
    }

    #[test]
    fn an_object_reads_back_as_what_was_written() {
        let mut out = Vec::new();
        let mut line = JsonLine::begin(&mut out);
        line.str("host", "api.example.com");
        line.int("port", -443);
        line.bool("sampled", true);
        line.f64("duration_us", 0.921);
        line.hex("span_id", &[0x01, 0xab, 0xff]);
        line.hex("long", &[0x5a; 20]);
        line.display("time", jiff::Timestamp::from_second(0).unwrap());
        line.display("odd", "a\"b");
        line.end();
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        let expected = serde_json::json!({
            "host": "api.example.com", "port": -443, "sampled": true, "duration_us": 0.921,
            "span_id": "01abff", "long": "5a".repeat(20), "time": "1970-01-01T00:00:00Z", "odd": "a\"b"
        });
        assert_eq!(v, expected);
        assert_eq!(std::str::from_utf8(&out).unwrap().matches(':').count(), 10, "compact, no spaces");
    }
}
