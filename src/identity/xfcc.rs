//! `x-forwarded-client-cert` (XFCC): the identity a sidecar saw when it terminated mTLS.
//!
//! Format (Envoy): elements separated by `,`, each a `;`-separated list of `Key=Value` pairs; a
//! value may be double-quoted, and inside quotes `\"` escapes a quote (and `\\` a backslash), so
//! `,`/`;`/`=` are literal there. Each proxy hop appends an element, so the *last* element is the
//! nearest hop's peer, and it is the only one egressd may believe: everything before it may have
//! been written by the client.
//!
//! A client can put anything before the sidecar's element, including an unterminated quote that,
//! read from the start, swallows the sidecar's comma and makes the client's own `URI=` look like
//! the last element. So the last element is found twice, from the start and from the end (the end
//! is the sidecar's, written by Envoy's grammar, so reading backwards is right whatever precedes
//! it), and the identity is read only when both agree and the quoting balances. Anything else is
//! not guessed at: it is an error, and the caller is denied as unauthenticated.

use std::borrow::Cow;

/// Why an XFCC header yields no identity. Shown to operators in deny reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum XfccError {
    #[error(
        "x-forwarded-client-cert is malformed: its quoting does not balance, so the nearest hop's element cannot be found (an injected element?)"
    )]
    Unbalanced,
    #[error(
        "x-forwarded-client-cert is ambiguous: read from the start and from the end, its last element differs (an injected element?)"
    )]
    Ambiguous,
    #[error("x-forwarded-client-cert: the nearest hop's element has no URI")]
    NoUri,
    #[error("x-forwarded-client-cert: the nearest hop's element has more than one URI")]
    ManyUris,
}

/// The `URI=` value of the nearest hop's (last) element. Walks the header in place: the Check hot
/// path allocates only when a quoted value holds escapes.
pub fn last_uri(header: &str) -> Result<Cow<'_, str>, XfccError> {
    let from_start = last_element_start_forward(header)?;
    if from_start != last_element_start_backward(header) {
        return Err(XfccError::Ambiguous);
    }
    let mut uri = None;
    for pair in (UnquotedSplit { rest: Some(&header[from_start..]), sep: b';' }) {
        let Some((key, value)) = pair.split_once('=') else { continue };
        if key.trim().eq_ignore_ascii_case("uri") {
            if uri.is_some() {
                return Err(XfccError::ManyUris);
            }
            uri = Some(unquote(value.trim()));
        }
    }
    uri.filter(|u| !u.is_empty()).ok_or(XfccError::NoUri)
}

/// Where the last element begins (after the last `,` outside quotes), reading from the start.
/// Errors when a quote is still open (or an escape dangles) at the end.
fn last_element_start_forward(header: &str) -> Result<usize, XfccError> {
    let (mut quoted, mut escaped, mut start) = (false, false, 0);
    for (i, b) in header.bytes().enumerate() {
        match b {
            _ if escaped => escaped = false,
            b'\\' if quoted => escaped = true,
            b'"' => quoted = !quoted,
            b',' if !quoted => start = i + 1,
            _ => {}
        }
    }
    if quoted || escaped { Err(XfccError::Unbalanced) } else { Ok(start) }
}

