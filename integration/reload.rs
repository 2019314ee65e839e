//! Hot reload under traffic, over real gRPC: a steady stream of Checks while the policy directory
//! is rewritten and reloaded 100 times, and a Kubernetes ConfigMap symlink swap picked up by the
//! watcher. Every answer names the policy version that made it; each must be that version's
//! decision, never a mix.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use egressd::policy::PolicySource;
use egressd::reload::{Outcome, ReloadStatus, reload_once};
use egressd::testing::http_check;

mod support {
    pub mod check;
    pub mod eventually;
    pub mod server;
}

use support::check::{CheckResponseExt, check, client};
use support::eventually::eventually;
use support::server::{TestServer, http_get};

const MESH: &str = "kind: MeshDefaults\ntrustDomain: corp.example\nmode: enforce\n";
const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";

/// Version A allows the probe destination; version B does not (default deny).
fn service(allow_probe: bool, generation: usize) -> String {
    let probe = if allow_probe { "  - host: probe.partner.test\n    justification: probe\n" } else { "" };
    format!(
        "kind: ServicePolicy\nservice: payments\nidentities: [{PAY}]\n# generation {generation}\nallow:\n  - host: api.stripe.com\n    justification: cards\n{probe}"
    )
}

fn atomic_write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp~");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_reloads_under_steady_traffic_fail_no_check_and_never_mix_versions() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("mesh.yaml"), MESH).unwrap();
    let svc = dir.path().join("payments.yaml");
    std::fs::write(&svc, service(true, 0)).unwrap();
    let server = TestServer::builder(PolicySource::from_dir(dir.path()).unwrap()).start().await;
    let client = client(server.grpc).await;

    // Checks at a steady rate (4 tasks x one per 2 ms) until the reloads are done.
    let done = Arc::new(AtomicBool::new(false));
    let mut traffic = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let (mut client, done) = (client.clone(), done.clone());
        traffic.spawn(async move {
            let mut answers = Vec::new();
            let mut failures = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(2));
            while !done.load(Ordering::Relaxed) {
                tick.tick().await;
                match client.check(http_check(PAY, "GET", "probe.partner.test", &[])).await {
                    Ok(r) => {
                        let r = r.into_inner();
                        answers.push((r.meta("policy_version"), r.code()));
                    }
                    Err(_) => failures += 1,
                }
            }
            (answers, failures)
        });
    }

    // 100 reloads, alternating A and B, through the same function the watcher and SIGHUP use.
    let status = Arc::new(ReloadStatus::default());
    let mut expected: BTreeMap<String, i32> = BTreeMap::new();
    expected.insert(server.policy.load().version.clone(), 0);
    for generation in 1..=100 {
        let allow = generation % 2 == 0;
        atomic_write(&svc, &service(allow, generation));
        let (dir, policy, status) = (dir.path().to_path_buf(), server.policy.clone(), status.clone());
        let outcome = tokio::task::spawn_blocking(move || reload_once(&dir, &policy, &status, &|_| {})).await.unwrap();
        let Outcome::Reloaded { to, .. } = outcome else { panic!("reload {generation}: {outcome:?}") };
        expected.insert(to, if allow { 0 } else { 7 });
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    done.store(true, Ordering::Relaxed);

    let (mut total, mut failures) = (0, 0);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    while let Some(result) = traffic.join_next().await {
        let (answers, failed) = result.unwrap();
        failures += failed;
        for (version, code) in answers {
            let want = expected.get(&version).unwrap_or_else(|| panic!("answer from unknown version {version}"));
            assert_eq!(code, *want, "version {version} answered with another version's decision");
            *seen.entry(version).or_default() += 1;
            total += 1;
        }
    }
    assert_eq!(failures, 0, "no Check fails during reloads");
    assert_eq!(status.reloads.load(Ordering::Relaxed), 100);
    assert!(total > 500, "steady traffic throughout: {total} checks");
    assert!(seen.len() > 50, "answers came from many of the 101 versions: {}", seen.len());
    eprintln!("{total} checks across {} policy versions, 0 failed", seen.len());
}

