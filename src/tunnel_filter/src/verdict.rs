//! What the tunnel filter decides, free of the proxy-wasm ABI (egressd compiles this file too, as
//! `authz::tunnel::filter`, and its tests run it on the host): egressd's order for a CONNECT (`x-egress-tunnel`), what the
//! tunnel's first bytes are (`read_start`), the verdict (`judge`) and the report the gateway's
//! access log carries back to egressd (`report`).
//!
//! The rules are `authz::tunnel`'s in egressd: a verified service's tunnel must start with a TLS
//! ClientHello (`allow-any-tls`) naming the host egressd authorized (`require-matching-sni`).

use std::borrow::Cow;

use tls_parser::{
    TlsExtension, TlsMessage, TlsMessageHandshake, parse_tls_client_hello_extensions, parse_tls_message_handshake,
};

/// The request header egressd's answer sets on every CONNECT it allows (contract::TUNNEL_HEADER).
pub const ORDER_HEADER: &str = "x-egress-tunnel";
/// The authorized host (contract::HOST_HEADER): normalized, an IPv6 address in brackets.
pub const HOST_HEADER: &str = "x-egress-host";
/// The filter state the verdict is written to (`wasm.` + this, contract::TUNNEL_REPORT_STATE).
pub const REPORT_PROPERTY: &str = "egressd_tunnel";

/// The most a ClientHello may take, record headers included: two full records. Past it the
/// tunnel is not TLS egressd can check (real ClientHellos are under 2 KiB; post-quantum key
/// shares under 4 KiB).
pub const MAX_HELLO_BYTES: usize = 2 * (5 + MAX_RECORD);
/// A TLS plaintext record's largest fragment (RFC 8446 5.1).
const MAX_RECORD: usize = 1 << 14;
/// The longest SNI a report carries (a DNS name is at most 253 bytes).
const MAX_REPORTED_SNI: usize = 255;

/// What a service's tunnels must carry (egressd's `tunnelTls`, without `off`: no order is given
/// for an opaque tunnel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    RequireMatchingSni,
    AllowAnyTls,
}

/// egressd's order for one CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Order {
    pub check: Check,
    /// A violation closes the tunnel (`enforce`); otherwise it is only reported (`observe`: a
    /// dry-run service, or a CONNECT outside a canary's enforced share).
    pub enforce: bool,
}

/// A header value egressd never sends (the CONNECT is refused).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnknownOrder;

/// The header's value: `off` (`None`), or `<check> <enforce|observe>`.
pub fn parse_order(value: &str) -> Result<Option<Order>, UnknownOrder> {
    let mut words = value.split_ascii_whitespace();
    let check = match words.next() {
        Some("off") if words.next().is_none() => return Ok(None),
        Some("require-matching-sni") => Check::RequireMatchingSni,
        Some("allow-any-tls") => Check::AllowAnyTls,
        _ => return Err(UnknownOrder),
    };
    let enforce = match words.next() {
        Some("enforce") => true,
        Some("observe") => false,
        _ => return Err(UnknownOrder),
    };
    match words.next() {
        None => Ok(Some(Order { check, enforce })),
        Some(_) => Err(UnknownOrder),
    }
}

/// How a tunnel starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start<'a> {
    /// More bytes are needed to tell.
    Incomplete,
    /// A whole ClientHello, with its server name (the first `host_name` entry; `None` without
    /// the extension or with an empty list).
    Tls { sni: Option<Cow<'a, [u8]>> },
    /// Anything else: not a handshake record, not a ClientHello, malformed, or larger than
    /// `MAX_HELLO_BYTES`.
    NotTls,
}

/// Reads the ClientHello at the start of `bytes`, which may be split across records (RFC 8446
/// 5.1 lets a handshake message span several) as well as across the chunks the caller buffered.
pub fn read_start(bytes: &[u8]) -> Start<'_> {
    let mut rest = bytes;
    // The handshake message so far: borrowed while it is in one record (the common case).
    let mut message: Cow<'_, [u8]> = Cow::Borrowed(&[]);
    loop {
        if let Some(whole) = whole_handshake(&message) {
            return client_hello(whole, &message);
        }
        let Some(header) = rest.get(..5) else { return incomplete(bytes) };
        // A handshake record of TLS 1.0-1.3 (every ClientHello's record says 3.x).
        if header[0] != 0x16 || header[1] != 3 {
            return Start::NotTls;
        }
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len == 0 || len > MAX_RECORD {
            return Start::NotTls;
        }
        let Some(fragment) = rest.get(5..5 + len) else { return incomplete(bytes) };
        rest = &rest[5 + len..];
        message = if message.is_empty() {
            Cow::Borrowed(fragment)
        } else {
            let mut joined = message.into_owned();
            joined.extend_from_slice(fragment);
            Cow::Owned(joined)
        };
        if message[0] != 1 {
            return Start::NotTls; // not a ClientHello
        }
    }
}

