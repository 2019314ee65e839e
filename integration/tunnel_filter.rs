//! The gateway tunnel filter's logic (`src/tunnel_filter/src/verdict.rs`, compiled into egressd as
//! `authz::tunnel::filter`), run on the host: the wasm module Envoy runs is that file plus the
//! proxy-wasm glue. Real ClientHellos from rustls,
//! whole, cut at every byte, and split across TLS records; the orders egressd sends; and the
//! report the filter writes, read back by egressd's own parser (`authz::tunnel::Report`).

use std::sync::Arc;

use egressd::authz::tunnel::{self as egressd_tunnel, Report, filter as verdict};
use egressd::policy::TunnelTls;
use proptest::prelude::*;
use rustls::pki_types::ServerName;
use verdict::{Check, MAX_HELLO_BYTES, Order, Start, Verdict};

/// The first flight rustls sends for `name`: one handshake record holding the ClientHello.
fn client_hello(name: ServerName<'static>) -> Vec<u8> {
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let mut conn = rustls::ClientConnection::new(Arc::new(config), name).unwrap();
    let mut out = Vec::new();
    conn.write_tls(&mut out).unwrap();
    out
}

fn hello_for(dns: &str) -> Vec<u8> {
    client_hello(ServerName::try_from(dns.to_string()).unwrap())
}

/// The same handshake bytes re-framed as records of at most `size` bytes each (RFC 8446 5.1).
fn fragmented(record: &[u8], size: usize) -> Vec<u8> {
    assert_eq!(record[0], 0x16);
    let mut out = Vec::new();
    for piece in record[5..].chunks(size) {
        out.extend_from_slice(&[0x16, 3, 1]);
        out.extend_from_slice(&(piece.len() as u16).to_be_bytes());
        out.extend_from_slice(piece);
    }
    out
}

/// The server name a tunnel start read as TLS names.
fn sni_of(start: &Start<'_>) -> Option<Vec<u8>> {
    match start {
        Start::Tls { sni } => sni.as_deref().map(<[u8]>::to_vec),
        other => panic!("not TLS: {other:?}"),
    }
}

#[test]
fn a_whole_client_hello_names_its_server() {
    let hello = hello_for("api.stripe.com");
    assert_eq!(sni_of(&verdict::read_start(&hello)), Some(b"api.stripe.com".to_vec()));
    // What follows the ClientHello (the client's next flight) does not change the reading.
    let mut more = hello.clone();
    more.extend_from_slice(b"\x17\x03\x03\x00\x05hello");
    assert_eq!(sni_of(&verdict::read_start(&more)), Some(b"api.stripe.com".to_vec()));
}

#[test]
fn every_prefix_of_a_client_hello_waits_for_more() {
    let hello = hello_for("api.stripe.com");
    for cut in 0..hello.len() {
        assert_eq!(verdict::read_start(&hello[..cut]), Start::Incomplete, "cut at {cut} of {}", hello.len());
    }
}

#[test]
fn a_client_hello_split_across_records_is_reassembled() {
    let hello = hello_for("api.stripe.com");
    for size in [1, 7, 64, 100] {
        let split = fragmented(&hello, size);
        assert_eq!(sni_of(&verdict::read_start(&split)), Some(b"api.stripe.com".to_vec()), "records of {size} bytes");
        for cut in 0..split.len() {
            assert_eq!(verdict::read_start(&split[..cut]), Start::Incomplete, "{size}-byte records cut at {cut}");
        }
    }
}

#[test]
fn a_tunnel_that_does_not_start_with_a_client_hello_is_not_tls() {
    let server_hello_type = {
        let mut h = hello_for("api.stripe.com");
        h[5] = 2; // handshake type ServerHello
        h
    };
    for bytes in [
        &b"GET / HTTP/1.1\r\nhost: api.stripe.com\r\n\r\n"[..],
        b"\x16\x03\x01\x00\x00",   // an empty handshake record
        b"\x16\x02\x00\x00\x10",   // SSL 2-era version
        b"\x17\x03\x03\x00\x10xx", // application data first
        b"\x16\x03\x01\x40\x01",   // a record longer than TLS allows
        &server_hello_type,
    ] {
        assert_eq!(verdict::read_start(bytes), Start::NotTls, "{bytes:?}");
    }
}

