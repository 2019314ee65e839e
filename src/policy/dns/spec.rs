//! `DnsFirewallSpec`: what a `kind: DnsFirewall` document means, as the DNS server reads it.

use std::net::SocketAddr;

use serde::Serialize;

use super::sources::SourceMap;
use crate::policy::diagnostic::SourceLoc;
use crate::policy::matcher::TableId;

/// The defaults of a DnsFirewall's optional fields.
pub mod defaults {
    pub const TIMEOUT_MS: u64 = 1_000;
    pub const ATTEMPTS: u32 = 2;
    pub const CACHE_MAX_ENTRIES: usize = 10_000;
    pub const CACHE_MAX_TTL_SECONDS: u32 = 3_600;
    pub const NEGATIVE_TTL_SECONDS: u32 = 300;
    pub const QUERIES_PER_SECOND: u32 = 200;
    pub const BURST: u32 = 400;
    pub const RATE_LIMIT_CLIENTS: usize = 10_000;
}

/// How a blocked name is answered (either way with an Extended DNS Error, RFC 8914).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BlockedAnswer {
    /// NXDOMAIN: the name does not exist, as far as the client can tell.
    Nxdomain,
    /// REFUSED: the resolver will not answer it.
    Refused,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsCacheLimits {
    pub max_entries: usize,
    /// Answers are kept at most this long, whatever their TTL.
    pub max_ttl_seconds: u32,
    /// Negative answers (NXDOMAIN, NODATA) at most this long (RFC 2308: else the SOA minimum).
    pub negative_ttl_seconds: u32,
}

/// Per client address: a token bucket of `burst` tokens refilled at `queries_per_second`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsRateLimit {
    pub queries_per_second: u32,
    pub burst: u32,
    /// Client addresses tracked at once (least recently seen evicted).
    pub clients: usize,
}

/// A compiled `kind: DnsFirewall`.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DnsFirewallSpec {
    pub name: String,
    pub listen: SocketAddr,
    /// Tried in order, each `attempts` times with `timeout_ms` per try.
    pub upstreams: Vec<SocketAddr>,
    pub timeout_ms: u64,
    pub attempts: u32,
    pub blocked: BlockedAnswer,
    pub cache: DnsCacheLimits,
    pub rate_limit: DnsRateLimit,
    #[serde(skip)]
    pub sources: SourceMap,
    /// Every service's host allows in one matcher table: what an unmapped client may resolve.
    #[serde(skip)]
    pub(crate) union_table: TableId,
    #[serde(skip)]
    pub loc: SourceLoc,
}
