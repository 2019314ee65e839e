//! One decision as telemetry sees it, and the one list of fields that spans and audit records share.
//!
//! The Check path (`authz::facts`) copies the few strings telemetry needs out of the request into
//! one buffer (`RequestFacts`: one allocation) and frees the request itself where it was decoded. Handing the
//! whole decoded request to the telemetry thread instead cost 5-10% of Check throughput by itself
//! (its ~20 allocations freed on another thread, the Check path's memory never reused warm;
//! measured with benches/telemetry_load.sh). Formatting happens on the telemetry thread.

use std::net::SocketAddr;
use std::ops::Range;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use super::context::TRACE_HEADERS;
use crate::policy::{CompiledPolicy, Protocol, Verdict};

/// The strings of a request telemetry keeps, by position in `RequestFacts`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fact {
    Principal,
    Host,
    Sni,
    Method,
    RequestId,
}

const FACTS: usize = 5;
/// Trace headers follow the facts, in `TRACE_HEADERS` order.
const SLOTS: usize = FACTS + TRACE_HEADERS.len();

/// What telemetry needs from one CheckRequest, in one allocation.
#[derive(Debug, Clone, Default)]
pub struct RequestFacts {
    buf: String,
    slots: [Range<u32>; SLOTS],
    pub port: Option<u16>,
    pub protocol: Option<Protocol>,
    pub client: Option<SocketAddr>,
    pub is_http: bool,
    /// For a tunnel decision: what the tunnel started with (`tls` / `not-tls`). Its span joins
    /// the trace of the CONNECT with the same request id (`recent`).
    pub tunnel_start: Option<&'static str>,
    /// An HTTP request's declared body size (its `content-length`); never set for CONNECT, whose
    /// upload only the gateway's access log knows (see `accesslog`).
    pub body_size: Option<u64>,
}

/// The strings of one request, by `Fact` and then the trace headers, while facts are built.
pub struct FactValues<'a>([Option<&'a str>; SLOTS]);

impl<'a> Default for FactValues<'a> {
    fn default() -> Self {
        FactValues([None; SLOTS])
    }
}

impl<'a> FactValues<'a> {
    pub fn set(&mut self, fact: Fact, value: Option<&'a str>) {
        self.0[fact as usize] = value;
    }

    /// The `i`th of `TRACE_HEADERS`.
    pub fn set_trace_header(&mut self, i: usize, value: Option<&'a str>) {
        self.0[FACTS + i] = value;
    }
}

impl RequestFacts {
    /// Packs `values` into one buffer; the other fields are set by the caller.
    pub fn pack_from(values: FactValues<'_>) -> Self {
        let mut facts = RequestFacts::default();
        facts.pack(values.0);
        facts
    }

    fn pack(&mut self, values: [Option<&str>; SLOTS]) {
        (self.buf, self.slots) = packed(values);
    }

    fn slot(&self, i: usize) -> Option<&str> {
        let r = &self.slots[i];
        (!r.is_empty()).then(|| &self.buf[r.start as usize..r.end as usize])
    }

    pub fn get(&self, fact: Fact) -> Option<&str> {
        self.slot(fact as usize)
    }

    /// A trace header by (lowercase) name, if it is one of `TRACE_HEADERS` and was present.
    pub fn trace_header(&self, name: &str) -> Option<&str> {
        TRACE_HEADERS.iter().position(|h| *h == name).and_then(|i| self.slot(FACTS + i))
    }
}

/// The present values in one buffer, and where each is.
/// The most of one request value (a request id, a method, a caller's identity, a trace header)
/// telemetry keeps: the rest is cut (at a character boundary). A request may carry values of
/// up to the CheckRequest limit; an audit line must stay far below what the readers of audit logs
/// take (`flows::audit_log::MAX_LINE`, 1 MiB) and a span far below a collector's message limit.
pub const MAX_FACT_BYTES: usize = 4096;

/// `v`, cut to at most `MAX_FACT_BYTES`.
fn bounded(v: &str) -> &str {
    if v.len() <= MAX_FACT_BYTES {
        return v;
    }
    let mut end = MAX_FACT_BYTES;
    while !v.is_char_boundary(end) {
        end -= 1;
    }
    &v[..end]
}

fn packed(values: [Option<&str>; SLOTS]) -> (String, [Range<u32>; SLOTS]) {
    let values = values.map(|v| v.map(bounded));
    let mut buf = String::with_capacity(values.iter().flatten().map(|v| v.len()).sum::<usize>());
    let mut slots: [Range<u32>; SLOTS] = Default::default();
    for (slot, value) in slots.iter_mut().zip(values) {
        if let Some(v) = value {
            let start = buf.len() as u32;
            buf.push_str(v);
            *slot = start..buf.len() as u32;
        }
    }
    (buf, slots)
}

