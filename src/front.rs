//! What clients authenticate with: gateway users, their argon2-hashed keys, and the Swift v1.0
//! auth endpoint.
//!
//! Argon2 is slow on purpose, so a key that verified once is remembered as an HMAC under a
//! per-process random key: later auths cost one HMAC, and the plain key is never kept. This
//! module decides who the client is; the token manager decides what upstream credentials to
//! hand out.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use base64::Engine;

use argon2::{password_hash::PasswordHash, Argon2, PasswordHasher, PasswordVerifier};
use hmac::{Hmac, Mac};
use http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::body::{self, Body};
use crate::clock::secs_until;
use crate::config::ResolvedUser;
use crate::provider::ProviderError;
use crate::tokens::{Cached, TokenError, TokenManager};

/// HMAC-SHA256 under a per-process random key, keyed once: each MAC then costs two SHA-256
/// blocks instead of four.
#[derive(Clone)]
struct ProcessMac(Hmac<Sha256>);

impl ProcessMac {
    fn random() -> Self {
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut key);
        ProcessMac::keyed(&key)
    }

    fn keyed(key: &[u8]) -> Self {
        ProcessMac(Hmac::new_from_slice(key).unwrap_or_else(|_| unreachable!("any key length")))
    }

    fn of(&self, data: &[u8]) -> [u8; 32] {
        self.of_parts(&[data])
    }

    fn of_parts(&self, parts: &[&[u8]]) -> [u8; 32] {
        let mut mac = self.0.clone();
        for part in parts {
            mac.update(part);
        }
        mac.finalize().into_bytes().into()
    }
}

/// The keys gateway tokens are sealed with: the first seals, every one is accepted.
#[derive(Clone)]
pub struct TokenKeys(Vec<ProcessMac>);

impl std::fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "TokenKeys({} keys)", self.0.len())
    }
}

/// Shortest key a token key file may hold, in bytes (`openssl rand -hex 32` writes 64).
const MIN_TOKEN_KEY: usize = 32;

impl TokenKeys {
    /// A key of this process's own: its tokens are accepted by no other process.
    pub fn random() -> Self {
        TokenKeys(vec![ProcessMac::random()])
    }

    /// The keys of a token key file: the sealing key on the first line, and optionally a second
    /// one, also accepted, while a rotation runs. Blank lines and lines
    /// starting with `#` are skipped. The error never holds a key.
    pub fn parse(text: &str) -> Result<Self, String> {
        let keys: Vec<&str> = text.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')).collect();
        match keys.len() {
            0 => return Err("holds no key (write one with `openssl rand -hex 32`)".into()),
            1 | 2 => {}
            n => return Err(format!("holds {n} keys; at most two (the sealing key, then one more accepted)")),
        }
        if let Some(n) = keys.iter().position(|k| k.len() < MIN_TOKEN_KEY) {
            return Err(format!("key on line {} of the keys is shorter than {MIN_TOKEN_KEY} characters", n + 1));
        }
        Ok(TokenKeys(keys.iter().map(|k| ProcessMac::keyed(k.as_bytes())).collect()))
    }

    /// The keys in `path`, as [`TokenKeys::parse`] reads them.
    pub fn read(path: &std::path::Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        TokenKeys::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }
}

/// A configured gateway user.
#[derive(Debug)]
struct User {
    key_hash: String,
    account: String,
    /// Its name and account, as the access log carries them.
    acting: crate::server::Acting,
}

/// The gateway's users and the cache of keys already verified.
pub struct Users {
    by_name: HashMap<String, usize>,
    list: Vec<User>,
    cache_mac: ProcessMac,
    /// user index → HMAC of the last key that verified; short critical sections only.
    verified: Mutex<HashMap<usize, [u8; 32]>>,
    /// Argon2 runs at most this many at once (one per core): each takes 7 MiB and real CPU,
    /// and anyone can ask for one by sending a wrong key. Waiters are served in order.
    argon_slots: tokio::sync::Semaphore,
    /// Key checks waiting or running, per user, per client address, and in all (see
    /// [`Refused::Busy`]); auth path only, short sections.
    pending: Mutex<HashMap<Claimant, usize>>,
    /// Argon2 runs since the start.
    checks: std::sync::atomic::AtomicU64,
}

