//! Redacted secret values: tokens, refresh tokens, client secrets, passwords and keys.
//!
//! A [`Secret`] never prints its value through `Debug` or `Display`; the value is read only
//! through [`Secret::expose`], so every place that lets a secret leave the process is visible
//! in a search. Comparison is constant-time. This is not encryption at rest; the file store
//! relies on file permissions for that.

use subtle::ConstantTimeEq;

/// A string whose value must never reach logs, error bodies or `Debug` output.
#[derive(Clone, Default, serde::Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// Wraps a value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret value itself; call only where it must be sent or stored.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// True when no value is set.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// A short prefix safe to log (Swift's `reveal_sensitive_prefix` idea): at most 4 chars.
    pub fn prefix(&self) -> &str {
        let end = self.0.char_indices().nth(4).map_or(self.0.len(), |(i, _)| i);
        &self.0[..end]
    }
}

impl PartialEq for Secret {
    fn eq(&self, other: &Self) -> bool {
        self.0.as_bytes().ct_eq(other.0.as_bytes()).into()
    }
}

impl Eq for Secret {}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Where a configured secret comes from: written in the configuration, or a file read each
/// time the secret is needed, so that a rotated file is picked up without a restart.
#[derive(Clone, Debug)]
pub enum SecretSource {
    /// The value itself.
    Inline(Secret),
    /// A file holding the value (surrounding whitespace ignored).
    File(std::path::PathBuf),
}

impl SecretSource {
    /// The source set by an inline value or a file, the inline one first.
    pub fn of(inline: &Option<Secret>, file: &Option<std::path::PathBuf>) -> Option<SecretSource> {
        match (inline, file) {
            (Some(s), _) => Some(SecretSource::Inline(s.clone())),
            (None, Some(f)) => Some(SecretSource::File(f.clone())),
            (None, None) => None,
        }
    }

    /// The source of a secret the configuration's validation made sure is set: an empty inline
    /// value if neither is (which no auth service accepts).
    pub fn configured(inline: &Option<Secret>, file: &Option<std::path::PathBuf>) -> SecretSource {
        SecretSource::of(inline, file).unwrap_or(SecretSource::Inline(Secret::default()))
    }

    /// The value now; the error names the file, never the value.
    pub fn read(&self) -> Result<Secret, String> {
        match self {
            SecretSource::Inline(s) => Ok(s.clone()),
            SecretSource::File(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                let value = text.trim();
                if value.is_empty() {
                    return Err(format!("{} is empty", path.display()));
                }
                Ok(Secret::new(value))
            }
        }
    }
}

/// Random alphanumeric string of `len` characters from the OS-seeded thread RNG.
pub fn random_alnum(len: usize) -> String {
    use rand::{distributions::Alphanumeric, Rng};
    rand::thread_rng().sample_iter(&Alphanumeric).take(len).map(char::from).collect()
}

/// Random lower-case hex string encoding `bytes` random bytes.
pub fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; bytes];
    rand::thread_rng().fill_bytes(&mut buf);
    hex::encode(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_is_redacted() {
        let s = Secret::new("hunter2-very-secret");
        assert_eq!(format!("{s:?}"), "[redacted]");
        assert_eq!(s.prefix(), "hunt");
        assert_eq!(Secret::new("ab").prefix(), "ab");
    }

    #[test]
    fn equality_compares_values() {
        assert_eq!(Secret::new("a"), Secret::new("a"));
        assert_ne!(Secret::new("a"), Secret::new("b"));
        assert_ne!(Secret::new("a"), Secret::new("ab"));
    }

    #[test]
    fn random_strings_have_the_requested_shape() {
        let a = random_alnum(64);
        assert_eq!(a.len(), 64);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(random_hex(16).len(), 32);
        assert_ne!(random_hex(16), random_hex(16));
    }
}
