//! What a permitted HTTP answer tells the gateway: where the request goes.
//!
//! Every permitted HTTP check's answer sets `x-egress-host` / `x-egress-port` to the destination
//! egressd authorized (normalized), plus `x-egress-tunnel` on a CONNECT (the order for the
//! gateway's tunnel filter, see `tunnel`) and `x-egress-tls-name` on an `https://` proxy request,
//! and removes the internal headers it does not set (see `contract`). The gateway dials exactly
//! that host and port.
//!
//! The headers depend on the request, while the rest of an allow's answer depends only on the
//! rule (`cache`), so the answer is written in three pieces of protobuf wire format: the cached
//! core (status, metadata), the `ok_response` that removes headers (one of four constants), and an
//! `ok_response` with this request's headers. A protobuf parser merges repeated occurrences of a
//! message field, so Envoy reads one `ok_response` with both lists; `tests` check that decoding
//! the pieces gives the same message `response::build` makes.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::sync::LazyLock;

use bytes::BufMut;
use envoy_types::pb::envoy::config::core::v3::header_value_option::HeaderAppendAction;
use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, OkHttpResponse, check_response};
use prost::Message;
use smallvec::SmallVec;

use super::wire::{delimited_len, header_value_len, put_delimited_head, put_header_value, put_varint, varint_len};
use crate::contract::{HOST_HEADER, INTERNAL_HEADERS, PORT_HEADER, TLS_NAME_HEADER, TUNNEL_HEADER, XFCC_HEADER};
use crate::policy::Destination;
use crate::policy::fqdn::Host;

/// Field numbers of the messages written here (envoy/service/auth/v3/external_auth.proto,
/// envoy/config/core/v3/base.proto).
const CHECK_RESPONSE_OK_RESPONSE: u32 = 3;
const OK_HTTP_RESPONSE_HEADERS: u32 = 2;
const HEADER_VALUE_OPTION_HEADER: u32 = 1;
const HEADER_VALUE_OPTION_APPEND_ACTION: u32 = 3;
/// Overwrite whatever the client sent.
const OVERWRITE: HeaderAppendAction = HeaderAppendAction::OverwriteIfExistsOrAdd;

/// Where a permitted HTTP request goes. Owned and inline (no allocation for names up to 64
/// bytes), because it travels with the answer to the encoder.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forward {
    /// The normalized host as the gateway's forward proxy takes it: IPv6 in brackets.
    host: SmallVec<[u8; 64]>,
    port: u16,
    /// A CONNECT: the order for the gateway's tunnel filter (`tunnel::order`).
    tunnel: Option<&'static str>,
    /// An `https://` proxy request: the gateway originates TLS for this name.
    originate_tls: bool,
    /// The answer removes XFCC and the internal headers it does not set (every gateway but the
    /// generated one, which removes them itself).
    removes: bool,
    /// The answer sets the routing headers (every gateway but an external one, which routes by
    /// its own configuration and would send them to the destination).
    sets: bool,
}

/// Which internal headers an answer sets: picks the removal list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Plain = 0,
    Tunnel = 1,
    Tls = 2,
    TunnelTls = 3,
    /// Sets none (an external gateway routes the request itself).
    Unrouted = 4,
}

impl Forward {
    pub fn new(
        destination: &Destination<'_>,
        tunnel: Option<&'static str>,
        originate_tls: bool,
        removes: bool,
        sets: bool,
    ) -> Self {
        let mut host = SmallVec::new();
        match &destination.host {
            Host::Name(n) => host.extend_from_slice(n.as_bytes()),
            Host::Ip(ip) => {
                let mut text = InlineText(&mut host);
                let _ = match ip {
                    IpAddr::V6(v6) => write!(text, "[{v6}]"),
                    IpAddr::V4(v4) => write!(text, "{v4}"),
                };
            }
        }
        Forward { host, port: destination.port, tunnel, originate_tls, removes, sets }
    }

