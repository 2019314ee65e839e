//! Which requests a service's mode enforces. Only the service's own rules are subject to the mode;
//! mesh-wide denies and identity failures are always enforced (see `decide`).

use xxhash_rust::xxh3::xxh3_64;

use super::compiled::ServiceInfo;
use super::terms::Mode;
use crate::identity::WorkloadId;

/// The canary bucket (0..=99) of a request id. xxh3 is a fixed, seedless algorithm, so the same id
/// lands in the same bucket on every replica, every restart and every version of egressd.
pub fn canary_bucket(request_id: &str) -> u8 {
    // Multiply-shift maps the 64-bit hash uniformly onto 0..100 (no modulo bias).
    ((u128::from(xxh3_64(request_id.as_bytes())) * 100) >> 64) as u8
}

/// Whether a deny by the service's own rules is enforced for this request of `workload`.
///
/// A canary enforces when any selector picks the request: the caller is one of its workloads, the
/// caller's identity falls in its workload share, or the request id falls in its request share. A
/// per-request canary with no request id (a network check, or a client Envoy did not tag) is
/// enforced: when egressd cannot place a request in the dry-run share, it fails closed.
pub fn enforces(svc: &ServiceInfo, workload: WorkloadId<'_>, request_id: Option<&str>) -> bool {
    let principal = workload.as_str();
    match svc.mode {
        Mode::Enforce => true,
        Mode::DryRun => false,
        Mode::Canary => {
            let c = &svc.canary;
            let by_workload = c.workloads.iter().any(|w| w == principal)
                || c.workload_percent.is_some_and(|p| canary_bucket(principal) < p);
            let by_request = c.request_percent.is_some_and(|p| match request_id {
                Some(id) if !id.is_empty() => canary_bucket(id) < p,
                _ => true,
            });
            by_workload || by_request
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{PolicySource, compile};

    fn w(principal: &str) -> WorkloadId<'_> {
        WorkloadId::accepted(principal)
    }

    /// A service of `mode` with the given canary selectors, compiled from YAML.
    fn service(extra: &str) -> ServiceInfo {
        let text = format!(
            "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a, spiffe://corp.example/ns/s/sa/b]\n{extra}"
        );
        compile(&PolicySource::from_text("s.yaml", &text), 0).expect("valid").services[0].clone()
    }

    fn per_request(percent: u8) -> ServiceInfo {
        service(&format!("mode: canary\ncanaryPercent: {percent}\n"))
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
        let s = per_request(10);
        let enforced = (0..10_000).filter(|i| enforces(&s, w("p"), Some(&format!("req-{i}")))).count();
        assert!((850..=1150).contains(&enforced), "{enforced} of 10000 enforced at 10%");
        let (none, all) = (per_request(0), per_request(100));
        assert_eq!((0..1000).filter(|i| enforces(&none, w("p"), Some(&i.to_string()))).count(), 0);
        assert_eq!((0..1000).filter(|i| enforces(&all, w("p"), Some(&i.to_string()))).count(), 1000);
    }

    #[test]
    fn modes() {
        assert!(enforces(&service("mode: enforce\n"), w("p"), None));
        assert!(!enforces(&service("mode: dry-run\n"), w("p"), Some("x")));
        assert!(enforces(&per_request(0), w("p"), None), "no request id: fail closed");
    }

    #[test]
    fn canary_by_listed_workloads_enforces_every_request_of_those_and_none_of_others() {
        let s = service("mode: canary\ncanaryWorkloads: [spiffe://corp.example/ns/s/sa/a]\n");
        let (a, b) = ("spiffe://corp.example/ns/s/sa/a", "spiffe://corp.example/ns/s/sa/b");
        for id in [None, Some("r1"), Some("r2")] {
            assert!(enforces(&s, w(a), id), "listed workload enforced ({id:?})");
            assert!(!enforces(&s, w(b), id), "other workload dry-run, even without a request id ({id:?})");
        }
    }

    #[test]
    fn canary_by_workload_share_is_stable_per_identity() {
        let s = service("mode: canary\ncanaryWorkloadPercent: 30\n");
        let ids: Vec<String> = (0..2000).map(|i| format!("spiffe://corp.example/ns/s/sa/replica-{i}")).collect();
        let enforced = ids.iter().filter(|p| enforces(&s, w(p), Some("any"))).count();
        assert!((500..=700).contains(&enforced), "{enforced} of 2000 identities enforced at 30%");
        for p in ids.iter().take(50) {
            let first = enforces(&s, w(p), Some("r1"));
            assert!(
                (0..20).all(|i| enforces(&s, w(p), Some(&format!("r{i}"))) == first),
                "per identity, not per request"
            );
        }
    }

    #[test]
    fn canary_workload_errors_are_located() {
        let text = "kind: MeshDefaults\ntrustDomain: corp.example\n---\nkind: ServicePolicy\nservice: s\nidentities: [spiffe://corp.example/ns/s/sa/a]\nmode: canary\ncanaryWorkloads: [spiffe://corp.example/ns/other/sa/x]\ncanaryWorkloadPercent: 101\n";
        let errs: Vec<String> =
            compile(&PolicySource::from_text("c.yaml", text), 0).unwrap_err().iter().map(|d| d.to_string()).collect();
        assert!(
            errs.iter().any(|e| e.starts_with("c.yaml:8:19:") && e.contains("not one of the service's identities")),
            "{errs:?}"
        );
        assert!(
            errs.iter().any(|e| e.starts_with("c.yaml:9:24:") && e.contains("canaryWorkloadPercent 101")),
            "{errs:?}"
        );
    }
}
