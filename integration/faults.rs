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

/// How long a reload of 100,000 rules may take in a debug build on a busy CI machine.
const LARGE_RELOAD: Duration = Duration::from_secs(60);

/// The example policy plus 2,000 generated services of 50 rules (100,000 rules and more), served
/// behind the real gateway and reloaded ten times by the watcher while two workloads' requests
/// flow through Envoy: five good edits (each a new version, which then serves) and five broken
/// ones (a service file that does not parse: rejected, `/policy` names the file, the last good
/// version keeps serving). Every request is allowed through to the upstream: none fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_of_100000_rules_reloaded_ten_times_under_gateway_traffic_fails_no_request() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let policy = tempfile::tempdir().unwrap();
    let dir = policy.path();
    let generated = egressd::testing::synthetic_mesh("", 2_000, 50);
    for file in generated.files.iter().filter(|f| f.name.starts_with("services/")) {
        let path = dir.join(&*file.name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, &*file.text).unwrap();
    }
    let lab = Lab::builder().policy_dir(dir).start().await;
    let services = |v: &serde_json::Value| v["services"].as_array().map(|s| s.len()).unwrap_or(0);
    let first = lab.admin_json("/policy").await;
    assert!(services(&first) > 2_000, "the generated services are served: {}", services(&first));
    let wait = |what: &'static str, ready: Box<dyn Fn(&serde_json::Value) -> bool>| {
        let lab = &lab;
        async move {
            eventually(what, LARGE_RELOAD, || async {
                let v = lab.admin_json("/policy").await;
                ready(&v).then_some(v)
            })
            .await
        }
    };

    let done = AtomicBool::new(false);
    let traffic = || async {
        let (mut passed, mut failed) = (0usize, Vec::new());
        while !done.load(Ordering::Relaxed) {
            match request(&lab, "api.partner.test").await {
                Some((200, _)) => passed += 1,
                Some((status, body)) => failed.push(format!("{status}: {}", body.lines().next().unwrap_or(""))),
                None => failed.push("no answer".to_string()),
            }
        }
        (passed, failed)
    };
    let reloads = async {
        let mut good = first["version"].as_str().unwrap().to_string();
        let svc = dir.join("services/svc7.yaml");
        for generation in 1..=10 {
            let text = std::fs::read_to_string(&svc).unwrap();
            if generation % 2 == 0 {
                support::lab::atomic_write(&svc, &format!("{text}  - host: [unterminated\n"));
                let v = wait(
                    "the broken edit rejected",
                    Box::new(|v| v["lastReloadError"].to_string().contains("svc7.yaml")),
                )
                .await;
                assert_eq!(v["version"], good.as_str(), "the last good policy serves");
                support::lab::atomic_write(&svc, &text);
            } else {
                support::lab::atomic_write(&svc, &format!("{text}# edit {generation}\n"));
                let want = egressd::policy::PolicySource::from_dir(dir).unwrap().version();
                let w = want.clone();
                wait("the good edit served", Box::new(move |v| v["version"] == w.as_str())).await;
                good = want;
            }
        }
        done.store(true, Ordering::Relaxed);
    };
    let ((a, fa), (b, fb), ()) = tokio::join!(traffic(), traffic(), reloads);
    assert!(fa.is_empty() && fb.is_empty(), "no request fails during the reloads: {fa:?} {fb:?}");
    assert!(a + b > 20, "traffic throughout: {} requests", a + b);
    eprintln!("{} requests through the gateway across 10 reloads of 100,000+ rules, 0 failed", a + b);
}
