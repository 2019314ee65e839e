//! Embeds every `mesh-config/**/*.yaml` file into the binary, so `egressd serve` runs on the
//! example policy even where no `mesh-config/` directory exists; and generates egressd's own gRPC
//! API (`proto/egressd/admin/v1/admin.proto`) with tonic-prost-build, using the `protoc` binary
//! vendored by protoc-bin-vendored, so building needs no system protoc.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    embed_policy();
    let protoc = protoc_bin_vendored::protoc_bin_path().expect("vendored protoc for this platform");
    println!("cargo:rerun-if-changed=proto");
    // The protoc to use is passed to prost-build directly, not through the environment.
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc);
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_with_config(config, &["proto/egressd/admin/v1/admin.proto"], &["proto"])
        .expect("compiling proto/egressd/admin/v1/admin.proto");
}

fn embed_policy() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("mesh-config");
    println!("cargo:rerun-if-changed={}", root.display());
    let mut files = Vec::new();
    collect(&root, &mut files);
    files.sort();
    let mut out = String::from("/// Embedded copy of mesh-config/: (path relative to mesh-config/, text).\n");
    out.push_str("pub static EMBEDDED_FILES: &[(&str, &str)] = &[\n");
    for path in &files {
        println!("cargo:rerun-if-changed={}", path.display());
        let rel = path.strip_prefix(&root).unwrap().display().to_string();
        writeln!(out, "    ({rel:?}, include_str!({:?})),", path.display().to_string()).unwrap();
    }
    out.push_str("];\n");
    let dest = PathBuf::from(std::env::var("OUT_DIR").unwrap()).join("embedded_policy.rs");
    std::fs::write(dest, out).unwrap();
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else if matches!(path.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(path);
        }
    }
}
