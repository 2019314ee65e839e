//! The DNS firewall's policy: the `kind: DnsFirewall` document compiled (`spec`, `compile`), which
//! service a client address is (`sources`), and the per-query decision (`decide`). Free of I/O and
//! of any DNS library: the server (`crate::dns`) hands in a normalized name and a query kind.

mod compile;
mod decide;
mod reverse;
mod sources;
mod spec;
#[cfg(test)]
mod tests;

pub(super) use compile::compile_dns_firewall;
pub use decide::{DnsDecision, DnsReason, QueryKind};
pub use sources::SourceMap;
pub use spec::{BlockedAnswer, DnsCacheLimits, DnsFirewallSpec, DnsRateLimit, defaults};
