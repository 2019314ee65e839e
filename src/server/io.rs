//! The gRPC port's connections, tuned for small answers.
//!
//! h2 writes a DATA frame whose payload exceeds 256 bytes as its own vectored write when the
//! socket supports vectored writes, and only one such frame waits in its buffer at a time, so
//! answers of that size stop being batched: measured here, a verified CONNECT's answer (265
//! bytes) cost 2.2 `writev` calls per check against 0.9 for a 228-byte allow, and a fifth of the
//! server's throughput. Without vectored writes h2 copies payloads up to 1 KiB into its buffer
//! and writes many answers per syscall. egressd's answers are 150 to 500 bytes (xDS responses,
//! larger, are still written whole), so the listener's streams say they do not do vectored
//! writes.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tonic::transport::server::{Connected, TcpConnectInfo};

/// A TCP stream that asks its writers for contiguous writes.
pub struct BatchingStream(pub TcpStream);

impl AsyncRead for BatchingStream {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for BatchingStream {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        false
    }
}

impl Connected for BatchingStream {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.connect_info()
    }
}
