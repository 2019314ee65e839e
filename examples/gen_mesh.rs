//! Writes a large policy directory and an audit log of traffic against it, for the policy
//! hygiene benchmarks (`benches/hygiene_bench.sh`: `lint` and `report stale`).
//!
//! `gen_mesh SERVICES RECORDS DIR`: `DIR/policy/` holds a MeshDefaults with a deny floor, two
//! destination groups, and SERVICES ServicePolicy files of six allows each (three exact hosts, a
//! wildcard, a private CIDR, a group); `DIR/audit.log` holds RECORDS decisions of those services,
//! most to their allowed hosts, some to others. Deterministic: the same files on every run.

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: gen_mesh SERVICES RECORDS DIR";
    let services: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let records: u64 = args.next().and_then(|n| n.parse().ok()).expect(usage);
    let dir = std::path::PathBuf::from(args.next().expect(usage));
    let policy = dir.join("policy");
    std::fs::create_dir_all(policy.join("services"))?;
    std::fs::write(
        policy.join("mesh.yaml"),
        "kind: MeshDefaults\ntrustDomain: corp.example\ndeny:\n  - cidr: 169.254.169.254/32\n    justification: metadata\n  - host: pastebin.com\n    justification: paste site\n",
    )?;
    std::fs::write(
        policy.join("groups.yaml"),
        "kind: DestinationGroup\nname: registries\njustification: builds\ndestinations:\n  - host: pypi.org\n    ports: [443]\n  - host: registry.npmjs.org\n    ports: [443]\n---\nkind: DestinationGroup\nname: mirrors\njustification: OS packages\ndestinations:\n  - host: deb.debian.org\n    ports: [443]\n",
    )?;
    for s in 0..services {
        let text = format!(
            "kind: ServicePolicy\nservice: svc{s}\nowner: team{t}\nidentities: [\"spiffe://corp.example/ns/ns{s}/sa/*\"]\nallow:\n  - host: api{s}.vendor{v}.test\n    ports: [443]\n    justification: vendor API\n  - host: hooks{s}.vendor{v}.test\n    ports: [443]\n    justification: webhooks\n  - host: old{s}.vendor{v}.test\n    ports: [443]\n    justification: the old API\n  - host: \"*.cdn{s}.test\"\n    ports: [443]\n    justification: assets\n  - cidr: 10.{a}.{b}.0/24\n    ports: [5432]\n    justification: database\n  - group: {group}\n",
            t = s / 10,
            v = s % 100,
            a = s / 256 % 256,
            b = s % 256,
            group = if s % 2 == 0 { "registries" } else { "mirrors" },
        );
        std::fs::write(policy.join("services").join(format!("svc{s}.yaml")), text)?;
    }
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(dir.join("audit.log"))?);
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start_ms = jiff::Timestamp::now().as_millisecond() - records as i64 * 2;
    for i in 0..records {
        let r = next();
        let s = r % services;
        let workload = format!("spiffe://corp.example/ns/ns{s}/sa/w{}", (r >> 20) % 3);
        let (host, port, decision, reason) = match (r >> 8) % 8 {
            0..=3 => (format!("api{s}.vendor{}.test", s % 100), 443, "allow", "allowed"),
            4 => (format!("img{}.cdn{s}.test", (r >> 24) % 3), 443, "allow", "allowed"),
            5 => (format!("10.{}.{}.7", s / 256 % 256, s % 256), 5432, "allow", "allowed"),
            6 => ("pypi.org".to_string(), 443, "allow", "allowed"),
            _ => (format!("new{}.elsewhere.test", (r >> 24) % 50), 443, "deny", "no-matching-allow"),
        };
        let time = jiff::Timestamp::from_millisecond(start_ms + i as i64 * 2).unwrap();
        writeln!(
            out,
            r#"{{"time":"{time}","trace_id":"{r:032x}","sampled":false,"egress.check":"http","egress.spiffe_id":"{workload}","egress.service":"svc{s}","server.address":"{host}","egress.protocol":"https","http.request.method":"CONNECT","egress.decision":"{decision}","egress.mode":"enforce","egress.reason":"{reason}","egress.request_id":"req-{i}","server.port":{port},"egress.enforced":true}}"#
        )?;
    }
    out.flush()
}
