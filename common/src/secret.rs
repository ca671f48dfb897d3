//! Secrets kept in files (admin token, RESP password, API token): how they are read and
//! compared.

use std::path::{Path, PathBuf};

/// Shorter secrets are refused: a guessable token protects nothing.
pub const MIN_SECRET_LEN: usize = 16;

/// A secret file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{what} file {path}: {reason}")]
pub struct SecretError {
    pub what: &'static str,
    pub path: PathBuf,
    pub reason: String,
}

/// Reads the secret in `path` (surrounding white space removed), at least
/// [`MIN_SECRET_LEN`] characters; `what` names it in errors.
///
/// # Errors
/// The file cannot be read, or the secret is too short.
pub fn read_secret_file(what: &'static str, path: &Path) -> Result<String, SecretError> {
    let error = |reason: String| SecretError {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let text = std::fs::read_to_string(path).map_err(|err| error(err.to_string()))?;
    let secret = text.trim();
    if secret.len() < MIN_SECRET_LEN {
        return Err(error(format!(
            "the secret must be at least {MIN_SECRET_LEN} characters"
        )));
    }
    Ok(secret.to_string())
}

/// Whether an `Authorization` header value is `Bearer <token>`.
pub fn bearer_matches(authorization: Option<&str>, token: &str) -> bool {
    let given = authorization
        .and_then(|value| value.strip_prefix("Bearer "))
        .unwrap_or("");
    constant_time_eq(given.as_bytes(), token.as_bytes())
}

/// Compares without stopping at the first difference: the time taken tells nothing about
/// how much of a guess was right.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_files_are_trimmed_and_must_be_long_enough() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "  a-token-long-enough\n").unwrap();
        assert_eq!(
            read_secret_file("token", &path).unwrap(),
            "a-token-long-enough"
        );
        std::fs::write(&path, "short\n").unwrap();
        let err = read_secret_file("admin token", &path)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("admin token file") && err.contains("at least 16"),
            "{err}"
        );
        assert!(read_secret_file("token", &dir.path().join("missing")).is_err());
        assert!(constant_time_eq(b"same", b"same"));
        assert!(!constant_time_eq(b"same", b"sane"));
        assert!(!constant_time_eq(b"same", b"same-but-longer"));
        assert!(bearer_matches(Some("Bearer a-token"), "a-token"));
        for wrong in [
            None,
            Some("a-token"),
            Some("Bearer another"),
            Some("bearer a-token"),
        ] {
            assert!(!bearer_matches(wrong, "a-token"), "{wrong:?}");
        }
    }
}
