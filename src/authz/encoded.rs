//! A deny's answer written straight into protobuf wire format.
//!
//! `response::build` makes the reference answer as a message: a metadata Struct of six strings
//! in a HashMap, two headers and a body, each an allocation, then encoded. The Check path writes
//! the same fields directly instead: the body into a buffer on the stack, then every length, then
//! one output buffer. `tests` check that the bytes decode to the message `response::build` makes,
//! for every kind of deny.

use bytes::{BufMut, Bytes};
use smallvec::SmallVec;

use super::response::{self, PERMISSION_DENIED};
use super::wire::{
    delimited_len, header_value_len, put_bytes, put_delimited_head, put_header_value, put_string, put_varint,
    string_len, varint_len,
};
use crate::contract::REASON_HEADER;
use crate::policy::{Decision, Destination, Malformed};

/// Field numbers (envoy/service/auth/v3/external_auth.proto, google/rpc/status.proto,
/// envoy/type/v3/http_status.proto, envoy/config/core/v3/base.proto, google/protobuf/struct.proto).
const CHECK_RESPONSE_STATUS: u32 = 1;
const CHECK_RESPONSE_DENIED_RESPONSE: u32 = 2;
const CHECK_RESPONSE_DYNAMIC_METADATA: u32 = 4;
const STATUS_CODE: u32 = 1;
const STATUS_MESSAGE: u32 = 2;
const DENIED_STATUS: u32 = 1;
const DENIED_HEADERS: u32 = 2;
const DENIED_BODY: u32 = 3;
const HTTP_STATUS_CODE: u32 = 1;
const HEADER_VALUE_OPTION_HEADER: u32 = 1;
const STRUCT_FIELDS: u32 = 1;
const MAP_KEY: u32 = 1;
const MAP_VALUE: u32 = 2;
const VALUE_STRING: u32 = 3;
const FORBIDDEN: u64 = 403;

/// The body of most denies fits here; a longer one (a long rule id or SNI) spills to the heap.
type Body = SmallVec<[u8; 384]>;

/// The encoded deny answer for `decision` (which must not permit): the bytes of
/// `response::build(decision, dest, version, is_http, None)`, as a decoder reads them.
pub fn deny(
    decision: &Decision<'_>,
    dest: Result<&Destination<'_>, &Malformed>,
    version: &str,
    is_http: bool,
) -> Bytes {
    debug_assert!(!decision.outcome.permits());
    let code = decision.reason.code();
    let body = is_http.then(|| body(decision, dest));
    let metadata = Metadata::of(decision, version);
    let status_len = varint_len(STATUS_CODE, PERMISSION_DENIED as u64) + string_len(STATUS_MESSAGE, code);
    let denied_len = body.as_ref().map(|b| denied_len(code, b));
    let metadata_len = metadata.len();
    let total = delimited_len(CHECK_RESPONSE_STATUS, status_len)
        + denied_len.map_or(0, |len| delimited_len(CHECK_RESPONSE_DENIED_RESPONSE, len))
        + delimited_len(CHECK_RESPONSE_DYNAMIC_METADATA, metadata_len);
    let mut out = Vec::with_capacity(total);
    put_delimited_head(CHECK_RESPONSE_STATUS, status_len, &mut out);
    put_varint(STATUS_CODE, PERMISSION_DENIED as u64, &mut out);
    put_string(STATUS_MESSAGE, code, &mut out);
    if let (Some(body), Some(len)) = (&body, denied_len) {
        put_delimited_head(CHECK_RESPONSE_DENIED_RESPONSE, len, &mut out);
        put_delimited_head(DENIED_STATUS, varint_len(HTTP_STATUS_CODE, FORBIDDEN), &mut out);
        put_varint(HTTP_STATUS_CODE, FORBIDDEN, &mut out);
        for (k, v) in headers(code) {
            put_delimited_head(DENIED_HEADERS, header_option_len(k, v), &mut out);
            put_header_value(HEADER_VALUE_OPTION_HEADER, k, v, &mut out);
        }
        put_bytes(DENIED_BODY, body, &mut out);
    }
    put_delimited_head(CHECK_RESPONSE_DYNAMIC_METADATA, metadata_len, &mut out);
    metadata.put(&mut out);
    debug_assert_eq!(out.len(), total);
    Bytes::from(out)
}

/// The deny's headers, as `response::build` sets them.
fn headers(code: &str) -> [(&str, &str); 2] {
    [(REASON_HEADER, code), ("content-type", response::DENY_CONTENT_TYPE)]
}

fn header_option_len(k: &str, v: &str) -> usize {
    delimited_len(HEADER_VALUE_OPTION_HEADER, header_value_len(k, v))
}

