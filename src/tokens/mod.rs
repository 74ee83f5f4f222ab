//! The token manager: per account, the cached upstream Swift credentials, renewed ahead of
//! expiry, with exactly one renewal in flight however many requests wait.
//!
//! The fast path takes one short `std` mutex to clone an `Arc`; the slow path queues on the
//! account's async renewal lock and re-checks the cache once it holds it, so a burst of requests
//! after expiry costs one provider round trip. It does not know how credentials are obtained
//! (that is the [`CredentialSource`]) nor where grants live (the store).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::{from_unix_millis, unix_millis, Clock};
use crate::provider::{CredentialSource, ProviderError, SwiftCredentials, Usage};
use crate::secret::Secret;
use crate::store::{Lease, RedisStore, SharedCredentials};
use crate::target::Target;

/// Least time between two provider calls for an account whose token upstream keeps refusing.
const REFETCH_PACE: Duration = Duration::from_millis(200);

/// How long past a token's last moments `credentials_lasting` keeps asking for a fresher one.
const LASTING_PATIENCE: Duration = Duration::from_secs(3);

/// How long a 401 retry waits for the provider to hand out a token other than the one
/// upstream just refused (tokens near their end can be refused before the provider lets go).
pub const REFUSAL_PATIENCE: Duration = Duration::from_secs(3);

/// The longest `Retry-After` a renewal waits out before its next attempt; a provider that asks
/// for longer gets its wish as a held failure (the credentials still valid serve meanwhile).
const BUSY_WAIT_MAX: Duration = Duration::from_secs(5);

/// How long a renewal lock in the shared store lives unless its holder extends it: the time
/// another instance waits to take over from a holder that died.
const LOCK_TTL: Duration = Duration::from_secs(10);

/// How often an instance waiting on another's renewal looks for its result.
const LOCK_POLL: Duration = Duration::from_millis(100);

/// How long an instance waits on another's renewal before it gives up (with an error, not a
/// renewal of its own): a holder that died loses its lock after `LOCK_TTL`, so only a renewal
/// that takes this long with its holder alive runs out the wait.
const LOCK_WAIT: Duration = Duration::from_secs(60);

/// When to renew and how hard to retry.
#[derive(Clone, Debug)]
pub struct RenewPolicy {
    /// Start a background renewal this long before expiry (capped at a quarter of the lifetime).
    pub renew_ahead: Duration,
    /// Stop handing out credentials this long before expiry (capped at a tenth of the lifetime).
    pub expiry_margin: Duration,
    /// Attempts per renewal for transient errors.
    pub attempts: u32,
    /// Delay before the second attempt; doubled for each further one.
    pub backoff: Duration,
    /// How long a transient failure is answered from cache, so a queue of waiters does not
    /// retry one after another against a provider that is down.
    pub failure_hold: Duration,
}

impl Default for RenewPolicy {
    fn default() -> Self {
        RenewPolicy {
            renew_ahead: Duration::from_secs(300),
            expiry_margin: Duration::from_secs(10),
            attempts: 3,
            backoff: Duration::from_millis(250),
            failure_hold: Duration::from_secs(2),
        }
    }
}

/// Why the manager could not hand out credentials.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TokenError {
    /// No account of that name is configured.
    #[error("unknown account")]
    UnknownAccount,
    /// The source failed; the error is shared by every waiter of that renewal.
    #[error(transparent)]
    Provider(Arc<ProviderError>),
}

/// Credentials as cached, with the instants derived from their lifetime.
#[derive(Debug)]
pub struct Cached {
    /// The credentials.
    pub creds: SwiftCredentials,
    /// Where they lead, parsed once for the streaming path.
    pub target: Target,
    renew_at: SystemTime,
    stale_at: SystemTime,
    /// When the provider handed these out (monotonic), to pace re-fetches after a refusal.
    fetched: tokio::time::Instant,
    /// How long they had to live when they were handed out.
    life: Duration,
    /// False when the source can only hand out the same token again (see
    /// [`CredentialSource::renews`]).
    pub renews: bool,
}

impl Cached {
    /// Time left before they expire, at `now`.
    fn left(&self, now: SystemTime) -> Duration {
        self.creds.expires.duration_since(now).unwrap_or_default()
    }

