//! The admin API's credentials: the operators' bearer tokens (server side, `--admin-tokens`) and
//! the interceptor that presents one (client side, the CLI).

use std::path::Path;

use tonic::{Request, Status};

/// Operators' bearer tokens: one `NAME TOKEN` per line, `#` comments.
pub struct AdminTokens {
    /// Owner names and the SHA-256 of their tokens (the tokens themselves are not kept).
    entries: Vec<(String, [u8; 32])>,
}

impl std::fmt::Debug for AdminTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.entries.iter().map(|(n, _)| n.as_str()).collect();
        f.debug_struct("AdminTokens").field("names", &names).finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TokensError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {message}")]
    Invalid { path: String, line: usize, message: String },
    #[error("{0}: no tokens")]
    Empty(String),
}

/// Tokens shorter than this are refused: they are guessable.
const MIN_TOKEN_LEN: usize = 16;

impl AdminTokens {
    pub fn load(path: &Path) -> Result<Self, TokensError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TokensError::Io { path: shown.clone(), source })?;
        Self::parse(&shown, &text)
    }

    pub fn parse(path: &str, text: &str) -> Result<Self, TokensError> {
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let invalid =
                |message: &str| TokensError::Invalid { path: path.to_string(), line: i + 1, message: message.into() };
            let mut parts = line.split_whitespace();
            let (Some(name), Some(token), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(invalid("expected `NAME TOKEN`"));
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(invalid("token shorter than 16 characters"));
            }
            let digest: [u8; 32] =
                sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(token)).into();
            if entries.iter().any(|(_, d)| *d == digest) {
                return Err(invalid("token used twice"));
            }
            entries.push((name.to_string(), digest));
        }
        if entries.is_empty() {
            return Err(TokensError::Empty(path.to_string()));
        }
        Ok(AdminTokens { entries })
    }

    /// The name of the token's owner. Tokens are compared as SHA-256 digests in constant time
    /// (`subtle`), every one of them: how long the comparison takes says nothing of how much of a
    /// token, or of its length, a guess got right.
    pub fn caller(&self, presented: &str) -> Option<&str> {
        use sha2::{Digest, Sha256};
        use subtle::ConstantTimeEq;
        let guess = Sha256::digest(presented.as_bytes());
        let mut found = None;
        for (name, digest) in &self.entries {
            if bool::from(digest.as_slice().ct_eq(guess.as_slice())) {
                found = Some(name.as_str());
            }
        }
        found
    }
}

/// Client side: adds `authorization: Bearer <token>` to every call.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::AsciiMetadataValue>);

impl BearerToken {
    pub fn new(token: Option<&str>) -> Result<Self, Status> {
        token
            .map(|t| {
                format!("Bearer {}", t.trim()).parse().map_err(|_| Status::invalid_argument("token is not valid ASCII"))
            })
            .transpose()
            .map(BearerToken)
    }
}

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}
