//! CheckRequest decode + decide + encode: arbitrary bytes decoded as
//! `envoy.service.auth.v3.CheckRequest` (prost, as the Check codec does; bytes that do not decode
//! are the codec's INVALID_ARGUMENT, not a decision), checked against the example policy
//! (`PolicySource::embedded()`) and the integration fixture that trusts XFCC, each compiled once,
//! by both a gateway that originates TLS and one that declares nothing, and the answer encoded:
//! offline, with the answer cache, and as the server checks (run-time overrides, none active).
//!
//! Invariants: a malformed request (no attributes, no usable destination, unreadable XFCC) is
//! denied; the status is OK exactly when the verdict permits, PERMISSION_DENIED otherwise; the
//! cached answer equals the reference one; the wire form decodes to the message; a permitted HTTP
//! answer names the destination it authorized; the metadata names the decision and version; the
//! server's answer is the offline one; a permitted CONNECT's answer orders the tunnel filter
//! with one of the orders it reads, and no other answer carries one.
#![no_main]

use std::sync::{Arc, LazyLock};

use egressd::authz::cache::ResponseCache;
use egressd::authz::checker::{Call, Capture, Checker, GatewayCaps};
use egressd::authz::request;
use egressd::authz::tunnel;
use egressd::contract::{HOST_HEADER, PORT_HEADER, TUNNEL_HEADER};
use egressd::policy::{Outcome, PolicySource, Reason, TunnelTls, compile};
use egressd::runtime::RuntimeOverrides;
use egressd::runtime::breakglass::GrantStore;
use envoy_types::pb::envoy::service::auth::v3::check_response::HttpResponse;
use envoy_types::pb::envoy::service::auth::v3::{CheckRequest, CheckResponse};
use envoy_types::pb::google::protobuf::value::Kind;
use libfuzzer_sys::fuzz_target;
use prost::Message;

const NOW: i64 = 1_790_000_000;
const OK: i32 = 0;
const PERMISSION_DENIED: i32 = 7;

static CACHES: LazyLock<Vec<ResponseCache>> = LazyLock::new(|| {
    let semantics = include_str!("../../integration/fixtures/semantics.yaml");
    [PolicySource::embedded(), PolicySource::from_text("semantics.yaml", semantics)]
        .iter()
        .map(|source| ResponseCache::new(Arc::new(compile(source, NOW).expect("the fixture policies compile"))))
        .collect()
});

/// What `Checker::serving` borrows besides the cache: overrides with no grant and no tripped
/// guard (the Checker does not count toward a guard).
static OVERRIDES: LazyLock<RuntimeOverrides> =
    LazyLock::new(|| RuntimeOverrides::new(Arc::new(GrantStore::in_memory(3600)), 60, Default::default()));

/// Every order egressd gives the tunnel filter.
static ORDERS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    let kinds = [TunnelTls::RequireMatchingSni, TunnelTls::AllowAnyTls, TunnelTls::Off];
    kinds.iter().flat_map(|&t| [tunnel::order(t, true), tunnel::order(t, false)]).collect()
});

fn metadata<'r>(resp: &'r CheckResponse, key: &str) -> Option<&'r str> {
    match resp.dynamic_metadata.as_ref()?.fields.get(key)?.kind.as_ref()? {
        Kind::StringValue(s) => Some(s),
        _ => None,
    }
}

fn header<'r>(
    headers: &'r [envoy_types::pb::envoy::config::core::v3::HeaderValueOption],
    key: &str,
) -> Option<&'r str> {
    headers.iter().filter_map(|h| h.header.as_ref()).find(|h| h.key == key).map(|h| h.value.as_str())
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = CheckRequest::decode(data) else { return };
    let is_http = req.attributes.as_ref().and_then(|a| a.request.as_ref()).is_some_and(|r| r.http.is_some());
    for cache in CACHES.iter() {
        let policy = &*cache.policy;
        for gateway in [GatewayCaps::generated(true), GatewayCaps::default()] {
            let call = Call { gateway, capture: Capture::Full, ..Default::default() };
            let checked = Checker::offline(policy).check(&req, call, NOW);
            let message = checked.answer.to_message();
            let verdict = &checked.verdict;

            let cached = Checker::cached(cache).check(&req, call, NOW);
            assert_eq!(&cached.verdict, verdict, "cached and reference verdicts differ");
            assert_eq!(cached.answer.to_message(), message, "cached and reference answers differ");
            for answer in [&checked.answer, &cached.answer] {
                let wire = answer.encode_to_vec();
                let decoded = CheckResponse::decode(wire.as_slice()).expect("an answer's wire form decodes");
                assert_eq!(decoded, message, "the wire form is not the message");
            }

            let served = Checker::serving(cache, &OVERRIDES).check(&req, call, NOW);
            assert_eq!(&served.verdict, verdict, "the server's and the reference verdicts differ");
            let served_message = served.answer.to_message();
            assert_eq!(served_message, message, "the server's and the reference answers differ");
            let wire = served.answer.encode_to_vec();
            assert_eq!(CheckResponse::decode(wire.as_slice()).expect("decodes"), served_message);

            let code = message.status.as_ref().map(|s| s.code);
            assert_eq!(served_message.status.as_ref().map(|s| s.code), code);
            let expected = if verdict.outcome.permits() { OK } else { PERMISSION_DENIED };
            assert_eq!(code, Some(expected), "status does not match the verdict {verdict:?}");
            assert_eq!(metadata(&message, "decision"), Some(verdict.outcome.as_str()));
            assert_eq!(metadata(&message, "policy_version"), Some(policy.version.as_str()));

            let view = match request::view(&req, policy, gateway) {
                Err(malformed) => {
                    assert_eq!(verdict.outcome, Outcome::Deny, "a request without attributes was not denied");
                    assert_eq!(verdict.reason, Reason::Malformed(malformed));
                    continue;
                }
                Ok(view) => view,
            };
            if view.principal.is_err() || view.destination.is_err() {
                assert_eq!(verdict.outcome, Outcome::Deny, "a malformed request was not denied: {view:?}");
            }
            match (&message.http_response, is_http) {
                (None, false) => {}
                (Some(HttpResponse::OkResponse(ok)), true) => {
                    assert!(verdict.outcome.permits());
                    let dest = view.destination.as_ref().expect("a permitted request has a destination");
                    assert_eq!(header(&ok.headers, HOST_HEADER), Some(dest.host.to_string().as_str()));
                    assert_eq!(header(&ok.headers, PORT_HEADER), Some(dest.port.to_string().as_str()));
                    let order = header(&ok.headers, TUNNEL_HEADER);
                    if view.method.eq_ignore_ascii_case("CONNECT") {
                        assert!(order.is_some_and(|o| ORDERS.contains(&o)), "a CONNECT's order: {order:?}");
                    } else {
                        assert_eq!(order, None, "only a CONNECT's answer orders the tunnel filter");
                    }
                }
                (Some(HttpResponse::DeniedResponse(denied)), true) => {
                    assert!(!verdict.outcome.permits());
                    assert_eq!(denied.status.as_ref().map(|s| s.code), Some(403));
                }
                (other, _) => panic!("http_response {other:?} for is_http = {is_http}"),
            }
        }
    }
});
