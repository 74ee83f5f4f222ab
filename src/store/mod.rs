//! Where each account's long-lived grant (the refresh token) is kept.
//!
//! Two stores behind one trait: [`FileStore`], one instance's files, and [`RedisStore`], shared
//! by several instances (which also share registration states, upstream credentials and
//! renewal locks through it). The token manager and registration only ever see [`GrantStore`]
//! for grants.

mod file;
mod redis;

pub use file::FileStore;
pub use redis::{Lease, RedisStore, SharedCredentials};

use serde::{Deserialize, Serialize};

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
    /// The shared store could not be reached or did not answer in time.
    #[error("the shared store is unreachable ({0})")]
    Unavailable(String),
    /// A newer grant was written meanwhile (another instance registered the account again);
    /// this older one was not written over it.
    #[error("a newer grant of the account was stored meanwhile; this one was not kept")]
    Superseded,
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

/// Version of the stored grant record; bumped on incompatible changes.
const FORMAT_VERSION: u32 = 1;

/// A grant as both stores write it (a file's content, a Redis value).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Record {
    version: u32,
    provider: String,
    refresh_token: String,
    scope: String,
    registered_at: u64,
}

/// The stored form of `grant`.
fn encode(grant: &Grant) -> Vec<u8> {
    let record = Record {
        version: FORMAT_VERSION,
        provider: "hubic".into(),
        refresh_token: grant.refresh_token.expose().to_owned(),
        scope: grant.scope.clone(),
        registered_at: grant.registered_at,
    };
    serde_json::to_vec_pretty(&record).unwrap_or_else(|_| unreachable!("strings and numbers serialise"))
}

/// The grant in a stored record, or why it is not one (never quoting the token).
fn decode(bytes: &[u8]) -> Result<Grant, String> {
    let record: Record = serde_json::from_slice(bytes).map_err(|e| format!("not a grant record: {e}"))?;
    if record.version != FORMAT_VERSION {
        return Err(format!("unsupported format version {}", record.version));
    }
    if record.refresh_token.is_empty() {
        return Err("empty refresh token".into());
    }
    Ok(Grant {
        refresh_token: Secret::new(record.refresh_token),
        scope: record.scope,
        registered_at: record.registered_at,
    })
}
