//! Registration of a gateway user's HubiC account: the browser flow (`/register` →
//! HubiC consent → `/callback`), the headless flows (`swiftgate register` and autoregister,
//! where the gateway fills HubiC's login form itself), and the table of pending `state`s.
//!
//! Each flow ends the same way: the authorization code is exchanged, the refresh token is
//! saved through the store, and the token manager forgets what it had cached for the account.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use http::{Response, StatusCode};

use crate::body::{self, escape_html, Body};
use crate::clock::Clock;
use crate::provider::hubic::HubicClient;
use crate::provider::ProviderError;
use crate::secret::{random_hex, Secret};
use crate::store::{Grant, GrantStore, RedisStore, StoreError};
use crate::tokens::TokenManager;

/// How long a `state` handed to HubiC stays valid.
pub const STATE_TTL: Duration = Duration::from_secs(600);

/// Most registrations of one account waiting for their callback at once; starting one more
/// forgets the oldest.
pub const PENDING_PER_ACCOUNT: usize = 8;

/// Why a registration failed.
#[derive(Debug, thiserror::Error)]
pub enum RegisterError {
    /// The callback's `state` is unknown, already used, or expired.
    #[error("this registration link is unknown, already used or expired; start the registration again")]
    BadState,
    /// HubiC redirected back with an error.
    #[error("HubiC refused the authorisation: {error}: {description}")]
    Denied {
        /// HubiC's `error`.
        error: String,
        /// HubiC's `error_description`.
        description: String,
    },
    /// The callback came from a browser other than the one that started the registration.
    #[error("this registration was started in another browser; start it again from this one")]
    OtherBrowser,
    /// The callback carried neither a code nor an error.
    #[error("the callback carries no authorization code")]
    MissingCode,
    /// HubiC's login page refused the login and password.
    #[error("HubiC refused the login: {0}")]
    LoginFailed(String),
    /// HubiC's pages were not what the gateway expects to scrape.
    #[error("unexpected answer from HubiC's login page: {0}")]
    UnexpectedPage(String),
    /// Exchanging the code failed.
    #[error("exchanging the authorization code failed: {0}")]
    Exchange(#[from] ProviderError),
    /// Registration states live in the shared store, which cannot be reached: nothing was
    /// started or consumed.
    #[error("registration is unavailable while the gateway's shared store cannot be reached ({0}); try again shortly")]
    StoreDown(StoreError),
    /// The refresh token could not be saved.
    #[error("saving the refresh token failed: {0}")]
    Store(#[from] StoreError),
}

struct Pending {
    account: String,
    expires: SystemTime,
    /// Order of starting, for forgetting the oldest (a test clock gives equal expiries).
    started: u64,
    /// For a registration started in a browser: the value of the cookie that browser got, so
    /// a consent link handed to someone else cannot bind their HubiC account to this user.
    browser: Option<Secret>,
}

/// The `error_description`s HubiC's error redirects carried (hubic-api §1.5, and a refusal).
const HUBIC_DESCRIPTIONS: [&str; 7] = [
    "missing arguments",
    "please verify redirect uri",
    "response type must be set to code or token",
    "please verify scope",
    "please verify credentials",
    "please retry",
    "user refused",
];

/// The cookie that ties a browser registration to the browser that started it.
pub const BROWSER_COOKIE: &str = "swiftgate_registration";

/// Runs registrations for the gateway's accounts.
pub struct Registrar {
    client: Arc<HubicClient>,
    store: Arc<dyn GrantStore>,
    tokens: Arc<TokenManager>,
    clock: Arc<dyn Clock>,
    redirect_uri: String,
    scope: String,
    /// state → pending registration; short critical sections only. Unused with a shared
    /// store, which keeps them instead so that any instance can take the callback.
    pending: Mutex<HashMap<String, Pending>>,
    shared: Option<Arc<RedisStore>>,
    /// Registrations started so far.
    started: std::sync::atomic::AtomicU64,
    /// Announces each account whose registration completed.
    done: tokio::sync::broadcast::Sender<String>,
    /// The refresh token last seen in the store per account, to notice grants another process
    /// (`swiftgate register`) wrote. Held across a load or a save, so a registration here and
    /// a pass of the watch cannot interleave (a pass that read the old grant would reset the
    /// new one's tokens).
    seen: Arc<tokio::sync::Mutex<HashMap<String, Option<Secret>>>>,
    /// The HubiC accounts, the only ones registered here.
    accounts: Vec<String>,
}

impl std::fmt::Debug for Registrar {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registrar").field("redirect_uri", &self.redirect_uri).finish()
    }
}

impl Registrar {
    /// A registrar of `accounts` whose callback is `<public_url>/callback`.
    pub fn new(
        client: Arc<HubicClient>,
        store: Arc<dyn GrantStore>,
        tokens: Arc<TokenManager>,
        public_url: &str,
        scope: &str,
        accounts: Vec<String>,
        shared: Option<Arc<RedisStore>>,
    ) -> Self {
        let clock = tokens.clock().clone();
        Registrar {
            client,
            store,
            tokens,
            clock,
            redirect_uri: format!("{public_url}/callback"),
            scope: scope.to_owned(),
            pending: Mutex::new(HashMap::new()),
            shared,
            started: std::sync::atomic::AtomicU64::new(0),
            done: tokio::sync::broadcast::channel(16).0,
            seen: Arc::default(),
            accounts,
        }
    }