    /// These credentials as the shared store keeps them, with their renew and stale instants.
    fn shared(&self) -> SharedCredentials {
        SharedCredentials {
            token: self.creds.token.expose().to_owned(),
            endpoint: self.creds.endpoint.clone(),
            expires_ms: unix_millis(self.creds.expires),
            renew_at_ms: unix_millis(self.renew_at),
            stale_at_ms: unix_millis(self.stale_at),
            life_ms: self.life.as_millis() as u64,
        }
    }

    /// The life a caller asking for `min_life` needs left: short-lived tokens (tests,
    /// tempauth's token_life) get a proportionate margin, a quarter of their lifetime at most.
    fn wanted(&self, min_life: Duration) -> Duration {
        min_life.min(self.life / 4)
    }
}

enum Entry {
    Empty,
    Fresh(Arc<Cached>),
    /// A failure answered from cache until `until`.
    Failed {
        error: Arc<ProviderError>,
        until: SystemTime,
    },
}

struct Slot {
    /// The account's name, for the log.
    name: String,
    source: Arc<dyn CredentialSource>,
    /// Held only to read or swap the entry, never across an await.
    entry: Mutex<Entry>,
    renewal: Arc<tokio::sync::Mutex<()>>,
    /// Set once an early renewal brought back the very token it was meant to replace (HubiC
    /// hands out the same Swift token until it expires): from then on this account renews at
    /// expiry only, which costs one provider call per token instead of a burst near the end.
    sticky: AtomicBool,
    /// After an early renewal failed (the held credentials still valid), no other starts
    /// before this: every request in a token's last minutes would otherwise start one.
    early_not_before: Mutex<Option<SystemTime>>,
    /// Counts resets (a new registration): a renewal that began before one keeps its result
    /// out of the cache, as it may be the old grant's.
    generation: std::sync::atomic::AtomicU64,
    /// The credentials last obtained, kept through refusals and failed renewals (which empty
    /// `entry`): anonymous requests need only their target, which an outage of the provider
    /// does not move. Locked after `entry` when both are.
    last_known: Mutex<Option<Arc<Cached>>>,
    /// Renewals that brought credentials, and that failed, for the metrics.
    renewed: AtomicU64,
    failed: AtomicU64,
    /// Renewals answered by credentials another instance obtained (shared store).
    adopted: AtomicU64,
    /// The token last dropped because upstream refused it: not to be taken back from the
    /// shared store, where it may still be.
    refused: Mutex<Option<Secret>>,
    /// Set when this instance renewed without the shared store: what it obtained is offered
    /// to the store once it answers again.
    alone: AtomicBool,
}

impl Slot {
    /// The credentials last obtained, expired or not; locked only to clone them.
    fn held(&self) -> Option<Arc<Cached>> {
        self.last_known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Credentials this account obtained just now, from its source or another instance.
    fn cached(
        &self,
        creds: SwiftCredentials,
        target: Target,
        renew_at: SystemTime,
        stale_at: SystemTime,
        life: Duration,
    ) -> Cached {
        let (fetched, renews) = (tokio::time::Instant::now(), self.source.renews());
        Cached { creds, target, renew_at, stale_at, fetched, life, renews }
    }
}

/// Per-account credential cache with single-flight renewal.
pub struct TokenManager {
    /// Keyed with rustc-hash's hasher: account names come from the configuration, so they
    /// need no defence against chosen collisions, and SipHash cost more than the lookup.
    slots: rustc_hash::FxHashMap<String, Slot>,
    clock: Arc<dyn Clock>,
    policy: RenewPolicy,
    /// Where renewals are coordinated with other instances, if anywhere.
    shared: Option<Arc<RedisStore>>,
}

/// Credentials a renewal obtained, and whether they were taken from the shared store rather
/// than from the provider.
type Obtained = (Cached, bool);

/// Aborts the task when dropped: the keeper of a renewal lock stops with the renewal.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl std::fmt::Debug for TokenManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenManager").field("accounts", &self.slots.keys().collect::<Vec<_>>()).finish()
    }
}

enum Lookup {
    Use(Arc<Cached>, bool),
    Fail(Arc<ProviderError>),
    Renew,
}

