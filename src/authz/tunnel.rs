//! Pairing a CONNECT decision with the check of the bytes its tunnel carries (domain fronting).
//!
//! The gateway checks a CONNECT twice: the HTTP check sees the CONNECT authority; then the tunnel
//! is routed to an internal listener whose network check sees the tunnelled TLS ClientHello's SNI.
//! When egressd allows a CONNECT whose service verifies tunnels, it registers the decision here and
//! answers with a correlation value (`x-egress-corr`, overwriting anything the client sent) that
//! Envoy carries, as the internal connection's destination address, into the tunnel check. The
//! tunnel check takes the pending decision back (once) and compares the SNI with the CONNECT host.
//!
//! A correlation is an address `127.G.G.G:P`: P-1 is a slot of a fixed ring, G a random 24-bit
//! generation stored with it, so a stale, replayed or guessed value matches nothing (fail closed).
//! Pending decisions expire after a minute; with more than 65,535 CONNECTs in flight the oldest are
//! overwritten and fail closed.
//!
//! A slot is claimed with `try_lock` and never waited on. Each slot sees one register and one take
//! per CONNECT, so a busy slot means the ring wrapped onto a slot being read or written that very
//! moment: register moves on to the next slot, take fails closed (as it would for the overwritten
//! decision). This costs two uncontended atomic operations; an `arc-swap` slot cost a scan of
//! every thread's debt list on each store and take (`Debt::pay_all`, 2.6% of egressd's samples on
//! verified CONNECTs).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, TryLockError};

use opentelemetry::trace::{SpanId, TraceId};

use crate::contract::{CHECK_KIND_TUNNEL_RAW, CHECK_KIND_TUNNEL_TLS};
use crate::policy::fqdn::{Host, normalize_sni};
use crate::policy::{CompiledPolicy, Decision, Mode, Outcome, Reason, TunnelTls};

const SLOTS: u64 = 65_535;
const TTL_SECONDS: i64 = 60;
/// How many slots `register` tries before it gives up (each busy one means the ring wrapped).
const REGISTER_TRIES: usize = 4;

/// What the CONNECT decision leaves for its tunnel's check (borrowed: `register` copies it).
#[derive(Debug, Clone, Copy)]
pub struct NewTunnel<'a> {
    /// The CONNECT host, normalized (an IP without brackets), and port.
    pub host: &'a Host<'a>,
    pub port: u16,
    pub service: &'a str,
    pub principal: &'a str,
    pub tunnel_tls: TunnelTls,
    pub mode: Mode,
    /// Whether the CONNECT fell in the enforced share (canary): a violation is enforced likewise.
    pub enforced: bool,
    /// The CONNECT decision's trace and span, so the tunnel decision joins the same trace (only
    /// when decisions are recorded).
    pub trace: Option<(TraceId, SpanId)>,
}

/// A registered CONNECT decision and its correlation. Its strings share one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingTunnel {
    generation: u32,
    /// The correlation the tunnel check presents as its destination address (`127.G.G.G:P`).
    pub correlation: SocketAddr,
    pub created_unix: i64,
    /// service, principal and host, one after the other.
    text: Box<str>,
    service_end: u32,
    principal_end: u32,
    pub port: u16,
    pub tunnel_tls: TunnelTls,
    pub mode: Mode,
    pub enforced: bool,
    pub trace: Option<(TraceId, SpanId)>,
}

impl PendingTunnel {
    /// service, principal and host into one allocation.
    fn set_text(&mut self, service: &str, principal: &str, host: &Host<'_>) {
        let mut text = String::with_capacity(service.len() + principal.len() + 64);
        text.push_str(service);
        self.service_end = text.len() as u32;
        text.push_str(principal);
        self.principal_end = text.len() as u32;
        match host {
            Host::Name(n) => text.push_str(n),
            Host::Ip(ip) => {
                use std::fmt::Write as _;
                let _ = write!(text, "{ip}");
            }
        }
        self.text = text.into_boxed_str();
    }

    pub fn service(&self) -> &str {
        &self.text[..self.service_end as usize]
    }

    pub fn principal(&self) -> &str {
        &self.text[self.service_end as usize..self.principal_end as usize]
    }

    /// The CONNECT host (normalized; an IP address without brackets).
    pub fn host(&self) -> &str {
        &self.text[self.principal_end as usize..]
    }
}

pub struct Tunnels {
    slots: Box<[Slot]>,
    seq: AtomicU64,
    salt: u64,
}

impl Default for Tunnels {
    fn default() -> Self {
        // The standard library's per-process random hash keys: an unpredictable generation salt.
        use std::hash::{BuildHasher, Hasher};
        let salt = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Tunnels { slots: (0..SLOTS).map(|_| Slot::default()).collect(), seq: AtomicU64::new(0), salt }
    }
}

