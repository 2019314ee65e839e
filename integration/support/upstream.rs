#![allow(dead_code)] // each test binary uses a subset of these helpers
//! Real upstreams on 127.0.0.1: an HTTP/1.1 server and a TLS server (rustls) that answer every
//! request with 200 and a body naming the server and the Host it was asked for.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::pki::Issued;

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads one request head and answers 200 (`Connection: close`).
async fn answer<S: AsyncRead + AsyncWrite + Unpin>(mut s: S, who: &str) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => head.extend_from_slice(&buf[..n]),
        }
    }
    let head = String::from_utf8_lossy(&head);
    let field = |name: &str| {
        head.lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.trim()))
    };
    let host = field("host").unwrap_or("?");
    // egressd's forwarding headers are for the gateway alone: count any that arrived here.
    let internal = head.lines().filter(|l| l.to_ascii_lowercase().starts_with("x-egress")).count();
    let rid = field("x-request-id").unwrap_or("-");
    let body = format!("upstream {who} host {host} request-id {rid} internal-headers {internal}\n");
    let resp = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
    let _ = s.write_all(resp.as_bytes()).await;
    let _ = s.shutdown().await;
}

pub async fn start_http(who: &'static str) -> SocketAddr {
    start_http_on("127.0.0.1:0".parse().unwrap(), who).await
}

/// An HTTP upstream at `addr` (a fixed port, e.g. a well-known one on a test-only loopback IP).
pub async fn start_http_on(addr: SocketAddr, who: &'static str) -> SocketAddr {
    let listener = bind(addr).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            tokio::spawn(answer(s, who));
        }
    });
    addr
}

pub async fn start_tls(who: &'static str, cert: &Issued) -> SocketAddr {
    start_tls_on("127.0.0.1:0".parse().unwrap(), who, cert).await
}

/// Binds, saying plainly what a well-known port needs.
async fn bind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).await.unwrap_or_else(|e| {
        panic!("bind {addr}: {e} (ports below 1024 need root or CAP_NET_BIND_SERVICE; the tests run as root in CI)")
    })
}

/// A TLS upstream at `addr`.
pub async fn start_tls_on(addr: SocketAddr, who: &'static str, cert: &Issued) -> SocketAddr {
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert_der.clone()], cert.key())
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let listener = bind(addr).await;
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                if let Ok(tls) = acceptor.accept(s).await {
                    answer(tls, who).await;
                }
            });
        }
    });
    addr
}
