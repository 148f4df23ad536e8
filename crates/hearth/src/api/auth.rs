//! The API's bearer token: where it comes from, and the check on every request.
//!
//! By default a 256-bit random token is generated at first start into `<state dir>/api-token`
//! (created exclusively, mode 0600) and reused afterwards. `--token-file` names another file;
//! `HEARTH_API_TOKEN` gives the token itself. The token is never logged.

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header::AUTHORIZATION;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use subtle::ConstantTimeEq;

use super::ApiError;

/// Shorter tokens are refused: they could be guessed.
const MIN_TOKEN_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read the API token file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create the API token file {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the API token file {path} is readable by others (mode {mode:o}); chmod 600 it")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("the API token from {origin} is shorter than {MIN_TOKEN_LEN} characters")]
    TooShort { origin: String },
}

/// The secret every request must present. `Debug` is redacted.
#[derive(Clone)]
pub struct ApiToken(Arc<str>);

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(<redacted>)")
    }
}

impl ApiToken {
    /// A token given directly (`HEARTH_API_TOKEN`).
    pub fn given(raw: &str, origin: &str) -> Result<Self, TokenError> {
        let token = raw.trim();
        if token.len() < MIN_TOKEN_LEN {
            return Err(TokenError::TooShort {
                origin: origin.to_owned(),
            });
        }
        Ok(Self(Arc::from(token)))
    }

    /// Reads the token from `path`, which must not be readable by group or others.
    pub fn read(path: &Path) -> Result<Self, TokenError> {
        let read = |source| TokenError::Read {
            path: path.to_owned(),
            source,
        };
        let mode = std::fs::metadata(path).map_err(read)?.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            return Err(TokenError::TooOpen {
                path: path.to_owned(),
                mode,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read)?;
        Self::given(&text, &path.display().to_string())
    }

    /// Reads `path`, or creates it (0600) with a fresh 256-bit token. The token is written to a
    /// private temp file first and linked into place without clobbering, so a daemon starting at
    /// the same moment reads either nothing or the whole token, never a half-written one.
    pub fn read_or_generate(path: &Path) -> Result<Self, TokenError> {
        let token = random_token();
        let create_err = |source: std::io::Error| TokenError::Create {
            path: path.to_owned(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        // tempfile creates the file exclusively with mode 0600.
        let mut staged = tempfile::NamedTempFile::new_in(dir).map_err(create_err)?;
        staged
            .write_all(format!("{token}\n").as_bytes())
            .and_then(|()| staged.as_file().sync_all())
            .map_err(create_err)?;
        match staged.persist_noclobber(path) {
            Ok(_) => Ok(Self(Arc::from(token.as_str()))),
            // Another start made it first (or an earlier one): use that one.
            Err(err) if err.error.kind() == std::io::ErrorKind::AlreadyExists => Self::read(path),
            Err(err) => Err(create_err(err.error)),
        }
    }

    /// Constant-time comparison, so response timing reveals nothing about the token's bytes
    /// (only whether the length matched, which is fixed for generated tokens anyway).
    pub fn matches(&self, given: &str) -> bool {
        self.0.as_bytes().ct_eq(given.as_bytes()).into()
    }
}

/// 256 random bits as hex: the API token, and each E2B sandbox's envd access token.
pub fn random_token() -> String {
    hex(&rand::random::<[u8; 32]>())
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Middleware: 401 unless the request carries `Authorization: Bearer <token>`.
pub async fn require_token(
    State(token): State<ApiToken>,
    request: Request,
    next: Next,
) -> Response {
    let given = request
        .headers()
        .get(AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.strip_prefix("Bearer "));
    match given {
        None => ApiError::MissingToken.into_response(),
        Some(given) if token.matches(given.trim()) => next.run(request).await,
        Some(_) => ApiError::WrongToken.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_once_private_and_compared() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("api-token");
        let first = ApiToken::read_or_generate(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let again = ApiToken::read_or_generate(&path).unwrap();
        assert_eq!(first.0, again.0, "reused, not regenerated");
        assert_eq!(first.0.len(), 64, "256 bits in hex");
        assert!(first.matches(&first.0) && !first.matches("nope"));
        assert!(!format!("{first:?}").contains(&*first.0));
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(matches!(
            ApiToken::read(&path),
            Err(TokenError::TooOpen { .. })
        ));
        assert!(matches!(
            ApiToken::given("short", "env"),
            Err(TokenError::TooShort { .. })
        ));
    }
}
