//! Exfiltration and C2 signals per workload identity, in real time and with bounded memory.
//!
//! ```text
//! decision (telemetry thread) / audit record (egressd detect) / stream totals / DNS query
//!   -> Observation { time, service, SPIFFE ID, host, port, event }
//!   -> Detector::observe
//!        per identity (LRU, `limits.identities`):  beaconing per destination, large uploads per
//!                                                  destination and the identity's baseline,
//!                                                  deny bursts
//!        per subject (service or unclaimed identity): tunnel-like names per registrable domain,
//!                                                  first-seen and rare registrable domains
//!   -> Signal (kind, who, destination, score, first/last, evidence)
//! ```
//! Everything works in event time (the observation's own timestamp), so the same detector runs
//! live on the telemetry thread and offline over a day of audit log in seconds. Nothing here
//! touches the Check path.

pub mod audit;
mod beacon;
#[cfg(feature = "testing")]
pub mod corpus;
mod deny_burst;
pub mod evaluate;
pub mod history;
mod names;
mod novelty;
pub mod signal;
mod stats;
mod upload;

use hashlink::LruCache;
use rustc_hash::FxBuildHasher;

use crate::policy::detection::DetectionConfig;
use crate::policy::fqdn::HostPattern;
use crate::policy::{CompiledPolicy, Outcome, Reason, Verdict};
pub use names::DnsFacts;
pub use novelty::HistoryFile;
pub use signal::{Evidence, Signal, SignalKind};

/// How a request's destination was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    Denied,
    /// Let through by dry-run, a canary's share or `unclaimedIdentities: observe`.
    WouldDeny,
    /// Allowed by an exact-host rule of the service: a reviewed dependency.
    Exact,
    /// Allowed by a wildcard, a CIDR or a break-glass grant.
    Pattern,
}

impl Admission {
    pub fn is_allowed(self) -> bool {
        matches!(self, Admission::Exact | Admission::Pattern)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Admission::Denied => "denied",
            Admission::WouldDeny => "would be denied (not enforced)",
            Admission::Exact => "allowed by an exact-host rule",
            Admission::Pattern => "allowed by a wildcard, CIDR or break-glass grant",
        }
    }

    /// How the live policy admitted a decision's destination.
    pub fn of(verdict: &Verdict, policy: &CompiledPolicy) -> Admission {
        Admission::from_parts(verdict.outcome, matches!(verdict.reason, Reason::BreakGlass(_)), || {
            verdict.rule.and_then(|r| policy.rules.get(r as usize)).is_some_and(|r| names_exact_host(r.host.as_ref()))
        })
    }

    /// From a decision's outcome, whether a grant made it, and (lazily) whether its rule names an
    /// exact host.
    pub fn from_parts(outcome: Outcome, break_glass: bool, exact_rule: impl FnOnce() -> bool) -> Admission {
        match outcome {
            Outcome::Deny => Admission::Denied,
            Outcome::WouldDeny => Admission::WouldDeny,
            Outcome::Allow if !break_glass && exact_rule() => Admission::Exact,
            Outcome::Allow => Admission::Pattern,
        }
    }
}

/// Whether a rule's host pattern is an exact host (`None`: a CIDR rule).
pub fn names_exact_host(host: Option<&HostPattern>) -> bool {
    matches!(host, Some(HostPattern::Exact(_)))
}

/// What happened, for the detectors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A checked request (HTTP, CONNECT or TLS by SNI), with its body size when known.
    Request { admission: Admission, body_bytes: Option<u64> },
    /// A request or tunnel closed at the gateway: the bytes its client sent.
    StreamTotals { bytes_sent: u64 },
    /// A DNS query for `host`: its type and answer size.
    DnsQuery { admission: Admission, facts: DnsFacts },
}

/// Whether a DNS query type is one tunnels carry data in (TXT, NULL).
pub fn is_txt_null(qtype: &str) -> bool {
    qtype.eq_ignore_ascii_case("TXT") || qtype.eq_ignore_ascii_case("NULL")
}

/// One observation. `host` is the normalized destination (a name or an IP address).
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    /// Unix milliseconds.
    pub time_ms: i64,
    pub service: Option<&'a str>,
    pub spiffe_id: Option<&'a str>,
    /// Who asked when neither is known: a DNS client's address (unmapped sources).
    pub source: Option<&'a str>,
    pub host: &'a str,
    pub port: u16,
    pub event: Event,
}

/// A bounded map by string key with the fast hash (keys are names egressd already normalized).
pub(crate) type Lru<V> = LruCache<Box<str>, V, FxBuildHasher>;

pub(crate) fn lru<V>(capacity: usize) -> Lru<V> {
    LruCache::with_hasher(capacity.max(1), FxBuildHasher)
}

/// Buffers reused between evaluations.
#[derive(Debug, Default)]
pub struct Scratch {
    a: Vec<f64>,
    b: Vec<f64>,
}

