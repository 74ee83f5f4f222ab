//! HubiC as a credential source: the OAuth2 client (authorize URL, code exchange, refresh) and
//! the `/1.0/account/*` calls, plus the per-account source that keeps the access token.
//!
//! Follows the wire facts of `hubic-api.md`: Basic client authentication with a
//! form-urlencoded body, no new refresh token on refresh, `400 invalid_request "invalid refresh
//! token"` meaning the grant is gone, `expires` in Paris local time with an offset. This file
//! does not retry or cache Swift credentials; the token manager does.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;
use serde::Deserialize;

use super::{CredentialSource, ProviderError, SwiftCredentials, Usage};
use crate::clock::{parse_rfc3339, Clock};
use crate::secret::Secret;
use crate::store::{Grant, GrantStore};

/// An OAuth2 access token and when it stops working, on the local clock.
#[derive(Clone, Debug)]
pub struct AccessToken {
    /// The bearer token.
    pub token: Secret,
    /// Local expiry instant (issue time + `expires_in`).
    pub expires: SystemTime,
    /// When to stop reusing it: a tenth of its life (at most a minute) before `expires`.
    pub renew_at: SystemTime,
}

/// The outcome of an authorization-code exchange.
#[derive(Debug)]
pub struct CodeGrant {
    /// The long-lived refresh token to store.
    pub refresh_token: Secret,
    /// The first access token.
    pub access: AccessToken,
}

/// The HubiC OAuth2 application: API base URL and client credentials.
#[derive(Debug)]
pub struct HubicClient {
    http: reqwest::Client,
    base: String,
    client_id: String,
    client_secret: Secret,
    clock: Arc<dyn Clock>,
}

#[derive(Deserialize)]
struct TokenBody {
    access_token: String,
    expires_in: u64,
    #[serde(default)]
    refresh_token: Option<String>,
    #[serde(default)]
    token_type: Option<String>,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default)]
    error_description: String,
}

#[derive(Deserialize)]
struct CredentialsBody {
    token: String,
    endpoint: String,
    expires: String,
}

/// What an `/1.0` API call failed with, before classification.
enum ApiFailure {
    /// The access token was not accepted (expired, unknown, revoked): refresh and retry.
    AccessRejected,
    Other(ProviderError),
}

impl HubicClient {
    /// A client for the API at `base` (e.g. `https://api.hubic.com`, no trailing slash needed).
    pub fn new(
        base: &str,
        client_id: &str,
        client_secret: Secret,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, ProviderError> {
        let http = super::auth_client(None)?;
        Ok(HubicClient {
            http,
            base: base.trim_end_matches('/').to_owned(),
            client_id: client_id.to_owned(),
            client_secret,
            clock,
        })
    }

    /// The API base URL without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// The HTTP client (no redirects followed), shared with the autoregister scraper.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The URL a user's browser is sent to for consent.
    pub fn authorize_url(&self, redirect_uri: &str, scope: &str, state: &str) -> String {
        let query = form_urlencoded::Serializer::new(String::new())
            .append_pair("client_id", &self.client_id)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("scope", scope)
            .append_pair("response_type", "code")
            .append_pair("state", state)
            .finish();
        format!("{}/oauth/auth/?{query}", self.base)
    }

    fn basic_auth(&self) -> String {
        let raw = format!("{}:{}", self.client_id, self.client_secret.expose());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    async fn token_call(&self, form: String) -> Result<(TokenBody, SystemTime), ProviderError> {
        let issued = self.clock.now();
        let resp = self
            .http
            .post(format!("{}/oauth/token/", self.base))
            .header(reqwest::header::AUTHORIZATION, self.basic_auth())
            .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .body(form)
            .send()
            .await
            .map_err(transport)?;
        let status = resp.status();
        let body = resp.bytes().await.map_err(transport)?;
        if status.is_success() {
            let parsed: TokenBody = serde_json::from_slice(&body)
                .map_err(|e| ProviderError::Protocol(format!("token response is not the expected JSON: {e}")))?;
            if parsed.token_type.as_deref().is_some_and(|t| !t.eq_ignore_ascii_case("bearer")) {
                return Err(ProviderError::Protocol("token_type is not Bearer".into()));
            }
            return Ok((parsed, issued));
        }
        Err(classify_oauth_error(status, &body))
    }

    fn access_from(&self, body: &TokenBody, issued: SystemTime) -> AccessToken {
        // HubiC says 21600; anything beyond a year is nonsense, not a reason to overflow.
        let life = Duration::from_secs(body.expires_in.min(365 * 86400));
        let expires = issued + life;
        AccessToken {
            token: Secret::new(body.access_token.clone()),
            expires,
            renew_at: expires - (life / 10).min(Duration::from_secs(60)),
        }
    }

    /// Exchanges an authorization code for a refresh token and a first access token.
    pub async fn exchange_code(&self, code: &str, redirect_uri: &str) -> Result<CodeGrant, ProviderError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("code", code)
            .append_pair("redirect_uri", redirect_uri)
            .append_pair("grant_type", "authorization_code")
            .finish();
        let (body, issued) = self.token_call(form).await?;
        let refresh = body
            .refresh_token
            .clone()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ProviderError::Protocol("code exchange returned no refresh_token".into()))?;
        Ok(CodeGrant { refresh_token: Secret::new(refresh), access: self.access_from(&body, issued) })
    }

