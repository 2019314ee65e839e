//! The gRPC port over TLS (`serve --tls-cert --tls-key [--client-ca]`): Check, ADS, the access
//! log, health and the admin API all move to TLS together, so admin bearer tokens never cross the
//! network in the clear. With `--client-ca`, callers may present a certificate signed by it
//! (optional: a gateway or operator without one still connects, and is authorized by what it
//! sends); the admin API then accepts an X.509-SVID listed in `adminIdentities` (`admin::auth`).
//! tonic's rustls acceptor does the handshakes, concurrently and bounded in time.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// How long a connection may take to finish its TLS handshake before it is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

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
    /// Reads and checks the files (each error names its file), ready for tonic's server.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert = read_pem(&self.cert, "--tls-cert", "CERTIFICATE")?;
        let key = read_pem(&self.key, "--tls-key", "PRIVATE KEY")?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert, key)).timeout(HANDSHAKE_TIMEOUT);
        if let Some(ca) = &self.client_ca {
            let ca = read_pem(ca, "--client-ca", "CERTIFICATE")?;
            config = config.client_ca_root(Certificate::from_pem(ca)).client_auth_optional(true);
        }
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
        assert!(ok.server_config().is_ok());
        let swapped = GrpcTls { cert: k.clone(), key: c.clone(), client_ca: None };
        let err = swapped.server_config().unwrap_err().to_string();
        assert!(err.starts_with("--tls-cert ") && err.contains("k.pem") && err.contains("no PEM CERTIFICATE"), "{err}");
        let missing = GrpcTls { cert: c, key: k, client_ca: Some(dir.path().join("nope.pem")) };
        let err = missing.server_config().unwrap_err().to_string();
        assert!(err.starts_with("--client-ca ") && err.contains("nope.pem"), "{err}");
    }
}
