//! What the detectors cost per decision (`Detector::observe`, on the telemetry thread), and the
//! memory a tracked identity holds. Run: cargo bench --bench detect
//!
//! The stream: 1,000 identities of 100 services, each calling 8 destinations (exact allows,
//! wildcard allows, denies), some requests with bodies, 10 ms apart: every detector's state is
//! touched, beacon series are scored every 5 minutes as live. Memory: 10,000 identities, each with
//! 4 destinations holding full beacon series (512 timestamps), uploads and deny history; reported
//! from the detector's own accounting and from the process's RSS.

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use egressd::detect::{Admission, Detector, Event, Observation};
use egressd::policy::detection::DetectionConfig;

struct Stream {
    ids: Vec<String>,
    services: Vec<String>,
    hosts: Vec<String>,
}

fn stream() -> Stream {
    Stream {
        ids: (0..1000).map(|i| format!("spiffe://corp.example/ns/svc{}/sa/w{i}", i % 100)).collect(),
        services: (0..100).map(|s| format!("svc{s}")).collect(),
        hosts: (0..800).map(|h| format!("api{}.vendor{}.example", h % 8, h / 8)).collect(),
    }
}

fn observation(s: &Stream, i: usize) -> Observation<'_> {
    let id = i.wrapping_mul(2_654_435_761) % s.ids.len();
    let host = &s.hosts[(id / 10) * 8 + i % 8];
    let admission = match i % 8 {
        0..=4 => Admission::Exact,
        5 | 6 => Admission::Pattern,
        _ => Admission::Denied,
    };
    Observation {
        time_ms: 1_800_000_000_000 + i as i64 * 10,
        service: Some(&s.services[id % 100]),
        spiffe_id: Some(&s.ids[id]),
        source: None,
        host,
        port: 443,
        event: Event::Request { admission, body_bytes: i.is_multiple_of(3).then_some(2048) },
    }
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        .unwrap_or(0)
}

fn memory_per_identity() {
    let ids: Vec<String> = (0..10_000).map(|i| format!("spiffe://corp.example/ns/svc{}/sa/w{i}", i % 500)).collect();
    let hosts: Vec<String> = (0..4).map(|h| format!("api{h}.vendor.example")).collect();
    let before = rss_kib();
    let mut d = Detector::new(DetectionConfig::default());
    let mut out = Vec::new();
    // 512 distinct seconds per (identity, destination): the beacon series' cap.
    for t in 0..512i64 {
        for (n, id) in ids.iter().enumerate() {
            for (k, h) in hosts.iter().enumerate() {
                let admission = if k == 3 { Admission::Denied } else { Admission::Exact };
                let o = Observation {
                    time_ms: 1_800_000_000_000 + t * 97_000 + n as i64 % 1000,
                    service: Some("svc"),
                    spiffe_id: Some(id),
                    source: None,
                    host: h,
                    port: 443,
                    event: Event::Request { admission, body_bytes: Some(1000) },
                };
                d.observe(&o, &mut out);
            }
        }
    }
    let after = rss_kib();
    eprintln!(
        "detect memory: {} identities x 4 destinations at full beacon series: detector accounting {:.1} KiB/identity, RSS {:.1} KiB/identity",
        d.identities(),
        d.heap_bytes() as f64 / 1024.0 / d.identities() as f64,
        (after.saturating_sub(before)) as f64 / d.identities() as f64
    );
}

fn bench(c: &mut Criterion) {
    memory_per_identity();
    let s = stream();
    let n = 100_000;
    let mut g = c.benchmark_group("detect");
    g.throughput(Throughput::Elements(n as u64));
    g.bench_function("observe (1,000 identities x 8 destinations)", |b| {
        let mut d = Detector::new(DetectionConfig::default());
        let mut out = Vec::new();
        let mut offset = 0usize;
        b.iter(|| {
            for i in offset..offset + n {
                d.observe(&observation(&s, i), &mut out);
            }
            offset += n;
            out.clear();
            black_box(&d);
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
