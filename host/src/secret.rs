//! Credentials the proxy injects into upstream requests.
//!
//! A [`SecretHeader`] never shows its value: `Debug` prints `***`, errors
//! name the variable or file it comes from, and the header value is marked
//! sensitive so HTTP/2 never puts it in a compression table.

use crate::config::HeaderSource;
use crate::refresh::{self, FileStamp, Refresh};
use http::HeaderValue;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Why a credential could not be read. Never carries the value.
#[derive(Debug, thiserror::Error)]
pub enum SecretError {
    #[error("environment variable {0} is not set")]
    MissingEnv(String),
    #[error("cannot read secret file {}: {source}", path.display())]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the value from {0} is empty or not a valid header value")]
    Invalid(String),
}

/// A header value from the config, the environment or a file.
pub struct SecretHeader {
    source: Source,
    value: Mutex<HeaderValue>,
}

enum Source {
    Fixed,
    File {
        path: PathBuf,
        prefix: String,
        stamp: Mutex<FileStamp>,
    },
}

impl std::fmt::Debug for SecretHeader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretHeader(***)")
    }
}

impl SecretHeader {
    /// Reads the value now; file paths resolve against `base`. A file source
    /// is watched and re-read when it changes.
    pub fn load(source: &HeaderSource, base: &Path) -> Result<Arc<SecretHeader>, SecretError> {
        match source {
            HeaderSource::Inline(text) => Ok(Arc::new(SecretHeader {
                source: Source::Fixed,
                value: Mutex::new(sensitive("inline value", text)?),
            })),
            HeaderSource::Env { env, prefix } => {
                let raw = std::env::var(env).map_err(|_| SecretError::MissingEnv(env.clone()))?;
                let what = format!("environment variable {env}");
                Ok(Arc::new(SecretHeader {
                    source: Source::Fixed,
                    value: Mutex::new(sensitive(&what, &format!("{prefix}{}", raw.trim()))?),
                }))
            }
            HeaderSource::File { file, prefix } => {
                let path = base.join(file);
                let stamp = FileStamp::of(&path);
                let value = read_file(&path, prefix)?;
                let secret = Arc::new(SecretHeader {
                    source: Source::File {
                        path,
                        prefix: prefix.clone(),
                        stamp: Mutex::new(stamp),
                    },
                    value: Mutex::new(value),
                });
                let watched: Arc<dyn Refresh> = secret.clone();
                refresh::register(&watched);
                Ok(secret)
            }
        }
    }

    /// The current value.
    pub fn value(&self) -> HeaderValue {
        self.value.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl Refresh for SecretHeader {
    fn refresh(&self) {
        let Source::File {
            path,
            prefix,
            stamp,
        } = &self.source
        else {
            return;
        };
        let now = FileStamp::of(path);
        let mut seen = stamp.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return;
        }
        *seen = now;
        match read_file(path, prefix) {
            Ok(value) => {
                *self.value.lock().unwrap_or_else(|e| e.into_inner()) = value;
                tracing::info!(file = %path.display(), "secret file changed; new value in use");
            }
            Err(e) => tracing::warn!("secret not updated, the previous value stays in use: {e}"),
        }
    }
}

fn read_file(path: &Path, prefix: &str) -> Result<HeaderValue, SecretError> {
    let text = std::fs::read_to_string(path).map_err(|source| SecretError::File {
        path: path.into(),
        source,
    })?;
    sensitive(
        &format!("secret file {}", path.display()),
        &format!("{prefix}{}", text.trim()),
    )
}

fn sensitive(what: &str, text: &str) -> Result<HeaderValue, SecretError> {
    let mut value = HeaderValue::from_str(text)
        .ok()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| SecretError::Invalid(what.into()))?;
    value.set_sensitive(true);
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_never_print_and_files_are_re_read() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "sk-planted-1\n").unwrap();
        let source = HeaderSource::File {
            file: "key".into(),
            prefix: "Bearer ".into(),
        };
        let secret = SecretHeader::load(&source, dir.path()).unwrap();
        assert_eq!(secret.value(), "Bearer sk-planted-1");
        assert!(secret.value().is_sensitive());
        assert!(!format!("{secret:?}").contains("planted"));
        std::fs::write(dir.path().join("key"), "sk-planted-22\n").unwrap();
        secret.refresh();
        assert_eq!(secret.value(), "Bearer sk-planted-22");
        std::fs::remove_file(dir.path().join("key")).unwrap();
        secret.refresh();
        assert_eq!(secret.value(), "Bearer sk-planted-22");
        let missing = HeaderSource::Env {
            env: "SWITCHYARD_TEST_UNSET_VARIABLE".into(),
            prefix: String::new(),
        };
        let err = SecretHeader::load(&missing, dir.path()).unwrap_err();
        assert!(err.to_string().contains("SWITCHYARD_TEST_UNSET_VARIABLE"));
        let bad = HeaderSource::Inline("sk-planted\nx".into());
        let err = SecretHeader::load(&bad, dir.path()).unwrap_err();
        assert!(!err.to_string().contains("planted"));
    }
}
