//! The `egressd` binary: the allocator and the command line (`cli`). `anyhow` lives here, at the
//! edge; the library has its own error types.

mod cli;

/// mimalloc instead of glibc malloc: decoded CheckRequests are freed on the telemetry thread, and
/// glibc's per-arena locking made those cross-thread frees (and its consolidation passes) a large
/// share of the Check path's CPU under load; mimalloc frees to the owning thread's heap lock-free.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    cli::main()
}
