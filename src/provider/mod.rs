//! Sources of upstream Swift credentials.
//!
//! The token manager asks a [`CredentialSource`] (one per account) for fresh Swift credentials
//! and caches them; how they are obtained (HubiC's OAuth2 refresh and
//! `/1.0/account/credentials`, a Keystone v3 token, Swift v1 auth, a fixed token) is the
//! source's business. Errors keep the provider's own words so a revoked grant (re-register) or
//! a wrong password (fix the configuration) is told apart from a network error (retry).

pub mod fixed;
pub mod hubic;
pub mod keystone;
pub mod swift_v1;

use std::time::{Duration, SystemTime};

use crate::secret::{Secret, SecretSource};
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

/// Why credentials could not be obtained. The provider's answers serialise, so that instances
/// sharing a store share a failed renewal too ([`shared`](Self::shared)).
#[derive(Debug, thiserror::Error, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
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
    /// The auth service asked the gateway to slow down (`429`, or a `503` with `Retry-After`).
    #[error("{message}; retry after {} s", retry_after.as_secs())]
    Busy {
        /// What it answered.
        message: String,
        /// How long it asked the gateway to wait.
        retry_after: Duration,
    },
    /// The account's auth service refused the configured credentials or gave nothing usable
    /// (a wrong password, an unknown project, no object-store in the catalog): the operator
    /// must fix the account's configuration. The message names the cause, never a secret.
    #[error("{0}")]
    AuthFailed(String),
    /// The provider answered something the gateway does not understand.
    #[error("unexpected answer from the provider: {0}")]
    Protocol(String),
    /// The grant store failed.
    #[error(transparent)]
    #[serde(skip)]
    Store(#[from] StoreError),
}

impl ProviderError {
    /// True when trying again later may succeed without anyone's intervention.
    pub fn is_transient(&self) -> bool {
        matches!(self, ProviderError::Transient(_) | ProviderError::Busy { .. })
    }

    /// True when this is the provider's answer, the same for every instance that would ask it
    /// now: not a missing grant or a store error, which are one instance's own.
    pub fn shared(&self) -> bool {
        !matches!(self, ProviderError::NotRegistered | ProviderError::Store(_))
    }

    /// How long the provider asked to be left alone, if it did.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ProviderError::Busy { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
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
            ProviderError::Busy { message, retry_after } => {
                ProviderError::Busy { message: message.clone(), retry_after: *retry_after }
            }
            ProviderError::AuthFailed(m) => ProviderError::AuthFailed(m.clone()),
            ProviderError::Protocol(m) => ProviderError::Protocol(m.clone()),
            ProviderError::Store(StoreError::Corrupt { path, reason }) => {
                ProviderError::Store(StoreError::Corrupt { path: path.clone(), reason: reason.clone() })
            }
            ProviderError::Store(StoreError::Unavailable(m)) => {
                ProviderError::Store(StoreError::Unavailable(m.clone()))
            }
            ProviderError::Store(StoreError::Superseded) => ProviderError::Store(StoreError::Superseded),
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
    /// Storage usage of the account; `creds` are valid credentials of it when
    /// [`asks_storage_for_usage`](Self::asks_storage_for_usage) says they are needed.
    async fn usage(&self, creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError>;
    /// True when [`usage`](Self::usage) asks the storage itself, with the account's token;
    /// false for a provider with a usage call of its own (HubiC), which then works even while
    /// no Swift token can be had.
    fn asks_storage_for_usage(&self) -> bool {
        true
    }
    /// Forgets intermediate state (such as an OAuth2 access token) after the grant changed.
    fn reset(&self) {}
    /// False for a source that can only hand out the same token again (a fixed one): an
    /// upstream `401` then reaches the client as it is instead of waiting for a new token.
    fn renews(&self) -> bool {
        true
    }
    /// True when what the source reads has changed since it last handed out credentials (a
    /// fixed token's file rewritten): the cached credentials are then dropped.
    fn changed(&self) -> bool {
        false
    }
}

/// An HTTP client for talking to auth services: no redirects followed (a redirect could carry a
/// password elsewhere), bounded in time so that a hung service cannot hold an account's renewal
/// lock, and trusting `extra_ca` beside the system's roots.
pub fn auth_client(extra_ca: Option<&std::path::Path>) -> Result<reqwest::Client, ProviderError> {
    let mut builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(CALL_TIMEOUT)
        .user_agent(concat!("swiftgate/", env!("CARGO_PKG_VERSION")));
    if let Some(path) = extra_ca {
        let pem =
            std::fs::read(path).map_err(|e| ProviderError::Protocol(format!("cannot read {}: {e}", path.display())))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| ProviderError::Protocol(format!("{}: not PEM certificates: {e}", path.display())))?;
        for cert in certs {
            builder = builder.add_root_certificate(cert);
        }
    }
    builder.build().map_err(|e| ProviderError::Protocol(format!("HTTP client setup failed: {e}")))
}

