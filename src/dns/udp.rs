//! The UDP listener: a few tasks receive on one socket; answers from the cache or the policy are
//! sent from the receiving task (no task per packet), forwards run in their own task, at most
//! `MAX_IN_FLIGHT` at once (beyond that a query is dropped, as an overloaded resolver does, and the
//! client retries).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::query::{Step, Transport, finish, handle};
use super::{Shared, arrival};

/// Forwarded queries waiting for an upstream at once.
const MAX_IN_FLIGHT: usize = 4096;
/// Largest query read (EDNS clients send small queries; anything longer is truncated, then malformed).
const RECV_BUFFER: usize = 4096;

pub async fn serve(socket: Arc<UdpSocket>, shared: Arc<Shared>, workers: usize) {
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers.max(1) {
        tasks.spawn(receive(socket.clone(), shared.clone(), in_flight.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn receive(socket: Arc<UdpSocket>, shared: Arc<Shared>, in_flight: Arc<Semaphore>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        let (n, client) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            // ICMP errors of earlier sends surface here on some systems: not fatal.
            Err(_) => continue,
        };
        let policy = shared.policy.load();
        match handle(&shared.resolver, &policy, &buf[..n], client, Transport::Udp, arrival()) {
            Step::Reply(bytes, event) => {
                let _ = socket.send_to(&bytes, client).await;
                shared.telemetry.submit_dns(*event);
            }
            Step::Forward(pending) => {
                let Ok(permit) = in_flight.clone().try_acquire_owned() else {
                    shared.telemetry.metrics.dns_dropped.inc();
                    continue;
                };
                let (socket, shared) = (socket.clone(), shared.clone());
                tokio::spawn(async move {
                    forward(&socket, &shared, *pending, client).await;
                    drop(permit);
                });
            }
            Step::Drop => {
                shared.telemetry.metrics.dns_dropped.inc();
            }
        }
    }
}

async fn forward(socket: &UdpSocket, shared: &Shared, pending: super::query::Pending, client: SocketAddr) {
    let upstream = super::forward::resolve(&pending).await;
    let (bytes, event) = finish(&shared.resolver, pending, upstream, std::time::Instant::now());
    let _ = socket.send_to(&bytes, client).await;
    shared.telemetry.submit_dns(*event);
}
