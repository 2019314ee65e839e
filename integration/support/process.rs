#![allow(dead_code)] // each test binary uses a subset of these helpers
//! egressd as the real binary, for tests that kill it (SIGKILL, SIGTERM) and start it again on
//! the same ports, as a supervisor (the kubelet) would.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::eventually::eventually;
use super::server::try_http_get;

pub struct EgressdProcess {
    child: Option<Child>,
    args: Vec<String>,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    log: PathBuf,
    starts: usize,
}

impl EgressdProcess {
    /// `egressd serve --policy DIR` on the given ports (break-glass state in `work`), ready.
    pub async fn start(policy: &Path, work: &Path, grpc: SocketAddr, admin: SocketAddr) -> EgressdProcess {
        Self::start_with(policy, work, grpc, admin, &[]).await
    }

    /// As `start`, with more `serve` arguments.
    pub async fn start_with(
        policy: &Path,
        work: &Path,
        grpc: SocketAddr,
        admin: SocketAddr,
        extra: &[String],
    ) -> EgressdProcess {
        let mut args = vec![
            "serve".to_string(),
            format!("--policy={}", policy.display()),
            format!("--grpc-listen={grpc}"),
            format!("--admin-listen={admin}"),
            format!("--break-glass-state={}", work.join("break-glass.json").display()),
        ];
        args.extend(extra.iter().cloned());
        let mut p = EgressdProcess { child: None, args, grpc, admin, log: work.join("egressd.log"), starts: 0 };
        p.spawn_ready().await;
        p
    }

    async fn spawn_ready(&mut self) {
        self.starts += 1;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_egressd"))
            .args(&self.args)
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .stdin(Stdio::null())
            .spawn()
            .expect("egressd serve starts");
        self.child = Some(child);
        let admin = self.admin;
        eventually("egressd ready", Duration::from_secs(20), || async move {
            matches!(try_http_get(admin, "/readyz").await, Ok((200, _))).then_some(())
        })
        .await;
    }

    /// SIGKILL: no drain, no goodbye.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
            child.wait().unwrap();
        }
    }

    /// SIGTERM, then waits for the exit; returns whether it exited cleanly.
    pub fn terminate(&mut self) -> bool {
        let Some(mut child) = self.child.take() else { return false };
        // The shell's builtin kill: /bin/kill (procps) is not on every fresh machine.
        let sent = Command::new("sh").arg("-c").arg(format!("kill -TERM {}", child.id())).status().unwrap();
        assert!(sent.success());
        child.wait().unwrap().success()
    }

    /// Starts it again with the same arguments and ports.
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn_ready().await;
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EgressdProcess {
    fn drop(&mut self) {
        self.kill();
    }
}