    /// Trades the refresh token for a new access token. HubiC does not rotate refresh tokens,
    /// so the stored one stays as it is.
    pub async fn refresh(&self, refresh_token: &Secret) -> Result<AccessToken, ProviderError> {
        let form = form_urlencoded::Serializer::new(String::new())
            .append_pair("refresh_token", refresh_token.expose())
            .append_pair("grant_type", "refresh_token")
            .finish();
        let (body, issued) = self.token_call(form).await?;
        Ok(self.access_from(&body, issued))
    }

    async fn api_get(
        &self,
        access: &AccessToken,
        path: &str,
    ) -> Result<(bytes::Bytes, Option<SystemTime>), ApiFailure> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header(reqwest::header::AUTHORIZATION, format!("Bearer {}", access.token.expose()))
            .send()
            .await
            .map_err(|e| ApiFailure::Other(transport(e)))?;
        let status = resp.status();
        let server_date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let body = resp.bytes().await.map_err(|e| ApiFailure::Other(transport(e)))?;
        if status.is_success() {
            return Ok((body, server_date));
        }
        let parsed: Option<ErrorBody> = serde_json::from_slice(&body).ok();
        let error = parsed.as_ref().map_or("", |b| b.error.as_str());
        if (status == 401 || status == 403) && error == "invalid_token" {
            return Err(ApiFailure::AccessRejected);
        }
        Err(ApiFailure::Other(classify_oauth_error(status, &body)))
    }

    /// `GET /1.0/account/credentials` with `access`.
    async fn credentials(&self, access: &AccessToken) -> Result<SwiftCredentials, ApiFailure> {
        let (body, server_date) = self.api_get(access, "/1.0/account/credentials").await?;
        let parsed: CredentialsBody = serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::Other(ProviderError::Protocol(format!("credentials response is not the expected JSON: {e}")))
        })?;
        let expires_at = parse_rfc3339(&parsed.expires).ok_or_else(|| {
            ApiFailure::Other(ProviderError::Protocol(format!(
                "credentials `expires` is not RFC 3339: {:?}",
                parsed.expires
            )))
        })?;
        if parsed.token.is_empty()
            || !(parsed.endpoint.starts_with("http://") || parsed.endpoint.starts_with("https://"))
        {
            return Err(ApiFailure::Other(ProviderError::Protocol(
                "credentials lack a token or an http(s) endpoint".into(),
            )));
        }
        // Measure the lifetime against the server's own clock when it says what time it is, so a
        // skewed local clock neither renews too late nor spins.
        let now = self.clock.now();
        let expires = match server_date {
            Some(date) => now + expires_at.duration_since(date).unwrap_or_default(),
            None => expires_at,
        };
        Ok(SwiftCredentials { token: Secret::new(parsed.token), endpoint: parsed.endpoint, expires })
    }

    async fn usage_with(&self, access: &AccessToken) -> Result<Usage, ApiFailure> {
        let (body, _) = self.api_get(access, "/1.0/account/usage").await?;
        serde_json::from_slice(&body).map_err(|e| {
            ApiFailure::Other(ProviderError::Protocol(format!("usage response is not the expected JSON: {e}")))
        })
    }
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        struct Raw {
            used: u64,
            quota: u64,
        }
        let raw = Raw::deserialize(d)?;
        Ok(Usage { used: raw.used, quota: raw.quota })
    }
}

