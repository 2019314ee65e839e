//! `decide_dns` cost against policy size: 10,000 services x 50 rules (and 10,000 source CIDRs)
//! versus 10 services x 5 rules. The ratio is the claim (one trie walk, cost independent of rule
//! count; the goal is under 1 us a query); absolute times drift on shared VMs.
//! Run: cargo bench --bench dns_decide

use std::fmt::Write as _;
use std::hint::black_box;
use std::net::IpAddr;

use criterion::{Criterion, criterion_group, criterion_main};
use egressd::policy::dns::QueryKind;
use egressd::policy::{CompiledPolicy, PolicySource, compile};

const MESH: &str = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - host: pastebin.com\n";

/// The synthetic mesh of `benches/decide.rs`, with a DnsFirewall mapping one /24 per service.
fn generate(services: usize, rules: usize) -> CompiledPolicy {
    let mut source = egressd::testing::synthetic_mesh(MESH, services, rules);
    let mut y =
        String::from("kind: DnsFirewall\nname: bench\nlisten: 127.0.0.1:15053\nupstreams: [127.0.0.1:53]\nsources:\n");
    for s in 0..services {
        writeln!(y, "  - cidr: 10.{}.{}.0/24\n    service: svc{s}", s / 256, s % 256).unwrap();
    }
    source.files.extend(PolicySource::from_text("dns.yaml", &y).files);
    compile(&source, 0).expect("generated policy is valid")
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("dns_decide");
    for (label, services, rules) in [("10x5", 10, 5), ("10000x50", 10_000, 50)] {
        let policy = generate(services, rules);
        let s = services / 2;
        let client: IpAddr = format!("10.{}.{}.7", s / 256, s % 256).parse().unwrap();
        let unmapped: IpAddr = "192.168.1.1".parse().unwrap();
        let allowed = format!("api0.svc{s}.vendor0.com");
        let wildcard = format!("x.s{s}r3.vendor3.com");
        let tunnel = "4a6f686e20446f65.exfil.attacker.example";
        let mut case = |name: &str, client: IpAddr, qname: &str| {
            group.bench_function(format!("{label}/{name}"), |b| {
                b.iter(|| black_box(policy.decide_dns(black_box(client), black_box(qname), QueryKind::Name, 0)))
            });
        };
        case("mapped-allow", client, &allowed);
        case("mapped-wildcard", client, &wildcard);
        case("mapped-deny", client, tunnel);
        case("unmapped-union-allow", unmapped, &allowed);
        case("mesh-deny", client, "pastebin.com");
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
