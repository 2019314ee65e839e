//! `x-forwarded-client-cert` (XFCC): the identity a sidecar saw when it terminated mTLS.
//!
//! Format (Envoy): elements separated by `,`, each a `;`-separated list of `Key=Value` pairs; a
//! value may be double-quoted, and inside quotes `\"` escapes a quote and `,`/`;`/`=` are literal.
//! Each proxy hop appends an element, so the *last* element is the nearest hop's peer.

/// The `URI=` value of the last element, or `None` if the header has none.
pub fn last_uri(header: &str) -> Option<String> {
    let last = split_unquoted(header, b',').into_iter().last()?;
    for pair in split_unquoted(last, b';') {
        let (key, value) = pair.split_once('=')?;
        if key.trim().eq_ignore_ascii_case("uri") {
            let value = unquote(value.trim());
            return (!value.is_empty()).then_some(value);
        }
    }
    None
}

/// Splits on `sep` outside double quotes.
fn split_unquoted(s: &str, sep: u8) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut start, mut quoted, mut escaped) = (0, false, false);
    for (i, b) in s.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            _ if b == sep && !quoted => {
                parts.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&s[start..]);
    parts
}

fn unquote(v: &str) -> String {
    match v.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => inner.replace("\\\"", "\"").replace("\\\\", "\\"),
        None => v.to_string(),
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
