//! How a service's mode turns a policy verdict into what happens to the request.
//!
//! Only the service's own rules are subject to the mode; mesh-wide denies and identity failures
//! are always enforced (see `policy::decide`).

use xxhash_rust::xxh3::xxh3_64;

use crate::policy::Mode;

/// The canary bucket (0..=99) of a request id. xxh3 is a fixed, seedless algorithm, so the same id
/// lands in the same bucket on every replica, every restart and every version of egressd.
pub fn canary_bucket(request_id: &str) -> u8 {
    // Multiply-shift maps the 64-bit hash uniformly onto 0..100 (no modulo bias).
    ((u128::from(xxh3_64(request_id.as_bytes())) * 100) >> 64) as u8
}

/// Whether a deny by the service's own rules is enforced for this request.
///
/// Canary without a request id (a network check, or a client Envoy did not tag) is enforced: when
/// egressd cannot place a request in the dry-run share, it fails closed.
pub fn enforces(mode: Mode, canary_percent: u8, request_id: Option<&str>) -> bool {
    match mode {
        Mode::Enforce => true,
        Mode::DryRun => false,
        Mode::Canary => match request_id {
            Some(id) if !id.is_empty() => canary_bucket(id) < canary_percent,
            _ => true,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_id_same_outcome() {
        for id in ["a", "req-1", "5b0f7e0e-2c1a-4c8e-9d1e-3f1b2a7c9d00"] {
            assert_eq!(canary_bucket(id), canary_bucket(id));
            assert_eq!(enforces(Mode::Canary, 37, Some(id)), enforces(Mode::Canary, 37, Some(id)));
        }
    }

    #[test]
    fn bucket_is_pinned() {
        // Golden values: the mapping is a contract between replicas and across upgrades. If this
        // test fails, every canary in every mesh would reshuffle: don't change the hash.
        let buckets: Vec<u8> = ["a", "b", "req-1", "abc"].iter().map(|id| canary_bucket(id)).collect();
        assert_eq!(buckets, [90, 34, 70, 47]);
    }

    #[test]
    fn share_is_close_to_percent() {
        let enforced = (0..10_000).filter(|i| enforces(Mode::Canary, 10, Some(&format!("req-{i}")))).count();
        assert!((850..=1150).contains(&enforced), "{enforced} of 10000 enforced at 10%");
        assert_eq!((0..1000).filter(|i| enforces(Mode::Canary, 0, Some(&i.to_string()))).count(), 0);
        assert_eq!((0..1000).filter(|i| enforces(Mode::Canary, 100, Some(&i.to_string()))).count(), 1000);
    }

    #[test]
    fn modes() {
        assert!(enforces(Mode::Enforce, 0, None));
        assert!(!enforces(Mode::DryRun, 100, Some("x")));
        assert!(enforces(Mode::Canary, 0, None), "no request id: fail closed");
    }
}