#[test]
fn a_start_that_never_completes_within_two_records_is_not_tls() {
    // A handshake message that claims 1 MiB: records of it pile up, and the filter gives up at
    // the bound instead of buffering the tunnel.
    let mut bytes = vec![0x16, 3, 1, 0x40, 0x00, 1, 0x10, 0, 0];
    bytes.resize(5 + (1 << 14), 0);
    while bytes.len() < MAX_HELLO_BYTES {
        bytes.extend_from_slice(&[0x16, 3, 1, 0x40, 0x00]);
        bytes.resize(bytes.len() + (1 << 14), 0);
    }
    assert_eq!(verdict::read_start(&bytes[..MAX_HELLO_BYTES - 1]), Start::Incomplete);
    assert_eq!(verdict::read_start(&bytes), Start::NotTls);
}

#[test]
fn tls_without_a_server_name_passes_only_allow_any_tls() {
    let ip = client_hello(ServerName::IpAddress(std::net::Ipv4Addr::LOCALHOST.into()));
    let start = verdict::read_start(&ip);
    assert_eq!(start, Start::Tls { sni: None });
    assert_eq!(verdict::judge(Check::RequireMatchingSni, "api.stripe.com", &start), Verdict::SniMissing);
    assert_eq!(verdict::judge(Check::AllowAnyTls, "api.stripe.com", &start), Verdict::Verified);
}

#[test]
fn the_server_name_must_be_the_authorized_host() {
    let judge = |host: &str, sni: &str| {
        let bytes = hello_for(sni);
        verdict::judge(Check::RequireMatchingSni, host, &verdict::read_start(&bytes))
    };
    assert_eq!(judge("api.stripe.com", "api.stripe.com"), Verdict::Verified);
    assert_eq!(judge("api.stripe.com", "API.Stripe.COM"), Verdict::Verified, "ASCII case-insensitive");
    assert_eq!(judge("api.stripe.com", "evil.example.org"), Verdict::SniMismatch);
    assert_eq!(judge("api.stripe.com", "stripe.com"), Verdict::SniMismatch);
    assert_eq!(judge("api.stripe.com", "api.stripe.com.evil.test"), Verdict::SniMismatch);
    let start = |sni: &'static [u8]| Start::Tls { sni: Some(sni.into()) };
    let raw = |host: &str, sni: &'static [u8]| verdict::judge(Check::RequireMatchingSni, host, &start(sni));
    assert_eq!(raw("api.stripe.com", b"api.stripe.com."), Verdict::Verified, "one trailing dot");
    assert_eq!(raw("api.stripe.com", b"api.stripe.com.."), Verdict::SniMismatch);
    assert_eq!(raw("api.stripe.com", b"api.str\xc4\xb1pe.com"), Verdict::SniMismatch, "no Unicode folding");
    // A CONNECT to an IP literal cannot be verified by name: SNI carries no addresses.
    assert_eq!(raw("127.0.0.1", b"127.0.0.1"), Verdict::SniMismatch);
    assert_eq!(raw("[::1]", b"[::1]"), Verdict::SniMismatch);
    // Any TLS at all passes `allow-any-tls`; plaintext never does.
    assert_eq!(verdict::judge(Check::AllowAnyTls, "a.test", &start(b"other.test")), Verdict::Verified);
    assert_eq!(verdict::judge(Check::AllowAnyTls, "a.test", &Start::NotTls), Verdict::NotTls);
}

#[test]
fn the_filter_reads_every_order_egressd_sends_and_nothing_else() {
    for tls in [TunnelTls::RequireMatchingSni, TunnelTls::AllowAnyTls, TunnelTls::Off] {
        for enforced in [true, false] {
            let read = verdict::parse_order(egressd_tunnel::order(tls, enforced)).expect("egressd's order reads");
            let check = match tls {
                TunnelTls::Off => None,
                TunnelTls::RequireMatchingSni => Some(Check::RequireMatchingSni),
                TunnelTls::AllowAnyTls => Some(Check::AllowAnyTls),
            };
            assert_eq!(read, check.map(|check| Order { check, enforce: enforced }), "{tls:?} {enforced}");
        }
    }
    for bad in
        ["", "on", "off enforce", "require-matching-sni", "allow-any-tls maybe", "require-matching-sni enforce x"]
    {
        assert!(verdict::parse_order(bad).is_err(), "`{bad}` is refused (the CONNECT is answered 403)");
    }
}

