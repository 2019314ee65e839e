//! Experiment: an Envoy HTTP filter (proxy-wasm) that checks the SNI of the ClientHello a CONNECT
//! tunnel starts with against the host egressd authorized (`x-egress-host`), inside the HTTP
//! listener: no internal-listener hop, no second Check. The tunnel's first bytes are held until
//! the ClientHello is whole; a mismatch closes the stream. Later chunks pass straight through.

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    proxy_wasm::set_log_level(LogLevel::Warn);
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root) });
}}

struct Root;
impl Context for Root {}
impl RootContext for Root {
    fn create_http_context(&self, _: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Tunnel { state: State::NotATunnel }))
    }
    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

enum State {
    NotATunnel,
    Pending(String),
    Passed,
}

struct Tunnel {
    state: State,
}

impl Context for Tunnel {}

/// The most a ClientHello may take before the tunnel is refused (one TLS record).
const MAX_HELLO: usize = 16 * 1024 + 5;

impl HttpContext for Tunnel {
    fn on_http_request_headers(&mut self, _: usize, _: bool) -> Action {
        if self.get_http_request_header(":method").as_deref() == Some("CONNECT")
            && let Some(host) = self.get_http_request_header("x-egress-host")
        {
            self.state = State::Pending(host);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end: bool) -> Action {
        let State::Pending(host) = &self.state else { return Action::Continue };
        let bytes = self.get_http_request_body(0, size.min(MAX_HELLO)).unwrap_or_default();
        match sni(&bytes) {
            Hello::Incomplete if !end && size < MAX_HELLO => Action::Pause,
            Hello::Sni(name) if name.trim_end_matches('.').eq_ignore_ascii_case(host) => {
                self.state = State::Passed;
                Action::Continue
            }
            _ => {
                self.reset_http_request();
                Action::Pause
            }
        }
    }
}

enum Hello<'a> {
    Incomplete,
    Sni(&'a str),
    Invalid,
}

/// The server_name of the ClientHello at the start of `b` (first record only).
fn sni(b: &[u8]) -> Hello<'_> {
    if b.len() < 5 {
        return Hello::Incomplete;
    }
    if b[0] != 0x16 {
        return Hello::Invalid;
    }
    let len = u16::from_be_bytes([b[3], b[4]]) as usize;
    let Some(rec) = b.get(5..5 + len) else { return Hello::Incomplete };
    parse(rec).map_or(Hello::Invalid, Hello::Sni)
}

/// A ClientHello's server_name (RFC 8446 4.1.2, RFC 6066 3): the handshake header, version and
/// random, then session id, cipher suites and compression methods (each length-prefixed), then
/// the extensions.
fn parse(r: &[u8]) -> Option<&str> {
    let mut p = Reader(r);
    (p.u8()? == 1).then_some(())?;
    let n = p.u24()?;
    let mut hello = Reader(p.take(n)?);
    hello.take(2 + 32)?;
    hello.vec8()?;
    hello.vec16()?;
    hello.vec8()?;
    let mut extensions = Reader(hello.vec16()?);
    while !extensions.0.is_empty() {
        let kind = extensions.u16()?;
        let data = extensions.vec16()?;
        if kind == 0 {
            let mut names = Reader(Reader(data).vec16()?);
            while !names.0.is_empty() {
                let name_type = names.u8()?;
                let name = names.vec16()?;
                if name_type == 0 {
                    return std::str::from_utf8(name).ok();
                }
            }
        }
    }
    None
}

struct Reader<'a>(&'a [u8]);
impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        (self.0.len() >= n).then(|| {
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            a
        })
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|b| u16::from_be_bytes([b[0], b[1]]))
    }
    /// A vector with a one-byte length.
    fn vec8(&mut self) -> Option<&'a [u8]> {
        let n = self.u8()? as usize;
        self.take(n)
    }
    /// A vector with a two-byte length.
    fn vec16(&mut self) -> Option<&'a [u8]> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn u24(&mut self) -> Option<usize> {
        self.take(3).map(|b| (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize)
    }
}