/// Who a key check is counted against.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Claimant {
    User(usize),
    Address(std::net::IpAddr),
    Everyone,
}

/// Key checks a user may have waiting or running at once. A flood of wrong keys for one user
/// from one address stops at [`PENDING_PER_ADDRESS`], below this, so the user's own login from
/// elsewhere still finds room.
const PENDING_PER_USER: usize = 16;
/// Key checks a client address may have waiting or running at once: a flood from one address
/// delays the others' logins by at most this many checks (about 16 ms each per core).
const PENDING_PER_ADDRESS: usize = 8;
/// Key checks waiting or running in all: about two seconds of work on two cores.
const PENDING_TOTAL: usize = 128;

/// Why a key was not taken.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Unknown user, or wrong key.
    Wrong,
    /// Too many key checks already wait for this user, this client address, or in all: the
    /// client should try again shortly (`429` with `Retry-After`). The key was not checked.
    Busy,
}

/// A key check counted in [`Users::pending`] until dropped.
struct Claim<'a> {
    users: &'a Users,
    claimants: [Option<Claimant>; 3],
}

impl Drop for Claim<'_> {
    fn drop(&mut self) {
        let mut pending = self.users.pending.lock().unwrap_or_else(|p| p.into_inner());
        for claimant in self.claimants.iter().flatten() {
            if let Some(n) = pending.get_mut(claimant) {
                *n -= 1;
                if *n == 0 {
                    pending.remove(claimant);
                }
            }
        }
    }
}

impl std::fmt::Debug for Users {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Users").field("names", &self.by_name.keys().collect::<Vec<_>>()).finish()
    }
}

