#![allow(dead_code)] // each test binary uses a subset of these helpers
//! A workload: connects to the gateway with its SVID (mTLS), sends proxy requests and CONNECT
//! tunnels, and speaks TLS to upstreams through tunnels.

use std::net::SocketAddr;
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, RootCertStore};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;

use super::pki::Issued;
use super::upstream::provider;

/// As `tls_config`, offering HTTP/2 by ALPN.
pub fn tls_config_h2(ca: &CertificateDer<'static>, client: &Issued) -> Arc<ClientConfig> {
    let mut config = (*tls_config(ca, Some(client))).clone();
    config.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(config)
}

pub fn tls_config(ca: &CertificateDer<'static>, client: Option<&Issued>) -> Arc<ClientConfig> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let config = match client {
        Some(svid) => builder.with_client_auth_cert(vec![svid.cert_der.clone()], svid.key()).unwrap(),
        None => builder.with_no_client_auth(),
    };
    Arc::new(config)
}

/// Verifies the gateway's chain as for `name`, whatever SNI the connection asks for: the workload
/// names the *destination* in the SNI of its mTLS to the gateway's TLS listener (Istio's pattern),
/// and checks the gateway's own identity.
#[derive(Debug)]
struct GatewayVerifier {
    inner: Arc<rustls::client::WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl rustls::client::danger::ServerCertVerifier for GatewayVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _sni: &ServerName<'_>,
        ocsp: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        self.inner.verify_server_cert(end_entity, intermediates, &self.name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

/// mTLS to the gateway's TLS listener with `destination` as SNI; the gateway proves `gateway_name`.
pub async fn connect_by_sni(
    gateway: SocketAddr,
    gateway_name: &str,
    destination: &str,
    ca: &CertificateDer<'static>,
    svid: &Issued,
) -> std::io::Result<TlsStream<TcpStream>> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let inner =
        rustls::client::WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider()).build().unwrap();
    let verifier = GatewayVerifier { inner, name: ServerName::try_from(gateway_name.to_string()).unwrap() };
    let config = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(vec![svid.cert_der.clone()], svid.key())
        .unwrap();
    let tcp = TcpStream::connect(gateway).await?;
    TlsConnector::from(Arc::new(config)).connect(ServerName::try_from(destination.to_string()).unwrap(), tcp).await
}

/// mTLS to the gateway (which presents a certificate for `gateway_name`).
pub async fn connect_gateway(
    gateway: SocketAddr,
    gateway_name: &str,
    config: Arc<ClientConfig>,
) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = TcpStream::connect(gateway).await?;
    let mut tls =
        TlsConnector::from(config).connect(ServerName::try_from(gateway_name.to_string()).unwrap(), tcp).await?;
    // TLS 1.3: the server's verdict on our certificate arrives after the handshake; a read surfaces it.
    tls.flush().await?;
    Ok(tls)
}

/// Sends `head` and reads the whole response (the servers here close after one response).
pub async fn exchange<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, head: &str) -> std::io::Result<(u16, String)> {
    s.write_all(head.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}

/// An absolute-form proxy request through the connection.
pub async fn proxy_get<S: AsyncRead + AsyncWrite + Unpin>(s: &mut S, url: &str) -> std::io::Result<(u16, String)> {
    let host = url.trim_start_matches("http://").split('/').next().unwrap();
    exchange(s, &format!("GET {url} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n")).await
}

/// Sends CONNECT and reads the response head; on 200 the stream is the tunnel.
pub async fn connect_tunnel<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    authority: &str,
) -> std::io::Result<(u16, String)> {
    s.write_all(format!("CONNECT {authority} HTTP/1.1\r\nhost: {authority}\r\n\r\n").as_bytes()).await?;
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte).await? == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    Ok((status, text))
}