#[test]
fn a_report_reads_back_in_egressd_as_the_filter_wrote_it() {
    let text = verdict::report(Verdict::SniMismatch, true, 1_700_000_000_123, "api.stripe.com", Some(b"evil.test"));
    assert_eq!(text, "sni-mismatch enforce 1700000000123 api.stripe.com evil.test");
    let read = Report::parse(&text).unwrap();
    assert_eq!(
        (read.verdict, read.enforced, read.unix_ms),
        (egressd_tunnel::Verdict::SniMismatch, true, 1_700_000_000_123)
    );
    assert_eq!((read.host.as_str(), read.sni.as_deref()), ("api.stripe.com", Some("evil.test")));
    let none = Report::parse(&verdict::report(Verdict::NotTls, false, 5, "[fd00::1]", None)).unwrap();
    assert_eq!((none.verdict, none.enforced, none.host()), (egressd_tunnel::Verdict::NotTls, false, "fd00::1"));
    assert_eq!(none.sni, None);
}

#[test]
fn a_hostile_server_name_cannot_add_fields_or_grow_the_report() {
    let sni = [b"a b%c\n\xff".repeat(100), b"tail".to_vec()].concat();
    let text = verdict::report(Verdict::SniMismatch, true, 1, "api.stripe.com", Some(&sni));
    assert!(text.len() <= egressd_tunnel::MAX_REPORT_BYTES, "{} bytes", text.len());
    assert_eq!(text.split(' ').count(), 5, "{text}");
    assert!(text.is_ascii() && !text.contains('\n'), "{text}");
    let read = Report::parse(&text).unwrap();
    assert!(read.sni.unwrap().starts_with("a b%c\n"), "decoded back");
}

proptest! {
    /// Any SNI bytes, any verdict and action: egressd reads the filter's report back, the SNI as
    /// its first 255 bytes (lossy UTF-8), the host unchanged.
    #[test]
    fn any_report_reads_back(
        sni in proptest::collection::vec(any::<u8>(), 0..300),
        verdict in prop_oneof![
            Just(Verdict::Verified), Just(Verdict::SniMismatch), Just(Verdict::SniMissing), Just(Verdict::NotTls)
        ],
        enforce in any::<bool>(),
        unix_ms in any::<u64>(),
    ) {
        let text = verdict::report(verdict, enforce, unix_ms, "api.stripe.com", Some(&sni));
        let read = Report::parse(&text).unwrap();
        prop_assert_eq!(read.verdict.start() == "not-tls", verdict == Verdict::NotTls);
        prop_assert_eq!((read.enforced, read.unix_ms, read.host.as_str()), (enforce, unix_ms, "api.stripe.com"));
        let kept = &sni[..sni.len().min(255)];
        let expect = (!kept.is_empty()).then(|| String::from_utf8_lossy(kept).into_owned());
        prop_assert_eq!(read.sni, expect);
    }

    /// Arbitrary first bytes never panic the reader, and a verdict on them is always one of four.
    #[test]
    fn any_tunnel_start_is_read_without_panicking(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let start = verdict::read_start(&bytes);
        let _ = verdict::judge(Check::RequireMatchingSni, "api.stripe.com", &start);
    }
}

#[test]
fn the_filter_and_egressd_name_the_same_headers_and_filter_state() {
    use egressd::contract;
    assert_eq!(verdict::ORDER_HEADER, contract::TUNNEL_HEADER);
    assert_eq!(verdict::HOST_HEADER, contract::HOST_HEADER);
    // proxy-wasm's set_property(["x"]) writes the filter state object `wasm.x`.
    assert_eq!(format!("wasm.{}", verdict::REPORT_PROPERTY), contract::TUNNEL_REPORT_STATE);
    assert!(contract::INTERNAL_HEADERS.contains(&verdict::ORDER_HEADER), "a client cannot send its own order");
}

/// Envoy calls a proxy-wasm hook only if the module exports it; build.rs trims the SDK's exports
/// to the hooks the filter implements (the module is stripped of names, so an unexported hook's
/// name is nowhere in it).
#[test]
fn the_module_egressd_sends_exports_only_the_hooks_the_filter_implements() {
    let module = egressd::xds::tunnel::TUNNEL_FILTER_WASM;
    let has = |name: &str| module.windows(name.len()).any(|w| w == name.as_bytes());
    assert!(module.starts_with(b"\0asm"));
    for hook in ["proxy_on_request_headers", "proxy_on_request_body", "proxy_on_context_create", "proxy_on_delete"] {
        assert!(has(hook), "{hook} is exported");
    }
    for hook in ["proxy_on_response_headers", "proxy_on_response_body", "proxy_on_log", "proxy_on_request_trailers"] {
        assert!(!has(hook), "{hook} is not exported");
    }
}