impl Users {
    /// Users from the resolved configuration.
    pub fn new(users: &[ResolvedUser]) -> Self {
        let by_name = users.iter().enumerate().map(|(i, u)| (u.name.clone(), i)).collect();
        let list = users
            .iter()
            .map(|u| User {
                key_hash: u.key_hash.clone(),
                account: u.account.clone(),
                acting: crate::server::Acting { user: u.name.as_str().into(), account: u.account.as_str().into() },
            })
            .collect();
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        Users {
            by_name,
            list,
            cache_mac: ProcessMac::random(),
            verified: Mutex::new(HashMap::new()),
            argon_slots: tokio::sync::Semaphore::new(cores),
            pending: Mutex::new(HashMap::new()),
            checks: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Argon2 key checks run since the start.
    pub fn key_checks(&self) -> u64 {
        self.checks.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Counts a key check for `user` (if known) from `from`, unless a bound is reached.
    fn claim(&self, user: Option<usize>, from: std::net::IpAddr) -> Option<Claim<'_>> {
        let claimants = [user.map(Claimant::User), Some(Claimant::Address(from)), Some(Claimant::Everyone)];
        let bound = |c: &Claimant| match c {
            Claimant::User(_) => PENDING_PER_USER,
            Claimant::Address(_) => PENDING_PER_ADDRESS,
            Claimant::Everyone => PENDING_TOTAL,
        };
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if claimants.iter().flatten().any(|c| pending.get(c).copied().unwrap_or(0) >= bound(c)) {
            return None;
        }
        for c in claimants.iter().flatten() {
            *pending.entry(*c).or_insert(0) += 1;
        }
        Some(Claim { users: self, claimants })
    }

    /// Runs argon2 on `key` against `hash`, one of [`Users::argon_slots`] at a time.
    async fn check_key(&self, hash: &str, key: &str) -> bool {
        let (hash, key) = (hash.to_owned(), key.to_owned());
        let Ok(_slot) = self.argon_slots.acquire().await else { return false };
        self.checks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tokio::task::spawn_blocking(move || verify_key(&hash, &key)).await.unwrap_or(false)
    }

    /// The account `user` is bound to.
    pub fn account_of(&self, user: &str) -> Option<&str> {
        self.by_name.get(user).map(|&i| self.list[i].account.as_str())
    }

    /// The account of the user with index `index` (as carried by a gateway token).
    pub fn account_at(&self, index: usize) -> Option<&str> {
        self.list.get(index).map(|u| u.account.as_str())
    }

    /// The user with index `index` and its account, for the access log.
    pub fn acting(&self, index: usize) -> Option<crate::server::Acting> {
        self.list.get(index).map(|u| u.acting.clone())
    }

    fn mac(&self, key: &str) -> [u8; 32] {
        self.cache_mac.of(key.as_bytes())
    }

    /// Checks `user`'s `key`, sent from `from`; returns the bound account on success.
    pub async fn verify(&self, user: &str, key: &str, from: std::net::IpAddr) -> Result<String, Refused> {
        let index = self.verify_index(user, key, from).await?;
        Ok(self.list[index].account.clone())
    }

    /// Checks `user`'s `key`, sent from `from`; returns the user's index on success.
    ///
    /// A key that verified before is recognised by its HMAC, with no argon2 run. Otherwise the
    /// check waits its turn for a core, within the bounds of [`Refused::Busy`]. An unknown user
    /// costs the same argon2 run as a known one's wrong key, so that the time of a refusal does
    /// not tell which user names exist.
    pub async fn verify_index(&self, user: &str, key: &str, from: std::net::IpAddr) -> Result<usize, Refused> {
        let index = self.by_name.get(user).copied();
        let mac = self.mac(key);
        if let Some(index) = index {
            let cached = self.verified.lock().unwrap_or_else(|p| p.into_inner()).get(&index).copied();
            if cached.is_some_and(|c| bool::from(c.ct_eq(&mac))) {
                return Ok(index);
            }
        }
        let Some(_claim) = self.claim(index, from) else { return Err(Refused::Busy) };
        // Unknown: the first user's hash stands in, so the work (its parameters) is the same;
        // what it says is not used.
        let Some(hash) = index.or((!self.list.is_empty()).then_some(0)).map(|i| self.list[i].key_hash.as_str()) else {
            return Err(Refused::Wrong);
        };
        let ok = self.check_key(hash, key).await;
        match index {
            Some(index) if ok => {
                self.verified.lock().unwrap_or_else(|p| p.into_inner()).insert(index, mac);
                Ok(index)
            }
            _ => Err(Refused::Wrong),
        }
    }
}

/// Gateway-issued tokens. Sealed (HMAC-SHA256) rather than looked up, so checking one on the
/// streaming path takes no lock. The seal covers the user's name as well as its index, so a
/// token is refused by an instance whose configuration lists that user elsewhere or not at
/// all. Under a per-process random key a restart invalidates them all, and clients
/// re-authenticate on the resulting 401; under a shared key ([`TokenKeys::read`]) every
/// instance accepts every other's.
pub struct TokenIssuer {
    keys: TokenKeys,
    /// user index → name, sealed with the token.
    names: Vec<String>,
    ttl: Duration,
    /// user index → the token last issued and its expiry; auth path only, short sections.
    current: Mutex<HashMap<usize, (String, SystemTime)>>,
}

impl std::fmt::Debug for TokenIssuer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenIssuer").field("ttl", &self.ttl).finish()
    }
}

const TOKEN_PREFIX: &str = "SG1_";
/// The payload's first byte: 2 since the seal covers the user's name.
const TOKEN_VERSION: u8 = 2;
/// version, user (u32), expiry (u64 Unix seconds), 16 random bytes.
const PAYLOAD_LEN: usize = 1 + 4 + 8 + 16;
const SEALED_LEN: usize = PAYLOAD_LEN + 32;

impl TokenIssuer {
    /// Tokens that live `ttl`, sealed with `keys`, for the users named in `names` (by index).
    pub fn new(ttl: Duration, keys: TokenKeys, names: Vec<String>) -> Self {
        TokenIssuer { keys, names, ttl, current: Mutex::new(HashMap::new()) }
    }

    fn seal_with(mac: &ProcessMac, payload: &[u8; PAYLOAD_LEN], name: &str) -> [u8; 32] {
        mac.of_parts(&[payload, name.as_bytes()])
    }