impl TokenManager {
    /// A manager for the given accounts and their sources.
    pub fn new(
        sources: impl IntoIterator<Item = (String, Arc<dyn CredentialSource>)>,
        clock: Arc<dyn Clock>,
        policy: RenewPolicy,
    ) -> Self {
        let slots = sources
            .into_iter()
            .map(|(name, source)| {
                let slot = Slot {
                    name: name.clone(),
                    source,
                    entry: Mutex::new(Entry::Empty),
                    renewal: Arc::new(tokio::sync::Mutex::new(())),
                    sticky: AtomicBool::new(false),
                    early_not_before: Mutex::new(None),
                    generation: std::sync::atomic::AtomicU64::new(0),
                    last_known: Mutex::new(None),
                    renewed: AtomicU64::new(0),
                    failed: AtomicU64::new(0),
                    adopted: AtomicU64::new(0),
                    refused: Mutex::new(None),
                    alone: AtomicBool::new(false),
                };
                (name, slot)
            })
            .collect();
        TokenManager { slots, clock, policy, shared: None }
    }

    /// Coordinates renewals with the other instances sharing `store`: one renewal per account
    /// across all of them, and each takes the credentials another obtained.
    pub fn share_through(mut self, store: Arc<RedisStore>) -> Self {
        self.shared = Some(store);
        self
    }

    /// The shared store, if renewals are coordinated through one.
    pub fn shared(&self) -> Option<&Arc<RedisStore>> {
        self.shared.as_ref()
    }

    fn slot(&self, account: &str) -> Result<&Slot, TokenError> {
        self.slots.get(account).ok_or(TokenError::UnknownAccount)
    }

    fn lookup(&self, slot: &Slot) -> Lookup {
        let now = self.clock.now();
        let entry = slot.entry.lock().unwrap_or_else(|p| p.into_inner());
        match &*entry {
            Entry::Fresh(c) if now < c.stale_at => Lookup::Use(c.clone(), now >= c.renew_at),
            Entry::Failed { error, until } if now < *until => Lookup::Fail(error.clone()),
            _ => Lookup::Renew,
        }
    }

    /// Valid Swift credentials for `account`, renewing them first if they are missing or stale.
    pub async fn credentials(self: &Arc<Self>, account: &str) -> Result<Arc<Cached>, TokenError> {
        let slot = self.slot(account)?;
        match self.lookup(slot) {
            Lookup::Use(cached, renew_soon) => {
                if renew_soon {
                    self.renew_in_background(account, slot);
                }
                return Ok(cached);
            }
            Lookup::Fail(error) => return Err(TokenError::Provider(error)),
            Lookup::Renew => {}
        }
        let guard = slot.renewal.clone().lock_owned().await;
        // Whoever held the lock before us may have renewed already.
        match self.lookup(slot) {
            Lookup::Use(cached, _) => Ok(cached),
            Lookup::Fail(error) => Err(TokenError::Provider(error)),
            Lookup::Renew => {
                // In a task of its own, holding the lock: a waiter that goes away (its client
                // disconnected) does not cut the renewal short, and the next waiter finds its
                // result instead of starting over.
                let (manager, account) = (self.clone(), account.to_owned());
                let renewal = tokio::spawn(async move {
                    let _guard = guard;
                    manager.renew_locked(manager.slot(&account)?).await
                });
                renewal.await.unwrap_or_else(|_| {
                    Err(TokenError::Provider(Arc::new(ProviderError::Protocol("the renewal task failed".into()))))
                })
            }
        }
    }

    /// Like [`credentials`](Self::credentials), but never hands out credentials with less than
    /// `min_life` (at most a quarter of their lifetime) left: for redirect mode, where the client
    /// uses the upstream token itself, and for proxied requests, which can outlast a token in its
    /// last moments (a bulk delete whose items fail with 401 inside a 200). A provider that keeps
    /// its token until expiry has nothing fresher before then, so this waits out the last
    /// moments (at most `min_life`) and asks again. It may hand back the same token once more
    /// (tempauth does in a token's last second), so it keeps asking until `min_life` plus
    /// `LASTING_PATIENCE` has passed.
    pub async fn credentials_lasting(
        self: &Arc<Self>,
        account: &str,
        min_life: Duration,
    ) -> Result<Arc<Cached>, TokenError> {
        self.refetch_until(
            account,
            None,
            min_life + LASTING_PATIENCE,
            |cached| cached.left(self.clock.now()) > cached.wanted(min_life),
            |cached| cached.left(self.clock.now()).min(cached.wanted(min_life)),
        )
        .await
    }

