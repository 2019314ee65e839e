//! Asking the upstreams: each in order, `attempts` tries apiece, `timeout` per try, over UDP from
//! a fresh port (an off-path spoofer must guess port and id), then over TCP when the UDP answer
//! is truncated. An answer counts only if it is a response with the query's id and question;
//! SERVFAIL and REFUSED move on to the next upstream. All of it bounded: a dead upstream costs at
//! most `upstreams x attempts x timeout`, then the client gets SERVFAIL.

use std::net::SocketAddr;
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

use super::answer::ADVERTISED_UDP_PAYLOAD;
use super::query::Pending;

/// An upstream's UDP answer is read into this much (it was asked for at most `ADVERTISED_UDP_PAYLOAD`).
const UPSTREAM_UDP_BUFFER: usize = 4096;

/// The first good upstream answer to `pending`'s question, or `None` when every try failed.
pub async fn resolve(pending: &Pending) -> Option<Message> {
    for &upstream in &pending.upstreams {
        for _ in 0..pending.attempts.max(1) {
            let id = rand_id();
            let query = upstream_query(pending, id);
            let Ok(bytes) = query.to_vec() else { return None };
            match tokio::time::timeout(
                pending.timeout,
                exchange(upstream, &bytes, id, &pending.question, pending.timeout),
            )
            .await
            {
                Ok(Some(answer)) if failed(&answer) => break, // this upstream cannot help: the next one
                Ok(Some(answer)) => return Some(answer),
                _ => {}
            }
        }
    }
    None
}

fn failed(answer: &Message) -> bool {
    matches!(answer.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused)
}

fn rand_id() -> u16 {
    // The std hasher is randomly keyed per process; mixing in a counter makes ids unpredictable
    // off-path without another dependency.
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish() as u16
}

fn upstream_query(pending: &Pending, id: u16) -> Message {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Query);
    msg.metadata.recursion_desired = true;
    msg.metadata.checking_disabled = pending.checking_disabled;
    msg.add_query(pending.question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(ADVERTISED_UDP_PAYLOAD);
    edns.set_dnssec_ok(pending.dnssec_ok);
    msg.set_edns(edns);
    msg
}

/// One try: UDP, and TCP if the UDP answer was truncated.
async fn exchange(upstream: SocketAddr, query: &[u8], id: u16, question: &Query, timeout: Duration) -> Option<Message> {
    let answer = udp_exchange(upstream, query, id, question).await?;
    if !answer.metadata.truncation {
        return Some(answer);
    }
    tokio::time::timeout(timeout, tcp_exchange(upstream, query, id, question)).await.ok().flatten()
}

async fn udp_exchange(upstream: SocketAddr, query: &[u8], id: u16, question: &Query) -> Option<Message> {
    let local: SocketAddr = if upstream.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().ok()?;
    let socket = UdpSocket::bind(local).await.ok()?;
    socket.connect(upstream).await.ok()?;
    socket.send(query).await.ok()?;
    let mut buf = vec![0u8; UPSTREAM_UDP_BUFFER];
    loop {
        let n = socket.recv(&mut buf).await.ok()?;
        if let Some(answer) = accept(&buf[..n], id, question) {
            return Some(answer);
        }
        // Not ours (stale, spoofed, garbled): keep waiting within the try's timeout.
    }
}

async fn tcp_exchange(upstream: SocketAddr, query: &[u8], id: u16, question: &Query) -> Option<Message> {
    let mut stream = TcpStream::connect(upstream).await.ok()?;
    let len = u16::try_from(query.len()).ok()?;
    let mut framed = len.to_be_bytes().to_vec();
    framed.extend_from_slice(query);
    stream.write_all(&framed).await.ok()?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await.ok()?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.ok()?;
    accept(&buf, id, question)
}

/// An upstream's bytes as an answer to query `id` for `question`, or `None`.
pub fn accept(bytes: &[u8], id: u16, question: &Query) -> Option<Message> {
    let msg = Message::from_vec(bytes).ok()?;
    let ours = msg.metadata.message_type == MessageType::Response
        && msg.metadata.id == id
        && msg.queries.len() == 1
        && msg.queries[0].query_type() == question.query_type()
        && msg.queries[0].query_class() == question.query_class()
        && msg.queries[0].name() == question.name();
    ours.then_some(msg)
}
