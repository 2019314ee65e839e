//! Faults with the real gateway carrying traffic: egressd is the choke point's brain, so when it
//! dies the fence must stay shut, Envoy must keep its last configuration, and traffic must flow
//! again soon after egressd returns.

mod support {
    pub mod client;
    pub mod dns;
    pub mod envoy;
    pub mod eventually;
    pub mod lab;
    pub mod pki;
    pub mod process;
    pub mod server;
    pub mod upstream;
}

use std::time::{Duration, Instant};

use support::client::proxy_get;
use support::eventually::eventually;
use support::lab::Lab;
use support::server::{http_get, try_http_get};

/// One request through the gateway as `checkout` (a new mTLS connection): the status, or `None`
/// when the gateway did not answer at all.
async fn request(lab: &Lab, host: &str) -> Option<(u16, String)> {
    let mut conn = lab.as_workload(&lab.checkout).await;
    let url = format!("http://{host}:{}/v1/prices", lab.http_upstream.port());
    tokio::time::timeout(Duration::from_secs(5), proxy_get(&mut conn, &url)).await.ok()?.ok()
}

/// An Envoy counter from its admin `/stats` (0 when absent).
async fn envoy_counter(lab: &Lab, suffix: &str) -> u64 {
    let (_, stats) = http_get(lab.envoy.admin, "/stats").await;
    stats
        .lines()
        .filter_map(|l| l.split_once(": "))
        .filter(|(name, _)| name.ends_with(suffix))
        .filter_map(|(_, v)| v.trim().parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_egressd_keeps_the_fence_shut_and_traffic_returns_within_5s_of_its_restart() {
    let policy = tempfile::tempdir().unwrap();
    let mut lab = Lab::builder().policy_dir(policy.path()).egressd_binary().start().await;
    let mut process = lab.egressd.process.take().expect("egressd runs as the binary");
    let allowed = "api.partner.test";
    let (status, body) = request(&lab, allowed).await.expect("an answer");
    assert_eq!(status, 200, "{body}");

    // SIGKILL: no drain. Every request in the gap is answered, and none reaches the upstream.
    process.kill();
    let errors_before = envoy_counter(&lab, "ext_authz.error").await;
    for _ in 0..5 {
        let (status, body) = request(&lab, allowed).await.expect("the gateway still answers");
        assert_eq!(status, 403, "fail closed, not passed unchecked: {body}");
        assert!(!body.contains("upstream http host"), "the upstream was reached: {body}");
    }
    assert!(envoy_counter(&lab, "ext_authz.error").await >= errors_before + 5, "each failed check is counted");
    // Envoy keeps its last configuration: its listeners are still there, and it is still live.
    let (status, _) = http_get(lab.envoy.admin, "/listeners").await;
    assert_eq!(status, 200);
    assert!(matches!(try_http_get(lab.envoy.admin, "/server_info").await, Ok((200, _))));

    // Back on the same ports: allowed traffic flows again within 5 s, and the ADS stream returns.
    process.restart().await;
    let back = Instant::now();
    eventually("an allowed request after the restart", Duration::from_secs(5), || async {
        matches!(request(&lab, allowed).await, Some((200, _))).then_some(())
    })
    .await;
    let waited = back.elapsed();
    eventually("the gateway's ADS stream reconnected", Duration::from_secs(15), || async {
        let (_, xds) = http_get(lab.egressd.admin, "/xds").await;
        let v: serde_json::Value = serde_json::from_str(&xds).ok()?;
        (!v["nodes"].as_array()?.is_empty()).then_some(())
    })
    .await;
    eprintln!("traffic back {waited:?} after egressd was ready again");

    // SIGTERM under load: egressd drains and exits cleanly; every request gets an answer, allowed
    // ones while egressd still answers, 403 after, none unchecked.
    let lab = std::sync::Arc::new(lab);
    let load: Vec<_> = (0..3)
        .map(|_| {
            let lab = lab.clone();
            tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..15 {
                    seen.push(request(&lab, allowed).await);
                }
                seen
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(150)).await;
    let draining = Instant::now();
    assert!(process.terminate(), "egressd exits cleanly on SIGTERM:\n{}", process.log());
    let drained = draining.elapsed();
    let mut statuses = std::collections::BTreeMap::new();
    for task in load {
        for answer in task.await.unwrap() {
            let (status, body) = answer.expect("every request is answered");
            assert!(status == 200 || (status == 403 && !body.contains("upstream http host")), "{status}: {body}");
            *statuses.entry(status).or_insert(0) += 1;
        }
    }
    assert!(statuses.contains_key(&403), "requests after the drain fail closed: {statuses:?}");
    eprintln!("SIGTERM: exited after {drained:?}; answers {statuses:?}");
    process.restart().await;
    eventually("an allowed request after the second restart", Duration::from_secs(5), || async {
        matches!(request(&lab, allowed).await, Some((200, _))).then_some(())
    })
    .await;
    drop(process);
}
