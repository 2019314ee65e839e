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
const PERMISSION_DENIED: i32 = 7;

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
                headers: vec![header(REASON_HEADER, code), header("content-type", "text/plain; charset=utf-8")],
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
    let destination = match dest {
        Ok(d) => format!("{}:{}", d.host, d.port),
        Err(_) => "(unparseable)".to_string(),
    };
    let service = if decision.service_name().is_empty() { "(unidentified)" } else { decision.service_name() };
    let mut body = format!(
        "egressd denied this request: {}\nreason: {}\nservice: {service}\ndestination: {destination}\n",
        decision.reason,
        decision.reason.code()
    );
    if let Some(rule) = decision.rule {
        body.push_str(&format!("rule: {} ({})\n", rule.id, rule.loc.short()));
    }
    body
}

fn header(key: &str, value: &str) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue { key: key.to_string(), value: value.to_string(), ..Default::default() }),
        ..Default::default()
    }
}

fn metadata(decision: &Decision<'_>, version: &str) -> Struct {
    let s = |v: &str| Value { kind: Some(value::Kind::StringValue(v.to_string())) };
    let mut fields = std::collections::HashMap::with_capacity(6);
    fields.insert("decision".to_string(), s(decision.outcome.as_str()));
    fields.insert("reason".to_string(), s(decision.reason.code()));
    fields.insert("rule".to_string(), s(decision.rule_id()));
    fields.insert("service".to_string(), s(decision.service_name()));
    fields.insert("mode".to_string(), s(decision.mode_str()));
    fields.insert("policy_version".to_string(), s(version));
    if let crate::policy::Reason::BreakGlass(g) = &decision.reason {
        fields.insert("break_glass_grant".to_string(), s(&g.id));
    }
    Struct { fields }
}