/// What the Check path hands over, per decision.
pub struct CheckEvent {
    pub facts: RequestFacts,
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

/// The decision's fields, from a `CheckEvent`, with the formatted ones prepared.
pub struct DecisionRecord<'a> {
    pub event: &'a CheckEvent,
    pub client_address: Option<&'a str>,
    pub reason_message: &'a str,
    pub rule_location: Option<&'a str>,
}

/// Appends `args` to `text`; returns where it went.
fn append(text: &mut String, args: std::fmt::Arguments<'_>) -> Range<usize> {
    use std::fmt::Write;
    let start = text.len();
    // Writing into a String cannot fail.
    let _ = text.write_fmt(args);
    start..text.len()
}

/// Appends `ip` as `Display` writes it; an IPv4 address (nearly every caller) without the
/// formatting machinery (perf: `fmt::write`, `u8` Display and `pad_integral`, for the address and
/// the rule location, were about a tenth of the telemetry thread's samples with the audit log on).
fn push_ip(text: &mut String, ip: std::net::IpAddr) -> Range<usize> {
    let start = text.len();
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    text.push('.');
                }
                text.push_str(digits.format(octet));
            }
        }
        v6 => return append(text, format_args!("{v6}")),
    }
    start..text.len()
}

impl<'a> DecisionRecord<'a> {
    /// Describes `event`, formatting its text fields into `text` (cleared first): the telemetry
    /// thread keeps one buffer for every record rather than three strings allocated per record.
    pub fn describe_in(event: &'a CheckEvent, text: &'a mut String) -> Self {
        let policy = &event.policy;
        text.clear();
        let client = event.facts.client.map(|c| push_ip(text, c.ip()));
        let reason = append(text, format_args!("{}", event.verdict.reason));
        let location = event.verdict.rule.map(|r| {
            let start = text.len();
            policy.rules[r as usize].loc.push_to(text);
            start..text.len()
        });
        let text: &'a str = text;
        DecisionRecord {
            event,
            client_address: client.map(|r| &text[r]),
            reason_message: &text[reason],
            rule_location: location.map(|r| &text[r]),
        }
    }

    /// Every field, in a stable order, under its attribute name (OpenTelemetry semantic
    /// conventions where one exists, else `egress.*`): the decision's (`visit_decision`), then
    /// the request's (`visit_request`). Absent values are skipped.
    pub fn visit(&self, f: &mut dyn FnMut(&'static str, Value<'_>)) {
        self.visit_decision(f);
        self.visit_request(f);
    }

    /// The fields of the decision: what the policy concluded and why. For a decision with a
    /// `class`, they depend on nothing else (the span writer encodes them once per class).
    pub fn visit_decision(&self, f: &mut dyn FnMut(&'static str, Value<'_>)) {
        let facts = &self.event.facts;
        let policy = &self.event.policy;
        let verdict = &self.event.verdict;
        let mut str_field = |key, v: Option<&str>| str_field(f, key, v);
        str_field("egress.check", Some(if facts.is_http { "http" } else { "network" }));
        str_field("egress.service", verdict.service.map(|s| policy.services[s.get()].name.as_str()));
        str_field("egress.decision", Some(verdict.outcome.as_str()));
        str_field("egress.mode", Some(verdict.mode.map(|m| m.as_str()).unwrap_or("none")));
        str_field("egress.rule.id", verdict.rule.map(|r| policy.rules[r as usize].id.as_str()));
        str_field("egress.rule.location", self.rule_location);
        str_field("egress.reason", Some(verdict.reason.code()));
        str_field("egress.reason.message", Some(self.reason_message));
        str_field("egress.policy.version", Some(&policy.version));
        if let crate::policy::Reason::BreakGlass(g) = &verdict.reason {
            str_field("egress.break_glass.grant", Some(&g.id));
            str_field("egress.break_glass.grantor", Some(&g.grantor));
            str_field("egress.break_glass.reason", Some(&g.reason));
        }
        f("egress.enforced", Value::Bool(verdict.enforced));
        if verdict.rolled_back {
            f("egress.rollback_guard_tripped", Value::Bool(true));
        }
    }