    /// The authorized host, as sent in `x-egress-host`.
    pub fn host(&self) -> &str {
        std::str::from_utf8(&self.host).expect("built from a str")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The name TLS origination presents and verifies: the host without IPv6 brackets.
    fn tls_name(&self) -> &str {
        self.host().trim_start_matches('[').trim_end_matches(']')
    }

    fn shape(&self) -> Shape {
        if !self.sets {
            return Shape::Unrouted;
        }
        match (self.tunnel.is_some(), self.originate_tls) {
            (false, false) => Shape::Plain,
            (true, false) => Shape::Tunnel,
            (false, true) => Shape::Tls,
            (true, true) => Shape::TunnelTls,
        }
    }

    /// The headers this answer sets, in order, as (name, value) pairs; `f` sees each once.
    fn each_header(&self, mut f: impl FnMut(&str, &str)) {
        if !self.sets {
            return;
        }
        let mut port = itoa_buf();
        f(HOST_HEADER, self.host());
        f(PORT_HEADER, itoa(self.port, &mut port));
        if let Some(order) = self.tunnel {
            f(TUNNEL_HEADER, order);
        }
        if self.originate_tls {
            f(TLS_NAME_HEADER, self.tls_name());
        }
    }

    /// The removal list: the caller's XFCC, and every internal header this answer does not set
    /// (none when the gateway removes them itself).
    pub fn headers_to_remove(&self) -> Vec<String> {
        if self.removes { removal_list(self.shape()) } else { Vec::new() }
    }

    fn removal_bytes(&self) -> &'static [u8] {
        if self.removes { &REMOVALS[self.shape() as usize] } else { &[] }
    }

    /// The headers this answer sets, as messages (the reference form of the answer).
    pub fn headers(&self) -> Vec<HeaderValueOption> {
        let mut out = Vec::with_capacity(4);
        self.each_header(|k, v| out.push(header_option(k, v)));
        out
    }

    /// Adds the forwarding to an OK answer's message form.
    pub fn apply(&self, resp: &mut CheckResponse) {
        if let Some(check_response::HttpResponse::OkResponse(ok)) = resp.http_response.as_mut() {
            ok.headers_to_remove = self.headers_to_remove();
            ok.headers.extend(self.headers());
        }
    }

    /// Writes the removal and header pieces after an answer's cached core (see the module doc).
    pub fn encode_after_core(&self, buf: &mut impl BufMut) {
        buf.put_slice(self.removal_bytes());
        let mut headers_len = 0;
        self.each_header(|k, v| {
            headers_len += delimited_len(OK_HTTP_RESPONSE_HEADERS, header_option_len(k, v));
        });
        put_delimited_head(CHECK_RESPONSE_OK_RESPONSE, headers_len, buf);
        self.each_header(|k, v| {
            put_delimited_head(OK_HTTP_RESPONSE_HEADERS, header_option_len(k, v), buf);
            put_header_value(HEADER_VALUE_OPTION_HEADER, k, v, buf);
            put_varint(HEADER_VALUE_OPTION_APPEND_ACTION, OVERWRITE as u64, buf);
        });
    }

    /// Bytes `encode_after_core` writes (for sizing the output).
    pub fn encoded_len(&self) -> usize {
        let mut headers_len = 0;
        self.each_header(|k, v| {
            headers_len += delimited_len(OK_HTTP_RESPONSE_HEADERS, header_option_len(k, v));
        });
        self.removal_bytes().len() + delimited_len(CHECK_RESPONSE_OK_RESPONSE, headers_len)
    }
}

/// `ok_response { headers_to_remove: [...] }` for each shape, encoded once.
static REMOVALS: LazyLock<[Vec<u8>; 5]> = LazyLock::new(|| {
    [Shape::Plain, Shape::Tunnel, Shape::Tls, Shape::TunnelTls, Shape::Unrouted].map(|shape| {
        let ok = OkHttpResponse { headers_to_remove: removal_list(shape), ..Default::default() };
        CheckResponse { http_response: Some(check_response::HttpResponse::OkResponse(ok)), ..Default::default() }
            .encode_to_vec()
    })
});

fn removal_list(shape: Shape) -> Vec<String> {
    let sets = |h: &str| match h {
        _ if shape == Shape::Unrouted => false,
        HOST_HEADER | PORT_HEADER => true,
        TUNNEL_HEADER => matches!(shape, Shape::Tunnel | Shape::TunnelTls),
        TLS_NAME_HEADER => matches!(shape, Shape::Tls | Shape::TunnelTls),
        _ => false,
    };
    std::iter::once(XFCC_HEADER).chain(INTERNAL_HEADERS.into_iter().filter(|h| !sets(h))).map(str::to_string).collect()
}

pub(super) fn header_option(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        append_action: OVERWRITE as i32,
        ..Default::default()
    }
}

