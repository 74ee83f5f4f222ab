//! The shared store: Redis or Valkey, for several gateway instances at once.
//!
//! Beside the grants it keeps what instances must agree on: pending registration states (so a
//! callback may reach any instance), the upstream credentials last obtained (so an instance
//! starts warm and adopts another's renewal), a renewal that just failed (so a provider that
//! is down or refusing is asked once per hold, not once per instance) and one renewal lock per
//! account (so one renewal runs across all instances). Every multi-step change is one Lua
//! script, which Redis runs atomically: a grant is written only over an older one, a renewal's
//! outcome only by the lock's holder, and a lock is extended or released only by the holder
//! whose fencing token it holds.
//!
//! Nothing here is on the streaming path: the token manager asks only when it renews.
//!
//! A grant that cannot be written (the server is down) is never lost: it is spooled to a file
//! under the state directory, served from there, and written as soon as the server answers
//! again ([`RedisStore::flush`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};
use serde::{Deserialize, Serialize};

use super::{FileStore, Grant, GrantStore, StoreError};
use crate::config::StoreConfig;
use crate::provider::ProviderError;
use crate::secret::Secret;

/// How long a connection attempt, and any one command, may take.
const TIMEOUT: Duration = Duration::from_secs(1);

/// A grant is written only over one registered no later (by `registered_at`, in seconds: of
/// two registrations in one second the later write wins, as HubiC honours the later refresh
/// token); a new grant drops the credentials and the failed renewal shared under the previous
/// one.
const SAVE_GRANT: &str = r"
local current = redis.call('HMGET', KEYS[1], 'registered_at', 'record')
if current[1] and tonumber(current[1]) > tonumber(ARGV[2]) then return 0 end
if current[2] ~= ARGV[1] then redis.call('DEL', KEYS[2], KEYS[3]) end
redis.call('HSET', KEYS[1], 'record', ARGV[1], 'registered_at', ARGV[2])
return 1";

/// Stores a registration state and forgets the account's oldest past the cap.
const BEGIN_STATE: &str = r"
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local seq = redis.call('INCR', KEYS[3])
redis.call('ZADD', KEYS[2], seq, KEYS[1])
local over = redis.call('ZCARD', KEYS[2]) - tonumber(ARGV[3])
if over > 0 then
  for _, key in ipairs(redis.call('ZRANGE', KEYS[2], 0, over - 1)) do redis.call('DEL', key) end
  redis.call('ZREMRANGEBYRANK', KEYS[2], 0, over - 1)
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return 1";

/// A renewal's outcome is written only by the holder of the account's renewal lock (KEYS[2]):
/// KEYS[1] is set, and KEYS[3], if given, deleted (credentials clear the last failure).
const SAVE_OUTCOME: &str = r"
if redis.call('GET', KEYS[2]) ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
if KEYS[3] then redis.call('DEL', KEYS[3]) end
return 1";

/// Credentials renewed while the store was away are offered back: kept if they last longer.
const OFFER_CREDENTIALS: &str = r"
local current = redis.call('GET', KEYS[1])
if current and tonumber(cjson.decode(current)['expires_ms']) >= tonumber(ARGV[3]) then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('DEL', KEYS[2])
return 1";

/// Extends the lock if it still holds this fencing token.
const EXTEND_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

/// Deletes the lock if it still holds this fencing token.
const RELEASE_LOCK: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// Upstream credentials as instances share them, with the instants their renewer derived.
#[derive(Clone, Serialize, Deserialize)]
pub struct SharedCredentials {
    /// The upstream token.
    pub token: String,
    /// The storage URL.
    pub endpoint: String,
    /// When the token expires, in Unix milliseconds.
    pub expires_ms: u64,
    /// When an early renewal is due.
    pub renew_at_ms: u64,
    /// When the token stops being handed out.
    pub stale_at_ms: u64,
    /// How long it had to live when it was obtained.
    pub life_ms: u64,
}

impl std::fmt::Debug for SharedCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedCredentials")
            .field("endpoint", &self.endpoint)
            .field("expires_ms", &self.expires_ms)
            .finish()
    }
}

/// A held renewal lock: its key and the fencing token that proves it is still ours.
#[derive(Debug)]
pub struct Lease {
    key: String,
    fence: String,
}

/// A JSON value the store holds, if there is one and it parses (one written by a later
/// version that does not is treated as absent).
fn parse<T: serde::de::DeserializeOwned>(value: Option<String>) -> Option<T> {
    value.and_then(|v| serde_json::from_str(&v).ok())
}