fn transport(e: reqwest::Error) -> ProviderError {
    // reqwest's Display can include the URL, which never carries a secret here (tokens travel
    // in headers and bodies only).
    ProviderError::Transient(format!("HubiC API unreachable: {e}"))
}

/// Maps a non-2xx OAuth2 or API answer to an error, keeping HubiC's `error` and description.
fn classify_oauth_error(status: reqwest::StatusCode, body: &[u8]) -> ProviderError {
    let parsed: Option<ErrorBody> = serde_json::from_slice(body).ok();
    let (error, description) =
        parsed.map_or_else(|| (String::new(), String::new()), |b| (b.error, b.error_description));
    if status.is_server_error() || status.as_u16() == 509 || status.as_u16() == 429 {
        return ProviderError::Transient(
            format!("HubiC answered {status} {error} {description}").trim_end().to_owned(),
        );
    }
    if status == 401 && error == "unauthorized_client" {
        return ProviderError::ClientRefused { error, description };
    }
    // HubiC says `invalid_request "invalid refresh token"` where RFC 6749 says `invalid_grant`;
    // both, and a grant lacking a needed scope, mean only a new registration helps.
    if error == "invalid_grant"
        || error == "insufficient_scope"
        || (error == "invalid_request" && description.contains("refresh token"))
        || (error == "invalid_request" && description.contains("code"))
    {
        return ProviderError::GrantRefused { error, description };
    }
    if error.is_empty() {
        return ProviderError::Protocol(format!("HubiC answered {status} without an OAuth2 error body"));
    }
    ProviderError::Protocol(format!("HubiC answered {status}: {error}: {description}"))
}

/// One HubiC account as a credential source: loads the refresh token from the store, keeps the
/// access token, and fetches Swift credentials.
#[derive(Debug)]
pub struct HubicAccount {
    client: Arc<HubicClient>,
    store: Arc<dyn GrantStore>,
    account: String,
    /// Held only to read or replace the token, never across an await; the token is kept with
    /// the `generation` it was obtained in.
    access: Mutex<(Option<AccessToken>, u64)>,
    /// One refresh at a time: credentials and usage calls share it. It guards how the last
    /// refresh failed, if it did: whoever queued behind a failed refresh gets its error instead
    /// of trying again at once.
    refreshing: tokio::sync::Mutex<Option<ProviderError>>,
    /// Refreshes ended so far, counted under `refreshing`; read before queueing for it, to know
    /// afterwards whether one ended meanwhile.
    refreshes: std::sync::atomic::AtomicU64,
}

impl HubicAccount {
    /// The source for `account`, whose grant lives in `store`.
    pub fn new(client: Arc<HubicClient>, store: Arc<dyn GrantStore>, account: &str) -> Self {
        HubicAccount {
            client,
            store,
            account: account.to_owned(),
            access: Mutex::new((None, 0)),
            refreshing: tokio::sync::Mutex::new(None),
            refreshes: std::sync::atomic::AtomicU64::new(0),
        }
    }

    fn cached_access(&self) -> Option<AccessToken> {
        let now = self.client.clock.now();
        let guard = self.access.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.as_ref().filter(|a| usable(a, now)).cloned()
    }

