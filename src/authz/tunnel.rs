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
//! Register and take are lock-free (`arc-swap` per slot). Pending decisions expire after a minute;
//! with more than 65,535 CONNECTs in flight the oldest are overwritten and fail closed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use arc_swap::ArcSwapOption;
use opentelemetry::trace::{SpanId, TraceId};

use crate::contract::{CHECK_KIND_TUNNEL_RAW, CHECK_KIND_TUNNEL_TLS};
use crate::policy::fqdn::{Host, normalize_sni};
use crate::policy::{CompiledPolicy, Decision, Mode, Outcome, Reason, TunnelTls};

const SLOTS: u64 = 65_535;
const TTL_SECONDS: i64 = 60;

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
    slots: Box<[ArcSwapOption<PendingTunnel>]>,
    seq: AtomicU64,
    salt: u64,
}

impl Default for Tunnels {
    fn default() -> Self {
        // The standard library's per-process random hash keys: an unpredictable generation salt.
        use std::hash::{BuildHasher, Hasher};
        let salt = std::collections::hash_map::RandomState::new().build_hasher().finish();
        Tunnels { slots: (0..SLOTS).map(|_| ArcSwapOption::empty()).collect(), seq: AtomicU64::new(0), salt }
    }
}

impl Tunnels {
    /// Registers a CONNECT decision; returns it with its correlation value.
    pub fn register(&self, t: NewTunnel<'_>, now: i64) -> Arc<PendingTunnel> {
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        let slot = seq % SLOTS;
        let generation = (xxhash_rust::xxh3::xxh3_64(&(seq ^ self.salt).to_le_bytes()) & 0xff_ffff) as u32;
        let [_, a, b, c] = generation.to_be_bytes();
        let correlation = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, a, b, c)), (slot + 1) as u16);
        let mut text = String::with_capacity(t.service.len() + t.principal.len() + 64);
        text.push_str(t.service);
        let service_end = text.len() as u32;
        text.push_str(t.principal);
        let principal_end = text.len() as u32;
        match t.host {
            Host::Name(n) => text.push_str(n),
            Host::Ip(ip) => {
                use std::fmt::Write as _;
                let _ = write!(text, "{ip}");
            }
        }
        let pending = Arc::new(PendingTunnel {
            generation,
            correlation,
            created_unix: now,
            text: text.into_boxed_str(),
            service_end,
            principal_end,
            port: t.port,
            tunnel_tls: t.tunnel_tls,
            mode: t.mode,
            enforced: t.enforced,
            trace: t.trace,
        });
        self.slots[slot as usize].store(Some(pending.clone()));
        pending
    }

    /// Takes the pending decision `correlation` names, once. `None`: unknown, expired, replayed.
    pub fn take(&self, correlation: SocketAddr, now: i64) -> Option<Arc<PendingTunnel>> {
        let IpAddr::V4(ip) = correlation.ip() else { return None };
        let [first, a, b, c] = ip.octets();
        let port = u64::from(correlation.port());
        if first != 127 || port == 0 || port > SLOTS {
            return None;
        }
        let generation = u32::from_be_bytes([0, a, b, c]);
        let slot = &self.slots[(port - 1) as usize];
        let current = slot.load_full()?;
        if current.generation != generation || now - current.created_unix > TTL_SECONDS {
            return None;
        }
        // Only the first check with this correlation gets it.
        let previous = slot.compare_and_swap(&Some(current.clone()), None);
        let won = previous.as_ref().is_some_and(|p| Arc::ptr_eq(p, &current));
        won.then_some(current)
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
        let a = t.register(new(host("a.test")), 100);
        let b = t.register(new(host("b.test")), 100);
        assert_eq!((a.service(), a.principal(), a.host()), ("s", "p", "a.test"));
        assert_ne!(a.correlation, b.correlation);
        let addr = a.correlation;
        assert!(addr.ip().is_loopback());
        assert_eq!(t.take(addr, 101).unwrap().host(), "a.test");
        assert!(t.take(addr, 101).is_none(), "replay fails");
        let b_addr = b.correlation;
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
            Tunnels::default().register(NewTunnel { tunnel_tls: tls, enforced, ..new(host("api.partner.test")) }, 0)
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
    fn check_kind_from_metadata() {
        assert_eq!(TunnelStart::from_metadata(Some("tunnel-tls")), Some(TunnelStart::Tls));
        assert_eq!(TunnelStart::from_metadata(Some("tunnel-raw")), Some(TunnelStart::NotTls));
        assert_eq!(TunnelStart::from_metadata(Some("other")), None);
        assert_eq!(TunnelStart::from_metadata(None), None);
    }
}
