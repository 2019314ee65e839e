//! Replicas sharing run-time state through a real etcd (`serve --state etcd`): a real `etcd` on
//! loopback ports in a temporary data directory, three real `egressd serve` processes, Checks and
//! admin calls over real gRPC. A grant, a revocation and a rollback-guard trip made on one replica
//! apply on the others; bad data in etcd is skipped; with etcd killed the replicas keep serving
//! what they knew and refuse new grants naming etcd, and after etcd restarts on the same data
//! directory grants work and propagate again.

mod support {
    pub mod check;
    pub mod eventually;
    pub mod server;
}

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::Code;
use tonic::transport::Channel;

use egressd::admin::grpc::{connect, pb};
use egressd::testing::http_check;

use support::check::{CheckResponseExt, check, client};
use support::eventually::eventually;
use support::server::try_http_get;

const POLICY: &str = "kind: MeshDefaults
trustDomain: corp.example
---
kind: ServicePolicy
service: payments
identities: [spiffe://corp.example/ns/payments/sa/api]
allow:
  - host: api.stripe.com
    justification: cards
---
kind: ServicePolicy
service: ledger
identities: [spiffe://corp.example/ns/ledger/sa/a, spiffe://corp.example/ns/ledger/sa/b]
mode: canary
canaryWorkloads: [spiffe://corp.example/ns/ledger/sa/a]
rollbackGuard: {maxDenyRate: 0.5, windowSeconds: 30, minChecks: 10}
allow:
  - host: db.ledger.test
    justification: database
";
const PAY: &str = "spiffe://corp.example/ns/payments/sa/api";
const LEDGER_A: &str = "spiffe://corp.example/ns/ledger/sa/a";
const TOKEN: &str = "alice-0123456789abcdef";
const PREFIX: &str = "/egressd-test/";
/// What the issue asks of propagation through etcd's watch.
const PROPAGATION: Duration = Duration::from_secs(1);
/// Process start-up (etcd, a debug egressd) on a shared, busy machine.
const START: Duration = Duration::from_secs(20);

type Admin = pb::admin_client::AdminClient<
    tonic::service::interceptor::InterceptedService<Channel, egressd::admin::tokens::BearerToken>,
>;

fn free_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn s(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// A child process killed (and reaped) when dropped; its log printed if the test failed.
struct Proc {
    child: Option<std::process::Child>,
    log: PathBuf,
}

impl Proc {
    fn spawn(mut cmd: std::process::Command, log: PathBuf) -> Proc {
        let out = std::fs::File::create(&log).unwrap();
        cmd.stdout(out.try_clone().unwrap()).stderr(out);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("{cmd:?} does not start: {e}"));
        Proc { child: Some(child), log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `GET path` on `addr` answers 200; panics with the log if the process exits.
    async fn wait_ready(&mut self, addr: SocketAddr, path: &str) {
        let deadline = tokio::time::Instant::now() + START;
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("{} exited ({status}) before it was ready:\n{}", self.log.display(), self.log());
            }
            if matches!(try_http_get(addr, path).await, Ok((200, _))) {
                return;
            }
            assert!(tokio::time::Instant::now() < deadline, "not ready in {START:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// SIGKILL: an etcd that vanishes, not one that says goodbye.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.kill();
            if std::thread::panicking() {
                eprintln!("--- {}:\n{}", self.log.display(), self.log());
            }
        }
    }
}

/// A one-member etcd on loopback ports; restartable on the same data directory and ports.
struct Etcd {
    proc: Proc,
    dir: PathBuf,
    client: SocketAddr,
    peer: SocketAddr,
    runs: usize,
}

impl Etcd {
    async fn start(work: &Path) -> Etcd {
        let (client, peer) = (free_addr(), free_addr());
        let proc = Etcd::spawn(work, client, peer, 0);
        let mut etcd = Etcd { proc, dir: work.to_path_buf(), client, peer, runs: 1 };
        etcd.proc.wait_ready(client, "/health").await;
        etcd
    }

    fn spawn(work: &Path, client: SocketAddr, peer: SocketAddr, run: usize) -> Proc {
        let (client_url, peer_url) = (format!("http://{client}"), format!("http://{peer}"));
        let mut cmd = std::process::Command::new("etcd");
        cmd.args(["--name", "test", "--data-dir", s(&work.join("etcd-data"))])
            .args(["--listen-client-urls", &client_url, "--advertise-client-urls", &client_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("test={peer_url}")])
            .args(["--log-level", "warn"]);
        Proc::spawn(cmd, work.join(format!("etcd-{run}.log")))
    }

    fn url(&self) -> String {
        format!("http://{}", self.client)
    }

    fn kill(&mut self) {
        self.proc.kill();
    }

    async fn restart(&mut self) {
        self.proc = Etcd::spawn(&self.dir, self.client, self.peer, self.runs);
        self.runs += 1;
        self.proc.wait_ready(self.client, "/health").await;
    }
}

/// `egressd serve --state etcd` as a subprocess, with its own ports.
struct Replica {
    proc: Proc,
    grpc: SocketAddr,
}

impl Replica {
    async fn start(work: &Path, n: usize, etcd: &Etcd) -> Replica {
        let (grpc, admin) = (free_addr(), free_addr());
        let policy = work.join("policy");
        std::fs::create_dir_all(&policy).unwrap();
        std::fs::write(policy.join("mesh.yaml"), POLICY).unwrap();
        let tokens = work.join("admin-tokens");
        std::fs::write(&tokens, format!("alice {TOKEN}\n")).unwrap();
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_egressd"));
        for var in ["OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "EGRESSD_POLICY", "RUST_LOG"] {
            cmd.env_remove(var);
        }
        cmd.current_dir(work)
            .args(["serve", "--policy", s(&policy), "--grpc-listen", &grpc.to_string()])
            .args(["--admin-listen", &admin.to_string(), "--admin-tokens", s(&tokens)])
            .args(["--state", "etcd", "--etcd-endpoints", &etcd.url(), "--etcd-prefix", PREFIX])
            .args(["--flow-table-size", "0", "--no-detect"]);
        let mut proc = Proc::spawn(cmd, work.join(format!("replica-{n}.log")));
        proc.wait_ready(admin, "/readyz").await;
        Replica { proc, grpc }
    }

    async fn admin(&self) -> Admin {
        connect(&self.grpc.to_string(), Some(TOKEN)).await.unwrap()
    }

    /// The Check answer's status code for `from` CONNECTing to `host`: 0 through, 7 denied.
    async fn code(&self, from: &str, host: &str) -> i32 {
        check(&mut client(self.grpc).await, http_check(from, "CONNECT", host, &[])).await.code()
    }

    /// Waits until a CONNECT from `from` to `host` answers `code`.
    async fn expect(&self, from: &str, host: &str, code: i32, within: Duration) {
        let what = format!("{from} -> {host} answering {code} on {}", self.grpc);
        eventually(&what, within, || async { (self.code(from, host).await == code).then_some(()) }).await;
    }
}

fn grant_req(to: &str) -> pb::GrantBreakGlassRequest {
    pb::GrantBreakGlassRequest {
        service: "payments".into(),
        to: to.into(),
        all: false,
        duration_seconds: 600,
        reason: "INC-16: shared grants".into(),
    }
}

async fn start_all(work: &Path) -> (Etcd, Vec<Replica>) {
    assert!(
        std::process::Command::new("etcd").arg("--version").output().is_ok(),
        "these tests need `etcd` on PATH (Debian: apt-get install etcd-server)"
    );
    let etcd = Etcd::start(work).await;
    let mut replicas = Vec::new();
    for n in 1..=3 {
        replicas.push(Replica::start(work, n, &etcd).await);
    }
    (etcd, replicas)
}

#[tokio::test]
async fn grants_revocations_and_guard_trips_made_on_one_replica_apply_on_all() {
    let work = tempfile::tempdir().unwrap();
    let (etcd, r) = start_all(work.path()).await;
    for replica in &r {
        assert_eq!(replica.code(PAY, "vendor.test:443").await, 7, "denied before any grant");
    }

    // A value that does not parse, written by someone else: skipped, nothing breaks.
    let mut raw = etcd_client::Client::connect([etcd.url()], None).await.unwrap();
    raw.put(format!("{PREFIX}grants/bg-garbage"), "{ not json", None).await.unwrap();

    let g = r[0].admin().await.grant_break_glass(grant_req("vendor.test:443")).await.unwrap().into_inner();
    assert_eq!(r[0].code(PAY, "vendor.test:443").await, 0, "the granting replica applies it at once");
    for replica in &r[1..] {
        replica.expect(PAY, "vendor.test:443", 0, PROPAGATION).await;
    }
    let listed = r[2].admin().await.list_grants(pb::ListGrantsRequest::default()).await.unwrap().into_inner();
    assert_eq!(listed.grants.iter().map(|x| x.id.as_str()).collect::<Vec<_>>(), [g.id.as_str()]);

    // Revoked on another replica than the one that granted it.
    r[1].admin().await.revoke_grant(pb::RevokeGrantRequest { id: g.id.clone() }).await.unwrap();
    for replica in &r {
        replica.expect(PAY, "vendor.test:443", 7, PROPAGATION).await;
    }

    // Ledger's canary workload is enforced: denied, until replica 1's guard trips on its denies.
    for replica in &r {
        assert_eq!(replica.code(LEDGER_A, "elsewhere.test:443").await, 7);
    }
    for _ in 0..12 {
        r[0].code(LEDGER_A, "elsewhere.test:443").await;
    }
    // The trip itself waits for the once-a-second sampler; then it propagates.
    for replica in &r {
        replica.expect(LEDGER_A, "elsewhere.test:443", 0, PROPAGATION * 3).await;
    }
    for replica in &r {
        assert!(replica.proc.log().contains("etcd: value does not parse; skipped"), "{}", replica.proc.log());
    }
}

#[tokio::test]
async fn with_etcd_gone_replicas_serve_the_last_state_refuse_grants_and_converge_when_it_returns() {
    let work = tempfile::tempdir().unwrap();
    let (mut etcd, r) = start_all(work.path()).await;
    r[0].admin().await.grant_break_glass(grant_req("before.test:443")).await.unwrap();
    for replica in &r {
        replica.expect(PAY, "before.test:443", 0, PROPAGATION).await;
    }

    etcd.kill();
    let refused = r[1].admin().await.grant_break_glass(grant_req("during.test:443")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unavailable, "{}", refused.message());
    assert!(refused.message().contains("etcd") && refused.message().contains("refused"), "{}", refused.message());
    for replica in &r {
        assert_eq!(replica.code(PAY, "before.test:443").await, 0, "the last known grant still applies");
        assert_eq!(replica.code(PAY, "during.test:443").await, 7, "the refused grant applies nowhere");
    }

    etcd.restart().await;
    // The replicas connect again on their own; the first grant etcd takes propagates as before.
    // (A restarted etcd may take seconds to elect itself and take writes on a loaded machine: a
    // fresh CI run once needed more than 5 s, and a run beside a release build more than 20 s.)
    let after = eventually("a grant accepted after etcd restarted", Duration::from_secs(45), || async {
        r[2].admin().await.grant_break_glass(grant_req("after.test:443")).await.ok()
    })
    .await;
    assert_eq!(after.get_ref().host, "after.test");
    for replica in &r {
        replica.expect(PAY, "after.test:443", 0, PROPAGATION).await;
        assert_eq!(replica.code(PAY, "before.test:443").await, 0, "re-listed state keeps the old grant");
    }

    // A replica started now reports ready once the shared grants are loaded (start-up waits for
    // the first list), so its first Checks see them.
    let late = Replica::start(work.path(), 4, &etcd).await;
    assert_eq!(late.code(PAY, "before.test:443").await, 0, "loaded before it reported ready");
    assert_eq!(late.code(PAY, "after.test:443").await, 0);
}
