//! `x-forwarded-client-cert` (XFCC): the identity a sidecar saw when it terminated mTLS.
//!
//! Format (Envoy): elements separated by `,`, each a `;`-separated list of `Key=Value` pairs; a
//! value may be double-quoted, and inside quotes `\"` escapes a quote and `,`/`;`/`=` are literal.
//! Each proxy hop appends an element, so the *last* element is the nearest hop's peer.

use std::borrow::Cow;

/// The `URI=` value of the last element, or `None` if the header has none. Walks the header in
/// place: the Check hot path allocates only when a quoted value holds escapes.
pub fn last_uri(header: &str) -> Option<Cow<'_, str>> {
    let last = UnquotedSplit { rest: Some(header), sep: b',' }.last()?;
    for pair in (UnquotedSplit { rest: Some(last), sep: b';' }) {
        let (key, value) = pair.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("uri") {
            let value = unquote(value.trim());
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

/// Splits on `sep` outside double quotes (`\` escapes inside quotes).
struct UnquotedSplit<'a> {
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for UnquotedSplit<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let s = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in s.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == self.sep && !quoted => {
                    self.rest = Some(&s[i + 1..]);
                    return Some(&s[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(s)
    }
}

fn unquote(v: &str) -> Cow<'_, str> {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) if inner.contains('\\') => Cow::Owned(inner.replace("\\\"", "\"").replace("\\\\", "\\")),
        Some(inner) => Cow::Borrowed(inner),
        None => Cow::Borrowed(v),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_element_wins() {
        let h = "By=spiffe://corp.example/gw;URI=spiffe://corp.example/ns/a/sa/first,By=spiffe://corp.example/gw;Hash=abc;URI=spiffe://corp.example/ns/b/sa/second";
        assert_eq!(last_uri(h).as_deref(), Some("spiffe://corp.example/ns/b/sa/second"));
    }

    #[test]
    fn quoted_values_may_hold_separators() {
        let h = r#"Hash=1;Subject="CN=x,O=y;z";URI=spiffe://corp.example/ns/a/sa/b"#;
        assert_eq!(last_uri(h).as_deref(), Some("spiffe://corp.example/ns/a/sa/b"));
        let h = r#"Subject="a\"b";URI="spiffe://corp.example/ns/q""#;
        assert_eq!(last_uri(h).as_deref(), Some("spiffe://corp.example/ns/q"));
    }

    #[test]
    fn no_uri_means_no_identity() {
        assert_eq!(last_uri("Hash=abc;DNS=example.com"), None);
        assert_eq!(last_uri(""), None);
        assert_eq!(last_uri("URI=spiffe://corp.example/ns/a,Hash=abc"), None);
    }
}
