//! One decision as telemetry sees it, and the one list of fields that spans and audit records share.
//!
//! The Check path only moves what it already owns into a `CheckEvent` (the decoded request, the
//! call's metadata, a detached verdict, the policy `Arc`); reading names out of the request and
//! formatting happen here, on the telemetry thread.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use envoy_types::pb::envoy::service::auth::v3::CheckRequest;
use tonic::codegen::http;

use crate::authz::request::{socket_address, tls_sni, view};
use crate::policy::fqdn::Host;
use crate::policy::{CompiledPolicy, Verdict};

/// What the Check path hands over, per decision.
pub struct CheckEvent {
    pub request: CheckRequest,
    /// gRPC metadata of the Check call (Envoy puts its own trace context there).
    pub metadata: http::HeaderMap,
    pub verdict: Verdict,
    pub policy: Arc<CompiledPolicy>,
    pub start: SystemTime,
    pub duration: Duration,
}

/// A field value, borrowed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Value<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

/// The decision's fields, read out of a `CheckEvent`.
pub struct DecisionRecord<'a> {
    pub event: &'a CheckEvent,
    pub check: &'static str,
    pub principal: Option<Cow<'a, str>>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub protocol: Option<&'static str>,
    pub sni: Option<&'a str>,
    pub method: &'a str,
    pub request_id: Option<&'a str>,
    pub client: Option<(String, u16)>,
    pub reason_message: String,
    pub rule_location: Option<String>,
}

impl<'a> DecisionRecord<'a> {
    pub fn describe(event: &'a CheckEvent) -> Self {
        let attrs = event.request.attributes.as_ref();
        let client = attrs
            .and_then(|a| a.source.as_ref())
            .and_then(|s| socket_address(s.address.as_ref()))
            .map(|(ip, port)| (ip.to_string(), port));
        let sni = attrs.and_then(tls_sni);
        let policy = &event.policy;
        let verdict = &event.verdict;
        let rule_location = verdict.rule.map(|r| policy.rules[r as usize].loc.to_string());
        let mut record = DecisionRecord {
            event,
            check: "network",
            principal: None,
            host: None,
            port: None,
            protocol: None,
            sni,
            method: "",
            request_id: None,
            client,
            reason_message: verdict.reason.to_string(),
            rule_location,
        };
        // A malformed request still gets a record: with whatever could be read.
        if let Ok(v) = view(&event.request, policy) {
            record.check = if v.is_http { "http" } else { "network" };
            record.principal = v.principal;
            record.method = v.method;
            record.request_id = v.request_id;
            if let Ok(d) = v.destination {
                record.host = Some(match d.host {
                    Host::Name(n) => n.into_owned(),
                    Host::Ip(ip) => ip.to_string(),
                });
                record.port = Some(d.port);
                record.protocol = Some(d.protocol.as_str());
            }
        }
        record
    }

    /// Every field, in a stable order, under its attribute name (OpenTelemetry semantic
    /// conventions where one exists, else `egress.*`). Absent values are skipped.
    pub fn visit(&self, f: &mut dyn FnMut(&'static str, Value<'_>)) {
        let policy = &self.event.policy;
        let verdict = &self.event.verdict;
        let mut str_field = |key, v: Option<&str>| {
            if let Some(v) = v.filter(|v| !v.is_empty()) {
                f(key, Value::Str(v));
            }
        };
        str_field("egress.check", Some(self.check));
        str_field("egress.spiffe_id", self.principal.as_deref());
        str_field("egress.service", verdict.service.map(|s| policy.services[s as usize].name.as_str()));
        str_field("client.address", self.client.as_ref().map(|c| c.0.as_str()));
        str_field("server.address", self.host.as_deref());
        str_field("egress.protocol", self.protocol);
        str_field("egress.sni", self.sni);
        str_field("http.request.method", Some(self.method));
        str_field("egress.decision", Some(verdict.outcome.as_str()));
        str_field("egress.mode", Some(verdict.mode.map(|m| m.as_str()).unwrap_or("none")));
        str_field("egress.rule.id", verdict.rule.map(|r| policy.rules[r as usize].id.as_str()));
        str_field("egress.rule.location", self.rule_location.as_deref());
        str_field("egress.reason", Some(verdict.reason.code()));
        str_field("egress.reason.message", Some(&self.reason_message));
        str_field("egress.policy.version", Some(&policy.version));
        str_field("egress.request_id", self.request_id);
        if let Some((_, port)) = &self.client {
            f("client.port", Value::Int(i64::from(*port)));
        }
        if let Some(port) = self.port {
            f("server.port", Value::Int(i64::from(port)));
        }
        f("egress.enforced", Value::Bool(verdict.enforced));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};
    use crate::testing::{http_check, network_check};

    fn fields(req: CheckRequest) -> Vec<(String, String)> {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let verdict = crate::authz::decide_verdict(&policy, &req, 0);
        let event = CheckEvent {
            request: req,
            metadata: http::HeaderMap::new(),
            verdict,
            policy,
            start: SystemTime::now(),
            duration: Duration::ZERO,
        };
        let record = DecisionRecord::describe(&event);
        let mut out = vec![];
        record.visit(&mut |k, v| out.push((k.to_string(), format!("{v:?}"))));
        out
    }

    fn get<'a>(fields: &'a [(String, String)], key: &str) -> Option<&'a str> {
        fields.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }

    #[test]
    fn allowed_connect_names_rule_service_and_destination() {
        let f = fields(http_check(
            "spiffe://corp.example/ns/payments/sa/api",
            "CONNECT",
            "API.Stripe.com:443",
            &[("x-request-id", "r-1")],
        ));
        assert_eq!(get(&f, "egress.decision"), Some(r#"Str("allow")"#));
        assert_eq!(get(&f, "egress.service"), Some(r#"Str("payments")"#));
        assert_eq!(get(&f, "server.address"), Some(r#"Str("api.stripe.com")"#));
        assert_eq!(get(&f, "server.port"), Some("Int(443)"));
        assert_eq!(get(&f, "http.request.method"), Some(r#"Str("CONNECT")"#));
        assert_eq!(get(&f, "egress.request_id"), Some(r#"Str("r-1")"#));
        assert!(get(&f, "egress.rule.location").unwrap().starts_with(r#"Str("f.yaml:"#), "{f:?}");
        assert!(get(&f, "egress.rule.id").is_some());
        assert_eq!(get(&f, "egress.sni"), None);
    }

    #[test]
    fn network_check_records_sni_and_malformed_ones_still_record() {
        let f = fields(network_check("spiffe://corp.example/ns/payments/sa/api", "api.stripe.com", "127.0.0.1", 443));
        assert_eq!(get(&f, "egress.check"), Some(r#"Str("network")"#));
        assert_eq!(get(&f, "egress.sni"), Some(r#"Str("api.stripe.com")"#));
        let f = fields(CheckRequest::default());
        assert_eq!(get(&f, "egress.decision"), Some(r#"Str("deny")"#));
        assert_eq!(get(&f, "egress.reason"), Some(r#"Str("malformed-request")"#));
        assert_eq!(get(&f, "server.address"), None);
    }
}