/// Kubernetes mounts a ConfigMap as `FILE -> ..data/FILE`, `..data -> ..<timestamp>/`, and
/// updates it by writing a new timestamped directory and renaming a new `..data` link over the old.
fn configmap_swap(dir: &Path, generation: usize, files: &[(&str, String)]) {
    let stamp = format!("..2026_11_21_{generation:04}");
    std::fs::create_dir(dir.join(&stamp)).unwrap();
    for (name, text) in files {
        std::fs::write(dir.join(&stamp).join(name), text).unwrap();
        let link = dir.join(name);
        if link.symlink_metadata().is_err() {
            std::os::unix::fs::symlink(Path::new("..data").join(name), &link).unwrap();
        }
    }
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(&stamp, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

/// The admin port's /policy once `ready` holds for it (waits up to 5 s).
async fn wait_for_policy(
    admin: std::net::SocketAddr,
    what: &str,
    ready: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    eventually(what, Duration::from_secs(5), || async {
        let (_, body) = http_get(admin, "/policy").await;
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        ready(&v).then_some(v)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configmap_symlink_swap_is_reloaded_and_a_bad_one_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let files = |allow: bool, g: usize| vec![("mesh.yaml", MESH.to_string()), ("payments.yaml", service(allow, g))];
    configmap_swap(dir.path(), 1, &files(false, 1));
    let source = PolicySource::from_dir(dir.path()).unwrap();
    assert_eq!(source.files.len(), 2, "each file read once, not again under ..data or ..<timestamp>");
    let server = TestServer::builder(source).watch(dir.path().to_path_buf()).start().await;

    configmap_swap(dir.path(), 2, &files(true, 2));
    let want = PolicySource::from_dir(dir.path()).unwrap().version();
    let policy = wait_for_policy(server.admin, "the swapped-in version", |v| v["version"] == want).await;
    assert_eq!(policy["version"], want.as_str(), "the swap was picked up: {policy}");

    let resp = check(&mut client(server.grpc).await, http_check(PAY, "GET", "probe.partner.test", &[])).await;
    assert_eq!(resp.code(), 0, "the new policy decides");

    // A swap to an invalid set is rejected with its location; the running policy stays.
    configmap_swap(
        dir.path(),
        3,
        &[
            ("mesh.yaml", MESH.to_string()),
            ("payments.yaml", "kind: ServicePolicy\nservice: payments\nmode: sometimes\n".to_string()),
        ],
    );
    let policy = wait_for_policy(server.admin, "a reload error", |v| !v["lastReloadError"].is_null()).await;
    assert_eq!(policy["version"], want.as_str(), "last good policy stays: {policy}");
    let errors = policy["lastReloadError"]["errors"].to_string();
    assert!(errors.contains("payments.yaml:3:7"), "{errors}");
}

/// The policy directory deleted, or a file in it that cannot be read: the reload is rejected and
/// says why on /policy, the last good policy keeps deciding, and no Check fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_or_unreadable_policy_keeps_the_last_good_one_serving() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("policy");
    std::fs::create_dir(&dir).unwrap();
    std::fs::write(dir.join("mesh.yaml"), MESH).unwrap();
    std::fs::write(dir.join("payments.yaml"), service(true, 1)).unwrap();
    let server = TestServer::builder(PolicySource::from_dir(&dir).unwrap()).watch(dir.clone()).start().await;
    let version = PolicySource::from_dir(&dir).unwrap().version();
    let mut c = client(server.grpc).await;
    let probe = || http_check(PAY, "GET", "probe.partner.test", &[]);
    assert_eq!(check(&mut c, probe()).await.code(), 0);

    // A file that cannot be read (a link to nowhere, as a half-synced checkout leaves).
    std::os::unix::fs::symlink("/nonexistent/egressd/groups.yaml", dir.join("groups.yaml")).unwrap();
    let policy =
        wait_for_policy(server.admin, "an unreadable file rejected", |v| !v["lastReloadError"].is_null()).await;
    let errors = policy["lastReloadError"]["errors"].to_string();
    assert!(errors.contains("groups.yaml") && errors.contains("cannot read policy"), "{errors}");
    assert_eq!(policy["version"], version.as_str(), "the last good policy serves: {policy}");
    assert_eq!(check(&mut c, probe()).await.code(), 0, "and decides");
    std::fs::remove_file(dir.join("groups.yaml")).unwrap();

    // The whole directory deleted.
    let failures = policy["reloadFailures"].as_u64().unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let policy = wait_for_policy(server.admin, "a deleted directory rejected", |v| {
        v["reloadFailures"].as_u64().unwrap() > failures
    })
    .await;
    assert_eq!(policy["version"], version.as_str(), "the last good policy serves: {policy}");
    assert!(policy["lastReloadError"]["errors"].to_string().contains("cannot read policy"), "{policy}");
    for _ in 0..20 {
        assert_eq!(check(&mut c, probe()).await.code(), 0, "no Check fails");
    }
}
