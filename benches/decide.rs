//! `decide` cost against policy size: 10,000 services x 50 rules versus 10 services x 5 rules.
//! The ratio is the claim (cost independent of rule count); absolute times drift on shared VMs.
//! Run: cargo bench --bench decide

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use egressd::policy::fqdn::parse_authority;
use egressd::policy::{CompiledPolicy, Destination, Protocol, compile};

const MESH: &str = "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - ports: [22]\n";

/// A synthetic mesh (`egressd::testing::synthetic_mesh`): per service, exact hosts, wildcards and
/// CIDRs in a 3:1:1 mix, a file per service.
fn generate(services: usize, rules: usize) -> CompiledPolicy {
    compile(&egressd::testing::synthetic_mesh(MESH, services, rules), 0).expect("generated policy is valid")
}

fn dest(authority: &str) -> Destination<'static> {
    let (host, port) = parse_authority(authority).unwrap();
    Destination { host: host.into_owned(), port: port.unwrap_or(443), protocol: Protocol::Https }
}

fn bench(c: &mut Criterion) {
    let small = generate(10, 5);
    let large = generate(10_000, 50);
    let mut group = c.benchmark_group("decide");
    // Same shapes of request on both: the last exact rule of a service, a wildcard, a default deny.
    let cases = |services: usize, rules: usize| {
        let s = services / 2;
        let last_exact = (0..rules).rev().find(|r| r % 5 < 3).unwrap();
        let wild = (0..rules).rev().find(|r| r % 5 == 3).unwrap();
        (
            format!("spiffe://corp.example/ns/svc{s}/sa/api"),
            dest(&format!("api{last_exact}.svc{s}.vendor{}.com:443", last_exact % 97)),
            dest(&format!("x.y.s{s}r{wild}.vendor{}.com:443", wild % 97)),
            dest("unknown.example.org:443"),
        )
    };
    for (name, policy, (from, exact, wildcard, miss)) in
        [("10x5", &small, cases(10, 5)), ("10000x50", &large, cases(10_000, 50))]
    {
        for (kind, d) in [("exact", &exact), ("wildcard", &wildcard), ("default-deny", &miss)] {
            let expected = policy.decide(Some(&from), Ok(d), None, 0).outcome;
            assert_eq!(expected.permits(), kind != "default-deny", "{name}/{kind}");
            group.bench_function(format!("{name}/{kind}"), |b| {
                b.iter(|| black_box(policy.decide(Some(black_box(&from)), Ok(black_box(d)), None, 0)).outcome)
            });
        }
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