/// A pending registration as instances share it.
#[derive(Serialize, Deserialize)]
struct SharedState {
    account: String,
    /// The browser cookie the registration is bound to, if any.
    browser: Option<String>,
}

struct Scripts {
    save_grant: Script,
    begin_state: Script,
    save_outcome: Script,
    offer_credentials: Script,
    extend_lock: Script,
    release_lock: Script,
}

/// Grants and shared state in Redis or Valkey.
pub struct RedisStore {
    conn: ConnectionManager,
    prefix: String,
    /// Where the server is, without credentials, for the log and `/readyz`.
    place: String,
    scripts: Scripts,
    /// False since a command failed, until one succeeds.
    up: AtomicBool,
    /// When the store last became unreachable.
    down_since: Mutex<Option<SystemTime>>,
    /// Grants not yet written, by account; each is also in `spool` until written.
    unwritten: Mutex<HashMap<String, Grant>>,
    /// The grant last read or written per account, served while the server is unreachable.
    known: Mutex<HashMap<String, Grant>>,
    spool: FileStore,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("place", &self.place).field("prefix", &self.prefix).finish()
    }
}

/// The URL's scheme, host, port and path, without a user or password.
fn place_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("redis", url));
    let rest = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    let rest = rest.split_once('?').map_or(rest, |(before, _)| before);
    format!("{scheme}://{rest}")
}

fn unavailable(e: redis::RedisError) -> StoreError {
    // The error's text may quote the URL, and with it a password: keep its kind only.
    let what = if e.is_timeout() {
        "timed out".to_owned()
    } else if e.is_connection_refusal() {
        "connection refused".to_owned()
    } else if e.is_io_error() || e.is_connection_dropped() || e.is_unrecoverable_error() {
        "connection lost".to_owned()
    } else {
        format!("{:?} error", e.kind())
    };
    StoreError::Unavailable(what)
}