    /// The fields of the request: who asked, for what, from where.
    pub fn visit_request(&self, f: &mut dyn FnMut(&'static str, Value<'_>)) {
        let facts = &self.event.facts;
        let mut str_field = |key, v: Option<&str>| str_field(f, key, v);
        str_field("egress.spiffe_id", facts.get(Fact::Principal));
        str_field("client.address", self.client_address);
        str_field("server.address", facts.get(Fact::Host));
        str_field("egress.protocol", facts.protocol.map(Protocol::as_str));
        str_field("egress.sni", facts.get(Fact::Sni));
        str_field("http.request.method", facts.get(Fact::Method));
        str_field("egress.request_id", facts.get(Fact::RequestId));
        str_field("egress.tunnel.start", facts.tunnel_start);
        if let Some(client) = facts.client {
            f("client.port", Value::Int(i64::from(client.port())));
        }
        if let Some(port) = facts.port {
            f("server.port", Value::Int(i64::from(port)));
        }
        if let Some(size) = facts.body_size {
            f("http.request.body.size", Value::Int(i64::try_from(size).unwrap_or(i64::MAX)));
        }
    }

    /// What `visit_decision` depends on, within one policy version: decisions of one class have
    /// the same decision fields. `None` when they say more than the class (a message naming the
    /// request, a break-glass grant).
    pub fn class(&self) -> Option<DecisionClass> {
        let verdict = &self.event.verdict;
        verdict.reason.message_is_fixed().then_some(DecisionClass {
            is_http: self.event.facts.is_http,
            outcome: verdict.outcome,
            reason: verdict.reason.code(),
            rule: verdict.rule,
            service: verdict.service,
            mode: verdict.mode,
            enforced: verdict.enforced,
            rolled_back: verdict.rolled_back,
        })
    }
}

/// `key = v` as a string field, unless `v` is absent or empty.
fn str_field(f: &mut dyn FnMut(&'static str, Value<'_>), key: &'static str, v: Option<&str>) {
    if let Some(v) = v.filter(|v| !v.is_empty()) {
        f(key, Value::Str(v));
    }
}

/// A decision's fields but for the policy version (see `DecisionRecord::class`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DecisionClass {
    is_http: bool,
    outcome: crate::policy::Outcome,
    reason: &'static str,
    rule: Option<u32>,
    service: Option<crate::policy::ServiceIdx>,
    mode: Option<crate::policy::Mode>,
    enforced: bool,
    rolled_back: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};
    use crate::testing::{http_check, network_check};
    use envoy_types::pb::envoy::service::auth::v3::CheckRequest;

    /// An owned field value, to compare with (`Value` borrows from the record).
    #[derive(Debug, PartialEq)]
    enum Owned {
        Str(String),
        Int(i64),
        Bool(bool),
    }

    fn s(v: &str) -> Owned {
        Owned::Str(v.to_string())
    }

    fn fields(req: CheckRequest) -> Vec<(String, Owned)> {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let (verdict, facts) = crate::testing::checked(&policy, &req, &Default::default());
        let event = CheckEvent { facts, verdict, policy, start: crate::clock::wall_now(), duration: Duration::ZERO };
        let mut text = String::new();
        let record = DecisionRecord::describe_in(&event, &mut text);
        let mut out = vec![];
        record.visit(&mut |k, v| {
            let owned = match v {
                Value::Str(x) => Owned::Str(x.to_string()),
                Value::Int(i) => Owned::Int(i),
                Value::Bool(b) => Owned::Bool(b),
            };
            out.push((k.to_string(), owned))
        });
        out
    }

    fn get<'a>(fields: &'a [(String, Owned)], key: &str) -> Option<&'a Owned> {
        fields.iter().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    #[test]
    fn allowed_connect_names_rule_service_and_destination() {
        let f = fields(http_check(
            "spiffe://corp.example/ns/payments/sa/api",
            "CONNECT",
            "API.Stripe.com:443",
            &[("x-request-id", "r-1")],
        ));
        assert_eq!(get(&f, "egress.decision"), Some(&s("allow")));
        assert_eq!(get(&f, "egress.service"), Some(&s("payments")));
        assert_eq!(get(&f, "server.address"), Some(&s("api.stripe.com")));
        assert_eq!(get(&f, "server.port"), Some(&Owned::Int(443)));
        assert_eq!(get(&f, "http.request.method"), Some(&s("CONNECT")));
        assert_eq!(get(&f, "egress.request_id"), Some(&s("r-1")));
        assert!(matches!(get(&f, "egress.rule.location"), Some(Owned::Str(l)) if l.starts_with("f.yaml:")), "{f:?}");
        assert!(get(&f, "egress.rule.id").is_some());
        assert_eq!(get(&f, "egress.sni"), None);
    }

    #[test]
    fn an_http_requests_declared_body_size_is_recorded_and_a_connects_is_not() {
        let pay = "spiffe://corp.example/ns/payments/sa/api";
        let post = fields(http_check(pay, "POST", "api.stripe.com", &[("content-length", "1048576")]));
        assert_eq!(get(&post, "http.request.body.size"), Some(&Owned::Int(1 << 20)));
        let bad = fields(http_check(pay, "POST", "api.stripe.com", &[("content-length", "lots")]));
        assert_eq!(get(&bad, "http.request.body.size"), None, "not a number: not recorded");
        let tunnel = fields(http_check(pay, "CONNECT", "api.stripe.com:443", &[("content-length", "5")]));
        assert_eq!(get(&tunnel, "http.request.body.size"), None);
    }

    #[test]
    fn network_check_records_sni_and_malformed_ones_still_record() {
        let f = fields(network_check("spiffe://corp.example/ns/payments/sa/api", "api.stripe.com", "127.0.0.1", 443));
        assert_eq!(get(&f, "egress.check"), Some(&s("network")));
        assert_eq!(get(&f, "egress.sni"), Some(&s("api.stripe.com")));
        let f = fields(CheckRequest::default());
        assert_eq!(get(&f, "egress.decision"), Some(&s("deny")));
        assert_eq!(get(&f, "egress.reason"), Some(&s("malformed-request")));
        assert_eq!(get(&f, "server.address"), None);
    }
}

