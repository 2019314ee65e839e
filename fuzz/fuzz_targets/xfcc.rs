//! XFCC parsing. The input is split at its first 0xff byte (never part of UTF-8) into a prefix a
//! client controls and the subject of the sidecar's certificate; the whole input is also read as
//! a header on its own.
//!
//! Invariants: a URI that is read is never empty; the sidecar's own element (its subject quoted
//! and escaped as Envoy writes it) reads as its URI; and whatever a client puts before that
//! element, the header reads as the sidecar's URI or as an error, never as another identity.
#![no_main]

use egressd::identity::xfcc::last_uri;
use libfuzzer_sys::fuzz_target;

const SIDECAR_URI: &str = "spiffe://acme.internal/ns/ci/sa/runner";

fn sidecar_element(subject: &str) -> String {
    let quoted = subject.replace('\\', "\\\\").replace('"', "\\\"");
    format!("By=spiffe://acme.internal/ns/ci/sa/sidecar;Hash=4e1c0b7f;Subject=\"{quoted}\";URI={SIDECAR_URI}")
}

fuzz_target!(|data: &[u8]| {
    if let Ok(header) = std::str::from_utf8(data)
        && let Ok(uri) = last_uri(header)
    {
        assert!(!uri.is_empty(), "{header:?}: an empty URI was read");
    }

    let (prefix, subject) = match data.iter().position(|&b| b == 0xff) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &[][..]),
    };
    let (Ok(prefix), Ok(subject)) = (std::str::from_utf8(prefix), std::str::from_utf8(subject)) else { return };
    let element = sidecar_element(subject);
    assert_eq!(last_uri(&element).as_deref(), Ok(SIDECAR_URI), "{element:?}: the honest element does not read");
    let header = format!("{prefix},{element}");
    if let Ok(uri) = last_uri(&header) {
        assert_eq!(uri, SIDECAR_URI, "{header:?}: a client prefix changed the identity");
    }
});