impl RedisStore {
    /// A store on the server `config` names. Connects lazily: an instance starts while the
    /// server is down, and serves what it can meanwhile. Grants that could not be written
    /// spool under `state_dir/redis-spool`; those left by an earlier run are written first.
    pub fn open(config: &StoreConfig, state_dir: &std::path::Path) -> Result<RedisStore, StoreError> {
        let url = config.url.as_ref().ok_or_else(|| StoreError::Unavailable("no store.url".into()))?.expose();
        let place = place_of(url);
        let refused = |what: &str| StoreError::Unavailable(format!("{place}: {what}"));
        let mut info = redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| refused("not a Redis URL"))?;
        if let Some(path) = &config.password_file {
            let password = crate::secret::SecretSource::File(path.clone())
                .read()
                .map_err(|e| refused(&format!("store.password_file: {e}")))?;
            let settings = info.redis_settings().clone().set_password(password.expose());
            info = info.set_redis_settings(settings);
        }
        let client = match &config.ca_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| refused(&format!("{}: {e}", path.display())))?;
                let tls = redis::TlsCertificates { client_tls: None, root_cert: Some(pem) };
                redis::Client::build_with_tls(info, tls)
            }
            None => redis::Client::open(info),
        }
        .map_err(|_| refused("the URL cannot be used"))?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(TIMEOUT))
            .set_response_timeout(Some(TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = client.get_connection_manager_lazy(manager).map_err(unavailable)?;
        let spool = FileStore::open(&state_dir.join("redis-spool"))?;
        let mut unwritten = HashMap::new();
        for account in spool.accounts()? {
            if let Ok(Some(grant)) = FileStore::load_sync(&spool.path_of(&account)) {
                tracing::warn!(account = %account, "a grant spooled while the store was down is waiting to be written");
                unwritten.insert(account, grant);
            }
        }
        Ok(RedisStore {
            conn,
            prefix: config.key_prefix.clone(),
            place,
            scripts: Scripts {
                save_grant: Script::new(SAVE_GRANT),
                begin_state: Script::new(BEGIN_STATE),
                save_outcome: Script::new(SAVE_OUTCOME),
                offer_credentials: Script::new(OFFER_CREDENTIALS),
                extend_lock: Script::new(EXTEND_LOCK),
                release_lock: Script::new(RELEASE_LOCK),
            },
            up: AtomicBool::new(true),
            down_since: Mutex::new(None),
            unwritten: Mutex::new(unwritten),
            known: Mutex::new(HashMap::new()),
            spool,
        })
    }

    /// Where the server is (no credentials), for messages.
    pub fn place(&self) -> &str {
        &self.place
    }

    fn key(&self, kind: &str, name: &str) -> String {
        format!("{}{kind}:{name}", self.prefix)
    }

    /// Notes how a command went, and logs when the store goes away or comes back.
    fn noted<T>(&self, result: redis::RedisResult<T>) -> Result<T, StoreError> {
        match result {
            Ok(value) => {
                if !self.up.swap(true, Ordering::AcqRel) {
                    *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
                    tracing::info!(store = %self.place, "the shared store answers again");
                }
                Ok(value)
            }
            Err(e) => {
                let error = unavailable(e);
                if self.up.swap(false, Ordering::AcqRel) {
                    *self.down_since.lock().unwrap_or_else(|p| p.into_inner()) = Some(SystemTime::now());
                    tracing::warn!(store = %self.place, cause = %error, "the shared store is unreachable; serving from what this instance holds");
                }
                Err(error)
            }
        }
    }

    /// Runs a script, noting how it went.
    async fn run(&self, script: &mut redis::ScriptInvocation<'_>) -> Result<i64, StoreError> {
        let mut conn = self.conn.clone();
        self.noted(script.invoke_async(&mut conn).await)
    }

    /// Whether the last command succeeded, and since when it has not.
    pub fn health(&self) -> (bool, Option<SystemTime>) {
        (self.up.load(Ordering::Acquire), *self.down_since.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Asks the server whether it answers.
    pub async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.noted(redis::cmd("PING").query_async::<String>(&mut conn).await).map(drop)
    }

    /// Accounts with grants waiting to be written.
    pub fn unwritten(&self) -> Vec<String> {
        let mut names: Vec<String> = self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).keys().cloned().collect();
        names.sort();
        names
    }

    /// Writes the grants that could not be written before; each leaves the spool once it is
    /// in the store, or once a newer one is there.
    pub async fn flush(&self) {
        for account in self.unwritten() {
            let Some(grant) = self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).get(&account).cloned() else {
                continue;
            };
            match self.put_grant(&account, &grant).await {
                Ok(written) => {
                    self.forget_unwritten(&account, &grant);
                    match written {
                        true => tracing::info!(account = %account, "the spooled grant is now in the shared store"),
                        false => {
                            tracing::warn!(account = %account, "the spooled grant was older than the stored one and is dropped")
                        }
                    }
                }
                Err(_) => return,
            }
        }
    }

    /// Drops the spooled grant of `account` once `grant`, as new or newer, is in the store.
    fn forget_unwritten(&self, account: &str, grant: &Grant) {
        let mut unwritten = self.unwritten.lock().unwrap_or_else(|p| p.into_inner());
        if unwritten.get(account).is_some_and(|g| g.registered_at <= grant.registered_at) {
            unwritten.remove(account);
            if let Err(e) = self.spool.remove(account) {
                tracing::warn!(account = %account, cause = %e, "a written grant's spool file could not be removed");
            }
        }
    }

    /// Writes `grant` unless a newer one is stored (dropping the credentials shared under
    /// another); true when written. Unlike [`GrantStore::save`] nothing is spooled: an
    /// unreachable store is an error.
    pub async fn put_grant(&self, account: &str, grant: &Grant) -> Result<bool, StoreError> {
        self.run(
            self.scripts
                .save_grant
                .key(self.key("grant", account))
                .key(self.key("creds", account))
                .key(self.key("failed", account))
                .arg(super::encode(grant))
                .arg(grant.registered_at),
        )
        .await
        .map(|n| n == 1)
    }

    /// Keeps a registration state for `ttl`, bound to `browser` if given; the account's
    /// oldest is forgotten past `cap`.
    pub async fn begin_state(
        &self,
        state: &str,
        account: &str,
        browser: Option<&Secret>,
        ttl: Duration,
        cap: usize,
    ) -> Result<(), StoreError> {
        let value = serde_json::to_string(&SharedState {
            account: account.to_owned(),
            browser: browser.map(|b| b.expose().to_owned()),
        })
        .unwrap_or_default();
        self.run(
            self.scripts
                .begin_state
                .key(self.key("state", state))
                .key(self.key("states", account))
                .key(self.key("seq", "states"))
                .arg(value)
                .arg(ttl.as_millis() as u64)
                .arg(cap),
        )
        .await
        .map(drop)
    }

    /// Consumes a registration state: its account, once. `allowed` sees the browser it is
    /// bound to first; a state it refuses stays for the right browser. `Ok(None)` for a state
    /// that is unknown, expired, or already used.
    pub async fn take_state<E>(
        &self,
        state: &str,
        allowed: impl FnOnce(Option<&str>) -> Result<(), E>,
    ) -> Result<Result<Option<String>, E>, StoreError> {
        let key = self.key("state", state);
        let mut conn = self.conn.clone();
        let value: Option<String> = self.noted(conn.get(&key).await)?;
        let Some(shared) = parse::<SharedState>(value) else {
            return Ok(Ok(None));
        };
        if let Err(e) = allowed(shared.browser.as_deref()) {
            return Ok(Err(e));
        }
        // Whoever deletes it consumes it: a callback racing this one on another instance gets
        // nothing.
        let deleted: i64 = self.noted(conn.del(&key).await)?;
        // No longer pending: it stops counting against the account's cap.
        let _: Result<i64, _> = conn.zrem(self.key("states", &shared.account), &key).await;
        Ok(Ok((deleted == 1).then_some(shared.account)))
    }

    /// The credentials last shared for `account`, and the failure of a renewal that another
    /// instance made within its hold, in one round trip.
    pub async fn outcome(
        &self,
        account: &str,
    ) -> Result<(Option<SharedCredentials>, Option<ProviderError>), StoreError> {
        let mut conn = self.conn.clone();
        let (creds, failed): (Option<String>, Option<String>) =
            self.noted(conn.mget(&[self.key("creds", account), self.key("failed", account)]).await)?;
        Ok((parse(creds), parse(failed)))
    }

    /// Shares that the renewal under `lease` failed with `error`, for `hold`: the other
    /// instances answer it instead of asking the provider again. False when the lock had
    /// passed to another instance, or when the error does not serialise.
    pub async fn share_failure(
        &self,
        account: &str,
        error: &ProviderError,
        hold: Duration,
        lease: &Lease,
    ) -> Result<bool, StoreError> {
        let Ok(value) = serde_json::to_string(error) else { return Ok(false) };
        self.save_outcome(self.key("failed", account), lease, value, (hold.as_millis() as u64).max(1), None).await
    }

    /// Sets `key` to `value` for `ttl_ms` and deletes `clear`, only while `lease` holds the
    /// account's renewal lock; false when it no longer does.
    async fn save_outcome(
        &self,
        key: String,
        lease: &Lease,
        value: String,
        ttl_ms: u64,
        clear: Option<String>,
    ) -> Result<bool, StoreError> {
        let mut script = self.scripts.save_outcome.key(key);
        script.key(&lease.key);
        if let Some(clear) = clear {
            script.key(clear);
        }
        Ok(self.run(script.arg(value).arg(ttl_ms).arg(&lease.fence)).await? == 1)
    }

    /// Shares `creds` for `account`: with `lease`, only while it still holds the account's
    /// renewal lock; without, as an offer of credentials obtained while the store was away,
    /// kept only if they outlast the shared ones. False when they were not written.
    pub async fn share_credentials(
        &self,
        account: &str,
        creds: &SharedCredentials,
        now: SystemTime,
        lease: Option<&Lease>,
    ) -> Result<bool, StoreError> {
        let value = serde_json::to_string(creds).unwrap_or_default();
        // Kept until they expire (at least a second).
        let ttl = creds.expires_ms.saturating_sub(crate::clock::unix_millis(now)).max(1000);
        let (key, failed) = (self.key("creds", account), self.key("failed", account));
        match lease {
            Some(lease) => self.save_outcome(key, lease, value, ttl, Some(failed)).await,
            None => Ok(self
                .run(self.scripts.offer_credentials.key(key).key(failed).arg(value).arg(ttl).arg(creds.expires_ms))
                .await?
                == 1),
        }
    }

    /// Takes `account`'s renewal lock for `ttl` if no one holds it: `SET NX PX` with a fencing
    /// token drawn from a counter, so each holder's token differs from every earlier one.
    pub async fn lock(&self, account: &str, ttl: Duration) -> Result<Option<Lease>, StoreError> {
        let mut conn = self.conn.clone();
        let key = self.key("lock", account);
        let fence: u64 = self.noted(conn.incr(self.key("fence", account), 1).await)?;
        let fence = fence.to_string();
        let options = redis::SetOptions::default()
            .conditional_set(redis::ExistenceCheck::NX)
            .with_expiration(redis::SetExpiry::PX(ttl.as_millis() as u64));
        let taken: Option<String> = self.noted(conn.set_options(&key, &fence, options).await)?;
        Ok(taken.map(|_| Lease { key, fence }))
    }

    /// Extends a held lock by `ttl`; false if it was lost (expired, taken by another).
    pub async fn extend(&self, lease: &Lease, ttl: Duration) -> Result<bool, StoreError> {
        self.run(self.scripts.extend_lock.key(&lease.key).arg(&lease.fence).arg(ttl.as_millis() as u64))
            .await
            .map(|n| n == 1)
    }

    /// Releases a held lock, unless it already passed to another holder.
    pub async fn release(&self, lease: &Lease) -> Result<(), StoreError> {
        self.run(self.scripts.release_lock.key(&lease.key).arg(&lease.fence)).await.map(drop)
    }

    /// Every account with a grant in the store, sorted (for `swiftgate store copy` checks).
    pub async fn accounts(&self) -> Result<Vec<String>, StoreError> {
        let mut conn = self.conn.clone();
        let pattern = format!("{}grant:*", self.prefix);
        let mut keys: Vec<String> = Vec::new();
        let mut iter: redis::AsyncIter<String> = self.noted(conn.scan_match(&pattern).await)?;
        while let Some(key) = futures_util::StreamExt::next(&mut iter).await {
            keys.push(key.map_err(unavailable)?);
        }
        let prefix_len = self.prefix.len() + "grant:".len();
        let mut names: Vec<String> = keys.into_iter().map(|k| k[prefix_len..].to_owned()).collect();
        names.sort();
        Ok(names)
    }
}

