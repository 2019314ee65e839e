//! The gRPC port over TLS (`serve --tls-cert --tls-key [--client-ca]`): Check, ADS, the access
//! log, health and the admin API all move to TLS together, so admin bearer tokens never cross the
//! network in the clear. With `--client-ca`, callers may present a certificate signed by it
//! (optional: a gateway or operator without one still connects, and is authorized by what it
//! sends); the admin API then accepts an X.509-SVID listed in `adminIdentities` (`admin::auth`).
//! The handshakes are `tls_acceptor`'s, which reloads these files when they change.

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The gRPC port's certificate, key and, optionally, the CA that signs callers' certificates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrpcTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub client_ca: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {source}")]
    Read { what: &'static str, path: String, source: std::io::Error },
    #[error("{what} {path}: no PEM {expected} in it")]
    NotPem { what: &'static str, path: String, expected: &'static str },
    #[error("gRPC TLS: {0}")]
    Config(String),
}

impl TlsError {
    /// rustls' complaint (a key that does not match, an unsupported key type), with its causes.
    pub fn config(e: &(dyn std::error::Error + 'static)) -> Self {
        let mut text = e.to_string();
        let mut source = e.source();
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        TlsError::Config(text)
    }
}

impl GrpcTls {
    /// Reads and checks the files (each error names its flag and file): the rustls config the
    /// port's acceptor (`tls_acceptor`) handshakes with. HTTP/2 only, by ALPN, as gRPC needs.
    pub fn rustls_config(&self) -> Result<rustls::ServerConfig, TlsError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        fn pem_error<'a>(
            what: &'static str,
            path: &'a Path,
        ) -> impl FnOnce(rustls::pki_types::pem::Error) -> TlsError + 'a {
            move |e| TlsError::Config(format!("{what} {}: {e}", path.display()))
        }
        let cert = read_pem(&self.cert, "--tls-cert", "CERTIFICATE")?;
        let chain = CertificateDer::pem_slice_iter(&cert)
            .collect::<Result<Vec<_>, _>>()
            .map_err(pem_error("--tls-cert", &self.cert))?;
        let key = read_pem(&self.key, "--tls-key", "PRIVATE KEY")?;
        let key = PrivateKeyDer::from_pem_slice(&key).map_err(pem_error("--tls-key", &self.key))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::config(&e))?;
        let builder = match &self.client_ca {
            None => builder.with_no_client_auth(),
            Some(ca) => {
                let ca_pem = read_pem(ca, "--client-ca", "CERTIFICATE")?;
                let mut roots = rustls::RootCertStore::empty();
                for c in CertificateDer::pem_slice_iter(&ca_pem) {
                    let c = c.map_err(pem_error("--client-ca", ca))?;
                    roots.add(c).map_err(|e| TlsError::Config(format!("--client-ca {}: {e}", ca.display())))?;
                }
                // Optional but verified: a gateway or operator without a certificate still connects.
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                    .allow_unauthenticated()
                    .build()
                    .map_err(|e| TlsError::config(&e))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut config = builder.with_single_cert(chain, key).map_err(|e| TlsError::config(&e))?;
        config.alpn_protocols = vec![b"h2".to_vec()];
        Ok(config)
    }
}

/// A PEM file's text, refusing one without a block of the expected kind (a swapped cert and key,
/// an empty file) with its flag and path, before rustls reports something vaguer.
fn read_pem(path: &Path, what: &'static str, expected: &'static str) -> Result<Vec<u8>, TlsError> {
    let shown = path.display().to_string();
    let text = std::fs::read(path).map_err(|source| TlsError::Read { what, path: shown.clone(), source })?;
    let marker = format!("-----BEGIN {expected}-----");
    let found = if expected == "PRIVATE KEY" {
        // PKCS#8, PKCS#1 (RSA) and SEC1 (EC) keys.
        ["-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----"]
            .iter()
            .any(|m| contains(&text, m.as_bytes()))
    } else {
        contains(&text, marker.as_bytes())
    };
    if !found {
        return Err(TlsError::NotPem { what, path: shown, expected });
    }
    Ok(text)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_are_checked_with_their_flag_and_path() {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["localhost".into()]).unwrap().self_signed(&key).unwrap();
        let write = |name: &str, text: &str| {
            let p = dir.path().join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        let (c, k) = (write("c.pem", &cert.pem()), write("k.pem", &key.serialize_pem()));
        let ok = GrpcTls { cert: c.clone(), key: k.clone(), client_ca: Some(c.clone()) };
        assert!(ok.rustls_config().is_ok());
        let swapped = GrpcTls { cert: k.clone(), key: c.clone(), client_ca: None };
        let err = swapped.rustls_config().unwrap_err().to_string();
        assert!(err.starts_with("--tls-cert ") && err.contains("k.pem") && err.contains("no PEM CERTIFICATE"), "{err}");
        let missing = GrpcTls { cert: c, key: k, client_ca: Some(dir.path().join("nope.pem")) };
        let err = missing.rustls_config().unwrap_err().to_string();
        assert!(err.starts_with("--client-ca ") && err.contains("nope.pem"), "{err}");
    }
}