/// One pending decision (boxed: the ring stays 1 MiB however long the strings are).
#[derive(Default)]
struct Slot(Mutex<Option<Box<PendingTunnel>>>);

impl Slot {
    /// The slot if no one else holds it this moment; never waits. Nothing panics while a slot is
    /// held, so a poisoned slot only means a panic elsewhere unwound past it: its contents are
    /// still whole.
    fn claim(&self) -> Option<MutexGuard<'_, Option<Box<PendingTunnel>>>> {
        match self.0.try_lock() {
            Ok(held) => Some(held),
            Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
            Err(TryLockError::WouldBlock) => None,
        }
    }
}

impl Tunnels {
    /// Registers a CONNECT decision; returns the correlation its tunnel check must present. If
    /// every slot tried is busy (the ring wrapped onto checks in progress) nothing is registered
    /// and the correlation pairs with nothing: the tunnel fails closed.
    pub fn register(&self, t: NewTunnel<'_>, now: i64) -> SocketAddr {
        let mut pending = Box::new(PendingTunnel {
            generation: 0,
            correlation: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
            created_unix: now,
            text: Box::default(),
            service_end: 0,
            principal_end: 0,
            port: t.port,
            tunnel_tls: t.tunnel_tls,
            mode: t.mode,
            enforced: t.enforced,
            trace: t.trace,
        });
        pending.set_text(t.service, t.principal, t.host);
        for _ in 0..REGISTER_TRIES {
            let (slot, generation, correlation) = self.next_correlation();
            pending.generation = generation;
            pending.correlation = correlation;
            let Some(mut held) = self.slots[slot].claim() else { continue };
            let overwritten = held.replace(pending);
            drop(held);
            drop(overwritten);
            return correlation;
        }
        // Port 0 names no slot: the tunnel check finds nothing and fails closed.
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0)
    }

    /// The next slot of the ring, a fresh generation for it, and the correlation naming both.
    fn next_correlation(&self) -> (usize, u32, SocketAddr) {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let slot = seq % SLOTS;
        let generation = (xxhash_rust::xxh3::xxh3_64(&(seq ^ self.salt).to_le_bytes()) & 0xff_ffff) as u32;
        let [_, a, b, c] = generation.to_be_bytes();
        let correlation = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, a, b, c)), (slot + 1) as u16);
        (slot as usize, generation, correlation)
    }

    /// Takes the pending decision `correlation` names, once. `None`: unknown, expired, replayed
    /// (or its slot busy this very moment, which only a wrapped ring or a concurrent replay does).
    pub fn take(&self, correlation: SocketAddr, now: i64) -> Option<Box<PendingTunnel>> {
        let IpAddr::V4(ip) = correlation.ip() else { return None };
        let [first, a, b, c] = ip.octets();
        let port = u64::from(correlation.port());
        if first != 127 || port == 0 || port > SLOTS {
            return None;
        }
        let generation = u32::from_be_bytes([0, a, b, c]);
        let mut held = self.slots[(port - 1) as usize].claim()?;
        let current = held.as_ref()?;
        if current.generation != generation || now - current.created_unix > TTL_SECONDS {
            return None;
        }
        // Only the first check with this correlation gets it.
        held.take()
    }
}

/// What the tunnel carried, as the gateway's tunnel check reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TunnelStart {
    Tls,
    NotTls,
}

impl TunnelStart {
    /// From the Check call's `x-egressd-check` metadata; `None` for every other check.
    pub fn from_metadata(value: Option<&str>) -> Option<Self> {
        match value? {
            CHECK_KIND_TUNNEL_TLS => Some(TunnelStart::Tls),
            CHECK_KIND_TUNNEL_RAW => Some(TunnelStart::NotTls),
            _ => None,
        }
    }
}