fn denied_len(code: &str, body: &[u8]) -> usize {
    let headers: usize =
        headers(code).iter().map(|(k, v)| delimited_len(DENIED_HEADERS, header_option_len(k, v))).sum();
    delimited_len(DENIED_STATUS, varint_len(HTTP_STATUS_CODE, FORBIDDEN))
        + headers
        + delimited_len(DENIED_BODY, body.len())
}

fn body(decision: &Decision<'_>, dest: Result<&Destination<'_>, &Malformed>) -> Body {
    let mut body = Body::new();
    let _ = response::write_deny_body(&mut BodyWriter(&mut body), decision, dest);
    body
}

struct BodyWriter<'a>(&'a mut Body);

impl std::fmt::Write for BodyWriter<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

/// The decision metadata's entries (`response::metadata_entries`), measured once.
struct Metadata<'a> {
    entries: SmallVec<[(&'static str, &'a str); 7]>,
}

impl<'a> Metadata<'a> {
    fn of(decision: &'a Decision<'_>, version: &'a str) -> Self {
        let mut entries = SmallVec::new();
        response::metadata_entries(decision, version, |k, v| entries.push((k, v)));
        Metadata { entries }
    }

    fn value_len(v: &str) -> usize {
        string_len(VALUE_STRING, v)
    }

    fn entry_len(k: &str, v: &str) -> usize {
        string_len(MAP_KEY, k) + delimited_len(MAP_VALUE, Self::value_len(v))
    }

    fn len(&self) -> usize {
        self.entries.iter().map(|(k, v)| delimited_len(STRUCT_FIELDS, Self::entry_len(k, v))).sum()
    }

    fn put(&self, out: &mut impl BufMut) {
        for (k, v) in &self.entries {
            put_delimited_head(STRUCT_FIELDS, Self::entry_len(k, v), out);
            put_string(MAP_KEY, k, out);
            put_delimited_head(MAP_VALUE, Self::value_len(v), out);
            put_string(VALUE_STRING, v, out);
        }
    }
}

#[cfg(test)]
mod tests {
    use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
    use prost::Message;

    use super::*;
    use crate::identity::AuthnError;
    use crate::policy::fqdn::Host;
    use crate::policy::{CompiledPolicy, Mode, Outcome, PolicySource, Protocol, Reason, compile};

    fn policy() -> CompiledPolicy {
        compile(&PolicySource::embedded(), 0).unwrap()
    }

    fn reference(d: &Decision<'_>, dest: Result<&Destination<'_>, &Malformed>, is_http: bool) -> CheckResponse {
        response::build(d, dest, "sha256:abc", is_http, None)
    }

    fn wire(d: &Decision<'_>, dest: Result<&Destination<'_>, &Malformed>, is_http: bool) -> CheckResponse {
        CheckResponse::decode(deny(d, dest, "sha256:abc", is_http)).expect("a valid CheckResponse")
    }

    fn dest(host: Host<'static>, port: u16) -> Destination<'static> {
        Destination { host, port, protocol: Protocol::Https }
    }

    /// Every kind of deny and would-deny carrier, with and without a rule and a service, HTTP and
    /// network, parsed and unparseable destinations: the wire bytes decode to the reference.
    #[test]
    fn every_deny_decodes_to_the_reference_answer() {
        let policy = policy();
        let rule = &policy.rules[0];
        let service = policy.services.first();
        let reasons = [
            Reason::MeshDeny,
            Reason::ServiceDeny,
            Reason::NoMatchingAllow,
            Reason::Unauthenticated(AuthnError::Missing { xfcc: "" }),
            Reason::Unauthenticated(AuthnError::NotSpiffe("spiffe://a\"b\u{7f}".into())),
            Reason::UnknownService,
            Reason::Malformed(Malformed::HttpsNotOriginated),
            Reason::SniMismatch { connect: "api.partner.test".into(), sni: "é.evil.test\n\"".into() },
            Reason::SniMissing,
            Reason::NotTls,
        ];
        let dests = [
            dest(Host::Name("api.stripe.com".into()), 443),
            dest(Host::Ip("2001:db8::1".parse().unwrap()), 8443),
            dest(Host::Name("a".repeat(300).into()), 1),
        ];
        let malformed = Malformed::HttpsNotOriginated;
        for reason in reasons {
            for (rule, service) in [(None, None), (Some(rule), service)] {
                for mode in [None, Some(Mode::Enforce), Some(Mode::DryRun)] {
                    let d = Decision {
                        outcome: Outcome::Deny,
                        reason: reason.clone(),
                        rule,
                        service,
                        mode,
                        enforced: true,
                        near_miss: None,
                        rolled_back: false,
                    };
                    for is_http in [true, false] {
                        for dest in dests.iter().map(Ok).chain([Err(&malformed)]) {
                            assert_eq!(wire(&d, dest, is_http), reference(&d, dest, is_http), "{reason:?} {dest:?}");
                        }
                    }
                }
            }
        }
    }
}