    /// True for an account registered here (a HubiC one).
    pub fn registers(&self, account: &str) -> bool {
        self.accounts.iter().any(|a| a == account)
    }

    /// Checks the store every `every` for grants another process wrote (`swiftgate register`
    /// while `serve` runs) and drops what is cached for their accounts, as a registration in
    /// this process does: the next request renews with the new grant.
    pub async fn watch_store(&self, every: Duration) {
        loop {
            self.check_store().await;
            tokio::time::sleep(every).await;
        }
    }

    /// One pass of [`watch_store`](Self::watch_store); the first only records what is there.
    pub async fn check_store(&self) {
        for account in &self.accounts {
            let mut seen = self.seen.lock().await;
            // An unreadable file is reported where it is used; here it changes nothing.
            let Ok(grant) = self.store.load(account).await else { continue };
            let token = grant.map(|g| g.refresh_token);
            let before = seen.insert(account.clone(), token.clone());
            if before.is_some_and(|before| before != token) {
                tracing::info!(account = %account, "the account's grant changed on disk; renewing with it");
                self.tokens.reset(account);
                renew_soon(&self.tokens, account);
            }
        }
    }

    /// Notifies of every registration completed from now on (by account name).
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<String> {
        self.done.subscribe()
    }

    /// The redirect_uri registered with HubiC.
    pub fn redirect_uri(&self) -> &str {
        &self.redirect_uri
    }

    /// Starts a registration of `account`: a single-use state, and the URL to send the user to.
    pub async fn begin(&self, account: &str) -> Result<(String, String), RegisterError> {
        self.begin_bound(account, None).await
    }

    /// Starts a browser registration: also returns the cookie value the browser must bring
    /// back to `/callback`.
    pub async fn begin_in_browser(&self, account: &str) -> Result<(String, String, String), RegisterError> {
        let cookie = random_hex(16);
        let (state, url) = self.begin_bound(account, Some(Secret::new(cookie.clone()))).await?;
        Ok((state, url, cookie))
    }

    async fn begin_bound(&self, account: &str, browser: Option<Secret>) -> Result<(String, String), RegisterError> {
        let state = random_hex(16);
        if let Some(shared) = &self.shared {
            shared
                .begin_state(&state, account, browser.as_ref(), STATE_TTL, PENDING_PER_ACCOUNT)
                .await
                .map_err(RegisterError::StoreDown)?;
        } else {
            self.begin_here(&state, account, browser);
        }
        let url = self.client.authorize_url(&self.redirect_uri, &self.scope, &state);
        Ok((state, url))
    }

    fn begin_here(&self, state: &str, account: &str, browser: Option<Secret>) {
        let now = self.clock.now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.retain(|_, p| p.expires > now);
        // A user may start registrations as fast as its key checks allow: past the cap, the
        // account's oldest state goes, so the map is bounded by the number of accounts.
        let mine = pending.iter().filter(|(_, p)| p.account == account);
        if mine.clone().count() >= PENDING_PER_ACCOUNT {
            if let Some(oldest) = mine.min_by_key(|(_, p)| p.started).map(|(s, _)| s.clone()) {
                pending.remove(&oldest);
            }
        }
        let started = self.started.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        pending.insert(
            state.to_owned(),
            Pending { account: account.to_owned(), expires: now + STATE_TTL, started, browser },
        );
    }

