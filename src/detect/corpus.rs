//! The labelled evaluation corpus of the detectors (`egressd detect`): a policy, an audit log of
//! benign traffic with injected attacks, and the labels of the attacks. `examples/detect_corpus.rs`
//! writes it at full size (`benches/detect_eval.sh`); the tests at a smaller one.
//!
//! OUT_DIR/policy/ is a mesh of N services (default 60); OUT_DIR/audit.log holds DAYS days
//! (default 2) of their traffic, each request decided by that policy with egressd's own `decide`
//! (so rule ids, modes and would-denies are what `serve` would record); OUT_DIR/labels.json lists
//! the attacks. Benign traffic (every day): metrics pushes every 10 s to a SaaS every service uses,
//! request-driven calls (random arrivals) to each service's own partner API, a shared CDN under a
//! wildcard, CI builds downloading packages in bursts, batch jobs uploading to object storage in
//! bursts. Attacks (last day only): beacons at 60 s and 300 s with 0-20% jitter, DNS-tunnel-like
//! names (long labels in minutes, many distinct names in hours), first contacts with new domains,
//! 2 GiB uploads trickled over hours (request bodies; CONNECT tunnel totals), deny bursts.
//! Every attack destination a service had never reached is also labelled `first-seen` and `rare`;
//! an attack is labelled with every kind it shows by construction (the upload trickled at a fixed
//! pace is periodic: `beaconing` too; tunnel names asked every few seconds under a denied domain
//! are 20 distinct denied destinations in 10 minutes: `deny-burst` too).

use std::collections::BTreeSet;
use std::io::{BufWriter, Write};
use std::path::Path;

use super::evaluate::Label;
use super::{SignalKind, registrable};
use crate::policy::{Destination, Protocol};