    /// A newly refreshed access token, other than `rejected` (one HubiC just refused). Whoever
    /// waited for the refresh lock takes the token the refresh before it brought.
    async fn fresh_access(&self, rejected: Option<&AccessToken>) -> Result<AccessToken, ProviderError> {
        use std::sync::atomic::Ordering;
        let ticket = self.refreshes.load(Ordering::Acquire);
        let mut refreshing = self.refreshing.lock().await;
        if let Some(access) = self.cached_access().filter(|a| rejected.is_none_or(|r| r.token != a.token)) {
            return Ok(access);
        }
        if self.refreshes.load(Ordering::Acquire) != ticket {
            if let Some(failure) = &*refreshing {
                return Err(failure.duplicate());
            }
        }
        let generation = self.access.lock().unwrap_or_else(|p| p.into_inner()).1;
        let refreshed = self.refresh_now().await;
        *refreshing = refreshed.as_ref().err().map(ProviderError::duplicate);
        self.refreshes.fetch_add(1, Ordering::Release);
        let access = refreshed?;
        tracing::info!(account = %self.account, token = access.token.prefix(), "access token refreshed");
        let mut held = self.access.lock().unwrap_or_else(|p| p.into_inner());
        // Registered again meanwhile: this token is the old grant's; use it once, keep it not.
        if held.1 == generation {
            held.0 = Some(access.clone());
        }
        Ok(access)
    }

    async fn refresh_now(&self) -> Result<AccessToken, ProviderError> {
        let grant: Grant = self.store.load(&self.account).await?.ok_or(ProviderError::NotRegistered)?;
        self.client.refresh(&grant.refresh_token).await
    }

    /// Runs `call` with a valid access token, refreshing it once if HubiC rejects it.
    async fn with_access<T, F, Fut>(&self, call: F) -> Result<T, ProviderError>
    where
        F: Fn(AccessToken) -> Fut,
        Fut: std::future::Future<Output = Result<T, ApiFailure>>,
    {
        let (access, fresh) = match self.cached_access() {
            Some(a) => (a, false),
            None => (self.fresh_access(None).await?, true),
        };
        match call(access.clone()).await {
            Ok(v) => Ok(v),
            Err(ApiFailure::Other(e)) => Err(e),
            Err(ApiFailure::AccessRejected) if fresh => {
                Err(ProviderError::Protocol("HubiC rejected a freshly issued access token".into()))
            }
            Err(ApiFailure::AccessRejected) => {
                let access = self.fresh_access(Some(&access)).await?;
                match call(access).await {
                    Ok(v) => Ok(v),
                    Err(ApiFailure::Other(e)) => Err(e),
                    Err(ApiFailure::AccessRejected) => {
                        Err(ProviderError::Protocol("HubiC rejected a freshly issued access token".into()))
                    }
                }
            }
        }
    }
}

fn usable(access: &AccessToken, now: SystemTime) -> bool {
    now < access.renew_at
}

