//! The DNS firewall: egressd answers the fleet's DNS from the same policy as its Checks, so a
//! workload cannot leak data through query names to a domain it may not reach.
//!
//! ```text
//! UDP/TCP :listen ──▶ query::handle (parse, rate limit, decide, blocked → answered here,
//!                     cache hit → answered here) ──▶ forward (upstreams in order, retries)
//!                     ──▶ query::finish (cache, encode, truncate) ──▶ client
//!                     every query ──▶ telemetry (DnsEvent: audit record, metric, span)
//! ```
//! The policy is read per query through `SharedPolicy`, so a reload changes answers at once; the
//! listen address, cache size and rate-limit table are fixed when the server starts.

mod answer;
mod cache;
mod forward;
pub mod query;
mod ratelimit;
mod tcp;
#[cfg(test)]
mod tests;
mod udp;

use std::net::SocketAddr;
use std::sync::Arc;

use crate::policy::SharedPolicy;
use crate::policy::dns::DnsFirewallSpec;
use crate::telemetry::Telemetry;

pub use cache::AnswerCache;
pub use query::{Arrival, Resolver, Step, Transport};
pub use ratelimit::RateLimiter;

/// What the listeners share.
pub struct Shared {
    pub policy: SharedPolicy,
    pub resolver: Resolver,
    pub telemetry: Telemetry,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot listen for DNS on {addr} ({transport}): {source}")]
pub struct DnsBindError {
    pub addr: SocketAddr,
    pub transport: &'static str,
    #[source]
    pub source: std::io::Error,
}

impl Resolver {
    /// A cache and rate-limit table sized by `spec`.
    pub fn new(spec: &DnsFirewallSpec) -> Self {
        Resolver { cache: AnswerCache::new(spec.cache), limiter: RateLimiter::new(spec.rate_limit) }
    }
}

/// The DNS listeners, bound and ready to serve.
pub struct DnsServer {
    udp: Arc<tokio::net::UdpSocket>,
    tcp: tokio::net::TcpListener,
    shared: Arc<Shared>,
}

impl DnsServer {
    /// Binds UDP and TCP on `listen` (the same port for both: with port 0, UDP's is reused).
    pub async fn bind(
        listen: SocketAddr,
        spec: &DnsFirewallSpec,
        policy: SharedPolicy,
        telemetry: Telemetry,
    ) -> Result<Self, DnsBindError> {
        let err = |transport, source| DnsBindError { addr: listen, transport, source };
        // With port 0 the OS picks UDP's port, which TCP may already have in use elsewhere: pick
        // again a few times rather than fail on a coincidence.
        let attempts = if listen.port() == 0 { 8 } else { 1 };
        let mut attempt = 0;
        let (udp, tcp) = loop {
            attempt += 1;
            let udp = tokio::net::UdpSocket::bind(listen).await.map_err(|e| err("udp", e))?;
            let bound = udp.local_addr().map_err(|e| err("udp", e))?;
            match tokio::net::TcpListener::bind(bound).await {
                Ok(tcp) => break (udp, tcp),
                Err(e) if attempt < attempts && e.kind() == std::io::ErrorKind::AddrInUse => continue,
                Err(e) => return Err(err("tcp", e)),
            }
        };
        let shared = Arc::new(Shared { policy, resolver: Resolver::new(spec), telemetry });
        Ok(DnsServer { udp: Arc::new(udp), tcp, shared })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.udp.local_addr().expect("a bound socket has an address")
    }

    /// Serves until the future is dropped.
    pub async fn run(self) {
        let workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        tokio::join!(udp::serve(self.udp, self.shared.clone(), workers), tcp::serve(self.tcp, self.shared));
    }
}

/// Now, on the three clocks a query needs.
fn arrival() -> Arrival {
    Arrival { at: std::time::Instant::now(), wall: crate::clock::wall_now(), unix: crate::clock::coarse_unix_now() }
}
