//! A fixed storage URL and token (`provider = "static"`): handed out as configured, never
//! renewed. A token kept in a file is read again once the file changes, so whatever rotates it
//! (a cron job, a secret manager) needs no restart; an upstream `401` reaches the client as it
//! is, since there is nothing to renew.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::{swift_usage, CredentialSource, ProviderError, SwiftCredentials, Usage};
use crate::clock::Clock;
use crate::config::StaticConfig;
use crate::secret::{Secret, SecretSource};

/// The life reported for a fixed token, whose real one is unknown: long enough that the token
/// manager does not ask again for it, short enough for a client's own `X-Auth-Token-Expires`.
const FIXED_LIFE: Duration = Duration::from_secs(86400);

/// One account with a fixed token.
#[derive(Debug)]
pub struct FixedAccount {
    account: String,
    http: reqwest::Client,
    storage_url: String,
    token: SecretSource,
    /// The token last handed out, to tell a rewritten file from an untouched one; held only to
    /// read or swap it.
    last: Mutex<Option<Secret>>,
    clock: Arc<dyn Clock>,
}

impl FixedAccount {
    /// The source for a validated `[[account]]` table.
    pub fn new(config: &StaticConfig, http: reqwest::Client, clock: Arc<dyn Clock>) -> FixedAccount {
        FixedAccount {
            account: config.name.clone(),
            http,
            storage_url: config.storage_url.clone(),
            token: SecretSource::configured(&config.token, &config.token_file),
            last: Mutex::new(None),
            clock,
        }
    }
}

#[async_trait::async_trait]
impl CredentialSource for FixedAccount {
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
        let read = super::read_secret(&self.account, &self.token);
        *self.last.lock().unwrap_or_else(|p| p.into_inner()) = read.as_ref().ok().cloned();
        let token = read?;
        Ok(SwiftCredentials { token, endpoint: self.storage_url.clone(), expires: self.clock.now() + FIXED_LIFE })
    }

    async fn usage(&self, creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
        swift_usage(&self.http, creds).await
    }

    fn renews(&self) -> bool {
        false
    }

    /// Reads the file again (a few bytes, every few seconds): a rewrite that keeps the length
    /// and the modification time's tick is still seen, and a file that went missing counts as
    /// changed once, not at every look.
    fn changed(&self) -> bool {
        if !matches!(self.token, SecretSource::File(_)) {
            return false;
        }
        let now = self.token.read().ok();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if *last == now {
            return false;
        }
        *last = now;
        true
    }
}
