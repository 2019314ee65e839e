//! The answer cache: upstream answers by question, for at most their TTL (capped), least recently
//! used evicted past `max_entries`. Negative answers (NXDOMAIN, NODATA) are kept as RFC 2308 says,
//! for the SOA record's TTL or its MINIMUM, whichever is lower (and at most the negative cap);
//! without a SOA they are not kept. Failures are never kept. Served TTLs count down.
//!
//! The cache holds what the upstream said, not what egressd decided: every query is decided
//! before the cache is consulted, so a reload that blocks a name blocks its cached answer too.

use std::sync::Mutex;
use std::time::Instant;

use hashlink::LruCache;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{RData, Record};

use crate::policy::dns::DnsCacheLimits;

/// A question as the cache keys it: lowercase name, type, class, and the DO bit (DNSSEC records
/// are in the answer only when asked for).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CacheKey {
    pub qname: Box<str>,
    pub qtype: u16,
    pub qclass: u16,
    pub dnssec_ok: bool,
}

#[derive(Debug, Clone)]
pub struct CachedAnswer {
    pub rcode: ResponseCode,
    pub authentic_data: bool,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
    stored: Instant,
    ttl: u32,
}

impl CachedAnswer {
    /// An upstream answer as it is sent on (its OPT record is the upstream's own: dropped).
    pub fn from_message(msg: &Message) -> Self {
        CachedAnswer {
            rcode: msg.metadata.response_code,
            authentic_data: msg.metadata.authentic_data,
            answers: msg.answers.clone(),
            authorities: msg.authorities.clone(),
            additionals: msg.additionals.iter().filter(|r| !is_opt(r)).cloned().collect(),
            stored: Instant::now(),
            ttl: 0,
        }
    }

    /// The records with their TTLs lowered by the time spent in the cache.
    fn aged(&self, now: Instant) -> Option<CachedAnswer> {
        let age = now.saturating_duration_since(self.stored).as_secs();
        let age = u32::try_from(age).unwrap_or(u32::MAX);
        if age >= self.ttl {
            return None;
        }
        let lower = |records: &[Record]| -> Vec<Record> {
            records
                .iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        Some(CachedAnswer {
            answers: lower(&self.answers),
            authorities: lower(&self.authorities),
            additionals: lower(&self.additionals),
            ..self.clone()
        })
    }
}

pub struct AnswerCache {
    limits: DnsCacheLimits,
    entries: Mutex<LruCache<CacheKey, CachedAnswer>>,
}

impl AnswerCache {
    pub fn new(limits: DnsCacheLimits) -> Self {
        AnswerCache { limits, entries: Mutex::new(LruCache::new(limits.max_entries.max(1))) }
    }

    /// The cached answer to `key`, its TTLs aged, if it has not expired.
    pub fn get(&self, key: &CacheKey, now: Instant) -> Option<CachedAnswer> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let entry = entries.get(key)?;
        match entry.aged(now) {
            Some(answer) => Some(answer),
            None => {
                entries.remove(key);
                None
            }
        }
    }

    /// Keeps an upstream answer for as long as it may be kept (not at all for failures).
    pub fn put(&self, key: CacheKey, upstream: &Message, now: Instant) {
        let Some(ttl) = self.ttl_of(upstream) else { return };
        let answer = CachedAnswer { stored: now, ttl, ..CachedAnswer::from_message(upstream) };
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(key, answer);
    }

    pub fn len(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How long an answer may be kept; `None`: not at all.
    fn ttl_of(&self, msg: &Message) -> Option<u32> {
        if msg.metadata.truncation {
            return None;
        }
        let rcode = msg.metadata.response_code;
        let ttl = match rcode {
            ResponseCode::NoError if !msg.answers.is_empty() => {
                msg.answers.iter().map(|r| r.ttl).min()?.min(self.limits.max_ttl_seconds)
            }
            ResponseCode::NoError | ResponseCode::NXDomain => negative_ttl(msg)?.min(self.limits.negative_ttl_seconds),
            _ => return None,
        };
        (ttl > 0).then_some(ttl)
    }
}

/// RFC 2308 section 5: a negative answer lives for min(SOA TTL, SOA MINIMUM).
fn negative_ttl(msg: &Message) -> Option<u32> {
    msg.authorities.iter().find_map(|r| match &r.data {
        RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
        _ => None,
    })
}

fn is_opt(r: &Record) -> bool {
    matches!(r.data, RData::OPT(_))
}