const DAY: i64 = 86_400_000;
const START_MS: i64 = 1_796_000_000_000;
const MIB: u64 = 1 << 20;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
    fn range(&mut self, lo: f64, hi: f64) -> f64 {
        lo + (hi - lo) * self.unit()
    }
    /// Exponential with this mean.
    fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.unit()).ln()
    }
    fn pick(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

#[derive(Clone)]
enum What {
    Request {
        method: &'static str,
        body: Option<u64>,
    },
    /// A CONNECT tunnel's close, as the gateway's access log reports it.
    Totals {
        bytes_sent: u64,
        duration_ms: i64,
    },
}

struct Event {
    time_ms: i64,
    service: usize,
    host: String,
    port: u16,
    what: What,
}

struct Corpus {
    events: Vec<Event>,
    labels: BTreeSet<Label>,
    rng: Rng,
}

fn service_name(i: usize) -> String {
    format!("svc-{i:02}")
}

fn spiffe(i: usize) -> String {
    format!("spiffe://corp.example/ns/{}/sa/app", service_name(i))
}

fn uses_cdn(i: usize) -> bool {
    i.is_multiple_of(4)
}
fn is_ci(i: usize) -> bool {
    i.is_multiple_of(5)
}
fn is_batch(i: usize) -> bool {
    i.is_multiple_of(3)
}
fn dry_run(i: usize) -> bool {
    i % 10 == 9
}

fn write_policy(dir: &Path, services: usize) -> std::io::Result<()> {
    std::fs::create_dir_all(dir.join("services"))?;
    std::fs::write(
        dir.join("mesh.yaml"),
        "kind: MeshDefaults\ntrustDomain: corp.example\nmode: enforce\ndeny:\n  - cidr: 169.254.169.254/32\n    justification: cloud metadata\n",
    )?;
    for i in 0..services {
        let mut y = format!(
            "kind: ServicePolicy\nservice: {}\nidentities: [\"{}\"]\nmode: {}\nallow:\n",
            service_name(i),
            spiffe(i),
            if dry_run(i) { "dry-run" } else { "enforce" }
        );
        let mut allow = |host: &str, why: &str| {
            y.push_str(&format!("  - host: \"{host}\"\n    ports: [443]\n    justification: {why}\n"));
        };
        allow("api.metrics-saas.example", "metrics");
        allow(&format!("api.partner{i:02}.example"), "partner API");
        if uses_cdn(i) {
            allow("*.cdn-shared.example", "shared CDN");
        }
        if is_ci(i) {
            allow("pypi.org", "packages");
            allow("files.pythonhosted.org", "packages");
            allow("registry.npmjs.org", "packages");
        }
        if is_batch(i) {
            allow("storage.objects.example", "batch results");
        }
        std::fs::write(dir.join("services").join(format!("{}.yaml", service_name(i))), y)?;
    }
    Ok(())
}

impl Corpus {
    fn push(&mut self, time_ms: i64, service: usize, host: &str, port: u16, what: What) {
        self.events.push(Event { time_ms, service, host: host.to_string(), port, what });
    }

    fn get(&mut self, t: i64, s: usize, host: &str, body: Option<u64>) {
        let method = if body.is_some() { "POST" } else { "GET" };
        self.push(t, s, host, 443, What::Request { method, body });
    }

    fn label(&mut self, kind: SignalKind, service: usize, destination: &str) {
        self.labels.insert(Label {
            kind,
            service: None,
            spiffe_id: Some(spiffe(service)),
            destination: destination.to_string(),
        });
    }

    /// A new domain of an attack: also first-seen and rare for that service.
    fn label_new(&mut self, service: usize, host: &str) {
        let domain = registrable(host).to_string();
        self.label(SignalKind::FirstSeen, service, &domain);
        self.label(SignalKind::Rare, service, &domain);
    }

    fn benign(&mut self, services: usize, days: i64, metrics_interval: f64) {
        let end = START_MS + days * DAY;
        for s in 0..services {
            // Metrics pushes: every interval, a few percent of jitter, near-constant bodies.
            let mut t = START_MS as f64 + self.rng.range(0.0, metrics_interval * 1000.0);
            while (t as i64) < end {
                let body = 1500 + self.rng.pick(100) as u64;
                self.get(t as i64, s, "api.metrics-saas.example", Some(body));
                t += metrics_interval * 1000.0 * self.rng.range(0.97, 1.03);
            }
            // Request-driven calls to its own partner API: random arrivals.
            let mean = self.rng.range(20.0, 120.0) * 1000.0;
            let host = format!("api.partner{s:02}.example");
            let mut t = START_MS as f64;
            loop {
                t += self.rng.exp(mean);
                if t as i64 >= end {
                    break;
                }
                let body = (self.rng.unit() < 0.3).then(|| self.rng.pick(4000) as u64);
                self.get(t as i64, s, &host, body);
            }
            if uses_cdn(s) {
                let mut t = START_MS as f64;
                loop {
                    t += self.rng.exp(300_000.0);
                    if t as i64 >= end {
                        break;
                    }
                    let host = format!("img{}.cdn-shared.example", self.rng.pick(8));
                    self.get(t as i64, s, &host, None);
                }
            }
            if is_ci(s) {
                // About a dozen builds a day, each a burst of package downloads.
                let mut t = START_MS as f64;
                loop {
                    t += self.rng.exp(2.0 * 3_600_000.0);
                    if t as i64 >= end {
                        break;
                    }
                    let n = 30 + self.rng.pick(120);
                    let mut u = t;
                    for _ in 0..n {
                        u += self.rng.range(200.0, 3000.0);
                        let host = ["pypi.org", "files.pythonhosted.org", "registry.npmjs.org"][self.rng.pick(3)];
                        self.get(u as i64, s, host, None);
                    }
                }
            }
            if is_batch(s) {
                // Every 1-3 hours, a burst of result uploads (100 KiB - 2 MiB each).
                let mut t = START_MS as f64 + self.rng.range(0.0, 3_600_000.0);
                while (t as i64) < end {
                    let n = 20 + self.rng.pick(80);
                    let mut u = t;
                    for _ in 0..n {
                        u += self.rng.range(500.0, 4000.0);
                        let body = 100 * 1024 + self.rng.pick(1900 * 1024) as u64;
                        self.get(u as i64, s, "storage.objects.example", Some(body));
                    }
                    t += self.rng.range(3_600_000.0, 3.0 * 3_600_000.0);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn beacon(&mut self, s: usize, host: &str, start: i64, hours: f64, period_s: f64, jitter: f64, body: Option<u64>) {
        let end = start + (hours * 3_600_000.0) as i64;
        let mut t = start as f64;
        while (t as i64) < end {
            self.get(t as i64, s, host, body);
            t += period_s * 1000.0 * (1.0 + jitter * self.rng.range(-1.0, 1.0));
        }
        self.label(SignalKind::Beaconing, s, host);
        self.label_new(s, host);
    }

    /// Names under `domain` the service may not reach: denied (or would-deny), so a tunnel
    /// asking a name every few seconds is also a burst of denied destinations.
    fn tunnel(&mut self, s: usize, domain: &str, start: i64, minutes: f64, every_s: f64, label_len: usize) {
        let end = start + (minutes * 60_000.0) as i64;
        let mut t = start as f64;
        let alphabet = b"abcdefghijklmnopqrstuvwxyz234567";
        while (t as i64) < end {
            let label: String = (0..label_len).map(|_| alphabet[self.rng.pick(32)] as char).collect();
            let host = format!("{label}.{}.{domain}", self.rng.pick(1000));
            self.get(t as i64, s, &host, None);
            t += every_s * 1000.0 * self.rng.range(0.8, 1.2);
        }
        self.label(SignalKind::DnsTunnel, s, domain);
        self.label_new(s, domain);
        if every_s * 20.0 < 600.0 {
            self.label(SignalKind::DenyBurst, s, "");
        }
    }

    fn attacks(&mut self, services: usize, days: i64) {
        let day = START_MS + (days - 1) * DAY;
        let h = |x: f64| day + (x * 3_600_000.0) as i64;
        let at = |i: usize| i % services;
        // Beacons: 60 s and 300 s, 0-20% jitter, denied or (dry-run services) would-deny.
        self.beacon(at(1), "c2.attacker-one.example", h(1.0), 6.0, 60.0, 0.0, None);
        self.beacon(at(2), "cdn.attacker-eight.example", h(3.0), 10.0, 300.0, 0.10, Some(256));
        self.beacon(at(9), "update.attacker-two.example", h(5.0), 4.0, 60.0, 0.20, None);
        self.beacon(at(19), "telemetry.attacker-three.example", h(2.0), 12.0, 300.0, 0.20, Some(512));
        self.beacon(at(5), "beacon.attacker-four.example", h(8.0), 3.0, 60.0, 0.05, Some(128));
        self.beacon(at(6), "sync.attacker-five.example", h(10.0), 8.0, 300.0, 0.15, None);
        // Tunnel-like names: long labels in minutes; many distinct names over hours.
        self.tunnel(at(7), "tunnel-one.example", h(4.0), 20.0, 5.0, 60);
        self.tunnel(at(8), "tunnel-two.example", h(6.0), 240.0, 60.0, 24);
        self.tunnel(at(29), "tunnel-three.example", h(12.0), 10.0, 15.0, 52);
        // First contacts with new domains, a handful of requests each.
        for (s, host, n) in [
            (at(10), "paste.attacker-six.example", 5),
            (at(39), "files.leak-site.example", 3),
            (at(12), "new-c2.attacker-seven.example", 1),
            (at(13), "203.0.113.50", 2),
        ] {
            for k in 0..n {
                self.get(h(9.0) + k * 90_000, s, host, None);
            }
            self.label_new(s, host);
        }
        // 2 GiB in request bodies over 6 hours (a dry-run service: would-deny, sent).
        let (s, host) = (at(49), "upload.dropzone.example");
        for k in 0..512i64 {
            self.get(h(1.0) + k * 6 * 3_600_000 / 512, s, host, Some(4 * MIB));
        }
        self.label(SignalKind::LargeUpload, s, host);
        // A trickle at a fixed pace is periodic too.
        self.label(SignalKind::Beaconing, s, host);
        self.label_new(s, host);
        // 2 GiB through five CONNECT tunnels over 5 hours, to a destination the wildcard allows.
        let (s, host) = (at(16), "sync.cdn-shared.example");
        for k in 0..5i64 {
            let t = h(2.0) + k * 3_600_000;
            self.push(t, s, host, 443, What::Request { method: "CONNECT", body: None });
            self.push(t, s, host, 443, What::Totals { bytes_sent: 2048 * MIB / 5, duration_ms: 3_500_000 });
        }
        self.label(SignalKind::LargeUpload, s, host);
        // Deny bursts: probing for an open path.
        let s = at(17);
        for k in 0..30i64 {
            let host = format!("10.0.{}.{}", k / 10, k % 10 + 1);
            self.push(
                h(14.0) + k * 8_000,
                s,
                &host,
                [22, 3306, 443][k as usize % 3],
                What::Request { method: "CONNECT", body: None },
            );
            self.label_new(s, &host);
        }
        self.label(SignalKind::DenyBurst, s, "");
        let s = at(18);
        for k in 0..25i64 {
            let host = format!("db-{k}.internal-corp.example");
            self.push(h(15.0) + k * 18_000, s, &host, 5432, What::Request { method: "CONNECT", body: None });
        }
        self.label_new(s, "db-0.internal-corp.example");
        self.label(SignalKind::DenyBurst, s, "");
    }
}

fn write_log(path: &Path, corpus: &mut Corpus, policy: &crate::policy::CompiledPolicy) -> std::io::Result<u64> {
    corpus.events.sort_by_key(|e| e.time_ms);
    let mut out = BufWriter::with_capacity(1 << 20, std::fs::File::create(path)?);
    let mut n = 0u64;
    for e in &corpus.events {
        let time = jiff::Timestamp::from_millisecond(e.time_ms).expect("in range");
        let id = spiffe(e.service);
        let name = service_name(e.service);
        match &e.what {
            What::Totals { bytes_sent, duration_ms } => {
                writeln!(
                    out,
                    r#"{{"time":"{time:.3}","egress.record":"stream-totals","egress.spiffe_id":"{id}","egress.service":"{name}","server.address":"{}","server.port":{},"http.request.method":"CONNECT","egress.bytes_sent":{bytes_sent},"egress.bytes_received":4096,"duration_us":{}}}"#,
                    e.host,
                    e.port,
                    duration_ms * 1000
                )?;
            }
            What::Request { method, body } => {
                let host = crate::flows::destination_host(&e.host).expect("generated hosts are valid");
                let protocol = if *method == "CONNECT" || e.port == 443 { Protocol::Https } else { Protocol::Tcp };
                let dest = Destination { host, port: e.port, protocol };
                let d = policy.decide(Some(&id), Ok(&dest), None, e.time_ms / 1000);
                write!(
                    out,
                    r#"{{"time":"{time:.3}","egress.check":"http","egress.spiffe_id":"{id}","egress.service":"{name}","server.address":"{}","egress.protocol":"{}","http.request.method":"{method}","egress.decision":"{}","egress.mode":"{}","#,
                    e.host,
                    protocol.as_str(),
                    d.outcome.as_str(),
                    d.mode.map(|m| m.as_str()).unwrap_or("none"),
                )?;
                if let Some(rule) = d.rule {
                    write!(out, r#""egress.rule.id":"{}","#, rule.id)?;
                }
                if let Some(b) = body {
                    write!(out, r#""http.request.body.size":{b},"#)?;
                }
                writeln!(out, r#""egress.reason":"{}","server.port":{}}}"#, d.reason.code(), e.port)?;
            }
        }
        n += 1;
    }
    out.flush()?;
    Ok(n)
}

/// How big a corpus to write.
#[derive(Debug, Clone, Copy)]
pub struct CorpusSize {
    pub services: usize,
    pub days: i64,
    /// Seconds between two metrics pushes of a service.
    pub metrics_interval: f64,
    pub seed: u64,
}

impl Default for CorpusSize {
    fn default() -> Self {
        CorpusSize { services: 60, days: 2, metrics_interval: 10.0, seed: 1 }
    }
}

/// What was written.
#[derive(Debug, Clone, Copy)]
pub struct Written {
    pub records: u64,
    pub labels: usize,
}

/// Writes `out/policy/`, `out/audit.log` and `out/labels.json`.
pub fn write(out: &Path, size: CorpusSize) -> std::io::Result<Written> {
    if size.services < 50 {
        return Err(std::io::Error::other("the attacks use services 0..49: at least 50 services"));
    }
    if size.days < 2 {
        return Err(std::io::Error::other("the first day is the detectors' learning period: at least 2 days"));
    }
    std::fs::create_dir_all(out)?;
    write_policy(&out.join("policy"), size.services)?;
    let policy = crate::policy::load_dir(&out.join("policy")).map_err(|e| std::io::Error::other(e.to_string()))?;
    let rng = Rng(size.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let mut corpus = Corpus { events: Vec::new(), labels: BTreeSet::new(), rng };
    corpus.benign(size.services, size.days, size.metrics_interval);
    corpus.attacks(size.services, size.days);
    let records = write_log(&out.join("audit.log"), &mut corpus, &policy)?;
    let labels: Vec<&Label> = corpus.labels.iter().collect();
    std::fs::write(out.join("labels.json"), serde_json::to_vec_pretty(&labels).map_err(std::io::Error::other)?)?;
    Ok(Written { records, labels: labels.len() })
}