fn header_option_len(k: &str, v: &str) -> usize {
    delimited_len(HEADER_VALUE_OPTION_HEADER, header_value_len(k, v))
        + varint_len(HEADER_VALUE_OPTION_APPEND_ACTION, OVERWRITE as u64)
}

fn itoa_buf() -> [u8; 5] {
    [0; 5]
}

fn itoa(mut n: u16, buf: &mut [u8; 5]) -> &str {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    std::str::from_utf8(&buf[i..]).expect("digits")
}

/// `fmt::Write` into a SmallVec, so addresses are formatted without a heap allocation.
struct InlineText<'a, const N: usize>(&'a mut SmallVec<[u8; N]>);

impl<const N: usize> std::fmt::Write for InlineText<'_, N> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Protocol;
    use std::borrow::Cow;

    fn dest(host: Host<'static>, port: u16) -> Destination<'static> {
        Destination { host, port, protocol: Protocol::Https }
    }

    fn ok_message(f: &Forward) -> CheckResponse {
        let mut resp = CheckResponse {
            http_response: Some(check_response::HttpResponse::OkResponse(OkHttpResponse::default())),
            ..Default::default()
        };
        f.apply(&mut resp);
        resp
    }

    #[test]
    fn the_wire_pieces_decode_to_the_message_form() {
        let name = dest(Host::Name(Cow::Borrowed("api.partner.test")), 443);
        let v6 = dest(Host::Ip("fd00::1".parse().unwrap()), 8443);
        let v4 = dest(Host::Ip("10.20.1.5".parse().unwrap()), 5432);
        let corr = "require-matching-sni enforce";
        for f in [
            Forward::new(&name, None, false, true, true),
            Forward::new(&name, Some(corr), false, true, true),
            Forward::new(&name, None, true, true, true),
            Forward::new(&name, Some(corr), true, true, true),
            Forward::new(&v6, None, true, true, true),
            Forward::new(&v4, Some(corr), false, true, true),
            Forward::new(&name, Some(corr), true, false, true),
            Forward::new(&v4, None, false, false, true),
            Forward::new(&name, None, true, true, false),
            Forward::new(&v4, None, false, true, false),
            Forward::new(
                &dest(Host::Name(Cow::Owned(format!("{}.test", "a".repeat(200)))), 1),
                None,
                false,
                true,
                true,
            ),
        ] {
            let mut wire = Vec::new();
            f.encode_after_core(&mut wire);
            assert_eq!(wire.len(), f.encoded_len());
            assert_eq!(CheckResponse::decode(wire.as_slice()).unwrap(), ok_message(&f), "{f:?}");
        }
    }

    #[test]
    fn headers_name_the_authorized_destination_and_remove_the_rest() {
        let v6 = Forward::new(&dest(Host::Ip("fd00::1".parse().unwrap()), 8443), None, true, true, true);
        let set: Vec<(String, String)> =
            v6.headers().into_iter().map(|h| h.header.map(|h| (h.key, h.value)).unwrap()).collect();
        let pairs = |v: &[(&str, &str)]| v.iter().map(|(a, b)| (a.to_string(), b.to_string())).collect::<Vec<_>>();
        assert_eq!(set, pairs(&[(HOST_HEADER, "[fd00::1]"), (PORT_HEADER, "8443"), (TLS_NAME_HEADER, "fd00::1")]));
        assert_eq!(v6.headers_to_remove(), [XFCC_HEADER, TUNNEL_HEADER]);
        let plain = Forward::new(&dest(Host::Name(Cow::Borrowed("a.test")), 80), None, false, true, true);
        assert_eq!(plain.headers_to_remove(), [XFCC_HEADER, TUNNEL_HEADER, TLS_NAME_HEADER]);
    }

    #[test]
    fn an_external_gateways_answer_sets_no_routing_header_and_removes_them_all() {
        let name = dest(Host::Name(Cow::Borrowed("api.partner.test")), 443);
        let unrouted = Forward::new(&name, None, true, true, false);
        assert!(unrouted.headers().is_empty());
        let mut removed = unrouted.headers_to_remove();
        removed.sort();
        let mut every: Vec<String> = std::iter::once(XFCC_HEADER).chain(INTERNAL_HEADERS).map(String::from).collect();
        every.sort();
        assert_eq!(removed, every);
    }
}
