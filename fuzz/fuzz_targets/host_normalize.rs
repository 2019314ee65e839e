//! Host normalization: the input (UTF-8, as protobuf strings and YAML scalars are) as an
//! authority, a host, a TLS server name and a policy host pattern.
//!
//! Invariants: a normalized name is canonical (lowercase ASCII, DNS-shaped) and normalizes to
//! itself; what `parse_authority` accepts reads back the same from its printed form; an SNI is
//! accepted only as ASCII and then as `normalize_host` reads it; a pattern prints and parses back
//! to itself, and its anchor is a canonical name it matches (exact) or does not (wildcard).
#![no_main]

use std::borrow::Cow;

use egressd::policy::fqdn::{
    Host, HostPattern, MAX_LABEL_LEN, MAX_NAME_LEN, normalize_host, normalize_sni, parse_authority,
};
use libfuzzer_sys::fuzz_target;

fn assert_canonical_name(name: &str, input: &str) {
    assert!(!name.is_empty() && name.len() <= MAX_NAME_LEN, "{input:?} -> {name:?}: length");
    assert!(name.split('.').all(|l| !l.is_empty() && l.len() <= MAX_LABEL_LEN), "{input:?} -> {name:?}: labels");
    assert!(
        name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_' || b == b'.'),
        "{input:?} -> {name:?}: characters"
    );
    assert_eq!(normalize_host(name), Ok(Host::Name(Cow::Borrowed(name))), "{input:?} -> {name:?} is not a fixpoint");
    assert_eq!(parse_authority(name), Ok((Host::Name(Cow::Borrowed(name)), None)), "{input:?} -> {name:?}");
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = std::str::from_utf8(data) else { return };

    let host = normalize_host(input);
    match &host {
        Ok(Host::Name(name)) => assert_canonical_name(name, input),
        Ok(Host::Ip(ip)) => {
            assert!(ip.is_ipv4(), "{input:?}: normalize_host reads only IPv4 literals");
            assert_eq!(normalize_host(&ip.to_string()), Ok(Host::Ip(*ip)), "{input:?}");
        }
        Err(_) => {}
    }

    match parse_authority(input) {
        Ok((host, port)) => {
            if let Host::Name(name) = &host {
                assert_canonical_name(name, input);
            }
            let printed = match port {
                Some(port) => format!("{host}:{port}"),
                None => host.to_string(),
            };
            assert_eq!(parse_authority(&printed), Ok((host.clone(), port)), "{input:?} printed as {printed:?}");
            if !input.contains(':') && !input.starts_with('[') {
                assert_eq!(normalize_host(input), Ok(host), "{input:?}: parse_authority and normalize_host differ");
            }
        }
        Err(_) => {}
    }

    match normalize_sni(input) {
        Ok(sni) => {
            assert!(input.is_ascii(), "{input:?}: a non-ASCII server name was accepted");
            assert_eq!(Ok(sni), host, "{input:?}: normalize_sni and normalize_host differ");
        }
        Err(_) => assert!(!input.is_ascii() || host.is_err(), "{input:?}: an ASCII host refused as SNI"),
    }

    if let Ok(pattern) = HostPattern::parse(input) {
        let printed = pattern.to_string();
        assert_eq!(HostPattern::parse(&printed).as_ref(), Ok(&pattern), "{input:?} printed as {printed:?}");
        let anchor = pattern.anchor();
        assert_canonical_name(anchor, input);
        match &pattern {
            HostPattern::Exact(name) => {
                assert!(pattern.matches(name));
                assert_eq!(normalize_host(input.trim()), Ok(Host::Name(Cow::Borrowed(name.as_str()))), "{input:?}");
            }
            HostPattern::Wildcard(suffix) => {
                assert!(!pattern.matches(suffix), "{input:?}: a wildcard matches its own suffix");
                assert!(pattern.matches(&format!("x.{suffix}")), "{input:?}");
            }
        }
    }
});
