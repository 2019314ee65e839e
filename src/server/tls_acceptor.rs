//! The gRPC port's TLS handshakes, with certificates that reload in place.
//!
//! tonic's own acceptor reads its identity once; a certificate cert-manager or csi-driver-spiffe
//! renews every few hours would then need a restart before it expires. Here the rustls config
//! lives in an `ArcSwap`: every new connection takes the current one, and a watch on the
//! directories of `--tls-cert`, `--tls-key` and `--client-ca` builds a new config when a file there
//! changes (the kubelet's `..data` swap, a helper's rename, an editor's write). A set that does not
//! load (a key that does not match its certificate, a half-written file) is logged and the running
//! config stays: connections keep being served with the last good certificate. Connections already
//! open keep the certificate they were handshaken with.
//!
//! Handshakes run concurrently, each bounded in time, so a slow or silent client holds up no one;
//! finished TLS streams go to tonic as its incoming connections (their peer certificates reach the
//! admin API through tonic's `TlsConnectInfo`, as with tonic's acceptor).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use notify_debouncer_full::notify::RecursiveMode;
use notify_debouncer_full::{DebounceEventResult, new_debouncer};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::{Stream, StreamExt};

use super::tls::{GrpcTls, TlsError};

/// How long a connection may take to finish its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshaken connections waiting for tonic to take them.
const READY_QUEUE: usize = 128;
/// File events are gathered this long before the files are read (a swap is several events).
const DEBOUNCE: Duration = Duration::from_millis(200);

/// The current TLS config of the gRPC port, and the files it comes from.
pub struct ReloadingTls {
    files: GrpcTls,
    current: ArcSwap<rustls::ServerConfig>,
}

impl ReloadingTls {
    /// Loads the files (each error names its flag and file): egressd does not start without them.
    pub fn load(files: GrpcTls) -> Result<Arc<Self>, TlsError> {
        let config = files.rustls_config()?;
        Ok(Arc::new(ReloadingTls { files, current: ArcSwap::from_pointee(config) }))
    }

    /// Reads the files again; on success the next connection uses them. `false`: kept the old.
    pub fn reload(&self) -> bool {
        match self.files.rustls_config() {
            Ok(config) => {
                self.current.store(Arc::new(config));
                tracing::info!(cert = %self.files.cert.display(), "gRPC TLS certificate reloaded");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "gRPC TLS files changed but do not load; serving the previous certificate");
                false
            }
        }
    }

    /// The config a new connection is handshaken with.
    pub fn current(&self) -> Arc<rustls::ServerConfig> {
        self.current.load_full()
    }

    /// The directories to watch: those of the files as named (a link's own directory, where a
    /// kubelet swap happens), each once.
    fn directories(&self) -> Vec<PathBuf> {
        let files = [Some(&self.files.cert), Some(&self.files.key), self.files.client_ca.as_ref()];
        let mut dirs: Vec<PathBuf> = files
            .into_iter()
            .flatten()
            .map(|f| {
                f.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(std::path::Path::new(".")).to_path_buf()
            })
            .collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Watches the files' directories and reloads on change, for as long as the returned watcher
    /// lives. A directory that cannot be watched is an error (the certificate would silently
    /// never rotate).
    pub fn watch(self: &Arc<Self>) -> Result<impl Drop + use<>, TlsError> {
        let tls = Arc::clone(self);
        let mut debouncer = new_debouncer(DEBOUNCE, None, move |events: DebounceEventResult| {
            if events.is_ok_and(|e| !e.is_empty()) {
                tls.reload();
            }
        })
        .map_err(|e| TlsError::Config(format!("cannot watch the TLS files: {e}")))?;
        for dir in self.directories() {
            debouncer
                .watch(&dir, RecursiveMode::NonRecursive)
                .map_err(|e| TlsError::Config(format!("cannot watch {}: {e}", dir.display())))?;
        }
        Ok(debouncer)
    }
}

/// TLS streams for tonic, handshaken from `tcp` with the current config, concurrently; failed and
/// timed-out handshakes are dropped (logged at debug: a port scan is not an event).
pub fn incoming<S, IO>(tcp: S, tls: Arc<ReloadingTls>) -> impl Stream<Item = std::io::Result<TlsStream<IO>>>
where
    S: Stream<Item = std::io::Result<IO>> + Send + 'static,
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (ready, rx) = mpsc::channel(READY_QUEUE);
    tokio::spawn(async move {
        let mut tcp = std::pin::pin!(tcp);
        while let Some(conn) = tcp.next().await {
            let conn = match conn {
                Ok(conn) => conn,
                Err(e) => {
                    tracing::debug!(error = %e, "gRPC accept failed");
                    continue;
                }
            };
            if ready.is_closed() {
                break; // the server stopped
            }
            let (acceptor, ready) = (TlsAcceptor::from(tls.current()), ready.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await {
                    Ok(Ok(stream)) => {
                        let _ = ready.send(Ok(stream)).await;
                    }
                    Ok(Err(e)) => tracing::debug!(error = %e, "gRPC TLS handshake failed"),
                    Err(_) => tracing::debug!("gRPC TLS handshake timed out"),
                }
            });
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}