    /// The user's token: the current one while more than a tenth of its life (at most five
    /// minutes) remains, else a new one.
    pub fn issue(&self, user: usize, now: SystemTime) -> (String, SystemTime) {
        let margin = (self.ttl / 10).min(Duration::from_secs(300));
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((token, expires)) = current.get(&user) {
            if expires.duration_since(now).is_ok_and(|left| left > margin) {
                return (token.clone(), *expires);
            }
        }
        let expires = crate::clock::whole_seconds(now + self.ttl);
        let secs = crate::clock::unix_secs(expires);
        let mut payload = [0u8; PAYLOAD_LEN];
        payload[0] = TOKEN_VERSION;
        payload[1..5].copy_from_slice(&(user as u32).to_be_bytes());
        payload[5..13].copy_from_slice(&secs.to_be_bytes());
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut payload[13..]);
        let mut sealed = [0u8; SEALED_LEN];
        sealed[..PAYLOAD_LEN].copy_from_slice(&payload);
        let name = self.names.get(user).map_or("", String::as_str);
        sealed[PAYLOAD_LEN..].copy_from_slice(&Self::seal_with(&self.keys.0[0], &payload, name));
        let token = format!("{TOKEN_PREFIX}{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sealed));
        current.insert(user, (token.clone(), expires));
        (token, expires)
    }

    /// The user index a valid, unexpired token was issued to.
    pub fn verify(&self, token: &str, now: SystemTime) -> Option<usize> {
        let encoded = token.strip_prefix(TOKEN_PREFIX)?;
        let mut buf = [0u8; SEALED_LEN + 3];
        let n = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode_slice(encoded, &mut buf).ok()?;
        if n != SEALED_LEN {
            return None;
        }
        let payload: [u8; PAYLOAD_LEN] = buf[..PAYLOAD_LEN].try_into().ok()?;
        let user = u32::from_be_bytes([payload[1], payload[2], payload[3], payload[4]]) as usize;
        let name = self.names.get(user)?;
        let sealed = &buf[PAYLOAD_LEN..SEALED_LEN];
        let genuine = self.keys.0.iter().any(|mac| bool::from(Self::seal_with(mac, &payload, name).ct_eq(sealed)));
        if !genuine || payload[0] != TOKEN_VERSION {
            return None;
        }
        let expires = u64::from_be_bytes(payload[5..13].try_into().ok()?);
        let now = crate::clock::unix_secs(now);
        (now < expires).then_some(user)
    }
}

fn verify_key(hash: &str, key: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|parsed| Argon2::default().verify_password(key.as_bytes(), &parsed).is_ok())
}

/// An argon2id PHC hash of `key` with a random salt, for the configuration file.
///
/// Parameters m = 7 MiB, t = 5, p = 1: one of OWASP's equivalent argon2id settings, chosen over
/// the 19 MiB one because every verification allocates `m`, and the gateway's whole streaming
/// footprint is smaller than that. Hashes made with other parameters still verify (the PHC
/// string carries them).
pub fn hash_key(key: &str) -> Result<String, argon2::password_hash::Error> {
    let salt = argon2::password_hash::SaltString::generate(&mut argon2::password_hash::rand_core::OsRng);
    let params = argon2::Params::new(7 * 1024, 5, 1, None)?;
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    Ok(argon.hash_password(key.as_bytes(), &salt)?.to_string())
}

/// The v1.0 credentials a request carries: `X-Auth-User`/`X-Auth-Key`, else
/// `X-Storage-User`/`X-Storage-Pass` (tempauth's preference).
pub fn v1_credentials(headers: &HeaderMap) -> Option<(&str, &str)> {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).filter(|v| !v.is_empty());
    let user = get("x-auth-user").or_else(|| get("x-storage-user"))?;
    let key = get("x-auth-key").or_else(|| get("x-storage-pass"))?;
    Some((user, key))
}

/// True for the paths v1.0 auth is answered on.
pub fn is_auth_path(path: &str) -> bool {
    matches!(path, "/auth/v1.0" | "/auth/v1.0/" | "/v1.0" | "/v1.0/" | "/auth" | "/auth/" | "/auth/1.0" | "/auth/1.0/")
        || (path.starts_with("/auth/v1/") && path.ends_with("/auth"))
}

/// A Swift-style 401 for bad or missing credentials on a request for `path`, whose realm is
/// the account `path` names, as Swift gives it (see [`realm`]).
pub fn unauthorized(path: &str) -> Response<Body> {
    let mut resp = body::html(
        StatusCode::UNAUTHORIZED,
        "<html><h1>Unauthorized</h1><p>This server could not verify that you are authorized to access the document you requested.</p></html>",
    );
    if let Ok(value) = HeaderValue::from_str(&format!("Swift realm=\"{}\"", realm(path))) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, value);
    }
    resp
}

