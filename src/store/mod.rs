//! Where each account's long-lived grant (the refresh token) is kept.
//!
//! A trait so a shared store for several gateway instances can be added beside the file store;
//! the token manager and registration only ever see [`GrantStore`].

mod file;

pub use file::FileStore;

use crate::secret::Secret;

/// The long-lived credential an account was registered with.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    /// The OAuth2 refresh token; reusable until the user authorises the app again.
    pub refresh_token: Secret,
    /// The scope HubiC granted, as it reported it.
    pub scope: String,
    /// When the account was registered, in Unix seconds.
    pub registered_at: u64,
}

/// Why the store could not answer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The stored record exists but cannot be read back; the previous state is left as it is.
    #[error("state file {path} is unreadable ({reason}); register the account again or restore the file")]
    Corrupt {
        /// The file at fault.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The operating system refused a read or write.
    #[error("state store I/O error on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Persistent storage of grants, keyed by account name.
#[async_trait::async_trait]
pub trait GrantStore: Send + Sync + std::fmt::Debug {
    /// The account's grant, or `None` when it has never been registered.
    async fn load(&self, account: &str) -> Result<Option<Grant>, StoreError>;
    /// Replaces the account's grant; once this returns, a crash keeps the new grant, and a
    /// crash before it returns keeps the old one.
    async fn save(&self, account: &str, grant: &Grant) -> Result<(), StoreError>;
}