#[async_trait::async_trait]
impl CredentialSource for HubicAccount {
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
        let client = &self.client;
        self.with_access(|access| async move { client.credentials(&access).await }).await
    }

    /// HubiC's own usage call; the credentials are not needed.
    async fn usage(&self, _creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
        let client = &self.client;
        self.with_access(|access| async move { client.usage_with(&access).await }).await
    }

    fn asks_storage_for_usage(&self) -> bool {
        false
    }

    fn reset(&self) {
        let mut held = self.access.lock().unwrap_or_else(|p| p.into_inner());
        *held = (None, held.1.wrapping_add(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oauth_errors_are_classified() {
        type Check = fn(&ProviderError) -> bool;
        let cases: [(u16, &str, Check); 7] = [
            (400, r#"{"error_description":"invalid refresh token","error":"invalid_request"}"#, |e| {
                matches!(e, ProviderError::GrantRefused { .. })
            }),
            (400, r#"{"error_description":"x","error":"invalid_grant"}"#, |e| {
                matches!(e, ProviderError::GrantRefused { .. })
            }),
            (401, r#"{"error_description":"please verify credentials","error":"unauthorized_client"}"#, |e| {
                matches!(e, ProviderError::ClientRefused { .. })
            }),
            (500, r#"{"error_description":"please retry","error":"server_error"}"#, |e| e.is_transient()),
            (509, "Bandwidth Limit Exceeded", |e| e.is_transient()),
            (400, "<html>", |e| matches!(e, ProviderError::Protocol(_))),
            (400, r#"{"error_description":"missing parameters","error":"invalid_request"}"#, |e| {
                matches!(e, ProviderError::Protocol(_))
            }),
        ];
        for (status, body, check) in cases {
            let err = classify_oauth_error(reqwest::StatusCode::from_u16(status).unwrap(), body.as_bytes());
            assert!(check(&err), "{status} {body} -> {err:?}");
        }
    }

    #[test]
    fn access_tokens_are_renewed_early() {
        let clock = Arc::new(crate::clock::ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)));
        let client = HubicClient::new("http://127.0.0.1:1", "id", Secret::new("s"), clock.clone()).unwrap();
        let now = clock.now();
        let body =
            |expires_in| TokenBody { access_token: "t".into(), expires_in, refresh_token: None, token_type: None };
        // (lifetime, seconds later, still usable)
        let cases = [(21600, 21539, true), (21600, 21540, false), (10, 8, true), (10, 9, false), (10, 11, false)];
        for (life, later, want) in cases {
            let access = client.access_from(&body(life), now);
            assert_eq!(access.expires, now + Duration::from_secs(life));
            assert_eq!(usable(&access, now + Duration::from_secs(later)), want, "life {life} at +{later}");
        }
    }

    /// A token endpoint that answers each request 500 once `release` says so, and counts them.
    async fn held_token_endpoint() -> (String, Arc<std::sync::atomic::AtomicU32>, tokio::sync::watch::Sender<bool>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let (release, released) = tokio::sync::watch::channel(false);
        let counted = seen.clone();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let (counted, mut released) = (counted.clone(), released.clone());
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 8192];
                    if socket.read(&mut buf).await.unwrap_or(0) == 0 {
                        return;
                    }
                    counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let _ = released.wait_for(|r| *r).await;
                    let answer = "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\nconnection: close\r\n\r\n";
                    let _ = socket.write_all(answer.as_bytes()).await;
                });
            }
        });
        (base, seen, release)
    }

    #[tokio::test]
    async fn callers_queued_behind_a_failed_refresh_share_its_error() {
        // HubiC down: the first caller's refresh fails after a while; those that queued behind
        // it get its error instead of trying again one after another.
        let (base, seen, release) = held_token_endpoint().await;
        let clock: Arc<dyn Clock> = Arc::new(crate::clock::SystemClock);
        let client = Arc::new(HubicClient::new(&base, "api_hubic_x", Secret::new("s"), clock).unwrap());
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(crate::store::FileStore::open(dir.path()).unwrap());
        let grant = Grant { refresh_token: Secret::new("r"), scope: "credentials.r".into(), registered_at: 1 };
        store.save("a", &grant).await.unwrap();
        let account = Arc::new(HubicAccount::new(client, store, "a"));
        let call = |account: &Arc<HubicAccount>| {
            let account = account.clone();
            tokio::spawn(async move { account.fetch().await.map(|_| ()) })
        };
        let first = call(&account);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while seen.load(std::sync::atomic::Ordering::SeqCst) == 0 {
            assert!(tokio::time::Instant::now() < deadline, "the first refresh never arrived");
            tokio::task::yield_now().await;
        }
        let queued: Vec<_> = (0..3).map(|_| call(&account)).collect();
        // This runtime has one thread: a few turns let each new caller run until it waits for
        // the refresh lock (nothing before it awaits anything else).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        release.send(true).unwrap();
        assert!(first.await.unwrap().unwrap_err().is_transient());
        for q in queued {
            assert!(q.await.unwrap().unwrap_err().is_transient(), "the shared error");
        }
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 1, "one refresh for the four callers");
        // A caller that comes after the failure tries again.
        let _ = call(&account).await;
        assert_eq!(seen.load(std::sync::atomic::Ordering::SeqCst), 2);
    }
}
