//! One packet in, one step out: the DNS firewall's whole per-query logic, without I/O. The UDP and
//! TCP listeners call `handle`, do what the step says (reply, forward, drop) and, for a forward,
//! call `finish` with what the upstream said. The fuzz target calls `handle` on random bytes.
//!
//! Order: parse (malformed: drop) -> rate limit (REFUSED) -> one question of class IN, opcode
//! QUERY (else FORMERR / NOTIMP / REFUSED) -> decide -> blocked: answered here, never forwarded ->
//! cache -> forward.

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, RecordType};

use super::answer::{self, ClientShape, EDE_BLOCKED, EDE_PROHIBITED};
use super::cache::{AnswerCache, CacheKey, CachedAnswer};
use super::ratelimit::RateLimiter;
use crate::policy::dns::{BlockedAnswer, DnsDecision, QueryKind};
use crate::policy::{CompiledPolicy, Outcome};
use crate::telemetry::dns::{DnsEvent, RATE_LIMITED};

/// The state queries share: answers and rate-limit buckets (sized when the server starts).
pub struct Resolver {
    pub cache: AnswerCache,
    pub limiter: RateLimiter,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}

/// When a packet arrived: the monotonic clock for the cache and rate limit, the wall clock for the
/// record, unix seconds for `expires`.
#[derive(Debug, Clone, Copy)]
pub struct Arrival {
    pub at: Instant,
    pub wall: SystemTime,
    pub unix: i64,
}

/// What to do with a packet.
pub enum Step {
    /// Send these bytes back; record the event.
    Reply(Vec<u8>, Box<DnsEvent>),
    /// Ask the upstreams, then `finish`.
    Forward(Box<Pending>),
    /// Not a DNS query egressd can answer (malformed, a response, empty): say nothing.
    Drop,
}

/// A query on its way upstream.
pub struct Pending {
    query: Message,
    shape: ClientShape,
    key: CacheKey,
    /// The question as sent upstream.
    pub question: Query,
    pub dnssec_ok: bool,
    pub checking_disabled: bool,
    pub upstreams: Vec<SocketAddr>,
    pub timeout: Duration,
    pub attempts: u32,
    event: Box<DnsEvent>,
    arrival: Instant,
}

/// Decides and, where it can, answers one packet from `client`.
pub fn handle(
    resolver: &Resolver,
    policy: &CompiledPolicy,
    packet: &[u8],
    client: SocketAddr,
    transport: Transport,
    arrival: Arrival,
) -> Step {
    let Ok(query) = Message::from_vec(packet) else { return Step::Drop };
    if query.metadata.message_type != MessageType::Query {
        return Step::Drop; // never answer an answer: that is how reflection loops start
    }
    let shape = ClientShape::of(&query, transport == Transport::Tcp);
    let mut event = Box::new(DnsEvent {
        time: arrival.wall,
        duration: Duration::ZERO,
        client,
        transport: transport.as_str(),
        qname: String::new(),
        qtype: String::new(),
        rcode: "",
        service: None,
        rule: None,
        decision: Outcome::Deny,
        reason: "",
        policy_version: policy.version.clone(),
        answer_bytes: 0,
        answers: 0,
        cached: false,
        truncated: false,
    });
    if let Some(q) = query.queries.first() {
        event.qname = policy_name(q).unwrap_or_else(|| q.name().to_lowercase().to_ascii());
        event.qtype = q.query_type().to_string();
    }
    if !resolver.limiter.allow(client.ip(), arrival.at) {
        event.reason = RATE_LIMITED;
        return reply(answer::response(&query, &shape, ResponseCode::Refused), &shape, event, arrival.at);
    }
    let refuse = |rcode, reason, mut event: Box<DnsEvent>| {
        event.reason = reason;
        reply(answer::response(&query, &shape, rcode), &shape, event, arrival.at)
    };
    if query.metadata.op_code != OpCode::Query {
        return refuse(ResponseCode::NotImp, "not-a-query", event);
    }
    let [question] = query.queries.as_slice() else {
        return refuse(ResponseCode::FormErr, "not-one-question", event);
    };
    if question.query_class() != DNSClass::IN {
        return refuse(ResponseCode::Refused, "not-class-in", event);
    }
    let Some(fw) = &policy.dns else {
        return refuse(ResponseCode::Refused, "no-dns-firewall", event);
    };
    if policy_name(question).is_none() {
        // A label with a dot or a byte outside letters, digits, `-`, `_` spells a name the policy
        // cannot: `x\.allowed.test` is one label under `test`, not a child of `allowed.test`.
        event.reason = "malformed-name";
        let msg = answer::blocked(&query, &shape, blocked_rcode(fw.blocked), EDE_PROHIBITED, "egressd malformed-name");
        return reply(msg, &shape, event, arrival.at);
    }
    let decision = policy.decide_dns(client.ip(), &event.qname, kind_of(question.query_type()), arrival.unix);
    note_decision(&mut event, &decision);
    if !decision.forwards() {
        let (rcode, ede) = blocked_answer(fw.blocked, &decision);
        let text = match decision.rule {
            Some(rule) => format!("egressd {}: {}", decision.reason.as_str(), rule.id),
            None => format!("egressd {}", decision.reason.as_str()),
        };
        let msg = answer::blocked(&query, &shape, rcode, ede, &text);
        return reply(msg, &shape, event, arrival.at);
    }
    let key = CacheKey {
        qname: event.qname.as_str().into(),
        qtype: question.query_type().into(),
        qclass: question.query_class().into(),
        dnssec_ok: shape.dnssec_ok,
    };
    if let Some(cached) = resolver.cache.get(&key, arrival.at) {
        event.cached = true;
        let msg = from_upstream(&query, &shape, cached);
        return reply(msg, &shape, event, arrival.at);
    }
    Step::Forward(Box::new(Pending {
        question: question.clone(),
        dnssec_ok: shape.dnssec_ok,
        checking_disabled: shape.checking_disabled,
        upstreams: fw.upstreams.clone(),
        timeout: Duration::from_millis(fw.timeout_ms),
        attempts: fw.attempts,
        query,
        shape,
        key,
        event,
        arrival: arrival.at,
    }))
}

