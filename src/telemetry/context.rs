//! The trace a decision belongs to.
//!
//! Two places can carry trace context, tried in this order:
//! 1. the Check call's own gRPC metadata: when Envoy traces, its ext_authz client opens a span for
//!    the call and injects it there, so that span is the decision span's direct parent;
//! 2. the checked request's headers (`attributes.request.http.headers`): the caller's context as
//!    it arrived at the gateway.
//!
//! Each is read as W3C Trace Context (`traceparent` / `tracestate`) and, failing that, as B3 (the
//! single `b3` header or `x-b3-*`, which Envoy's Zipkin tracer emits). W3C parsing is
//! opentelemetry_sdk's propagator. B3 is parsed here: the only Rust B3 propagator lives in
//! opentelemetry-zipkin, which is deprecated as a whole, and extraction is a few lines of the
//! openzipkin/b3-propagation spec.

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::TraceContextPropagator;

use super::record::RequestFacts;

/// The headers that can carry trace context. The Check path copies them (from the call's gRPC
/// metadata if it carries context, else from the request) into `RequestFacts`.
pub const TRACE_HEADERS: [&str; 7] =
    ["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags"];

/// Reusable propagators.
#[derive(Default)]
pub struct Propagators {
    w3c: TraceContextPropagator,
}

impl Propagators {
    /// The remote parent of a decision span, if the Check carried one.
    pub fn parent(&self, facts: &RequestFacts) -> Option<SpanContext> {
        let carrier = FactsExtractor(facts);
        let cx = self.w3c.extract(&carrier);
        let sc = cx.span().span_context().clone();
        if sc.is_valid() { Some(sc) } else { b3(&carrier) }
    }
}

struct FactsExtractor<'a>(&'a RequestFacts);

impl Extractor for FactsExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.trace_header(key)
    }

    fn keys(&self) -> Vec<&str> {
        TRACE_HEADERS.iter().copied().filter(|h| self.0.trace_header(h).is_some()).collect()
    }
}

/// B3 context: the single `b3` header (`TRACEID-SPANID[-SAMPLED[-PARENT]]`) wins over `x-b3-*`.
/// Trace ids are 16 or 32 lowercase hex digits (64-bit ones are zero-extended), span ids 16.
fn b3(carrier: &dyn Extractor) -> Option<SpanContext> {
    let (trace, span, sampled) = match carrier.get("b3") {
        Some(single) => {
            let mut parts = single.trim().split('-');
            (parts.next()?, parts.next()?, parts.next())
        }
        None => {
            let debug = carrier.get("x-b3-flags") == Some("1");
            let sampled = if debug { Some("d") } else { carrier.get("x-b3-sampled") };
            (carrier.get("x-b3-traceid")?, carrier.get("x-b3-spanid")?, sampled)
        }
    };
    let hex = |s: &str, lens: &[usize]| {
        let ok = lens.contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| u128::from_str_radix(s, 16).ok()).flatten()
    };
    let trace_id = TraceId::from(hex(trace, &[16, 32])?);
    let span_id = SpanId::from(u64::try_from(hex(span, &[16])?).ok()?);
    let flags = match sampled {
        Some("1" | "d" | "true") => TraceFlags::SAMPLED,
        _ => TraceFlags::default(),
    };
    let sc = SpanContext::new(trace_id, span_id, flags, true, TraceState::default());
    sc.is_valid().then_some(sc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::http_check;
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
    use tonic::codegen::http;

    fn parent_of(metadata: &http::HeaderMap, req: &CheckRequest) -> Option<SpanContext> {
        let policy = std::sync::Arc::new(crate::policy::compile(&crate::policy::PolicySource::embedded(), 0).unwrap());
        Propagators::default().parent(&crate::testing::checked(&policy, req, metadata).1)
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    #[test]
    fn w3c_from_request_headers() {
        let tp = format!("00-{TRACE}-00f067aa0ba902b7-01");
        let req = http_check("p", "GET", "h", &[("traceparent", &tp)]);
        let sc = parent_of(&http::HeaderMap::new(), &req).expect("parent");
        assert_eq!(sc.trace_id().to_string(), TRACE);
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
        assert!(sc.is_sampled() && sc.is_remote());
    }

    #[test]
    fn grpc_metadata_wins_over_request_headers() {
        let req = http_check("p", "GET", "h", &[("traceparent", &format!("00-{TRACE}-00f067aa0ba902b7-01"))]);
        let mut md = http::HeaderMap::new();
        md.insert("traceparent", format!("00-{TRACE}-1111111111111111-00").parse().unwrap());
        let sc = parent_of(&md, &req).expect("parent");
        assert_eq!(sc.span_id().to_string(), "1111111111111111");
        assert!(!sc.is_sampled());
    }

    #[test]
    fn b3_single_and_multi_header() {
        let single = http_check("p", "GET", "h", &[("b3", &format!("{TRACE}-00f067aa0ba902b7-1"))]);
        let sc = parent_of(&http::HeaderMap::new(), &single).expect("b3");
        assert_eq!(sc.trace_id().to_string(), TRACE);
        let multi = http_check(
            "p",
            "GET",
            "h",
            &[("x-b3-traceid", TRACE), ("x-b3-spanid", "00f067aa0ba902b7"), ("x-b3-sampled", "1")],
        );
        let sc = parent_of(&http::HeaderMap::new(), &multi).expect("b3 multi");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn b3_64_bit_trace_ids_are_zero_extended_and_unsampled_is_kept() {
        let req = http_check("p", "GET", "h", &[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]);
        let sc = parent_of(&http::HeaderMap::new(), &req).expect("b3");
        assert_eq!(sc.trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!sc.is_sampled());
    }

    #[test]
    fn garbage_or_absent_context_gives_no_parent() {
        let upper = format!("{}-00f067aa0ba902b7-1", TRACE.to_uppercase());
        let zero = format!("{}-0000000000000000-1", TRACE);
        for headers in [
            vec![],
            vec![("traceparent", "00-zz-yy-01")],
            vec![("b3", "nope")],
            vec![("b3", "0")],
            vec![("b3", upper.as_str())],
            vec![("b3", zero.as_str())],
            vec![("x-b3-traceid", TRACE)],
        ] {
            let req = http_check("p", "GET", "h", &headers);
            assert!(parent_of(&http::HeaderMap::new(), &req).is_none(), "{headers:?}");
        }
        let network = crate::testing::network_check("p", "sni.test", "10.0.0.1", 443);
        assert!(parent_of(&http::HeaderMap::new(), &network).is_none());
    }
}