#[derive(Debug, Default)]
struct IdentityState {
    uploads: Option<Lru<upload::UploadWindow>>,
    baseline: upload::Baseline,
    denies: deny_burst::DenyBurst,
}

/// Counters of what the detector did and what its bounds cost.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DetectorStats {
    pub observations: u64,
    pub signals: u64,
    /// Identities (or subjects) dropped, least recently seen first, to stay within the limits.
    pub evicted_identities: u64,
    /// (identity, destination) series dropped to stay within `destinationsPerIdentity`.
    pub evicted_destinations: u64,
}

pub struct Detector {
    config: DetectionConfig,
    identities: Lru<IdentityState>,
    /// Beacon series by `identity \x1f host`, for the whole mesh: the largest state (up to
    /// `timestampsPerDestination` seconds each), so bounded as a whole (`limits.beaconSeries`).
    beacons: Lru<beacon::BeaconSeries>,
    beacon_key: String,
    /// Per subject: tunnel-like name statistics per registrable domain.
    names: Lru<Lru<names::NameStats>>,
    novelty: novelty::Novelty,
    scratch: Scratch,
    stats: DetectorStats,
}

impl std::fmt::Debug for Detector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Detector").field("identities", &self.identities.len()).field("stats", &self.stats).finish()
    }
}

/// The registrable domain of a host (`evil.example` of `a.b.evil.example`); an IP address or a
/// name without one (a public suffix, a single label) is its own.
pub fn registrable(host: &str) -> &str {
    if host.parse::<std::net::IpAddr>().is_ok() {
        return host;
    }
    psl::domain_str(host).unwrap_or(host)
}

impl Detector {
    pub fn new(config: DetectionConfig) -> Self {
        let cap = config.max_identities.max(1);
        Detector {
            identities: lru(cap),
            beacons: lru(config.max_beacon_series),
            beacon_key: String::new(),
            names: lru(cap),
            novelty: novelty::Novelty::new(cap),
            config,
            scratch: Scratch::default(),
            stats: DetectorStats::default(),
        }
    }

    pub fn config(&self) -> &DetectionConfig {
        &self.config
    }

    /// New thresholds (a policy reload); state is kept, trimmed to new limits.
    pub fn set_config(&mut self, config: DetectionConfig) {
        if config == self.config {
            return;
        }
        let cap = config.max_identities.max(1);
        while self.identities.len() > cap {
            self.identities.remove_lru();
            self.stats.evicted_identities += 1;
        }
        while self.names.len() > cap {
            self.names.remove_lru();
        }
        while self.beacons.len() > config.max_beacon_series.max(1) {
            self.beacons.remove_lru();
            self.stats.evicted_destinations += 1;
        }
        self.identities.set_capacity(cap);
        self.beacons.set_capacity(config.max_beacon_series.max(1));
        self.names.set_capacity(cap);
        self.novelty.set_capacity(cap);
        self.config = config;
    }

    pub fn stats(&self) -> DetectorStats {
        DetectorStats { evicted_identities: self.stats.evicted_identities + self.novelty.evicted, ..self.stats }
    }

    /// Identities tracked now.
    pub fn identities(&self) -> usize {
        self.identities.len()
    }

    /// Approximate heap bytes of all state (walks it: for measurements, not for every call).
    pub fn heap_bytes(&self) -> usize {
        let per_identity: usize = self
            .identities
            .iter()
            .map(|(k, s)| {
                let uploads: usize =
                    s.uploads.iter().flat_map(|m| m.iter()).map(|(k, u)| k.len() + 96 + u.heap_bytes()).sum();
                k.len() + 256 + uploads + s.denies.heap_bytes()
            })
            .sum();
        let beacons: usize = self.beacons.iter().map(|(k, b)| k.len() + 96 + b.heap_bytes()).sum();
        let names: usize = self
            .names
            .iter()
            .map(|(k, m)| k.len() + 96 + m.iter().map(|(d, n)| d.len() + 96 + n.heap_bytes()).sum::<usize>())
            .sum();
        per_identity + beacons + names + self.novelty.heap_bytes()
    }

    /// Takes one observation; appends the signals it raised to `out`.
    pub fn observe(&mut self, o: &Observation<'_>, out: &mut Vec<Signal>) {
        self.observe_requests(o, 1, out);
    }