#[async_trait::async_trait]
impl GrantStore for RedisStore {
    async fn load(&self, account: &str) -> Result<Option<Grant>, StoreError> {
        // A grant still waiting to be written is the newest this instance knows.
        if let Some(grant) = self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).get(account) {
            return Ok(Some(grant.clone()));
        }
        let mut conn = self.conn.clone();
        let record: Option<Vec<u8>> = match self.noted(conn.hget(self.key("grant", account), "record").await) {
            Ok(record) => record,
            // Unreachable: the grant last seen serves (HubiC still refreshes its access token).
            Err(e) => {
                return self.known.lock().unwrap_or_else(|p| p.into_inner()).get(account).cloned().map(Some).ok_or(e)
            }
        };
        let Some(record) = record else { return Ok(None) };
        let grant = super::decode(&record).map_err(|reason| StoreError::Corrupt {
            path: format!("{} key {}", self.place, self.key("grant", account)),
            reason,
        })?;
        self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(account.to_owned(), grant.clone());
        Ok(Some(grant))
    }

    /// Written over an older grant only ([`StoreError::Superseded`] otherwise). When the
    /// server cannot be reached the grant is spooled to a file (fsynced) and served from
    /// memory, and [`RedisStore::flush`] writes it once the server answers: a refresh token
    /// HubiC has just issued revoked the previous one, and must not be lost.
    async fn save(&self, account: &str, grant: &Grant) -> Result<(), StoreError> {
        match self.put_grant(account, grant).await {
            Ok(true) => {
                self.forget_unwritten(account, grant);
                self.known.lock().unwrap_or_else(|p| p.into_inner()).insert(account.to_owned(), grant.clone());
                Ok(())
            }
            Ok(false) => Err(StoreError::Superseded),
            Err(StoreError::Unavailable(cause)) => {
                self.spool.save(account, grant).await?;
                self.unwritten.lock().unwrap_or_else(|p| p.into_inner()).insert(account.to_owned(), grant.clone());
                tracing::warn!(account = %account, cause = %cause, "the shared store is unreachable: the grant is spooled on this instance and will be written when it answers");
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_place_shown_carries_no_password() {
        assert_eq!(place_of("redis://:hunter2@10.0.0.5:6380/2"), "redis://10.0.0.5:6380/2");
        assert_eq!(place_of("rediss://user:pw@cache.example:6379/0?protocol=resp3"), "rediss://cache.example:6379/0");
        assert_eq!(place_of("unix:///run/redis.sock"), "unix:///run/redis.sock");
    }
}
