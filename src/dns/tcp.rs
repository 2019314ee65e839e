//! The TCP listener (RFC 7766): two-byte length framing, queries on a connection answered in
//! turn, an idle connection closed after `IDLE_TIMEOUT`, at most `MAX_CONNECTIONS` at once.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::query::{Step, Transport, finish, handle};
use super::{Shared, arrival};

const IDLE_TIMEOUT: Duration = Duration::from_secs(10);
const MAX_CONNECTIONS: usize = 512;

pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            // Out of file descriptors, most likely: give the open connections time to finish.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else { continue }; // full: close it
        let shared = shared.clone();
        tokio::spawn(async move {
            let _ = stream.set_nodelay(true);
            connection(stream, &shared).await;
            drop(permit);
        });
    }
}

async fn connection(mut stream: TcpStream, shared: &Shared) {
    let Ok(client) = stream.peer_addr() else { return };
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut packet = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(IDLE_TIMEOUT, stream.read_exact(&mut packet)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let step = {
            let policy = shared.policy.load();
            handle(&shared.resolver, &policy, &packet, client, Transport::Tcp, arrival())
        };
        let (bytes, event) = match step {
            Step::Reply(bytes, event) => (bytes, event),
            Step::Forward(pending) => {
                let upstream = super::forward::resolve(&pending).await;
                finish(&shared.resolver, *pending, upstream, std::time::Instant::now())
            }
            Step::Drop => {
                shared.telemetry.metrics.dns_dropped.inc();
                return; // a stream that sent garbage is not read further
            }
        };
        let Ok(n) = u16::try_from(bytes.len()) else { return };
        let mut framed = Vec::with_capacity(bytes.len() + 2);
        framed.extend_from_slice(&n.to_be_bytes());
        framed.extend_from_slice(&bytes);
        if stream.write_all(&framed).await.is_err() {
            return;
        }
        shared.telemetry.submit_dns(*event);
    }
}