    /// Takes one observation that stands for `requests` requests made in its second (a flow's
    /// requests counted per second on the Check path); appends the signals it raised to `out`.
    ///
    /// A request that repeats its (identity, destination)'s last one in the same second, to the
    /// same port and admitted the same way, is counted and otherwise skipped: every detector keys
    /// on distinct seconds, names or destinations, so only its body bytes (if any) still count.
    /// That keeps a busy flow's cost per request at one lookup. (Name statistics therefore count
    /// distinct (name, second) lookups as their queries.)
    pub fn observe_requests(&mut self, o: &Observation<'_>, requests: u64, out: &mut Vec<Signal>) {
        if !self.config.enabled || o.host.is_empty() {
            return;
        }
        let Some(identity) = o.spiffe_id.or(o.service).or(o.source) else { return };
        let subject = o.service.unwrap_or(identity);
        self.stats.observations += requests;
        let before = out.len();
        match o.event {
            Event::Request { admission, body_bytes } => {
                self.beacon_key.clear();
                self.beacon_key.push_str(identity);
                self.beacon_key.push('\x1f');
                self.beacon_key.push_str(o.host);
                let series = entry(&mut self.beacons, &self.beacon_key, &mut self.stats.evicted_destinations);
                // A denied request's body never left the gateway.
                let uploaded = body_bytes.filter(|&b| b > 0 && admission != Admission::Denied);
                if series.repeats(o.time_ms, o.port, admission, requests) {
                    if let Some(bytes) = uploaded {
                        self.upload(o, identity, bytes, out);
                    }
                    self.stats.signals += (out.len() - before) as u64;
                    return;
                }
                let domain = registrable(o.host);
                let prevalence = self.novelty.prevalence(domain);
                let config = &self.config;
                let context = || beacon::Context {
                    admission,
                    prevalence,
                    service: o.service,
                    spiffe_id: o.spiffe_id,
                    destination: o.host,
                };
                out.extend(series.observe(o.time_ms, requests, body_bytes, config, &mut self.scratch, context));
                let state = entry(&mut self.identities, identity, &mut self.stats.evicted_identities);
                if !admission.is_allowed() {
                    out.extend(state.denies.observe(o.time_ms, (o.host, o.port), config, (o.service, o.spiffe_id)));
                }
                if let Some(bytes) = uploaded {
                    self.upload(o, identity, bytes, out);
                }
                self.names(o, subject, domain, None, out);
                let reach = novelty::Reach {
                    time_ms: o.time_ms,
                    subject,
                    domain,
                    host: o.host,
                    admission,
                    service: o.service,
                    spiffe_id: o.spiffe_id,
                };
                self.novelty.observe(&reach, &self.config, out);
            }
            Event::StreamTotals { bytes_sent } => self.upload(o, identity, bytes_sent, out),
            Event::DnsQuery { facts, .. } => self.names(o, subject, registrable(o.host), Some(facts), out),
        }
        self.stats.signals += (out.len() - before) as u64;
    }

    fn upload(&mut self, o: &Observation<'_>, identity: &str, bytes: u64, out: &mut Vec<Signal>) {
        let state = entry(&mut self.identities, identity, &mut self.stats.evicted_identities);
        let config = &self.config;
        let uploads = state.uploads.get_or_insert_with(|| lru(config.max_destinations_per_identity));
        let window = entry(uploads, o.host, &mut self.stats.evicted_destinations);
        out.extend(window.observe(o.time_ms, bytes, &mut state.baseline, config, (o.service, o.spiffe_id, o.host)));
    }

    fn names(
        &mut self,
        o: &Observation<'_>,
        subject: &str,
        domain: &str,
        dns: Option<DnsFacts>,
        out: &mut Vec<Signal>,
    ) {
        let Some(sub) = names::subdomain(o.host, domain) else { return };
        if !self.names.contains_key(subject) {
            if self.names.len() >= self.names.capacity() {
                self.names.remove_lru();
            }
            self.names.insert(subject.into(), lru(self.config.max_destinations_per_identity));
        }
        let domains = self.names.get_mut(subject).expect("present: inserted above");
        let stats = entry(domains, domain, &mut self.stats.evicted_destinations);
        let mut signal = stats.observe(o.time_ms, o.host, sub, dns, &self.config, (o.service, o.spiffe_id), domain);
        if let Some(s) = &mut signal
            && s.service.is_none()
            && s.spiffe_id.is_none()
        {
            s.source = o.source.map(str::to_string);
        }
        out.extend(signal);
    }

    /// The first-seen history, for the state file.
    pub fn history(&self) -> HistoryFile {
        self.novelty.snapshot()
    }

    /// Whether the history changed since `mark_saved`.
    pub fn history_dirty(&self) -> bool {
        self.novelty.dirty
    }

    pub fn mark_saved(&mut self) {
        self.novelty.dirty = false;
    }

    pub fn restore_history(&mut self, file: HistoryFile) {
        self.novelty.restore(file);
    }
}

/// The value for `key`, inserted by default; a full map drops its least recently used, counted.
fn entry<'m, V: Default>(map: &'m mut Lru<V>, key: &str, evicted: &mut u64) -> &'m mut V {
    if !map.contains_key(key) {
        if map.len() >= map.capacity() {
            map.remove_lru();
            *evicted += 1;
        }
        map.insert(key.into(), V::default());
    }
    map.get_mut(key).expect("present: inserted above")
}

#[cfg(test)]
mod tests;