    /// `account`'s cached credentials if [`credentials_lasting`](Self::credentials_lasting)
    /// would hand them out at once with nothing else to do: fresh, not due for an early
    /// renewal, and with `min_life` left. Never waits and never renews.
    pub fn ready(&self, account: &str, min_life: Duration) -> Option<Arc<Cached>> {
        match self.lookup(self.slots.get(account)?) {
            Lookup::Use(cached, false) if cached.left(self.clock.now()) > cached.wanted(min_life) => Some(cached),
            _ => None,
        }
    }

    /// Credentials other than `refused`, which upstream just rejected. A provider may keep
    /// handing out a token in its last moments although upstream already refuses it; keep asking
    /// until `patience` runs out.
    pub async fn credentials_except(
        self: &Arc<Self>,
        account: &str,
        refused: &crate::secret::Secret,
        patience: Duration,
    ) -> Result<Arc<Cached>, TokenError> {
        self.refetch_until(
            account,
            Some(refused.clone()),
            patience,
            |cached| &cached.creds.token != refused,
            |_| Duration::ZERO,
        )
        .await
    }

    /// Asks for `account`'s credentials until `good` accepts them or `patience` has passed, and
    /// returns the last answer. `rejected`, a token already known to be no good, is dropped from
    /// the cache before the first ask; after each answer `good` turns down, this waits
    /// `pause(answer)` and drops that answer too. A token is only dropped once it has been in the
    /// cache for `REFETCH_PACE`, so however many requests wait here the provider is asked at most
    /// that often.
    async fn refetch_until(
        self: &Arc<Self>,
        account: &str,
        mut rejected: Option<crate::secret::Secret>,
        patience: Duration,
        good: impl Fn(&Cached) -> bool,
        pause: impl Fn(&Cached) -> Duration,
    ) -> Result<Arc<Cached>, TokenError> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(token) = &rejected {
                self.invalidate_fetched_before(account, token, tokio::time::Instant::now() - REFETCH_PACE);
            }
            let cached = self.credentials(account).await?;
            if good(&cached) || tokio::time::Instant::now() >= deadline {
                return Ok(cached);
            }
            tokio::time::sleep(pause(&cached).max(REFETCH_PACE)).await;
            rejected = Some(cached.creds.token.clone());
        }
    }

    fn renew_in_background(self: &Arc<Self>, account: &str, slot: &Slot) {
        let not_before = *slot.early_not_before.lock().unwrap_or_else(|p| p.into_inner());
        if not_before.is_some_and(|t| self.clock.now() < t) {
            return;
        }
        // Only one background renewal: if the lock is taken, a renewal is already under way.
        let Ok(guard) = slot.renewal.clone().try_lock_owned() else {
            return;
        };
        let manager = self.clone();
        let account = account.to_owned();
        tokio::spawn(async move {
            let _guard = guard;
            if let Ok(slot) = manager.slot(&account) {
                if let Lookup::Use(_, true) = manager.lookup(slot) {
                    let _ = manager.renew_locked(slot).await;
                }
            }
        });
    }

    /// Asks the source for credentials; retries transient errors with backoff.
    async fn fetch_retrying(&self, slot: &Slot) -> Result<(SwiftCredentials, Target), ProviderError> {
        let mut delay = self.policy.backoff;
        let mut attempt = 1;
        loop {
            match slot.source.fetch().await {
                Ok(creds) => match Target::parse(&creds) {
                    Some(target) => return Ok((creds, target)),
                    None if http::HeaderValue::from_str(creds.token.expose()).is_err() => {
                        return Err(ProviderError::Protocol(
                            "the token cannot be sent (a line break or control character in it)".into(),
                        ))
                    }
                    None => return Err(ProviderError::Protocol("the storage URL is not an http(s) URL".into())),
                },
                Err(e)
                    if e.is_transient()
                        && attempt < self.policy.attempts
                        && e.retry_after().is_none_or(|wait| wait <= BUSY_WAIT_MAX) =>
                {
                    tracing::warn!(account = %slot.name, attempt, cause = %e, "credential renewal failed, retrying");
                    tokio::time::sleep(delay.max(e.retry_after().unwrap_or_default())).await;
                    delay *= 2;
                    attempt += 1;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The renew and stale instants of credentials just fetched, `previous` being the token
    /// they replace. A provider that handed out the very token it was asked to replace (HubiC,
    /// until the token expires) makes the account renew at expiry only from then on.
    fn instants(&self, slot: &Slot, creds: SwiftCredentials, target: Target, previous: Option<&Secret>) -> Obtained {
        let now = self.clock.now();
        if previous.is_some_and(|token| *token == creds.token) {
            slot.sticky.store(true, Ordering::Relaxed);
        }
        let life = creds.expires.duration_since(now).unwrap_or_default();
        let (renew_at, stale_at) = if slot.sticky.load(Ordering::Relaxed) {
            // No fresher token exists before this one expires; an upstream 401 at the very end
            // is renewed and retried by the proxy. One handed out again at its stated end
            // (HubiC states whole seconds, and keeps it until its own, finer, end) is held for
            // the refetch pace: asked again at once, the provider would hand it out again.
            let end = creds.expires.max(now + REFETCH_PACE);
            (end, end)
        } else {
            (
                creds.expires - self.policy.renew_ahead.min(life / 4),
                creds.expires - self.policy.expiry_margin.min(life / 10),
            )
        };
        (slot.cached(creds, target, renew_at, stale_at, life), false)
    }

    /// Obtains credentials with the account's renewal lock held on this instance.
    async fn obtain(&self, slot: &Slot, previous: Option<&Secret>) -> Result<Obtained, ProviderError> {
        if let Some(shared) = self.shared.as_ref().filter(|_| slot.source.renews()) {
            match self.obtain_shared(shared, slot, previous).await {
                Ok(result) => return result,
                Err(e) => {
                    tracing::warn!(account = %slot.name, cause = %e, "renewing on this instance alone, as the shared store cannot coordinate it");
                    slot.alone.store(true, Ordering::Relaxed);
                }
            }
        }
        let (creds, target) = self.fetch_retrying(slot).await?;
        Ok(self.instants(slot, creds, target, previous))
    }

    /// Credentials another instance shared, if they can serve: not the token upstream
    /// refused, and not yet due for renewal.
    fn adoptable(&self, slot: &Slot, shared: Option<SharedCredentials>) -> Option<Obtained> {
        let shared = shared?;
        let now = unix_millis(self.clock.now());
        let refused =
            slot.refused.lock().unwrap_or_else(|p| p.into_inner()).as_ref().is_some_and(|t| t.expose() == shared.token);
        if now >= shared.renew_at_ms.min(shared.stale_at_ms) || refused {
            return None;
        }
        let creds = SwiftCredentials {
            token: Secret::new(shared.token),
            endpoint: shared.endpoint,
            expires: from_unix_millis(shared.expires_ms),
        };
        let target = Target::parse(&creds)?;
        let (renew_at, stale_at) = (from_unix_millis(shared.renew_at_ms), from_unix_millis(shared.stale_at_ms));
        Some((slot.cached(creds, target, renew_at, stale_at, Duration::from_millis(shared.life_ms)), true))
    }

    /// What another instance's renewal settled, from the store's `(credentials, failure)`:
    /// credentials this instance can adopt, else the failure it is to answer, else nothing.
    fn settled(
        &self,
        slot: &Slot,
        (creds, failed): (Option<SharedCredentials>, Option<ProviderError>),
    ) -> Option<Result<Obtained, ProviderError>> {
        if let Some(adopted) = self.adoptable(slot, creds) {
            return Some(Ok(adopted));
        }
        let error = failed?;
        tracing::info!(account = %slot.name, "another instance's renewal failed moments ago; its failure is answered rather than asked again");
        Some(Err(error))
    }

    /// One renewal across every instance: takes what another shared, or answers the failure
    /// another's renewal met within its hold, or takes the account's lock and renews, or waits
    /// for whoever holds it. `Err` when the store cannot be asked (the caller renews alone);
    /// `Ok(result)` otherwise.
    async fn obtain_shared(
        &self,
        shared: &Arc<RedisStore>,
        slot: &Slot,
        previous: Option<&Secret>,
    ) -> Result<Result<Obtained, ProviderError>, crate::store::StoreError> {
        let deadline = tokio::time::Instant::now() + LOCK_WAIT;
        loop {
            if let Some(outcome) = self.settled(slot, shared.outcome(&slot.name).await?) {
                return Ok(outcome);
            }
            if let Some(lease) = shared.lock(&slot.name, LOCK_TTL).await? {
                return Ok(self.renew_holding(shared, slot, previous, lease).await);
            }
            if tokio::time::Instant::now() >= deadline {
                return Ok(Err(ProviderError::Transient(
                    "another gateway instance holds the account's renewal and has not finished".into(),
                )));
            }
            tokio::time::sleep(LOCK_POLL).await;
        }
    }

    /// Renews holding the shared lock `lease`, keeps it alive meanwhile, shares the result and
    /// releases the lock.
    async fn renew_holding(
        &self,
        shared: &Arc<RedisStore>,
        slot: &Slot,
        previous: Option<&Secret>,
        lease: Lease,
    ) -> Result<Obtained, ProviderError> {
        let lease = Arc::new(lease);
        // Someone may have shared an outcome between our look and our lock.
        if let Some(outcome) = shared.outcome(&slot.name).await.ok().and_then(|o| self.settled(slot, o)) {
            let _ = shared.release(&lease).await;
            return outcome;
        }
        let keeper = {
            let (shared, lease, name) = (shared.clone(), lease.clone(), slot.name.clone());
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(LOCK_TTL / 3).await;
                    if let Ok(false) = shared.extend(&lease, LOCK_TTL).await {
                        tracing::warn!(account = %name, "the account's renewal lock expired before the renewal ended");
                        return;
                    }
                }
            }))
        };
        let generation = slot.generation.load(Ordering::Acquire);
        let result =
            self.fetch_retrying(slot).await.map(|(creds, target)| self.instants(slot, creds, target, previous));
        drop(keeper);
        // Registered again meanwhile: the outcome came from the previous grant, and is not shared.
        let current = slot.generation.load(Ordering::Acquire) == generation;
        match &result {
            Ok((cached, _)) if current => {
                match shared.share_credentials(&slot.name, &cached.shared(), self.clock.now(), Some(&lease)).await {
                    Ok(true) => {}
                    Ok(false) => {
                        tracing::warn!(account = %slot.name, "renewed after the renewal lock passed to another instance; not shared")
                    }
                    Err(e) => {
                        tracing::warn!(account = %slot.name, cause = %e, "renewed credentials could not be shared")
                    }
                }
            }
            // The others answer it for as long as this instance does; an error of this
            // instance's own (no grant, its store) is not shared.
            Err(error) if current && error.shared() => {
                if let Err(e) = shared.share_failure(&slot.name, error, self.hold(error), &lease).await {
                    tracing::warn!(account = %slot.name, cause = %e, "the renewal's failure could not be shared");
                }
            }
            _ => {}
        }
        let _ = shared.release(&lease).await;
        result
    }

    /// Renews with the renewal lock held; retries transient errors with backoff.
    async fn renew_locked(&self, slot: &Slot) -> Result<Arc<Cached>, TokenError> {
        let generation = slot.generation.load(Ordering::Acquire);
        let previous = match &*slot.entry.lock().unwrap_or_else(|p| p.into_inner()) {
            Entry::Fresh(c) => Some(c.creds.token.clone()),
            _ => None,
        };
        let result = self.obtain(slot, previous.as_ref()).await;
        let now = self.clock.now();
        let counter = match &result {
            Ok((_, true)) => &slot.adopted,
            Ok(_) => &slot.renewed,
            Err(_) => &slot.failed,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let mut entry = slot.entry.lock().unwrap_or_else(|p| p.into_inner());
        // Registered again while this renewal ran: its waiters get its outcome, and the cache
        // stays as the reset left it, for the new grant.
        let current = slot.generation.load(Ordering::Acquire) == generation;
        match result {
            Ok((cached, adopted)) => {
                let token = cached.creds.token.prefix();
                match adopted {
                    true => {
                        tracing::info!(account = %slot.name, token, "upstream credentials taken from another instance")
                    }
                    false => {
                        tracing::info!(account = %slot.name, token, life_s = cached.life.as_secs(), "upstream credentials obtained")
                    }
                }
                let cached = Arc::new(cached);
                if current {
                    *entry = Entry::Fresh(cached.clone());
                    *slot.last_known.lock().unwrap_or_else(|p| p.into_inner()) = Some(cached.clone());
                    let mut refused = slot.refused.lock().unwrap_or_else(|p| p.into_inner());
                    if refused.as_ref().is_some_and(|t| *t != cached.creds.token) {
                        *refused = None;
                    }
                }
                Ok(cached)
            }
            Err(e) => {
                tracing::warn!(account = %slot.name, cause = %e, "credential renewal failed");
                let error = Arc::new(e);
                let asked = error.retry_after().unwrap_or_default();
                if !current {
                    return Err(TokenError::Provider(error));
                }
                // A failed early renewal leaves credentials that are still valid in place, and
                // the next early one waits.
                if let Entry::Fresh(c) = &*entry {
                    if now < c.stale_at {
                        *slot.early_not_before.lock().unwrap_or_else(|p| p.into_inner()) =
                            Some(now + (self.policy.failure_hold * 5).max(asked));
                        return Ok(c.clone());
                    }
                }
                *entry = Entry::Failed { error: error.clone(), until: now + self.hold(&error) };
                Err(TokenError::Provider(error))
            }
        }
    }

    /// How long a failed renewal is answered from cache: briefly, never for good, so that a
    /// grant restored on disk or registered by another process (`swiftgate register`) is
    /// picked up without a restart; longer when only someone's intervention can mend it, and
    /// at least as long as the provider asked.
    fn hold(&self, error: &ProviderError) -> Duration {
        let hold = if error.is_transient() { self.policy.failure_hold } else { self.policy.failure_hold * 5 };
        hold.max(error.retry_after().unwrap_or_default())
    }

    /// Drops the cached credentials if they still carry `token`, which upstream just refused;
    /// the next [`credentials`](Self::credentials) call renews. Concurrent refusals of the same
    /// token cause one renewal, not one each.
    pub fn invalidate(&self, account: &str, token: &crate::secret::Secret) {
        self.invalidate_fetched_before(account, token, tokio::time::Instant::now() + Duration::from_secs(1));
    }

    /// Like [`invalidate`](Self::invalidate), but keeps credentials fetched at or after `before`.
    fn invalidate_fetched_before(&self, account: &str, token: &crate::secret::Secret, before: tokio::time::Instant) {
        if let Ok(slot) = self.slot(account) {
            let mut entry = slot.entry.lock().unwrap_or_else(|p| p.into_inner());
            if matches!(&*entry, Entry::Fresh(c) if &c.creds.token == token && c.fetched < before) {
                *entry = Entry::Empty;
                *slot.refused.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
            }
        }
    }

    /// Forgets everything cached for `account`, e.g. after it was registered again (which may
    /// lead to another storage URL).
    pub fn reset(&self, account: &str) {
        self.forget(account, true);
    }

    /// Drops the credentials cached for `account`, so the next request renews, and with
    /// `target_too` the last known target that anonymous requests use.
    fn forget(&self, account: &str, target_too: bool) {
        if let Ok(slot) = self.slot(account) {
            let mut entry = slot.entry.lock().unwrap_or_else(|p| p.into_inner());
            slot.generation.fetch_add(1, Ordering::AcqRel);
            slot.source.reset();
            slot.sticky.store(false, Ordering::Relaxed);
            *slot.early_not_before.lock().unwrap_or_else(|p| p.into_inner()) = None;
            if target_too {
                *slot.last_known.lock().unwrap_or_else(|p| p.into_inner()) = None;
            }
            *entry = Entry::Empty;
        }
    }

    /// The account's storage usage, asked of the source, with the account's credentials when
    /// it asks the storage itself.
    pub async fn usage(self: &Arc<Self>, account: &str) -> Result<Usage, TokenError> {
        let slot = self.slot(account)?;
        let cached = match slot.source.asks_storage_for_usage() {
            true => Some(self.credentials(account).await?),
            false => None,
        };
        slot.source.usage(cached.as_ref().map(|c| &c.creds)).await.map_err(|e| TokenError::Provider(Arc::new(e)))
    }

    /// Every `period`, drops the cached credentials of each account whose source says what it
    /// reads has changed (a fixed token's file rewritten). Runs until the manager is dropped.
    pub async fn watch_sources(self: Arc<Self>, period: Duration) {
        let manager = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(period).await;
            let Some(manager) = manager.upgrade() else { return };
            for (name, slot) in &manager.slots {
                if slot.source.changed() {
                    tracing::info!(account = %name, "the account's token changed on disk; using the new one");
                    // The storage URL is the configuration's: anonymous requests keep it.
                    manager.forget(name, false);
                }
            }
        }
    }

    /// Every `period`, checks that the shared store answers, writes the grants spooled while
    /// it did not, and once it is back offers it the credentials this instance renewed alone
    /// meanwhile, so the others take them instead of renewing again. Runs until the manager is
    /// dropped; returns at once without a shared store.
    pub async fn keep_shared(self: Arc<Self>, period: Duration) {
        let Some(shared) = self.shared.clone() else { return };
        let manager = Arc::downgrade(&self);
        drop(self);
        loop {
            tokio::time::sleep(period).await;
            let Some(manager) = manager.upgrade() else { return };
            if shared.ping().await.is_err() {
                continue;
            }
            shared.flush().await;
            let now = manager.clock.now();
            for (name, slot) in &manager.slots {
                if !slot.alone.swap(false, Ordering::Relaxed) {
                    continue;
                }
                let fresh = match &*slot.entry.lock().unwrap_or_else(|p| p.into_inner()) {
                    Entry::Fresh(c) if now < c.stale_at => Some(c.shared()),
                    _ => None,
                };
                let Some(offered) = fresh else { continue };
                if let Ok(true) = shared.share_credentials(name, &offered, now, None).await {
                    tracing::info!(account = %name, "offered the shared store the credentials renewed while it was away");
                }
            }
        }
    }

    /// The accounts this manager keeps credentials for.
    pub fn accounts(&self) -> impl Iterator<Item = &str> {
        self.slots.keys().map(String::as_str)
    }

    /// True while a renewal for `account` is under way (for readiness checks and metrics).
    pub fn is_renewing(&self, account: &str) -> bool {
        self.slot(account).is_ok_and(|slot| slot.renewal.try_lock().is_err())
    }

    /// The last known credentials whose storage path covers `path`, for anonymous requests
    /// (tempurl, public containers). Only the target matters (no token is sent), so stale
    /// credentials serve; this never renews, so unauthenticated clients cannot make the gateway
    /// call the provider.
    pub fn cached_for_path(&self, path: &str) -> Option<Arc<Cached>> {
        // One account's storage path covers a given path: the first found is the one.
        self.slots.values().filter_map(Slot::held).find(|c| c.target.covers(path))
    }

    /// The last known credentials whose upstream answers `/info` at `path` (`/swift/info` for a
    /// storage path `/swift/v1/AUTH_…`), for clients that ask there; never renews.
    pub fn cached_for_info(&self, path: &str) -> Option<Arc<Cached>> {
        self.slots.values().filter_map(Slot::held).find(|c| c.target.info_path().is_some_and(|p| p.path() == path))
    }

    /// Fetches credentials for every account now (errors are logged, not returned), so the
    /// first client after a start does not wait and anonymous requests know their targets.
    pub async fn warm_up(self: Arc<Self>) {
        let mut names: Vec<String> = self.slots.keys().cloned().collect();
        names.sort();
        for name in names {
            if let Err(e) = self.credentials(&name).await {
                tracing::info!(account = %name, cause = %e, "no credentials at start");
            }
        }
    }

    /// The last known credentials of any account, for `/info`: only the target matters, and
    /// like [`TokenManager::cached_for_path`] this never renews, since `/info` is anonymous.
    /// Those of the account first by name, so the answer does not follow hash order.
    pub fn any_cached(&self) -> Option<Arc<Cached>> {
        let held = self.slots.iter().filter_map(|(name, slot)| Some((name, slot.held()?)));
        held.min_by(|a, b| a.0.cmp(b.0)).map(|(_, c)| c)
    }

    /// Each account's renewal counts and the life left on its token, by account name.
    pub fn figures(&self) -> Vec<crate::metrics::AccountFigures> {
        let now = self.clock.now();
        let mut figures: Vec<_> = self
            .slots
            .iter()
            .map(|(name, slot)| {
                let failing = matches!(*slot.entry.lock().unwrap_or_else(|p| p.into_inner()), Entry::Failed { .. });
                crate::metrics::AccountFigures {
                    name: name.clone(),
                    renewed: slot.renewed.load(Ordering::Relaxed),
                    failed: slot.failed.load(Ordering::Relaxed),
                    adopted: slot.adopted.load(Ordering::Relaxed),
                    expires_in: slot.held().map(|c| c.left(now)),
                    failing,
                }
            })
            .collect();
        figures.sort_by(|a, b| a.name.cmp(&b.name));
        figures
    }

    /// The clock this manager reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

#[cfg(test)]
mod tests;