    async fn take_state(&self, state: &str, browser: Option<&str>) -> Result<String, RegisterError> {
        let Some(shared) = &self.shared else { return self.take_state_here(state, browser) };
        let check = |bound: Option<&str>| match other_browser(bound, browser) {
            true => Err(RegisterError::OtherBrowser),
            false => Ok(()),
        };
        match shared.take_state(state, check).await.map_err(RegisterError::StoreDown)? {
            Ok(Some(account)) => Ok(account),
            Ok(None) => Err(RegisterError::BadState),
            Err(e) => Err(e),
        }
    }

    fn take_state_here(&self, state: &str, browser: Option<&str>) -> Result<String, RegisterError> {
        let now = self.clock.now();
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let p = pending.get(state).filter(|p| p.expires > now).ok_or(RegisterError::BadState)?;
        // Only the browser that began it consumes a state bound to one: anyone else who learnt
        // the state (it travels in a URL) could otherwise cancel the registration.
        if other_browser(p.browser.as_ref().map(Secret::expose), browser) {
            return Err(RegisterError::OtherBrowser);
        }
        pending.remove(state).map(|p| p.account).ok_or(RegisterError::BadState)
    }

    /// Completes a registration from the callback's query string and, for one started in a
    /// browser, that browser's registration cookie; returns the account.
    pub async fn complete(&self, query: &str, browser: Option<&str>) -> Result<String, RegisterError> {
        let pairs = body::form_pairs(query.as_bytes());
        let get = |k| body::form_get(&pairs, k);
        // HubiC's error redirects carry `error` and `error_description` only, no state (a
        // refused consent, a redirect_uri HubiC does not accept): the user sees HubiC's reason,
        // whatever state there is or is not.
        if let Some(error) = get("error") {
            let known = match get("state") {
                Some(state) => self.take_state(state, browser).await.is_ok(),
                None => false,
            };
            // Anyone can send a browser here with any text: without a state of ours, only
            // HubiC's own error codes and wording are shown.
            let description = get("error_description").unwrap_or("");
            let (error, description) = match known {
                true => (error, description),
                false => (
                    if error.len() <= 40 && error.bytes().all(|b| b.is_ascii_lowercase() || b == b'_') {
                        error
                    } else {
                        "error"
                    },
                    HUBIC_DESCRIPTIONS.iter().copied().find(|d| *d == description).unwrap_or(""),
                ),
            };
            return Err(RegisterError::Denied { error: error.to_owned(), description: description.to_owned() });
        }
        // The state is consumed first, whatever the outcome, so a link works once.
        let account = self.take_state(get("state").ok_or(RegisterError::BadState)?, browser).await?;
        let code = get("code").filter(|c| !c.is_empty()).ok_or(RegisterError::MissingCode)?;
        let scope = get("scope").unwrap_or(&self.scope).to_owned();
        self.finish(&account, code, scope).await?;
        Ok(account)
    }

    /// Exchanges `code` and keeps the grant, in a task of its own: once HubiC has issued a
    /// refresh token it has revoked the account's previous one, so the new one must reach the
    /// store even if the browser that brought the code goes away meanwhile.
    async fn finish(&self, account: &str, code: &str, scope: String) -> Result<(), RegisterError> {
        let (client, store, tokens, clock, done, seen) = (
            self.client.clone(),
            self.store.clone(),
            self.tokens.clone(),
            self.clock.clone(),
            self.done.clone(),
            self.seen.clone(),
        );
        let (account, code, redirect_uri) = (account.to_owned(), code.to_owned(), self.redirect_uri.clone());
        let finishing = tokio::spawn(async move {
            let grant = client.exchange_code(&code, &redirect_uri).await?;
            let registered_at = crate::clock::unix_secs(clock.now());
            let refresh_token = grant.refresh_token;
            let mut seen = seen.lock().await;
            store.save(&account, &Grant { refresh_token: refresh_token.clone(), scope, registered_at }).await?;
            // A shared store drops the credentials shared under the previous grant as it
            // writes this one.
            tokens.reset(&account);
            // Written here and reset already: the store's watch need not do it again.
            seen.insert(account.clone(), Some(refresh_token));
            drop(seen);
            tracing::info!(account = %account, "account registered");
            let _ = done.send(account);
            Ok(())
        });
        finishing.await.unwrap_or_else(|_| Err(RegisterError::UnexpectedPage("the registration task failed".into())))
    }

