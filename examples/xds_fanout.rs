//! xDS fan-out: N simulated ADS clients (half state-of-the-world, half delta, each on its own
//! HTTP/2 connection, like N Envoys) connect to a running `egressd serve`, take the initial config and
//! ACK it; then one policy edit (a Gateway timeout, which changes the listeners) and the time until
//! every client has received and ACKed the new listeners. Also the server's resident memory before
//! and after the clients connect (from /proc, so run on the same machine).
//!
//!   bash benches/xds_fanout.sh            (builds, starts egressd on a temp copy of mesh-config/)

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::Parser;
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use prost::Name;
use tokio::sync::{Barrier, mpsc};
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;

#[derive(Parser)]
struct Args {
    /// egressd's gRPC address.
    #[arg(long, default_value = "127.0.0.1:18200")]
    target: SocketAddr,
    /// egressd's process id (for its resident memory).
    #[arg(long)]
    pid: u32,
    /// The Gateway document to edit (in egressd's watched policy directory).
    #[arg(long)]
    gateway_file: PathBuf,
    /// Clients (half SotW, half delta).
    #[arg(long, default_value_t = 1000)]
    clients: usize,
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// One client: subscribe to listeners, ACK the first version, report readiness, then ACK the next
/// version and report when it did.
async fn client(
    target: SocketAddr,
    i: usize,
    delta: bool,
    ready: Arc<Barrier>,
    done: mpsc::UnboundedSender<Instant>,
) -> Result<(), String> {
    let mut c =
        AggregatedDiscoveryServiceClient::connect(format!("http://{target}")).await.map_err(|e| e.to_string())?;
    let node = Some(Node { id: format!("sim-{i}"), cluster: "egress-gateway".into(), ..Default::default() });
    let lds = Listener::type_url();
    if delta {
        let (tx, rx) = mpsc::channel(4);
        tx.send(DeltaDiscoveryRequest { node, type_url: lds.clone(), ..Default::default() }).await.unwrap();
        let mut stream =
            c.delta_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
        for round in 0..2 {
            let r = stream.next().await.ok_or("stream ended")?.map_err(|e| e.to_string())?;
            tx.send(DeltaDiscoveryRequest { type_url: lds.clone(), response_nonce: r.nonce, ..Default::default() })
                .await
                .unwrap();
            if round == 0 {
                ready.wait().await;
            } else {
                let _ = done.send(Instant::now());
            }
        }
        // Keep the stream open until the run ends.
        std::future::pending::<()>().await;
    } else {
        let (tx, rx) = mpsc::channel(4);
        tx.send(DiscoveryRequest { node, type_url: lds.clone(), ..Default::default() }).await.unwrap();
        let mut stream =
            c.stream_aggregated_resources(ReceiverStream::new(rx)).await.map_err(|e| e.to_string())?.into_inner();
        for round in 0..2 {
            let r = stream.next().await.ok_or("stream ended")?.map_err(|e| e.to_string())?;
            tx.send(DiscoveryRequest {
                type_url: lds.clone(),
                version_info: r.version_info,
                response_nonce: r.nonce,
                ..Default::default()
            })
            .await
            .unwrap();
            if round == 0 {
                ready.wait().await;
            } else {
                let _ = done.send(Instant::now());
            }
        }
        std::future::pending::<()>().await;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let args = Args::parse();
    let rss_before = rss_kib(args.pid);
    let ready = Arc::new(Barrier::new(args.clients + 1));
    let (done_tx, mut done_rx) = mpsc::unbounded_channel();
    let connect_start = Instant::now();
    for i in 0..args.clients {
        let (ready, done) = (ready.clone(), done_tx.clone());
        let target = args.target;
        tokio::spawn(async move {
            if let Err(e) = client(target, i, i % 2 == 1, ready, done).await {
                eprintln!("client {i}: {e}");
                std::process::exit(1);
            }
        });
    }
    ready.wait().await;
    let connected = connect_start.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_after = rss_kib(args.pid);

    // One policy change: the Gateway's authz timeout, which every listener carries.
    let text = std::fs::read_to_string(&args.gateway_file).unwrap();
    let edited = if text.contains("timeoutMs: 500") {
        text.replace("timeoutMs: 500", "timeoutMs: 450")
    } else {
        text.replace("timeoutMs: 450", "timeoutMs: 500")
    };
    assert_ne!(edited, text, "the Gateway file has an authz timeoutMs to toggle");
    let tmp = args.gateway_file.with_extension("tmp~");
    std::fs::write(&tmp, edited).unwrap();
    let t0 = Instant::now();
    std::fs::rename(&tmp, &args.gateway_file).unwrap();
    let mut first = None;
    let mut last = t0;
    for _ in 0..args.clients {
        let at = tokio::time::timeout(Duration::from_secs(60), done_rx.recv())
            .await
            .expect("all clients update within 60 s")
            .unwrap();
        first.get_or_insert(at);
        last = last.max(at);
    }
    let first = first.unwrap();
    println!(
        "clients {:>5} (half SotW, half delta): connected+initial ACK in {:>6.0} ms | change -> all ACKed {:>6.0} ms (first {:>5.0} ms, spread {:>5.0} ms; from the file rename, file-watch debounce included) | server RSS {:>7} KiB -> {:>7} KiB = {:>5.1} KiB/client",
        args.clients,
        connected.as_secs_f64() * 1e3,
        (last - t0).as_secs_f64() * 1e3,
        (first - t0).as_secs_f64() * 1e3,
        (last - first).as_secs_f64() * 1e3,
        rss_before,
        rss_after,
        (rss_after.saturating_sub(rss_before)) as f64 / args.clients as f64
    );
}
