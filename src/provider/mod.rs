//! Sources of upstream Swift credentials.
//!
//! The token manager asks a [`CredentialSource`] (one per account) for fresh Swift credentials
//! and caches them; how they are obtained (HubiC's OAuth2 refresh + `/1.0/account/credentials`
//! today, Keystone v3 or tempauth later) is the source's business. Errors keep the provider's
//! own words so a revoked grant (re-register) is told apart from a network error (retry).

pub mod hubic;

use std::time::SystemTime;

use crate::secret::Secret;
use crate::store::StoreError;

/// A Swift token and the storage URL it is valid for.
#[derive(Clone, Debug)]
pub struct SwiftCredentials {
    /// The upstream Swift token.
    pub token: Secret,
    /// The upstream storage URL, e.g. `https://lb1040.hubic.ovh.net/v1/AUTH_…`.
    pub endpoint: String,
    /// When the token stops being valid, on the local clock.
    pub expires: SystemTime,
}

/// Storage used and available, in bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    /// Bytes stored.
    pub used: u64,
    /// Bytes allowed.
    pub quota: u64,
}

/// Why credentials could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The account has no stored grant yet.
    #[error("account is not registered")]
    NotRegistered,
    /// The provider refused the stored grant: the user must register again.
    #[error("the provider refused the stored grant ({error}: {description}); register the account again")]
    GrantRefused {
        /// The provider's `error` code.
        error: String,
        /// The provider's `error_description`.
        description: String,
    },
    /// The provider refused the gateway's own application credentials (client id/secret).
    #[error(
        "the provider refused the application credentials ({error}: {description}); check client_id and client_secret"
    )]
    ClientRefused {
        /// The provider's `error` code.
        error: String,
        /// The provider's `error_description`.
        description: String,
    },
    /// A network error, a 5xx or a 509: worth retrying later.
    #[error("provider temporarily unavailable: {0}")]
    Transient(String),
    /// The provider answered something the gateway does not understand.
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
    /// The grant store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl ProviderError {
    /// True when trying again later may succeed without anyone's intervention.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_))
    }

    /// The same error again, for each of the callers that waited on one failed call (an I/O
    /// error keeps its kind and message).
    pub fn duplicate(&self) -> ProviderError {
        match self {
            ProviderError::NotRegistered => ProviderError::NotRegistered,
            ProviderError::GrantRefused { error, description } => {
                ProviderError::GrantRefused { error: error.clone(), description: description.clone() }
            }
            ProviderError::ClientRefused { error, description } => {
                ProviderError::ClientRefused { error: error.clone(), description: description.clone() }
            }
            ProviderError::Transient(m) => ProviderError::Transient(m.clone()),
            ProviderError::Protocol(m) => ProviderError::Protocol(m.clone()),
            ProviderError::Store(StoreError::Corrupt { path, reason }) => {
                ProviderError::Store(StoreError::Corrupt { path: path.clone(), reason: reason.clone() })
            }
            ProviderError::Store(StoreError::Io { path, source }) => ProviderError::Store(StoreError::Io {
                path: path.clone(),
                source: std::io::Error::new(source.kind(), source.to_string()),
            }),
        }
    }
}

/// Obtains Swift credentials for one account.
#[async_trait::async_trait]
pub trait CredentialSource: Send + Sync + std::fmt::Debug {
    /// Fresh Swift credentials. Called by the token manager with the account's renewal lock
    /// held, so at most one call per account is in flight.
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError>;
    /// Storage usage of the account.
    async fn usage(&self) -> Result<Usage, ProviderError>;
    /// Forgets intermediate state (such as an OAuth2 access token) after the grant changed.
    fn reset(&self);
}