/// `Incomplete`, unless the tunnel already sent more than a ClientHello may take.
fn incomplete(bytes: &[u8]) -> Start<'static> {
    if bytes.len() >= MAX_HELLO_BYTES { Start::NotTls } else { Start::Incomplete }
}

/// The handshake message at the start of `message`, once all of it is there.
fn whole_handshake(message: &[u8]) -> Option<usize> {
    let head = message.get(..4)?;
    let len = 4 + (usize::from(head[1]) << 16 | usize::from(head[2]) << 8 | usize::from(head[3]));
    (message.len() >= len).then_some(len)
}

fn client_hello<'a>(len: usize, message: &Cow<'a, [u8]>) -> Start<'a> {
    let parsed = match parse_tls_message_handshake(&message[..len]) {
        Ok((_, TlsMessage::Handshake(TlsMessageHandshake::ClientHello(hello)))) => hello,
        _ => return Start::NotTls,
    };
    let Some(extensions) = parsed.ext else { return Start::Tls { sni: None } };
    let Ok((_, extensions)) = parse_tls_client_hello_extensions(extensions) else { return Start::NotTls };
    let name = extensions.iter().find_map(|e| match e {
        TlsExtension::SNI(names) => Some(names.iter().find(|(kind, _)| kind.0 == 0).map(|(_, n)| *n)),
        _ => None,
    });
    let sni = name.flatten().filter(|n| !n.is_empty()).map(|n| match message {
        // Point into the caller's bytes when the message was borrowed from them.
        Cow::Borrowed(b) => Cow::Borrowed(&b[offset_in(b, n)..][..n.len()]),
        Cow::Owned(_) => Cow::Owned(n.to_vec()),
    });
    Start::Tls { sni }
}

/// Where `part` (a subslice) starts in `whole`.
fn offset_in(whole: &[u8], part: &[u8]) -> usize {
    part.as_ptr() as usize - whole.as_ptr() as usize
}

/// The filter's verdict on one tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Verified,
    SniMismatch,
    SniMissing,
    NotTls,
}

impl Verdict {
    pub const ALL: [Verdict; 4] = [Verdict::Verified, Verdict::SniMismatch, Verdict::SniMissing, Verdict::NotTls];

    /// `tls` or `not-tls`: what the tunnel started with (egressd's `egress.tunnel.start`).
    pub fn start(self) -> &'static str {
        match self {
            Verdict::NotTls => "not-tls",
            _ => "tls",
        }
    }

    /// egressd's reason codes (`policy::Reason::code`).
    pub fn code(self) -> &'static str {
        match self {
            Verdict::Verified => "tunnel-verified",
            Verdict::SniMismatch => "sni-mismatch",
            Verdict::SniMissing => "sni-missing",
            Verdict::NotTls => "not-tls",
        }
    }
}

/// The verdict on a tunnel that started as `start` (never `Incomplete`) under `check`, for the
/// authorized `host`.
pub fn judge(check: Check, host: &str, start: &Start<'_>) -> Verdict {
    let sni = match (start, check) {
        (Start::Tls { .. }, Check::AllowAnyTls) => return Verdict::Verified,
        (Start::Tls { sni: None }, Check::RequireMatchingSni) => return Verdict::SniMissing,
        (Start::Tls { sni: Some(sni) }, Check::RequireMatchingSni) => sni,
        (Start::NotTls | Start::Incomplete, _) => return Verdict::NotTls,
    };
    if names_host(sni, host) { Verdict::Verified } else { Verdict::SniMismatch }
}

/// Whether a server name is the authorized host: ASCII, case-insensitive, one trailing dot
/// ignored. An IP address never matches: SNI carries no addresses (RFC 6066 3), so a tunnel to an
/// IP literal cannot pass `require-matching-sni`.
fn names_host(sni: &[u8], host: &str) -> bool {
    let sni = sni.strip_suffix(b".").unwrap_or(sni);
    let is_ip = host.starts_with('[') || host.parse::<std::net::Ipv4Addr>().is_ok();
    !is_ip && sni.is_ascii() && sni.eq_ignore_ascii_case(host.as_bytes())
}

/// The report for egressd: `<reason> <enforce|observe> <unix ms> <host> <sni>`. The SNI (absent:
/// empty) comes last, at most 255 bytes, every byte that is not printable ASCII (or is `%`)
/// percent-encoded, so no client byte can add a field.
pub fn report(verdict: Verdict, enforce: bool, unix_ms: u64, host: &str, sni: Option<&[u8]>) -> String {
    let action = if enforce { "enforce" } else { "observe" };
    let mut out = format!("{} {action} {unix_ms} {host} ", verdict.code());
    for &b in sni.unwrap_or_default().iter().take(MAX_REPORTED_SNI) {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
