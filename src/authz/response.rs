//! Decision -> CheckResponse.
//!
//! Allow: gRPC OK, and `x-forwarded-client-cert` removed so the caller's identity never leaves the
//! mesh. Deny: PERMISSION_DENIED with a 403 whose body and `x-egressd-reason` header say why. Both
//! carry dynamic metadata (decision, reason, rule, service, mode, policy version) for access logs.

use envoy_types::pb::envoy::config::core::v3::{HeaderValue, HeaderValueOption};
use envoy_types::pb::envoy::service::auth::v3::{CheckResponse, DeniedHttpResponse, OkHttpResponse, check_response};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::{Struct, Value, value};
use envoy_types::pb::google::rpc::Status;

use super::forward::Forward;
use crate::contract::{INTERNAL_HEADERS, REASON_HEADER, XFCC_HEADER};
use crate::policy::{Decision, Destination, Malformed};

/// gRPC status codes (google.rpc.Code) Envoy reads from a CheckResponse.
const OK: i32 = 0;
pub(super) const PERMISSION_DENIED: i32 = 7;
/// A deny's body is text for the person whose request failed.
pub(super) const DENY_CONTENT_TYPE: &str = "text/plain; charset=utf-8";

/// Builds the answer to Envoy. `dest` is `Err` when the destination could not be parsed;
/// `forward` is where a permitted HTTP request goes (required for those answers to route).
pub fn build(
    decision: &Decision<'_>,
    dest: Result<&Destination<'_>, &Malformed>,
    version: &str,
    is_http: bool,
    forward: Option<&Forward>,
) -> CheckResponse {
    if decision.outcome.permits() {
        let mut resp = ok_core(decision, version);
        if is_http {
            resp.http_response = Some(check_response::HttpResponse::OkResponse(OkHttpResponse::default()));
            match forward {
                Some(f) => f.apply(&mut resp),
                // Nowhere to send it: remove the internal headers, so none of a client's survive.
                None => {
                    if let Some(check_response::HttpResponse::OkResponse(ok)) = resp.http_response.as_mut() {
                        ok.headers_to_remove =
                            std::iter::once(XFCC_HEADER).chain(INTERNAL_HEADERS).map(str::to_string).collect();
                    }
                }
            }
        }
        return resp;
    }
    let code = decision.reason.code();
    CheckResponse {
        status: Some(Status { code: PERMISSION_DENIED, message: code.to_string(), ..Default::default() }),
        dynamic_metadata: Some(metadata(decision, version)),
        http_response: is_http.then(|| {
            check_response::HttpResponse::DeniedResponse(DeniedHttpResponse {
                status: Some(HttpStatus { code: StatusCode::Forbidden as i32 }),
                headers: vec![header(REASON_HEADER, code), header("content-type", DENY_CONTENT_TYPE)],
                body: deny_body(decision, dest),
            })
        }),
    }
}

/// A permitted answer without its HTTP part: status and metadata. Depends only on the decision's
/// rule, service and mode, so `cache` encodes it once per policy version.
pub fn ok_core(decision: &Decision<'_>, version: &str) -> CheckResponse {
    CheckResponse {
        status: Some(Status { code: OK, ..Default::default() }),
        dynamic_metadata: Some(metadata(decision, version)),
        http_response: None,
    }
}

fn deny_body(decision: &Decision<'_>, dest: Result<&Destination<'_>, &Malformed>) -> String {
    let mut body = String::with_capacity(256);
    let _ = write_deny_body(&mut body, decision, dest);
    body
}

/// The text of a deny's body (also written by `encoded` without a String).
pub(super) fn write_deny_body(
    out: &mut impl std::fmt::Write,
    decision: &Decision<'_>,
    dest: Result<&Destination<'_>, &Malformed>,
) -> std::fmt::Result {
    let service = if decision.service_name().is_empty() { "(unidentified)" } else { decision.service_name() };
    write!(
        out,
        "egressd denied this request: {}\nreason: {}\nservice: {service}\ndestination: ",
        decision.reason,
        decision.reason.code()
    )?;
    match dest {
        Ok(d) => write!(out, "{}:{}", d.host, d.port)?,
        Err(_) => out.write_str("(unparseable)")?,
    }
    out.write_char('\n')?;
    if let Some(rule) = decision.rule {
        writeln!(out, "rule: {} ({})", rule.id, rule.loc.short())?;
    }
    Ok(())
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        ..Default::default()
    }
}

fn metadata(decision: &Decision<'_>, version: &str) -> Struct {
    let s = |v: &str| Value { kind: Some(value::Kind::StringValue(v.to_string())) };
    let mut fields = std::collections::HashMap::with_capacity(7);
    metadata_entries(decision, version, |k, v| {
        fields.insert(k.to_string(), s(v));
    });
    Struct { fields }
}

/// The decision metadata, entry by entry (also written by `encoded` without a Struct).
pub(super) fn metadata_entries<'a>(
    decision: &'a Decision<'_>,
    version: &'a str,
    mut f: impl FnMut(&'static str, &'a str),
) {
    f("decision", decision.outcome.as_str());
    f("reason", decision.reason.code());
    f("rule", decision.rule_id());
    f("service", decision.service_name());
    f("mode", decision.mode_str());
    f("policy_version", version);
    if let crate::policy::Reason::BreakGlass(g) = &decision.reason {
        f("break_glass_grant", &g.id);
    }
}
