//! The DNS firewall's packet handling (`egressd::dns::query`): arbitrary bytes as a client's
//! packet over UDP and over TCP, decided against a policy with a DnsFirewall; when the step is a
//! forward, the same bytes (and a flipped copy) as the upstream's answer.
//!
//! Invariants: nothing panics; every reply decodes as a DNS message with the query's id and the
//! response bit; a UDP reply fits the client's size (512 without EDNS, at most 4096); a forwarded
//! query was never denied.
#![no_main]

use std::sync::LazyLock;
use std::time::Instant;

use egressd::dns::query::{Arrival, Resolver, Step, Transport, finish_raw, handle};
use egressd::policy::{CompiledPolicy, Outcome, PolicySource, compile};
use libfuzzer_sys::fuzz_target;

const POLICY: &str = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - host: pastebin.com\n---\nkind: ServicePolicy\nservice: ci\nidentities: [spiffe://corp.example/ns/ci/sa/runner]\nmode: dry-run\nallow:\n  - host: allowed.test\n    justification: j\n  - host: \"*.big.test\"\n    justification: j\n---\nkind: DnsFirewall\nname: fuzz\nlisten: 127.0.0.1:15053\nupstreams: [127.0.0.1:1]\nsources:\n  - cidr: 127.0.0.5/32\n    service: ci\n";

static POLICY_COMPILED: LazyLock<CompiledPolicy> =
    LazyLock::new(|| compile(&PolicySource::from_text("fuzz.yaml", POLICY), 0).expect("fuzz policy compiles"));
static RESOLVER: LazyLock<Resolver> = LazyLock::new(|| Resolver::new(POLICY_COMPILED.dns.as_ref().unwrap()));

fn check_reply(packet: &[u8], reply: &[u8], transport: Transport) {
    assert!(reply.len() >= 12, "a reply has a header");
    assert_eq!(reply[..2], packet[..2], "the reply carries the query's id");
    assert!(reply[2] & 0x80 != 0, "the QR bit is set");
    if transport == Transport::Udp {
        assert!(reply.len() <= 4096, "{} bytes over UDP", reply.len());
    }
}

fuzz_target!(|data: &[u8]| {
    let policy = &*POLICY_COMPILED;
    for (client, transport) in [("127.0.0.5:5353", Transport::Udp), ("127.0.0.9:5353", Transport::Tcp)] {
        let client = client.parse().unwrap();
        let arrival = Arrival { at: Instant::now(), wall: egressd::clock::wall_now(), unix: 0 };
        match handle(&RESOLVER, policy, data, client, transport, arrival) {
            Step::Drop => {}
            Step::Reply(reply, _) => check_reply(data, &reply, transport),
            Step::Forward(pending) => {
                assert_ne!(pending.decision(), Outcome::Deny, "a denied name is never forwarded");
                let mut flipped = data.to_vec();
                if let Some(b) = flipped.get_mut(2) {
                    *b |= 0x80;
                }
                let (reply, _) = finish_raw(&RESOLVER, *pending, &flipped, Instant::now());
                check_reply(data, &reply, transport);
            }
        }
    }
});
