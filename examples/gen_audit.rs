//! Writes a synthetic audit log for the replay/learn benchmark (`benches/learn_bench.sh`): N
//! decision records in `serve --audit-log`'s schema, over the example mesh's services plus
//! unclaimed identities, a few thousand destinations, allows, would-denies and denies.
//!
//! Usage: gen_audit RECORDS PATH [HOSTS_PER_SUBJECT]
//!
//! Each subject (5 workloads of 4 services, 20 unclaimed identities) talks to its own
//! HOSTS_PER_SUBJECT destinations (default 100) on up to 3 ports: about 25 x 100 x 3 = 7,500
//! flows, the shape of a busy gateway's month. A large value (2000) is the high-cardinality case.

use std::io::{BufWriter, Write};

fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let records: u64 = args.next().and_then(|n| n.parse().ok()).expect("usage: gen_audit RECORDS PATH");
    let path = args.next().expect("usage: gen_audit RECORDS PATH");
    let hosts_per_subject: u64 = args.next().and_then(|n| n.parse().ok()).unwrap_or(100);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(&path)?);
    let services = [
        ("payments", "spiffe://corp.example/ns/payments/sa/api"),
        ("payments", "spiffe://corp.example/ns/payments/sa/worker"),
        ("checkout", "spiffe://corp.example/ns/checkout/sa/web"),
        ("ci-runners", "spiffe://corp.example/ns/ci/sa/runner"),
        ("search", "spiffe://corp.example/ns/search/sa/indexer"),
    ];
    let unclaimed: Vec<String> = (0..20).map(|i| format!("spiffe://corp.example/ns/team{i}/sa/app")).collect();
    // A cheap deterministic generator: the log is the same on every run.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let start_ms = 1_764_000_000_000i64;
    for i in 0..records {
        let r = next();
        let (subject, service, workload) = if r % 10 == 0 {
            let u = (r >> 8) as usize % unclaimed.len();
            (u + services.len(), None, unclaimed[u].as_str())
        } else {
            let i = (r >> 8) as usize % services.len();
            (i, Some(services[i].0), services[i].1)
        };
        let h = subject as u64 * 7919 + (r >> 16) % hosts_per_subject;
        let host = format!("api{}.vendor{}.test", h % 40, h / 40);
        let port = [443u16, 443, 443, 80, 8443][(r >> 32) as usize % 5];
        let (decision, reason, rule) = match (r >> 40) % 4 {
            0 => ("allow", "allowed", Some("payments/allow/0")),
            1 | 2 => ("would-deny", if service.is_some() { "no-matching-allow" } else { "unknown-service" }, None),
            _ => ("deny", "no-matching-allow", None),
        };
        let time = jiff::Timestamp::from_millisecond(start_ms + i as i64 * 3).unwrap();
        write!(
            out,
            r#"{{"time":"{time}","trace_id":"{r:032x}","span_id":"{:016x}","sampled":false,"duration_us":3.2,"egress.check":"http","egress.spiffe_id":"{workload}","#,
            r >> 3
        )?;
        if let Some(s) = service {
            write!(out, r#""egress.service":"{s}","#)?;
        }
        write!(
            out,
            r#""client.address":"10.1.{}.{}","server.address":"{host}","egress.protocol":"{}","http.request.method":"CONNECT","egress.decision":"{decision}","egress.mode":"dry-run","#,
            (r >> 44) % 250,
            (r >> 52) % 250,
            if port == 80 { "http" } else { "https" }
        )?;
        if let Some(rule) = rule {
            write!(
                out,
                r#""egress.rule.id":"{rule}","egress.rule.location":"mesh-config/services/payments.yaml:11:5","#
            )?;
        }
        writeln!(
            out,
            r#""egress.reason":"{reason}","egress.reason.message":"no allow rule matches (default deny)","egress.policy.version":"sha256:78dc0e75c5ce793b","egress.request_id":"req-{i}","client.port":40000,"server.port":{port},"egress.enforced":false}}"#
        )?;
    }
    out.flush()
}