/// The answer to a forwarded query: the upstream's records (cached for next time), or SERVFAIL
/// when no upstream answered.
pub fn finish(
    resolver: &Resolver,
    pending: Pending,
    upstream: Option<Message>,
    now: Instant,
) -> (Vec<u8>, Box<DnsEvent>) {
    let Pending { query, shape, key, event, arrival, .. } = pending;
    let msg = match upstream {
        Some(upstream) => {
            resolver.cache.put(key, &upstream, now);
            from_upstream(&query, &shape, CachedAnswer::from_message(&upstream))
        }
        None => answer::response(&query, &shape, ResponseCode::ServFail),
    };
    match reply(msg, &shape, event, arrival) {
        Step::Reply(bytes, event) => (bytes, event),
        _ => unreachable!("reply always replies"),
    }
}

/// `finish` with an upstream's raw bytes, as the fuzz target drives it (the forwarder checks id
/// and question first; here any message that decodes is taken, the harder case).
pub fn finish_raw(resolver: &Resolver, pending: Pending, upstream: &[u8], now: Instant) -> (Vec<u8>, Box<DnsEvent>) {
    finish(resolver, pending, Message::from_vec(upstream).ok(), now)
}

impl Pending {
    /// The decision that let this query go upstream (never a deny).
    pub fn decision(&self) -> Outcome {
        self.event.decision
    }
}

fn reply(msg: Message, shape: &ClientShape, mut event: Box<DnsEvent>, arrival: Instant) -> Step {
    let (bytes, msg) = match answer::encode(&msg, shape) {
        Some(bytes) => (bytes, msg),
        None => {
            let failed = answer::response(&msg, shape, ResponseCode::ServFail);
            match answer::encode(&failed, shape) {
                Some(bytes) => (bytes, failed),
                None => return Step::Drop,
            }
        }
    };
    event.rcode = rcode_name(msg.metadata.response_code);
    event.answer_bytes = bytes.len();
    event.truncated = bytes.get(2).is_some_and(|b| b & 0x02 != 0);
    event.answers = if event.truncated { 0 } else { u16::try_from(msg.answers.len()).unwrap_or(u16::MAX) };
    event.duration = arrival.elapsed();
    Step::Reply(bytes, event)
}

/// The client's answer from an upstream's (or the cache's) records.
fn from_upstream(query: &Message, shape: &ClientShape, upstream: CachedAnswer) -> Message {
    let mut msg = answer::response(query, shape, upstream.rcode);
    msg.metadata.authentic_data = upstream.authentic_data;
    msg.answers = upstream.answers;
    msg.authorities = upstream.authorities;
    msg.additionals = upstream.additionals;
    msg
}

fn note_decision(event: &mut DnsEvent, decision: &DnsDecision<'_>) {
    event.decision = decision.outcome;
    event.reason = decision.reason.as_str();
    event.service = decision.service.map(|s| s.name.clone());
    event.rule = decision.rule.map(|r| r.id.clone());
}

fn blocked_answer(blocked: BlockedAnswer, decision: &DnsDecision<'_>) -> (ResponseCode, u16) {
    let ede = if decision.reason.is_explicit_deny() { EDE_BLOCKED } else { EDE_PROHIBITED };
    (blocked_rcode(blocked), ede)
}

fn blocked_rcode(blocked: BlockedAnswer) -> ResponseCode {
    match blocked {
        BlockedAnswer::Nxdomain => ResponseCode::NXDomain,
        BlockedAnswer::Refused => ResponseCode::Refused,
    }
}

/// The question's name as the policy spells names (lowercase, no trailing dot), or `None` when a
/// label holds a byte a host name cannot (the policy's names are letters, digits, `-` and `_`;
/// internationalized names arrive as `xn--` labels).
fn policy_name(q: &Query) -> Option<String> {
    let mut name = String::with_capacity(q.name().len());
    for label in q.name().iter() {
        let plain = |b: &u8| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_';
        if label.is_empty() || !label.iter().all(plain) {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
    }
    Some(name)
}

fn kind_of(qtype: RecordType) -> QueryKind {
    match qtype {
        RecordType::PTR => QueryKind::Ptr,
        RecordType::SOA | RecordType::NS | RecordType::DS => QueryKind::Zone,
        _ => QueryKind::Name,
    }
}

fn rcode_name(rcode: ResponseCode) -> &'static str {
    match rcode {
        ResponseCode::NoError => "NOERROR",
        ResponseCode::FormErr => "FORMERR",
        ResponseCode::ServFail => "SERVFAIL",
        ResponseCode::NXDomain => "NXDOMAIN",
        ResponseCode::NotImp => "NOTIMP",
        ResponseCode::Refused => "REFUSED",
        _ => "OTHER",
    }
}
