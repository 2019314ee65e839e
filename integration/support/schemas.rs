//! Kubernetes, Istio and Cilium objects validated against the real schemas: the npm packages
//! `kubernetes-models`, `@kubernetes-models/istio` and `@kubernetes-models/cilium` (installed by
//! `.ci/run` into `target/node-validate/`, or `EGRESSD_NODE_MODULES`), driven by
//! `integration/export/validate.mjs`.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What installs the packages (the failure message of a machine without them says it).
pub const INSTALL: &str = "npm install --prefix target/node-validate kubernetes-models@5 @kubernetes-models/istio@3 @kubernetes-models/cilium@4";

/// The node_modules directory holding the schema packages; fails the test, naming the install
/// command, when they are missing.
pub fn node_modules() -> PathBuf {
    let dir = std::env::var_os("EGRESSD_NODE_MODULES")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(ROOT).join("target/node-validate/node_modules"));
    for package in ["kubernetes-models", "@kubernetes-models/istio", "@kubernetes-models/cilium"] {
        assert!(
            dir.join(package).join("package.json").is_file(),
            "the schema packages are not installed in {} ({package} is missing). From {ROOT}, run:\n    {INSTALL}\n\
             (or point EGRESSD_NODE_MODULES at a node_modules directory that has them)",
            dir.display()
        );
    }
    dir
}

/// Runs validate.mjs on `objects` (as JSON lines): exit 0 when every object is valid.
pub fn validate(objects: &[Value]) -> Output {
    let modules = node_modules();
    let file = tempfile::NamedTempFile::new().unwrap();
    let lines: Vec<String> = objects.iter().map(|o| serde_json::to_string(o).unwrap()).collect();
    std::fs::write(file.path(), lines.join("\n") + "\n").unwrap();
    Command::new("node")
        .arg(Path::new(ROOT).join("integration/export/validate.mjs"))
        .arg(file.path())
        .env("NODE_PATH", &modules)
        .output()
        .unwrap_or_else(|e| {
            panic!("running node ({e}): install Node.js (20 or later), e.g. apt-get install -y nodejs npm")
        })
}