/// The decision of a tunnel check: `pending` is what the CONNECT decision left (None: it does not
/// pair), `start` what the tunnel began with, `sni` the ClientHello's server name.
pub fn decide<'p>(
    policy: &'p CompiledPolicy,
    pending: Option<&PendingTunnel>,
    start: TunnelStart,
    sni: Option<&str>,
) -> Decision<'p> {
    let Some(p) = pending else { return Decision::hard_deny(Reason::UnknownTunnel) };
    let violation = match (p.tunnel_tls, start, sni.filter(|s| !s.is_empty())) {
        (TunnelTls::Off, _, _) => None,
        (_, TunnelStart::NotTls, _) => Some(Reason::NotTls),
        (TunnelTls::AllowAnyTls, TunnelStart::Tls, _) => None,
        (TunnelTls::RequireMatchingSni, TunnelStart::Tls, None) => Some(Reason::SniMissing),
        (TunnelTls::RequireMatchingSni, TunnelStart::Tls, Some(sni)) => match normalize_sni(sni) {
            Ok(Host::Name(n)) if n == p.host() => None,
            Ok(other) => Some(Reason::SniMismatch { connect: p.host().to_string(), sni: other.to_string() }),
            Err(_) => Some(Reason::SniMismatch { connect: p.host().to_string(), sni: sni.to_string() }),
        },
    };
    let (outcome, reason) = match violation {
        None => (Outcome::Allow, Reason::TunnelVerified),
        Some(r) if p.enforced => (Outcome::Deny, r),
        Some(r) => (Outcome::WouldDeny, r),
    };
    Decision {
        outcome,
        reason,
        rule: None,
        service: policy.service(p.service()),
        mode: Some(p.mode),
        enforced: p.enforced,
        near_miss: None,
        rolled_back: false,
    }
}