    /// Registers `account` without a browser: fetches HubiC's consent page, posts the login
    /// form with `login` and `password`, and exchanges the code it is redirected with.
    pub async fn autoregister(&self, account: &str, login: &str, password: &Secret) -> Result<(), RegisterError> {
        let (state, url) = self.begin(account).await?;
        let http = self.client.http();
        let page = http.get(&url).send().await.map_err(|e| RegisterError::UnexpectedPage(transport(e)))?;
        let status = page.status();
        if status.is_redirection() {
            let location = page.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("");
            let _ = self.take_state(&state, None).await;
            return Err(redirect_error(location).unwrap_or_else(|| {
                RegisterError::UnexpectedPage(format!("consent page answered {status} to {location:?}"))
            }));
        }
        let html = page.text().await.map_err(|e| RegisterError::UnexpectedPage(transport(e)))?;
        let oauth = scrape_oauth_id(&html).ok_or_else(|| {
            RegisterError::UnexpectedPage(format!("consent page ({status}) has no hidden `oauth` input"))
        })?;
        let form = consent_form(&oauth, login, password, &self.scope);
        let post_url = format!("{}/oauth/auth/", self.client.base());
        // HubiC answered 509 to a POST that followed the GET too closely; wait and retry.
        let mut attempt = 0;
        let resp = loop {
            let resp = http
                .post(&post_url)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(form.clone())
                .send()
                .await
                .map_err(|e| RegisterError::UnexpectedPage(transport(e)))?;
            if resp.status().as_u16() == 509 && attempt < 3 {
                attempt += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
                continue;
            }
            break resp;
        };
        let status = resp.status();
        if status == StatusCode::FOUND || status == StatusCode::SEE_OTHER {
            let location = resp.headers().get("location").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
            let query = location.split_once('?').map_or("", |(_, q)| q);
            let completed = self.complete(query, None).await.map(|_| ());
            if completed.is_err() {
                // An error redirect carries no state to consume.
                let _ = self.take_state(&state, None).await;
            }
            return completed;
        }
        let text = resp.text().await.unwrap_or_default();
        let _ = self.take_state(&state, None).await;
        if status == StatusCode::OK {
            if let Some(message) = scrape_error(&text) {
                return Err(RegisterError::LoginFailed(message));
            }
        }
        Err(RegisterError::UnexpectedPage(format!("login form answered {status}")))
    }

