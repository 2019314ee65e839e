//! The per-packet logic (`query`) and the cache, without sockets: upstream answers are built here.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::{A, SOA, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use super::query::{Arrival, Pending, Step, Transport, finish, handle};
use super::{Resolver, forward};
use crate::policy::{CompiledPolicy, Outcome, PolicySource, compile};

const POLICY: &str = r#"
kind: MeshDefaults
trustDomain: corp.example
deny:
  - host: pastebin.com
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    justification: cards
  - host: "*.big.test"
    justification: big answers
---
kind: DnsFirewall
name: mesh-dns
listen: 127.0.0.1:15053
upstreams: [127.0.0.1:1]
rateLimit:
  queriesPerSecond: 1
  burst: 3
"#;

fn setup() -> (CompiledPolicy, Resolver) {
    let policy = compile(&PolicySource::from_text("dns.yaml", POLICY), 0).unwrap();
    let resolver = Resolver::new(policy.dns.as_ref().unwrap());
    (policy, resolver)
}

fn client() -> SocketAddr {
    "127.0.0.5:40000".parse().unwrap()
}

fn arrival(at: Instant) -> Arrival {
    Arrival { at, wall: crate::clock::wall_now(), unix: 0 }
}

fn query(name: &str, qtype: RecordType, edns: bool) -> Vec<u8> {
    let mut msg = Message::new(0x1234, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if edns {
        msg.set_edns(Edns::new());
    }
    msg.to_vec().unwrap()
}

fn reply(step: Step) -> (Message, Box<crate::telemetry::dns::DnsEvent>) {
    match step {
        Step::Reply(bytes, event) => (Message::from_vec(&bytes).unwrap(), event),
        Step::Forward(_) => panic!("forwarded"),
        Step::Drop => panic!("dropped"),
    }
}

fn forwarded(step: Step) -> Box<Pending> {
    match step {
        Step::Forward(p) => p,
        _ => panic!("not forwarded"),
    }
}

fn ede(msg: &Message) -> Option<u16> {
    let opt = msg.edns.as_ref()?.options();
    opt.as_ref().iter().find_map(|(code, option)| match option {
        hickory_proto::rr::rdata::opt::EdnsOption::Unknown(15, data) if u16::from(*code) == 15 => {
            Some(u16::from_be_bytes([data[0], data[1]]))
        }
        _ => None,
    })
}

/// What the upstream would say to `pending`'s question.
fn upstream_answer(pending: &Pending, rcode: ResponseCode, answers: Vec<Record>, soa: Option<Record>) -> Message {
    let mut msg = Message::new(7, MessageType::Response, OpCode::Query);
    msg.metadata.response_code = rcode;
    msg.add_query(pending.question.clone());
    msg.add_answers(answers);
    msg.add_authorities(soa);
    msg
}

fn a(name: &str, ttl: u32) -> Record {
    Record::from_rdata(Name::from_ascii(name).unwrap(), ttl, RData::A(A(Ipv4Addr::new(192, 0, 2, 1))))
}

#[test]
fn a_blocked_name_is_answered_here_with_an_extended_error() {
    let (policy, resolver) = setup();
    let now = Instant::now();
    let (msg, event) = reply(handle(
        &resolver,
        &policy,
        &query("pastebin.com.", RecordType::A, true),
        client(),
        Transport::Udp,
        arrival(now),
    ));
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(msg.metadata.id, 0x1234);
    assert_eq!(ede(&msg), Some(15), "explicit deny: Blocked");
    assert_eq!(
        (event.decision, event.reason, event.rule.as_deref()),
        (Outcome::Deny, "mesh-deny", Some("mesh/deny/0"))
    );
    let (msg, _) = reply(handle(
        &resolver,
        &policy,
        &query("exfil.attacker.example.", RecordType::TXT, true),
        client(),
        Transport::Udp,
        arrival(now),
    ));
    assert_eq!(ede(&msg), Some(18), "default deny: Prohibited");
}

#[test]
fn an_allowed_name_is_forwarded_then_served_from_the_cache_with_aged_ttls() {
    let (policy, resolver) = setup();
    let t0 = Instant::now();
    let pending = forwarded(handle(
        &resolver,
        &policy,
        &query("API.Stripe.com.", RecordType::A, true),
        client(),
        Transport::Udp,
        arrival(t0),
    ));
    let upstream = upstream_answer(&pending, ResponseCode::NoError, vec![a("api.stripe.com.", 60)], None);
    let (bytes, event) = finish(&resolver, *pending, Some(upstream), t0);
    let msg = Message::from_vec(&bytes).unwrap();
    assert_eq!(msg.answers.len(), 1);
    assert_eq!(msg.queries[0].name().to_ascii(), "API.Stripe.com.", "the client's spelling is echoed");
    assert_eq!((event.decision, event.rcode, event.cached), (Outcome::Allow, "NOERROR", false));
    let later = arrival(t0 + Duration::from_secs(20));
    let (msg, event) = reply(handle(
        &resolver,
        &policy,
        &query("api.stripe.com.", RecordType::A, true),
        client(),
        Transport::Udp,
        later,
    ));
    assert!(event.cached);
    assert_eq!(msg.answers[0].ttl, 40);
    assert!(
        matches!(
            handle(
                &resolver,
                &policy,
                &query("api.stripe.com.", RecordType::A, true),
                client(),
                Transport::Udp,
                arrival(t0 + Duration::from_secs(61))
            ),
            Step::Forward(_)
        ),
        "expired"
    );
}

#[test]
fn negative_answers_are_cached_for_the_soa_minimum_and_failures_not_at_all() {
    let (policy, resolver) = setup();
    let t0 = Instant::now();
    let soa = SOA::new(
        Name::from_ascii("ns.stripe.com.").unwrap(),
        Name::from_ascii("a.stripe.com.").unwrap(),
        1,
        1,
        1,
        1,
        30,
    );
    let soa = Record::from_rdata(Name::from_ascii("stripe.com.").unwrap(), 300, RData::SOA(soa));
    let pending = forwarded(handle(
        &resolver,
        &policy,
        &query("api.stripe.com.", RecordType::AAAA, true),
        client(),
        Transport::Udp,
        arrival(t0),
    ));
    let upstream = upstream_answer(&pending, ResponseCode::NoError, vec![], Some(soa));
    finish(&resolver, *pending, Some(upstream), t0);
    let step = handle(
        &resolver,
        &policy,
        &query("api.stripe.com.", RecordType::AAAA, true),
        client(),
        Transport::Udp,
        arrival(t0 + Duration::from_secs(29)),
    );
    assert!(reply(step).1.cached, "NODATA within the SOA minimum");
    let step = handle(
        &resolver,
        &policy,
        &query("api.stripe.com.", RecordType::AAAA, true),
        client(),
        Transport::Udp,
        arrival(t0 + Duration::from_secs(31)),
    );
    assert!(matches!(step, Step::Forward(_)), "past the SOA minimum");

    let pending = forwarded(handle(
        &resolver,
        &policy,
        &query("x.big.test.", RecordType::A, true),
        client(),
        Transport::Udp,
        arrival(t0),
    ));
    let (bytes, event) = finish(&resolver, *pending, None, t0);
    assert_eq!(Message::from_vec(&bytes).unwrap().metadata.response_code, ResponseCode::ServFail);
    assert_eq!(event.rcode, "SERVFAIL");
    assert!(
        resolver
            .cache
            .get(&super::cache::CacheKey { qname: "x.big.test".into(), qtype: 1, qclass: 1, dnssec_ok: false }, t0)
            .is_none()
    );
}

#[test]
fn an_answer_over_the_clients_udp_size_is_truncated_and_whole_over_tcp() {
    let (policy, resolver) = setup();
    let t0 = Instant::now();
    let txt: Vec<Record> = (0..40)
        .map(|i| {
            Record::from_rdata(
                Name::from_ascii("t.big.test.").unwrap(),
                60,
                RData::TXT(TXT::new(vec![format!("record {i} {}", "x".repeat(40))])),
            )
        })
        .collect();
    let pending = forwarded(handle(
        &resolver,
        &policy,
        &query("t.big.test.", RecordType::TXT, false),
        client(),
        Transport::Udp,
        arrival(t0),
    ));
    let upstream = upstream_answer(&pending, ResponseCode::NoError, txt, None);
    let (bytes, event) = finish(&resolver, *pending, Some(upstream), t0);
    assert!(bytes.len() <= 512, "{}", bytes.len());
    let msg = Message::from_vec(&bytes).unwrap();
    assert!(msg.metadata.truncation && msg.answers.is_empty() && event.truncated);
    let (msg, _) = reply(handle(
        &resolver,
        &policy,
        &query("t.big.test.", RecordType::TXT, false),
        client(),
        Transport::Tcp,
        arrival(t0),
    ));
    assert_eq!(msg.answers.len(), 40);
    assert!(!msg.metadata.truncation);
}

#[test]
fn garbage_and_responses_are_dropped_and_a_flood_is_refused() {
    let (policy, resolver) = setup();
    let t0 = Instant::now();
    for packet in [&b""[..], b"\x00", &[0xff; 40], &[0u8; 12]] {
        assert!(matches!(
            handle(&resolver, &policy, packet, client(), Transport::Udp, arrival(t0)),
            Step::Drop | Step::Reply(..)
        ));
    }
    let mut answer = Message::from_vec(&query("api.stripe.com.", RecordType::A, false)).unwrap();
    answer.metadata.message_type = MessageType::Response;
    assert!(matches!(
        handle(&resolver, &policy, &answer.to_vec().unwrap(), client(), Transport::Udp, arrival(t0)),
        Step::Drop
    ));

    let other: SocketAddr = "127.0.0.6:1".parse().unwrap();
    let q = query("pastebin.com.", RecordType::A, false);
    let codes: Vec<ResponseCode> = (0..5)
        .map(|_| reply(handle(&resolver, &policy, &q, other, Transport::Udp, arrival(t0))).0.metadata.response_code)
        .collect();
    assert_eq!(&codes[..3], &[ResponseCode::NXDomain; 3], "the burst");
    assert_eq!(&codes[3..], &[ResponseCode::Refused; 2], "then refused");
}

#[test]
fn an_upstream_answer_must_match_the_query() {
    let q = Query::query(Name::from_ascii("api.stripe.com.").unwrap(), RecordType::A);
    let mut msg = Message::new(9, MessageType::Response, OpCode::Query);
    msg.add_query(q.clone());
    let bytes = msg.to_vec().unwrap();
    assert!(forward::accept(&bytes, 9, &q).is_some());
    assert!(forward::accept(&bytes, 10, &q).is_none(), "another id");
    let other = Query::query(Name::from_ascii("evil.test.").unwrap(), RecordType::A);
    assert!(forward::accept(&bytes, 9, &other).is_none(), "another question");
}

#[test]
fn a_label_with_a_dot_inside_is_not_a_subdomain_and_is_never_forwarded() {
    let (policy, resolver) = setup();
    // One label `x.y` under `big.test`: matched naively as text it would be `x.y.big.test`.
    let name = Name::from_labels(vec![&b"x.y"[..], b"big", b"test"]).unwrap();
    let mut msg = Message::new(1, MessageType::Query, OpCode::Query);
    msg.add_query(Query::query(name, RecordType::A));
    msg.set_edns(Edns::new());
    let step = handle(&resolver, &policy, &msg.to_vec().unwrap(), client(), Transport::Udp, arrival(Instant::now()));
    let (answer, event) = reply(step);
    assert_eq!(answer.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!((event.decision, event.reason), (Outcome::Deny, "malformed-name"));
    assert_eq!(ede(&answer), Some(18));
}