/// A tunnel check's answer, in wire format: it has no destination of its own (the CONNECT's
/// was checked) and no HTTP part.
pub fn answer(decision: &Decision<'_>, version: &str) -> bytes::Bytes {
    if decision.outcome.permits() {
        super::encoded::ok_core(decision, version)
    } else {
        super::encoded::deny(decision, Err(&crate::policy::Malformed::NoDestination), version, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(name: &'static str) -> &'static Host<'static> {
        Box::leak(Box::new(Host::Name(name.into())))
    }

    fn new(host: &'static Host<'static>) -> NewTunnel<'static> {
        NewTunnel {
            host,
            port: 443,
            service: "s",
            principal: "p",
            tunnel_tls: TunnelTls::RequireMatchingSni,
            mode: Mode::Enforce,
            enforced: true,
            trace: Some((TraceId::from(1u128), SpanId::from(2u64))),
        }
    }

    #[test]
    fn a_correlation_pairs_once_and_only_with_its_own_decision() {
        let t = Tunnels::default();
        let addr = t.register(new(host("a.test")), 100);
        let b_addr = t.register(new(host("b.test")), 100);
        assert_ne!(addr, b_addr);
        assert!(addr.ip().is_loopback());
        let a = t.take(addr, 101).unwrap();
        assert_eq!((a.service(), a.principal(), a.host(), a.correlation), ("s", "p", "a.test", addr));
        assert!(t.take(addr, 101).is_none(), "replay fails");
        // Same slot, another generation: a guess or a stale value.
        let IpAddr::V4(b_ip) = b_addr.ip() else { panic!("v4") };
        let forged = SocketAddr::new(IpAddr::V4(Ipv4Addr::from(u32::from(b_ip) ^ 1)), b_addr.port());
        assert!(t.take(forged, 101).is_none(), "another generation in b's slot");
        assert!(t.take(b_addr, 100 + TTL_SECONDS + 1).is_none(), "expired");
        for bad in ["10.0.0.1:1", "127.0.0.1:0", "[::1]:5"] {
            assert!(t.take(bad.parse().unwrap(), 100).is_none(), "{bad}");
        }
    }

    #[test]
    fn tunnel_decisions_by_setting_and_what_the_tunnel_carried() {
        let policy = crate::policy::compile(&crate::policy::PolicySource::embedded(), 0).unwrap();
        let pending = |tls: TunnelTls, enforced: bool| {
            let t = Tunnels::default();
            let addr = t.register(NewTunnel { tunnel_tls: tls, enforced, ..new(host("api.partner.test")) }, 0);
            t.take(addr, 0).unwrap()
        };
        let code = |p: &PendingTunnel, start, sni: Option<&str>| {
            let d = decide(&policy, Some(p), start, sni);
            (d.outcome, d.reason.code())
        };
        let req = pending(TunnelTls::RequireMatchingSni, true);
        assert_eq!(code(&req, TunnelStart::Tls, Some("API.Partner.test.")), (Outcome::Allow, "tunnel-verified"));
        assert_eq!(code(&req, TunnelStart::Tls, Some("admin.partner.test")), (Outcome::Deny, "sni-mismatch"));
        assert_eq!(code(&req, TunnelStart::Tls, None), (Outcome::Deny, "sni-missing"));
        assert_eq!(code(&req, TunnelStart::NotTls, None), (Outcome::Deny, "not-tls"));
        let dry = pending(TunnelTls::RequireMatchingSni, false);
        assert_eq!(code(&dry, TunnelStart::Tls, Some("evil.test")), (Outcome::WouldDeny, "sni-mismatch"));
        let any = pending(TunnelTls::AllowAnyTls, true);
        assert_eq!(code(&any, TunnelStart::Tls, Some("other.test")), (Outcome::Allow, "tunnel-verified"));
        assert_eq!(code(&any, TunnelStart::NotTls, None), (Outcome::Deny, "not-tls"));
        let off = pending(TunnelTls::Off, true);
        assert_eq!(code(&off, TunnelStart::NotTls, None), (Outcome::Allow, "tunnel-verified"));
        let unknown = decide(&policy, None, TunnelStart::Tls, Some("api.partner.test"));
        assert_eq!((unknown.outcome, unknown.reason.code()), (Outcome::Deny, "unknown-correlation"));
    }

    #[test]
    fn a_busy_slot_is_never_waited_on() {
        let t = Tunnels::default();
        let addr = t.register(new(host("a.test")), 100);
        let slot = &t.slots[usize::from(addr.port()) - 1];
        {
            let _held = slot.0.lock().unwrap();
            assert!(t.take(addr, 100).is_none(), "a held slot fails closed, at once");
        }
        assert_eq!(t.take(addr, 100).unwrap().host(), "a.test", "and is found once it is free");

        // The ring wrapped onto a slot held this moment: register moves on to the next one.
        let next = (t.seq.load(Ordering::Relaxed) % SLOTS) as usize;
        let held = t.slots[next].0.lock().unwrap();
        let moved = t.register(new(host("b.test")), 100);
        assert_eq!(usize::from(moved.port()) - 1, next + 1);
        drop(held);
        assert_eq!(t.take(moved, 100).unwrap().host(), "b.test");

        // Every slot it tries busy: nothing registered, and the correlation names no slot.
        let first = (t.seq.load(Ordering::Relaxed) % SLOTS) as usize;
        let held: Vec<_> = (first..first + REGISTER_TRIES).map(|i| t.slots[i].0.lock().unwrap()).collect();
        let unpaired = t.register(new(host("c.test")), 100);
        drop(held);
        assert_eq!(unpaired.port(), 0);
        assert!(t.take(unpaired, 100).is_none());
    }

    #[test]
    fn check_kind_from_metadata() {
        assert_eq!(TunnelStart::from_metadata(Some("tunnel-tls")), Some(TunnelStart::Tls));
        assert_eq!(TunnelStart::from_metadata(Some("tunnel-raw")), Some(TunnelStart::NotTls));
        assert_eq!(TunnelStart::from_metadata(Some("other")), None);
        assert_eq!(TunnelStart::from_metadata(None), None);
    }

    /// Every tunnel decision (verified, each violation enforced and in dry-run, an unknown
    /// tunnel) is answered with the bytes of the reference answer.
    #[test]
    fn every_tunnel_answer_is_the_reference_answer() {
        use envoy_types::pb::envoy::service::auth::v3::CheckResponse;
        use prost::Message;
        let policy = crate::policy::compile(&crate::policy::PolicySource::embedded(), 0).unwrap();
        let version = policy.version.as_str();
        let connect = host("api.stripe.com");
        let sni_cases =
            [Some("api.stripe.com"), Some("API.Stripe.com."), Some("evil.test"), Some("[::1"), Some(""), None];
        let mut pendings = vec![None];
        for (tunnel_tls, enforced) in [
            (TunnelTls::RequireMatchingSni, true),
            (TunnelTls::RequireMatchingSni, false),
            (TunnelTls::AllowAnyTls, true),
        ] {
            let t = Tunnels::default();
            let mode = if enforced { Mode::Enforce } else { Mode::DryRun };
            let addr = t.register(NewTunnel { tunnel_tls, enforced, mode, service: "payments", ..new(connect) }, 100);
            pendings.push(Some(t.take(addr, 100).expect("registered")));
        }
        let mut outcomes = std::collections::BTreeSet::new();
        for pending in &pendings {
            for start in [TunnelStart::Tls, TunnelStart::NotTls] {
                for sni in sni_cases {
                    let d = decide(&policy, pending.as_deref(), start, sni);
                    outcomes.insert(d.outcome.as_str());
                    let reference = super::super::response::build(
                        &d,
                        Err(&crate::policy::Malformed::NoDestination),
                        version,
                        false,
                        None,
                    );
                    let got = CheckResponse::decode(answer(&d, version)).expect("a valid CheckResponse");
                    assert_eq!(got, reference, "{:?} {start:?} {sni:?}", d.reason);
                }
            }
        }
        assert_eq!(outcomes.len(), 3, "allow, deny and would-deny were all answered: {outcomes:?}");
    }
}
