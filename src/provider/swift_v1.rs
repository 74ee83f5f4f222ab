//! Swift v1 auth as a credential source: `GET auth_url` with `X-Auth-User` and `X-Auth-Key`,
//! as Ceph RGW, StorageGRID and tempauth answer it.
//!
//! The token's life is `X-Auth-Token-Expires` when upstream sends it (tempauth does, RGW does
//! not), else the configured `token_life`; a token refused before then is renewed on the
//! proxy's `401`. This file neither caches nor retries; the token manager does both.

use std::sync::Arc;
use std::time::Duration;

use super::{swift_usage, unavailable, CredentialSource, ProviderError, SwiftCredentials, Usage};
use crate::clock::Clock;
use crate::config::SwiftV1Config;
use crate::secret::{Secret, SecretSource};

/// One Swift v1 account.
#[derive(Debug)]
pub struct SwiftV1Account {
    account: String,
    http: reqwest::Client,
    auth_url: String,
    user: String,
    key: SecretSource,
    token_life: Duration,
    clock: Arc<dyn Clock>,
}

impl SwiftV1Account {
    /// The source for a validated `[[account]]` table.
    pub fn new(config: &SwiftV1Config, http: reqwest::Client, clock: Arc<dyn Clock>) -> SwiftV1Account {
        SwiftV1Account {
            account: config.name.clone(),
            http,
            auth_url: config.auth_url.clone(),
            user: config.user.clone(),
            key: SecretSource::configured(&config.key, &config.key_file),
            token_life: Duration::from_secs(config.token_life),
            clock,
        }
    }
}

#[async_trait::async_trait]
impl CredentialSource for SwiftV1Account {
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
        let key = super::read_secret(&self.account, &self.key)?;
        let sent = self.clock.now();
        let resp = self
            .http
            .get(&self.auth_url)
            .header("x-auth-user", &self.user)
            .header("x-auth-key", key.expose())
            .send()
            .await
            .map_err(|e| ProviderError::Transient(format!("Swift v1 auth unreachable: {e}")))?;
        let status = resp.status();
        if let Some(busy) = unavailable("Swift v1 auth", status, resp.headers(), self.clock.now()) {
            return Err(busy);
        }
        if !status.is_success() {
            return Err(ProviderError::AuthFailed(format!(
                "account {}: Swift v1 auth at {} answered {status} for user {}",
                self.account, self.auth_url, self.user
            )));
        }
        let field = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
        let token = field("x-auth-token").or_else(|| field("x-storage-token"));
        let endpoint = field("x-storage-url");
        let (Some(token), Some(endpoint)) = (token, endpoint) else {
            return Err(ProviderError::Protocol("Swift v1 auth answered without X-Auth-Token or X-Storage-Url".into()));
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ProviderError::Protocol("Swift v1 auth's X-Storage-Url is not an http(s) URL".into()));
        }
        let life = field("x-auth-token-expires")
            .and_then(|v| v.trim().parse::<f64>().ok())
            .filter(|secs| secs.is_finite() && *secs >= 0.0)
            .map_or(self.token_life, |secs| Duration::from_secs(secs.min(366.0 * 86400.0) as u64));
        Ok(SwiftCredentials { token: Secret::new(token), endpoint: endpoint.to_owned(), expires: sent + life })
    }

    async fn usage(&self, creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
        swift_usage(&self.http, creds).await
    }
}
