//! Per-client rate limit: a token bucket per source address, in a bounded LRU table (a flood from
//! many spoofed addresses evicts the least recently seen buckets; it cannot grow the table).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Instant;

use hashlink::LruCache;

use crate::policy::dns::DnsRateLimit;

struct Bucket {
    tokens: f64,
    last: Instant,
}

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<LruCache<IpAddr, Bucket>>,
}

impl RateLimiter {
    pub fn new(limit: DnsRateLimit) -> Self {
        RateLimiter {
            rate: f64::from(limit.queries_per_second),
            burst: f64::from(limit.burst.max(1)),
            buckets: Mutex::new(LruCache::new(limit.clients.max(1))),
        }
    }

    /// Takes one token for `client`; `false` when its bucket is empty.
    pub fn allow(&self, client: IpAddr, now: Instant) -> bool {
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(bucket) = buckets.get_mut(&client) {
            let elapsed = now.saturating_duration_since(bucket.last).as_secs_f64();
            bucket.tokens = (bucket.tokens + elapsed * self.rate).min(self.burst);
            bucket.last = now;
            if bucket.tokens < 1.0 {
                return false;
            }
            bucket.tokens -= 1.0;
            return true;
        }
        buckets.insert(client, Bucket { tokens: self.burst - 1.0, last: now });
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn limiter(qps: u32, burst: u32, clients: usize) -> RateLimiter {
        RateLimiter::new(DnsRateLimit { queries_per_second: qps, burst, clients })
    }

    #[test]
    fn a_burst_then_the_refill_rate() {
        let l = limiter(10, 3, 16);
        let ip: IpAddr = "127.0.0.9".parse().unwrap();
        let t0 = Instant::now();
        assert!((0..3).all(|_| l.allow(ip, t0)), "the burst");
        assert!(!l.allow(ip, t0), "then empty");
        assert!(l.allow(ip, t0 + Duration::from_millis(100)), "one token per 1/qps");
        assert!(!l.allow(ip, t0 + Duration::from_millis(100)));
    }

    #[test]
    fn clients_have_their_own_buckets_and_the_table_is_bounded() {
        let l = limiter(1, 1, 2);
        let t0 = Instant::now();
        let a: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(l.allow(a, t0));
        assert!(!l.allow(a, t0));
        assert!(l.allow("127.0.0.2".parse().unwrap(), t0), "another client is not limited by a");
        for i in 3..100u8 {
            l.allow(IpAddr::from([127, 0, 0, i]), t0);
        }
        assert_eq!(l.buckets.lock().unwrap().len(), 2, "bounded");
    }
}