#[cfg(test)]
mod bound_tests {
    use super::*;

    #[test]
    fn addresses_and_locations_are_written_as_display_writes_them() {
        let mut text = String::from("x");
        for ip in ["0.0.0.0", "127.0.0.1", "10.200.3.255", "255.255.255.255", "::1", "2001:db8::7", "::ffff:1.2.3.4"] {
            let ip: std::net::IpAddr = ip.parse().unwrap();
            let range = push_ip(&mut text, ip);
            assert_eq!(&text[range], ip.to_string());
        }
        let file: Arc<str> = Arc::from("mesh-config/services/a.yaml");
        for (line, column) in [(0, 0), (1, 1), (12, 5), (u32::MAX, 70_000)] {
            let loc = crate::policy::diagnostic::SourceLoc::new(&file, line, column);
            let mut out = String::new();
            loc.push_to(&mut out);
            assert_eq!(out, loc.to_string());
        }
    }

    #[test]
    fn a_huge_request_value_is_cut_at_a_character_boundary() {
        let huge = format!("{}é{}", "a".repeat(MAX_FACT_BYTES - 1), "b".repeat(1 << 20));
        let mut values = FactValues::default();
        values.set(Fact::RequestId, Some(&huge));
        values.set(Fact::Method, Some("GET"));
        let facts = RequestFacts::pack_from(values);
        let id = facts.get(Fact::RequestId).unwrap();
        assert_eq!(id.len(), MAX_FACT_BYTES - 1, "the two-byte character does not fit: cut before it");
        assert!(huge.starts_with(id));
        assert_eq!(facts.get(Fact::Method), Some("GET"), "short values are kept whole");
    }
}

#[cfg(test)]
mod override_tests {
    use super::*;
    use crate::policy::{GrantRef, Outcome, PolicySource, Reason, compile};

    #[test]
    fn break_glass_and_rollback_guard_decisions_say_so() {
        let text = include_str!("../../integration/fixtures/semantics.yaml");
        let policy = Arc::new(compile(&PolicySource::from_text("f.yaml", text), 0).unwrap());
        let req =
            crate::testing::http_check("spiffe://corp.example/ns/payments/sa/api", "GET", "evil.example.org", &[]);
        let (mut verdict, facts) = crate::testing::checked(&policy, &req, &Default::default());
        assert_eq!(verdict.outcome, Outcome::Deny);
        let grant = GrantRef {
            id: "bg-1".into(),
            grantor: "alice".into(),
            reason: "INC-1".into(),
            target: "evil.example.org (any port)".into(),
            expires_unix: 60,
        };
        verdict.outcome = Outcome::Allow;
        verdict.reason = Reason::BreakGlass(Arc::new(grant));
        verdict.rolled_back = true;
        let event = CheckEvent { facts, verdict, policy, start: crate::clock::wall_now(), duration: Duration::ZERO };
        let mut text = String::new();
        let record = DecisionRecord::describe_in(&event, &mut text);
        let mut got = std::collections::HashMap::new();
        record.visit(&mut |k, v| {
            got.insert(k, format!("{v:?}"));
        });
        assert_eq!(got["egress.reason"], r#"Str("break-glass")"#);
        assert_eq!(got["egress.break_glass.grant"], r#"Str("bg-1")"#);
        assert_eq!(got["egress.break_glass.grantor"], r#"Str("alice")"#);
        assert_eq!(got["egress.break_glass.reason"], r#"Str("INC-1")"#);
        assert_eq!(got["egress.rollback_guard_tripped"], "Bool(true)");
        assert!(got["egress.reason.message"].contains("by alice"));
    }
}