/// Where the last element begins, reading from the end: a `"` delimits only when an even number
/// of backslashes precede it (an odd number escapes it), which is how the element's writer
/// (Envoy) escaped it, whatever came before.
fn last_element_start_backward(header: &str) -> usize {
    let bytes = header.as_bytes();
    let mut quoted = false;
    for i in (0..bytes.len()).rev() {
        match bytes[i] {
            b'"' => {
                let backslashes = bytes[..i].iter().rev().take_while(|&&b| b == b'\\').count();
                if backslashes % 2 == 0 {
                    quoted = !quoted;
                }
            }
            b',' if !quoted => return i + 1,
            _ => {}
        }
    }
    0
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

    const CI: &str = "spiffe://acme.internal/ns/ci/sa/runner";
    const BILLING: &str = "spiffe://acme.internal/ns/billing/sa/api";

    /// The element Envoy's `APPEND_FORWARD` adds for a peer: By, Hash, Subject (quoted), URI.
    fn sidecar_element(uri: &str, subject: &str) -> String {
        format!("By=spiffe://acme.internal/ns/ci/sa/sidecar;Hash=4e1c0b7f;Subject=\"{subject}\";URI={uri}")
    }

    #[test]
    fn last_element_wins() {
        let h = "By=spiffe://corp.example/gw;URI=spiffe://corp.example/ns/a/sa/first,By=spiffe://corp.example/gw;Hash=abc;URI=spiffe://corp.example/ns/b/sa/second";
        assert_eq!(last_uri(h).as_deref(), Ok("spiffe://corp.example/ns/b/sa/second"));
    }

    #[test]
    fn quoted_values_may_hold_separators() {
        let h = r#"Hash=1;Subject="CN=x,O=y;z";URI=spiffe://corp.example/ns/a/sa/b"#;
        assert_eq!(last_uri(h).as_deref(), Ok("spiffe://corp.example/ns/a/sa/b"));
        let h = r#"Subject="a\"b";URI="spiffe://corp.example/ns/q""#;
        assert_eq!(last_uri(h).as_deref(), Ok("spiffe://corp.example/ns/q"));
        let h = r#"Subject="ends in a backslash \\";URI=spiffe://corp.example/ns/q"#;
        assert_eq!(last_uri(h).as_deref(), Ok("spiffe://corp.example/ns/q"));
    }

    #[test]
    fn no_uri_means_no_identity() {
        assert_eq!(last_uri("Hash=abc;DNS=example.com"), Err(XfccError::NoUri));
        assert_eq!(last_uri(""), Err(XfccError::NoUri));
        assert_eq!(last_uri("URI=spiffe://corp.example/ns/a,Hash=abc"), Err(XfccError::NoUri));
        assert_eq!(last_uri("Hash=abc;URI="), Err(XfccError::NoUri));
        assert_eq!(last_uri("URI=spiffe://a/x;URI=spiffe://a/y"), Err(XfccError::ManyUris));
    }

    /// The reported bypass: the client's open quote swallowed the sidecar's comma.
    #[test]
    fn an_injected_open_quote_does_not_steal_the_identity() {
        let injected = format!("URI={BILLING};Subject=\"");
        let header = format!("{injected},{}", sidecar_element(CI, ""));
        assert_ne!(last_uri(&header).as_deref(), Ok(BILLING));
        assert_eq!(last_uri(&header), Err(XfccError::Unbalanced));
    }

    /// A prefix with an odd number of quotes before a sidecar element whose subject holds an
    /// escaped quote balances when read from the start, yet the comma it hides is the sidecar's.
    #[test]
    fn a_prefix_that_balances_against_an_escaped_quote_is_ambiguous() {
        let header = format!("URI={BILLING};Subject=\"x,{}", sidecar_element(CI, r#"CN=a\"b"#));
        assert_eq!(last_element_start_forward(&header), Ok(0), "read from the start, one element");
        assert_eq!(last_uri(&header), Err(XfccError::Ambiguous));
    }

    #[test]
    fn honest_chains_read_the_nearest_hop() {
        for subject in ["", "CN=runner,O=acme", r#"CN=a\"b"#, r#"CN=back\\slash"#] {
            let one = sidecar_element(CI, subject);
            assert_eq!(last_uri(&one).as_deref(), Ok(CI), "{one}");
            let two = format!("{},{one}", sidecar_element(BILLING, subject));
            assert_eq!(last_uri(&two).as_deref(), Ok(CI), "{two}");
        }
    }

    proptest::proptest! {
        /// Whatever a client places before the sidecar's element, egressd reads the sidecar's URI
        /// or nothing: never another identity.
        #[test]
        fn no_client_prefix_changes_the_identity(
            prefix in r#"([a-zA-Z=;,"\\ ]|URI=|spiffe://acme\.internal/ns/billing/sa/api){0,24}"#,
            subject in r#"(CN=[a-z]{0,4}|,|;|=|\\"|\\\\){0,6}"#,
        ) {
            let header = format!("{prefix},{}", sidecar_element(CI, &subject));
            if let Ok(uri) = last_uri(&header) {
                proptest::prop_assert_eq!(uri.as_ref(), CI, "{}", header);
            }
            // Without a prefix the honest element always reads.
            let honest = sidecar_element(CI, &subject);
            let read = last_uri(&honest);
            proptest::prop_assert_eq!(read.as_deref(), Ok(CI), "{}", honest);
        }
    }
}