/// The answer to a key that was not checked because too many checks already wait (see
/// [`Refused::Busy`]): `429`, to try again in a second.
pub fn busy() -> Response<Body> {
    let mut resp = body::text(StatusCode::TOO_MANY_REQUESTS, "too many key checks pending; try again shortly\n");
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// What Swift percent-encodes in a realm: all but letters, digits and `/-_.~`, as Python's
/// `quote` does.
const REALM_SET: &percent_encoding::AsciiSet =
    &percent_encoding::NON_ALPHANUMERIC.remove(b'/').remove(b'-').remove(b'_').remove(b'.').remove(b'~');

/// The realm of a 401 for `path`, as Swift's answers give it: the account segment of
/// `/<version>/<account>[/…]`, decoded and quoted again; `unknown` for a path of another shape
/// or for v1.0 auth's (`/auth/v1.0`, `/v1.0/…`).
pub fn realm(path: &str) -> String {
    let mut segments = path.strip_prefix('/').map(|p| p.splitn(3, '/'));
    let account = segments.as_mut().and_then(|s| Some((s.next()?, s.next()?)));
    match account {
        Some((version, account)) if !version.is_empty() && !account.is_empty() => {
            let decoded: Vec<u8> = percent_encoding::percent_decode_str(account).collect();
            if matches!(&decoded[..], b"v1.0" | b"auth") {
                return "unknown".to_owned();
            }
            percent_encoding::percent_encode(&decoded, REALM_SET).to_string()
        }
        _ => "unknown".to_owned(),
    }
}

/// Maps a token-manager failure to what a Swift client should see.
pub fn token_error_response(err: &TokenError, public_url: &str) -> Response<Body> {
    let provider = match err {
        TokenError::UnknownAccount => {
            return body::text(StatusCode::INTERNAL_SERVER_ERROR, "gateway user is bound to an unknown account\n")
        }
        TokenError::Provider(p) => p,
    };
    match &**provider {
        ProviderError::NotRegistered => body::text(
            StatusCode::FORBIDDEN,
            format!("this account is not registered with HubiC yet: open {public_url}/register in a browser, or run `swiftgate register`\n"),
        ),
        ProviderError::GrantRefused { .. } => body::text(
            StatusCode::FORBIDDEN,
            format!("HubiC no longer accepts this account's authorisation: register again at {public_url}/register\n"),
        ),
        ProviderError::ClientRefused { .. } => body::text(
            StatusCode::BAD_GATEWAY,
            "HubiC refused the gateway's application credentials; the operator must check client_id/client_secret\n",
        ),
        ProviderError::AuthFailed(cause) => {
            body::text(StatusCode::BAD_GATEWAY, format!("the storage's auth service refused this account: {cause}\n"))
        }
        ProviderError::Transient(_) | ProviderError::Busy { .. } => {
            let wait = provider.retry_after().map_or(2, |d| d.as_secs().max(1));
            let mut resp = body::text(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the storage's auth service is temporarily unavailable ({provider}); retry shortly\n"),
            );
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
            resp
        }
        ProviderError::Protocol(cause) => {
            body::text(StatusCode::BAD_GATEWAY, format!("the gateway could not obtain storage credentials: {cause}\n"))
        }
        ProviderError::Store(_) => {
            body::text(
                StatusCode::BAD_GATEWAY,
                "the gateway could not obtain storage credentials: its state for this account is unreadable; see its log\n",
            )
        }
    }
}

/// What v1.0 auth hands out.
#[derive(Clone, Copy, Debug)]
pub enum Issue<'a> {
    /// The upstream storage URL and token (redirect mode), checked by `UpstreamCheck`.
    Upstream(&'a UpstreamCheck),
    /// The gateway's storage URL and a gateway token (proxy mode).
    Gateway(&'a TokenIssuer),
}

/// How often redirect mode asks upstream whether the token it hands out is still good.
const CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long that question may take before the token is handed out unchecked.
const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Redirect mode's check of the upstream token before handing it out. The gateway never sees
/// the storage requests made with it, so a token upstream revoked early (HubiC did) would go
/// on being handed out until its expiry, to clients re-authenticating after each 401. A `HEAD`
/// of the storage URL with the token, at most every `CHECK_EVERY` per account, finds out;
/// anything but a 401 (an error, a timeout) leaves the token as it is.
#[derive(Debug)]
pub struct UpstreamCheck {
    http: reqwest::Client,
    /// Account → when its token was last checked; short critical sections only.
    last: Mutex<HashMap<String, SystemTime>>,
}

impl UpstreamCheck {
    /// A check that asks upstream through `http`.
    pub fn new(http: reqwest::Client) -> UpstreamCheck {
        UpstreamCheck { http, last: Mutex::new(HashMap::new()) }
    }

    /// True when upstream refuses `cached`'s token (checked if not done lately).
    async fn refused(&self, account: &str, cached: &Cached, now: SystemTime) -> bool {
        {
            let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
            if last.get(account).is_some_and(|t| now.duration_since(*t).is_ok_and(|d| d < CHECK_EVERY)) {
                return false;
            }
            last.insert(account.to_owned(), now);
        }
        let asked = self
            .http
            .head(&cached.creds.endpoint)
            .header("x-auth-token", cached.creds.token.expose())
            .timeout(CHECK_TIMEOUT)
            .send()
            .await;
        match asked {
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => true,
            Ok(r) if r.status().is_success() => false,
            // At most once per account and `CHECK_EVERY`, so a check that cannot work (a
            // storage endpoint whose CA the system does not trust) is seen in the log.
            Ok(r) => {
                tracing::info!(account = %account, status = %r.status(), "token check: upstream did not say; token handed out");
                false
            }
            Err(e) => {
                tracing::info!(account = %account, cause = %e, "token check failed; token handed out");
                false
            }
        }
    }
}

/// Answers a v1.0 auth request.
pub async fn v1_auth(
    method: &Method,
    headers: &HeaderMap,
    users: &Users,
    tokens: &Arc<TokenManager>,
    public_url: &str,
    issue: Issue<'_>,
    from: std::net::IpAddr,
) -> Response<Body> {
    // GET only, as tempauth (swift-protocol §1.6).
    if method != Method::GET {
        let mut resp = body::text(StatusCode::METHOD_NOT_ALLOWED, "v1.0 auth takes GET\n");
        resp.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET"));
        return resp;
    }
    let Some((user, key)) = v1_credentials(headers) else {
        return unauthorized("");
    };
    let index = match users.verify_index(user, key, from).await {
        Ok(index) => index,
        Err(Refused::Wrong) => {
            tracing::info!(user = %user, "v1.0 auth refused: bad credentials");
            return unauthorized("");
        }
        Err(Refused::Busy) => {
            tracing::info!(user = %user, peer = %from, "v1.0 auth deferred: too many key checks pending");
            return busy();
        }
    };
    let account = users.list[index].account.as_str();
    let lookup = match issue {
        // The client will use the upstream token itself: give it one that outlives the skew
        // between the gateway's idea of its expiry and upstream's.
        Issue::Upstream(check) => match tokens.credentials_lasting(account, Duration::from_secs(2)).await {
            // A fixed token has no successor to wait for: it goes out as it is.
            Ok(cached) if cached.renews && check.refused(account, &cached, tokens.clock().now()).await => {
                tracing::info!(account = %account, "upstream refuses the Swift token before its expiry; renewing");
                tokens.credentials_except(account, &cached.creds.token, crate::tokens::REFUSAL_PATIENCE).await
            }
            other => other,
        },
        Issue::Gateway(_) => tokens.credentials(account).await,
    };
    let cached = match lookup {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(user = %user, account = %account, cause = %e, "v1.0 auth: no upstream credentials");
            return token_error_response(&e, public_url);
        }
    };
    let now = tokens.clock().now();
    let (url, token, expires) = match issue {
        Issue::Upstream(_) => {
            (cached.creds.endpoint.clone(), cached.creds.token.expose().to_owned(), cached.creds.expires)
        }
        Issue::Gateway(issuer) => {
            let (token, expires) = issuer.issue(index, now);
            (format!("{public_url}{}", cached.target.path), token, expires)
        }
    };
    let (Ok(url), Ok(token)) = (HeaderValue::from_str(&url), HeaderValue::from_str(&token)) else {
        return body::text(StatusCode::BAD_GATEWAY, "storage credentials are not valid header values\n");
    };
    let mut resp = body::status(StatusCode::OK);
    let h = resp.headers_mut();
    h.insert("x-storage-url", url);
    h.insert("x-auth-token", token.clone());
    h.insert("x-storage-token", token);
    h.insert("x-auth-token-expires", HeaderValue::from(secs_until(now, expires)));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn auth_paths() {
        for p in ["/auth/v1.0", "/auth/v1.0/", "/v1.0", "/auth", "/auth/1.0", "/auth/v1/test/auth"] {
            assert!(is_auth_path(p), "{p}");
        }
        for p in ["/v1/AUTH_x", "/auth/v2.0", "/", "/auth/v1.00", "/register"] {
            assert!(!is_auth_path(p), "{p}");
        }
    }

    #[test]
    fn the_realm_is_the_paths_account_as_swift_quotes_it() {
        for (path, realm_of) in [
            ("/v1/AUTH_test", "AUTH_test"),
            ("/v1/AUTH_test/c/o", "AUTH_test"),
            ("/swift/v1/AUTH_x", "v1"),
            ("/v1/AUTH_%E2%98%83%20x", "AUTH_%E2%98%83%20x"),
            ("/v1/AUTH_a%2fb/c", "AUTH_a/b"),
            ("/v1/AUTH_\"x", "AUTH_%22x"),
            ("/auth/v1.0", "unknown"),
            ("/v1.0/auth/x", "unknown"),
            ("/v1", "unknown"),
            ("/v1/", "unknown"),
            ("//v1/AUTH_x", "unknown"),
            ("", "unknown"),
        ] {
            assert_eq!(realm(path), realm_of, "{path}");
        }
    }

    #[test]
    fn credentials_prefer_x_auth_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(v1_credentials(&h), None);
        h.insert("x-storage-user", HeaderValue::from_static("su"));
        h.insert("x-storage-pass", HeaderValue::from_static("sp"));
        assert_eq!(v1_credentials(&h), Some(("su", "sp")));
        h.insert("x-auth-user", HeaderValue::from_static("au"));
        h.insert("x-auth-key", HeaderValue::from_static("ak"));
        assert_eq!(v1_credentials(&h), Some(("au", "ak")));
    }

    fn issuer_for(keys: TokenKeys, names: &[&str]) -> TokenIssuer {
        TokenIssuer::new(Duration::from_secs(3600), keys, names.iter().map(|n| n.to_string()).collect())
    }

    #[test]
    fn a_shared_key_file_seals_for_every_instance_and_rotates() {
        let old = "0".repeat(64);
        let new = "1".repeat(64);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let names = ["alice", "bob"];
        let before = issuer_for(TokenKeys::parse(&old).unwrap(), &names);
        let (token, _) = before.issue(1, t0);
        // Another instance with the same file accepts it; one mid-rotation (new key first, the
        // old one second) too, and its own tokens are sealed with the new key.
        assert_eq!(issuer_for(TokenKeys::parse(&old).unwrap(), &names).verify(&token, t0), Some(1));
        let rotating = issuer_for(TokenKeys::parse(&format!("# rotated\n{new}\n\n{old}\n")).unwrap(), &names);
        assert_eq!(rotating.verify(&token, t0), Some(1));
        let (fresh, _) = rotating.issue(0, t0);
        assert_eq!(before.verify(&fresh, t0), None, "sealed with the new key");
        assert_eq!(issuer_for(TokenKeys::parse(&new).unwrap(), &names).verify(&fresh, t0), Some(0));
        assert_eq!(issuer_for(TokenKeys::parse(&new).unwrap(), &names).verify(&token, t0), None, "old key dropped");
        // The seal covers the name: a configuration listing other users at that index refuses it.
        assert_eq!(issuer_for(TokenKeys::parse(&old).unwrap(), &["alice", "mallory"]).verify(&token, t0), None);
        assert_eq!(issuer_for(TokenKeys::parse(&old).unwrap(), &["alice"]).verify(&token, t0), None);
        // Files that cannot be right are refused, without the key in the message.
        for (text, says) in [("", "no key"), ("short", "shorter"), (&format!("{old}\n{new}\n{old}"), "at most two")] {
            let e = TokenKeys::parse(text).unwrap_err();
            assert!(e.contains(says) && !e.contains(&old), "{e}");
        }
        assert!(!format!("{:?}", TokenKeys::parse(&old).unwrap()).contains(&old));
    }

    #[test]
    fn gateway_tokens_are_sealed_reused_and_expire() {
        let issuer = issuer_for(TokenKeys::random(), &["a", "b", "c", "d"]);
        let t0 = UNIX_EPOCH + Duration::from_secs(1_000_000);
        let (token, expires) = issuer.issue(3, t0);
        assert_eq!(expires, t0 + Duration::from_secs(3600));
        assert_eq!(issuer.verify(&token, t0), Some(3));
        assert_eq!(issuer.issue(3, t0 + Duration::from_secs(3000)).0, token, "reused while fresh");
        let (renewed, _) = issuer.issue(3, t0 + Duration::from_secs(3301));
        assert_ne!(renewed, token, "renewed before expiry");
        assert_eq!(issuer.verify(&token, t0 + Duration::from_secs(3599)), Some(3), "old one still valid");
        assert_eq!(issuer.verify(&token, t0 + Duration::from_secs(3600)), None, "expired");
        // Any change breaks the seal; other issuers' tokens are refused.
        let mut bytes = token.clone().into_bytes();
        let last = bytes.len() - 5;
        bytes[last] = if bytes[last] == b'A' { b'B' } else { b'A' };
        assert_eq!(issuer.verify(std::str::from_utf8(&bytes).unwrap(), t0), None);
        assert_eq!(issuer_for(TokenKeys::random(), &["a", "b", "c", "d"]).verify(&token, t0), None);
        for bad in ["", "SG1_", "SG1_!!!!", "AUTH_tk123", &token[..token.len() - 1]] {
            assert_eq!(issuer.verify(bad, t0), None, "{bad}");
        }
    }

    #[tokio::test]
    async fn keys_verify_against_argon2_hashes_and_are_cached() {
        let hash = hash_key("s3cret").unwrap();
        assert!(hash.starts_with("$argon2id$"));
        let users = Users::new(&[ResolvedUser { name: "u".into(), key_hash: hash, account: "acct".into() }]);
        let here = std::net::IpAddr::from([127, 0, 0, 1]);
        assert_eq!(users.verify("u", "s3cret", here).await.as_deref(), Ok("acct"));
        assert_eq!(users.verify("u", "s3cret", here).await.as_deref(), Ok("acct"));
        assert_eq!(users.key_checks(), 1, "the second time, the key was known");
        assert_eq!(users.verify("u", "wrong", here).await, Err(Refused::Wrong));
        assert_eq!(users.key_checks(), 2);
        // An unknown user costs the same argon2 run as a wrong key, so timing tells nothing,
        // and even the right key of another user does not let it in.
        assert_eq!(users.verify("nobody", "s3cret", here).await, Err(Refused::Wrong));
        assert_eq!(users.key_checks(), 3);
        assert!(!format!("{users:?}").contains("argon2"));
    }

    #[test]
    fn pending_key_checks_are_bounded_per_address_per_user_and_in_all() {
        let users = Users::new(&[
            ResolvedUser { name: "a".into(), key_hash: String::new(), account: "a".into() },
            ResolvedUser { name: "b".into(), key_hash: String::new(), account: "b".into() },
        ]);
        let address = |n: u32| std::net::IpAddr::from(std::net::Ipv4Addr::from(0x7f00_0000 + n));
        let flood: Vec<_> = (0..PENDING_PER_ADDRESS).map(|_| users.claim(Some(0), address(2))).collect();
        assert!(flood.iter().all(Option::is_some));
        assert!(users.claim(Some(0), address(2)).is_none(), "the flooding address is bounded");
        assert!(users.claim(None, address(2)).is_none(), "unknown users from it too");
        assert!(users.claim(Some(1), address(3)).is_some(), "another user from another address gets in");
        assert!(users.claim(Some(0), address(3)).is_some(), "the attacked user from elsewhere too");
        let spread: Vec<_> = (10..10 + PENDING_PER_USER as u32).map(|n| users.claim(Some(1), address(n))).collect();
        assert!(users.claim(Some(1), address(99)).is_none(), "a user is bounded across addresses");
        drop((flood, spread));
        assert!(users.claim(Some(0), address(2)).is_some(), "claims end with their checks");
        let all: Vec<_> = (1000..1000 + PENDING_TOTAL as u32).map(|n| users.claim(None, address(n))).collect();
        assert!(all.iter().all(Option::is_some) && users.claim(None, address(5000)).is_none(), "and in all");
    }
}