/// The account's secret read now from its source; a file that cannot be read is the account's
/// configuration at fault, named (never the value).
fn read_secret(account: &str, source: &SecretSource) -> Result<Secret, ProviderError> {
    source.read().map_err(|e| ProviderError::AuthFailed(format!("account {account}: {e}")))
}

/// Upper bound on any single call to an auth service.
pub const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The delay a `Retry-After` field asks for (seconds or an HTTP date), if it is one.
pub fn retry_after(headers: &reqwest::header::HeaderMap, now: SystemTime) -> Option<Duration> {
    let value = headers.get(reqwest::header::RETRY_AFTER)?.to_str().ok()?.trim();
    match value.parse::<u64>() {
        Ok(secs) => Some(Duration::from_secs(secs)),
        Err(_) => httpdate::parse_http_date(value).ok().map(|at| at.duration_since(now).unwrap_or_default()),
    }
}

/// The answer of an auth service that could not serve the request: a `429`, or a `5xx` with a
/// `Retry-After`, asks to wait; other `5xx` are worth retrying; anything else is `None`.
pub fn unavailable(
    service: &str,
    status: reqwest::StatusCode,
    headers: &reqwest::header::HeaderMap,
    now: SystemTime,
) -> Option<ProviderError> {
    if !(status.is_server_error() || status == reqwest::StatusCode::TOO_MANY_REQUESTS) {
        return None;
    }
    let message = format!("{service} answered {status}");
    Some(match retry_after(headers, now) {
        Some(retry_after) => ProviderError::Busy { message, retry_after },
        // A 429 without a delay still asks for one.
        None if status == reqwest::StatusCode::TOO_MANY_REQUESTS => {
            ProviderError::Busy { message, retry_after: Duration::from_secs(1) }
        }
        None => ProviderError::Transient(message),
    })
}

/// A Swift account's usage from a `HEAD` of its storage URL: bytes used, and the quota set in
/// `X-Account-Meta-Quota-Bytes` (0 when there is none).
pub async fn swift_usage(http: &reqwest::Client, creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
    let creds = creds.ok_or_else(|| ProviderError::Protocol("no credentials to ask the storage with".into()))?;
    let resp = http
        .head(&creds.endpoint)
        .header("x-auth-token", creds.token.expose())
        .send()
        .await
        .map_err(|e| ProviderError::Transient(format!("storage unreachable: {e}")))?;
    if !resp.status().is_success() {
        return Err(ProviderError::Protocol(format!("storage answered {} to HEAD of the account", resp.status())));
    }
    let number =
        |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).and_then(|v| v.trim().parse::<u64>().ok());
    Ok(Usage {
        used: number("x-account-bytes-used").unwrap_or(0),
        quota: number("x-account-meta-quota-bytes").unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_providers_answers_are_shared_whole_and_an_instances_own_errors_are_not() {
        let answers = [
            ProviderError::GrantRefused { error: "invalid_grant".into(), description: "revoked".into() },
            ProviderError::ClientRefused { error: "invalid_client".into(), description: "unknown".into() },
            ProviderError::Transient("503 from keystone".into()),
            ProviderError::Busy { message: "429 from keystone".into(), retry_after: Duration::from_secs(7) },
            ProviderError::AuthFailed("wrong password".into()),
            ProviderError::Protocol("no object-store".into()),
        ];
        for answer in answers {
            assert!(answer.shared(), "{answer}");
            let back: ProviderError = serde_json::from_str(&serde_json::to_string(&answer).unwrap()).unwrap();
            assert_eq!(back.to_string(), answer.to_string());
            assert_eq!((back.is_transient(), back.retry_after()), (answer.is_transient(), answer.retry_after()));
        }
        assert!(!ProviderError::NotRegistered.shared());
        assert!(!ProviderError::Store(StoreError::Superseded).shared());
        assert!(serde_json::to_string(&ProviderError::Store(StoreError::Superseded)).is_err());
    }
}
