//! Embeds every `mesh-config/**/*.yaml` file into the binary, so `egressd serve` runs on the
//! example policy even where no `mesh-config/` directory exists; and generates egressd's own gRPC
//! API (`proto/egressd/admin/v1/admin.proto`) with tonic-prost-build, using the `protoc` binary
//! vendored by protoc-bin-vendored, so building needs no system protoc; and builds the gateway's
//! tunnel filter (`src/tunnel_filter`, a proxy-wasm module for `wasm32-wasip1`), which the binary
//! embeds and sends to Envoy inline (`xds::tunnel`).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    embed_policy();
    build_tunnel_filter();
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

/// Builds the tunnel filter with the same toolchain into its own target directory (a nested
/// cargo on egressd's would wait on the lock this build holds). `EGRESSD_TUNNEL_FILTER_WASM`
/// names a module built elsewhere instead (a toolchain without the wasm target, e.g. a nightly
/// for `cargo fuzz`).
fn build_tunnel_filter() {
    println!("cargo:rerun-if-env-changed=EGRESSD_TUNNEL_FILTER_WASM");
    let out = PathBuf::from(std::env::var("OUT_DIR").unwrap());
    let dest = out.join("tunnel_filter.wasm");
    if let Ok(prebuilt) = std::env::var("EGRESSD_TUNNEL_FILTER_WASM") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &dest).unwrap_or_else(|e| panic!("EGRESSD_TUNNEL_FILTER_WASM={prebuilt}: {e}"));
        return;
    }
    let crate_dir = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").unwrap()).join("src/tunnel_filter");
    for watched in ["Cargo.toml", "Cargo.lock", "src"] {
        println!("cargo:rerun-if-changed={}", crate_dir.join(watched).display());
    }
    let target_dir = out.join("tunnel-filter-target");
    // The `cargo` on PATH with the toolchain's own choice (rustup's default), not the outer
    // build's: `cargo +nightly fuzz` builds the same module as `cargo build`, with the toolchain
    // the wasm target was added to.
    let mut cmd = std::process::Command::new("cargo");
    cmd.args(["build", "--release", "--locked", "--target", "wasm32-wasip1", "--manifest-path"])
        .arg(crate_dir.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer build's flags (a fuzzer's sanitizers, coverage) are not the module's.
    for var in [
        "RUSTFLAGS",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTC_WRAPPER",
        "RUSTC",
        "RUSTUP_TOOLCHAIN",
    ] {
        cmd.env_remove(var);
    }
    // The same module from any checkout: the paths panic locations name are made relative to
    // the source and the cargo home, so the bytes (and the listener's version) do not depend on
    // where the repository or the registry sit.
    let home =
        std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let remap =
        [format!("--remap-path-prefix={}=/egressd", crate_dir.display()), format!("--remap-path-prefix={home}=/cargo")];
    cmd.env("CARGO_ENCODED_RUSTFLAGS", remap.join("\x1f"));
    let status = cmd.status().expect("running cargo for src/tunnel_filter");
    if !status.success() {
        panic!(
            "building the tunnel filter (src/tunnel_filter) for wasm32-wasip1 failed; if the target is missing, \
             run `rustup target add wasm32-wasip1` (or set EGRESSD_TUNNEL_FILTER_WASM to a built module)"
        );
    }
    let built = target_dir.join("wasm32-wasip1/release/egressd_tunnel_filter.wasm");
    let module = std::fs::read(&built).unwrap_or_else(|e| panic!("{}: {e}", built.display()));
    std::fs::write(&dest, exporting_only_used_hooks(&module)).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
}

/// The exports the tunnel filter needs: the ABI version, memory and start-up, its contexts'
/// lifecycle, and the two request hooks it implements.
const TUNNEL_FILTER_EXPORTS: [&str; 11] = [
    "memory",
    "_initialize",
    "proxy_on_memory_allocate",
    "proxy_on_vm_start",
    "proxy_on_configure",
    "proxy_on_foreign_function",
    "proxy_on_context_create",
    "proxy_on_request_headers",
    "proxy_on_request_body",
    "proxy_on_done",
    "proxy_on_delete",
];

/// The module with every other proxy-wasm hook unexported. Envoy calls a hook only when the module
/// exports it, and the proxy-wasm SDK exports them all: untrimmed, every tunnel's response headers
/// and every chunk of its download would cross into the VM for nothing (measured: about 6 us of
/// Envoy CPU per tunnel, a third of what the filter costs).
fn exporting_only_used_hooks(module: &[u8]) -> Vec<u8> {
    use wasm_encoder::reencode::{Reencode, RoundtripReencoder};
    let keep = |name: &str| name.starts_with("proxy_abi_version_") || TUNNEL_FILTER_EXPORTS.contains(&name);
    let mut out = wasm_encoder::Module::new();
    let (mut kept, mut dropped) = (Vec::new(), Vec::new());
    for payload in wasmparser::Parser::new(0).parse_all(module) {
        let payload = payload.expect("the tunnel filter module parses");
        if let wasmparser::Payload::ExportSection(reader) = &payload {
            let mut exports = wasm_encoder::ExportSection::new();
            for export in reader.clone() {
                let export = export.expect("an export entry");
                if keep(export.name) {
                    let kind = RoundtripReencoder.export_kind(export.kind).expect("a known export kind");
                    exports.export(export.name, kind, export.index);
                    kept.push(export.name);
                } else {
                    dropped.push(export.name);
                }
            }
            out.section(&exports);
        } else if let Some((id, range)) = payload.as_section() {
            let at = |offset| usize::try_from(offset).expect("a module smaller than the address space");
            out.section(&wasm_encoder::RawSection { id, data: &module[at(range.start)..at(range.end)] });
        }
    }
    for needed in ["proxy_on_request_headers", "proxy_on_request_body", "proxy_on_context_create", "proxy_on_delete"] {
        assert!(kept.contains(&needed), "the tunnel filter module does not export {needed}");
    }
    assert!(dropped.contains(&"proxy_on_response_body"), "the SDK's exports changed: {dropped:?}");
    out.finish()
}