    /// The `/register` form page.
    pub fn form_page(&self, message: Option<&str>) -> Response<Body> {
        let note = message.map_or(String::new(), |m| format!("<p class=\"error\">{}</p>", escape_html(m)));
        body::html(StatusCode::OK, page("Register a HubiC account", &format!(
            "{note}<p>Sign in with your gateway user name and key; you will then be sent to HubiC to authorise swiftgate.</p>\
             <form method=\"post\" action=\"register\"><label>User <input name=\"user\" autocomplete=\"username\"></label>\
             <label>Key <input name=\"key\" type=\"password\" autocomplete=\"current-password\"></label>\
             <button type=\"submit\">Continue to HubiC</button></form>\
             <h2>Or let the gateway sign in to HubiC for you</h2>\
             <form method=\"post\" action=\"autoregister\"><label>User <input name=\"user\"></label>\
             <label>Key <input name=\"key\" type=\"password\"></label>\
             <label>HubiC e-mail <input name=\"login\"></label><label>HubiC password <input name=\"password\" type=\"password\"></label>\
             <button type=\"submit\">Register</button></form>"
        )))
    }
}

/// A small complete HTML page.
pub fn page(title: &str, content: &str) -> String {
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{t}</title>\
         <style>body{{font-family:sans-serif;max-width:40em;margin:2em auto}}label{{display:block;margin:.5em 0}}.error{{color:#b00}}</style>\
         </head><body><h1>{t}</h1>{content}</body></html>\n",
        t = escape_html(title)
    )
}

/// True when a registration bound to the browser cookie `bound` is completed by a browser
/// that brought another cookie, or none; compared in constant time.
fn other_browser(bound: Option<&str>, browser: Option<&str>) -> bool {
    use subtle::ConstantTimeEq;
    bound.is_some_and(|want| browser.is_none_or(|got| !bool::from(got.as_bytes().ct_eq(want.as_bytes()))))
}

/// The page shown when a registration ends.
pub fn outcome_page(result: &Result<String, RegisterError>) -> Response<Body> {
    match result {
        Ok(account) => body::html(
            StatusCode::OK,
            page("Registration complete", &format!(
                "<p>The HubiC account <b>{}</b> is registered. Swift clients can now authenticate with your gateway user name and key.</p>",
                escape_html(account)
            )),
        ),
        Err(e) => {
            let status = match e {
                RegisterError::BadState | RegisterError::OtherBrowser | RegisterError::MissingCode | RegisterError::Denied { .. } | RegisterError::LoginFailed(_) => StatusCode::BAD_REQUEST,
                RegisterError::StoreDown(_) | RegisterError::Store(StoreError::Unavailable(_)) => StatusCode::SERVICE_UNAVAILABLE,
                RegisterError::Exchange(p) if !p.is_transient() => StatusCode::BAD_GATEWAY,
                _ => StatusCode::BAD_GATEWAY,
            };
            body::html(status, page("Registration failed", &format!("<p class=\"error\">{}</p><p><a href=\"register\">Try again</a></p>", escape_html(&e.to_string()))))
        }
    }
}

/// The consent form as a browser posts it: one field per granted perimeter (`links=drw`).
fn consent_form(oauth: &str, login: &str, password: &Secret, scope: &str) -> String {
    let mut form = form_urlencoded::Serializer::new(String::new());
    form.append_pair("oauth", oauth)
        .append_pair("action", "accepted")
        .append_pair("login", login)
        .append_pair("user_pwd", password.expose());
    for item in scope.split(',') {
        if let Some((perimeter, rights)) = item.trim().split_once('.') {
            form.append_pair(perimeter, rights);
        }
    }
    form.finish()
}

fn transport(e: reqwest::Error) -> String {
    format!("HubiC unreachable: {e}")
}

fn redirect_error(location: &str) -> Option<RegisterError> {
    let query = location.split_once('?')?.1;
    let pairs = body::form_pairs(query.as_bytes());
    let error = body::form_get(&pairs, "error")?;
    Some(RegisterError::Denied {
        error: error.to_owned(),
        description: body::form_get(&pairs, "error_description").unwrap_or("").to_owned(),
    })
}

/// The numeric value of the hidden `oauth` input, as every HubiC scraper found it.
pub fn scrape_oauth_id(html: &str) -> Option<String> {
    const NEEDLE: &str = "name=\"oauth\" value=\"";
    let start = html.find(NEEDLE)? + NEEDLE.len();
    let digits: String = html[start..].chars().take_while(char::is_ascii_digit).collect();
    (!digits.is_empty() && html[start + digits.len()..].starts_with('"')).then_some(digits)
}

/// The message on the line after `class="text-error"`, as HubiC showed a failed login.
fn scrape_error(html: &str) -> Option<String> {
    let mut lines = html.lines();
    lines.by_ref().find(|l| l.contains("class=\"text-error\""))?;
    let message = lines.next()?.trim();
    let message = message.split('<').next().unwrap_or("").trim();
    (!message.is_empty()).then(|| message.to_owned())
}

/// Renews `account`'s credentials in the background after the watch reset them, so anonymous
/// requests (tempurl, public containers) and `/info` know the new grant's upstream before any
/// client authenticates, as they do after `serve`'s start.
fn renew_soon(tokens: &Arc<TokenManager>, account: &str) {
    let (tokens, account) = (tokens.clone(), account.to_owned());
    tokio::spawn(async move {
        if let Err(e) = tokens.credentials(&account).await {
            tracing::info!(account = %account, cause = %e, "no credentials after the new registration");
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scrapes_the_oauth_id_like_real_clients() {
        let ok = r#"<form><input type="hidden" name="oauth" value="168341"><input type="hidden" name="action" value="accepted">"#;
        assert_eq!(scrape_oauth_id(ok).as_deref(), Some("168341"));
        assert_eq!(scrape_oauth_id(r#"name="oauth" value="abc""#), None);
        assert_eq!(scrape_oauth_id(r#"name="oauth" value="12x""#), None);
        assert_eq!(scrape_oauth_id("<html></html>"), None);
    }

    #[test]
    fn scrapes_the_login_error_from_the_next_line() {
        let page = "<p class=\"text-error\">\n   Authentication failed, please check your credentials\n</p>";
        assert_eq!(scrape_error(page).as_deref(), Some("Authentication failed, please check your credentials"));
        assert_eq!(scrape_error("<p>fine</p>"), None);
    }

    #[test]
    fn error_redirects_keep_hubic_words() {
        let e = redirect_error("http://gw/callback?error=invalid_scope&error_description=please+verify+scope").unwrap();
        assert!(
            matches!(e, RegisterError::Denied { ref error, ref description } if error == "invalid_scope" && description == "please verify scope")
        );
        assert!(redirect_error("http://gw/callback?code=1").is_none());
    }
}
