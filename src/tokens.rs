//! The token manager: per account, the cached upstream Swift credentials, renewed ahead of
//! expiry, with exactly one renewal in flight however many requests wait.
//!
//! The fast path takes one short `std` mutex to clone an `Arc`; the slow path queues on the
//! account's async renewal lock and re-checks the cache once it holds it, so a burst of requests
//! after expiry costs one provider round trip. It does not know how credentials are obtained
//! (that is the [`CredentialSource`]) nor where grants live (the store).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::clock::Clock;
use crate::provider::{CredentialSource, ProviderError, SwiftCredentials, Usage};
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
}

impl Slot {
    /// The credentials last obtained, expired or not; locked only to clone them.
    fn held(&self) -> Option<Arc<Cached>> {
        self.last_known.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Per-account credential cache with single-flight renewal.
pub struct TokenManager {
    /// Keyed with rustc-hash's hasher: account names come from the configuration, so they
    /// need no defence against chosen collisions, and SipHash cost more than the lookup.
    slots: rustc_hash::FxHashMap<String, Slot>,
    clock: Arc<dyn Clock>,
    policy: RenewPolicy,
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
                };
                (name, slot)
            })
            .collect();
        TokenManager { slots, clock, policy }
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

    /// Renews with the renewal lock held; retries transient errors with backoff.
    async fn renew_locked(&self, slot: &Slot) -> Result<Arc<Cached>, TokenError> {
        let generation = slot.generation.load(Ordering::Acquire);
        let previous = match &*slot.entry.lock().unwrap_or_else(|p| p.into_inner()) {
            Entry::Fresh(c) => Some(c.creds.token.clone()),
            _ => None,
        };
        let mut delay = self.policy.backoff;
        let mut attempt = 1;
        let result = loop {
            match slot.source.fetch().await {
                Ok(creds) => match Target::parse(&creds) {
                    Some(target) => break Ok((creds, target)),
                    None if http::HeaderValue::from_str(creds.token.expose()).is_err() => {
                        break Err(ProviderError::Protocol(
                            "the token cannot be sent (a line break or control character in it)".into(),
                        ))
                    }
                    None => break Err(ProviderError::Protocol("the storage URL is not an http(s) URL".into())),
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
                Err(e) => break Err(e),
            }
        };
        let now = self.clock.now();
        let mut entry = slot.entry.lock().unwrap_or_else(|p| p.into_inner());
        // Registered again while this renewal ran: its waiters get its outcome, and the cache
        // stays as the reset left it, for the new grant.
        let current = slot.generation.load(Ordering::Acquire) == generation;
        match result {
            Ok((creds, target)) => {
                let same = previous.is_some_and(|token| token == creds.token);
                if same && current {
                    slot.sticky.store(true, Ordering::Relaxed);
                }
                let life = creds.expires.duration_since(now).unwrap_or_default();
                let (renew_at, stale_at) = if slot.sticky.load(Ordering::Relaxed) {
                    // No fresher token exists before this one expires; an upstream 401 at the
                    // very end is renewed and retried by the proxy.
                    (creds.expires, creds.expires)
                } else {
                    (
                        creds.expires - self.policy.renew_ahead.min(life / 4),
                        creds.expires - self.policy.expiry_margin.min(life / 10),
                    )
                };
                tracing::info!(account = %slot.name, token = creds.token.prefix(), life_s = life.as_secs(), "upstream credentials obtained");
                let renews = slot.source.renews();
                let fetched = tokio::time::Instant::now();
                let cached = Arc::new(Cached { target, renew_at, stale_at, creds, fetched, life, renews });
                if current {
                    *entry = Entry::Fresh(cached.clone());
                    *slot.last_known.lock().unwrap_or_else(|p| p.into_inner()) = Some(cached.clone());
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
                // Held briefly, never for good: a grant restored on disk or registered by another
                // process (`swiftgate register`) is picked up without a restart.
                let hold = if error.is_transient() { self.policy.failure_hold } else { self.policy.failure_hold * 5 };
                let hold = hold.max(asked);
                *entry = Entry::Failed { error: error.clone(), until: now + hold };
                Err(TokenError::Provider(error))
            }
        }
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

    /// The account's storage usage, asked of the source with the account's credentials.
    pub async fn usage(self: &Arc<Self>, account: &str) -> Result<Usage, TokenError> {
        let cached = self.credentials(account).await?;
        let slot = self.slot(account)?;
        slot.source.usage(&cached.creds).await.map_err(|e| TokenError::Provider(Arc::new(e)))
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

    /// The clock this manager reads.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.clock
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::secret::Secret;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A source that counts calls, mints a new token each time and can be told to fail.
    #[derive(Debug)]
    struct Counting {
        clock: Arc<ManualClock>,
        /// Fetches begun (before the gate) and fetches answered (after it).
        started: AtomicU32,
        calls: AtomicU32,
        life: Duration,
        fail_next: AtomicU32,
        gate: tokio::sync::Semaphore,
    }

    #[async_trait::async_trait]
    impl CredentialSource for Counting {
        async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
            self.started.fetch_add(1, Ordering::SeqCst);
            let _permit = self.gate.acquire().await.expect("gate open");
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            if self.fail_next.load(Ordering::SeqCst) > 0 {
                self.fail_next.fetch_sub(1, Ordering::SeqCst);
                return Err(ProviderError::Transient("down".into()));
            }
            Ok(SwiftCredentials {
                token: Secret::new(format!("tok{n}")),
                endpoint: "http://up/v1/AUTH_x".into(),
                expires: self.clock.now() + self.life,
            })
        }
        async fn usage(&self, _creds: &SwiftCredentials) -> Result<Usage, ProviderError> {
            Ok(Usage { used: 1, quota: 2 })
        }
        fn reset(&self) {}
    }

    fn setup(life: Duration) -> (Arc<TokenManager>, Arc<Counting>, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)));
        let source = Arc::new(Counting {
            clock: clock.clone(),
            started: AtomicU32::new(0),
            calls: AtomicU32::new(0),
            life,
            fail_next: AtomicU32::new(0),
            gate: tokio::sync::Semaphore::new(1000),
        });
        let policy = RenewPolicy { backoff: Duration::from_millis(1), ..RenewPolicy::default() };
        let manager = Arc::new(TokenManager::new(
            [("a".to_owned(), source.clone() as Arc<dyn CredentialSource>)],
            clock.clone(),
            policy,
        ));
        (manager, source, clock)
    }

    #[tokio::test]
    async fn caches_until_stale_then_renews_once() {
        let (manager, source, clock) = setup(Duration::from_secs(3600));
        let first = manager.credentials("a").await.unwrap();
        assert_eq!(first.creds.token.expose(), "tok1");
        clock.advance(Duration::from_secs(3000)); // before renew_at (3600 - 300)
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok1");
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
        clock.advance(Duration::from_secs(595)); // 5 s left: inside the 10 s margin
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok2");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn early_renewal_runs_in_background_and_serves_the_old_token_meanwhile() {
        let (manager, source, clock) = setup(Duration::from_secs(3600));
        manager.credentials("a").await.unwrap();
        clock.advance(Duration::from_secs(3400)); // inside renew_ahead, still valid
        let held = source.gate.acquire_many(1000).await.unwrap(); // hold the renewal in fetch
        let during = manager.credentials("a").await.unwrap();
        assert_eq!(during.creds.token.expose(), "tok1", "valid token served while renewing");
        drop(held);
        // Poll with a deadline for the background renewal to land.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            if manager.credentials("a").await.unwrap().creds.token.expose() == "tok2" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "background renewal never landed");
            tokio::task::yield_now().await;
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    /// Polls `done` with a deadline, yielding to the runtime in between.
    async fn until(what: &str, done: impl Fn() -> bool) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !done() {
            assert!(tokio::time::Instant::now() < deadline, "{what}: not within 5 s");
            tokio::task::yield_now().await;
        }
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_does_not_cut_the_renewal_short() {
        let (manager, source, _clock) = setup(Duration::from_secs(3600));
        let held = source.gate.acquire_many(1000).await.unwrap(); // hold the renewal in fetch
        let m = manager.clone();
        let waiter = tokio::spawn(async move { m.credentials("a").await.map(|_| ()) });
        until("renewal started", || manager.is_renewing("a")).await;
        waiter.abort(); // its client disconnected
        let _ = waiter.await;
        drop(held);
        until("renewal landed", || !manager.is_renewing("a")).await;
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok1");
        assert_eq!(source.started.load(Ordering::SeqCst), 1, "the renewal ran to its end, once");
    }

    #[tokio::test]
    async fn a_failed_early_renewal_waits_before_the_next() {
        let (manager, source, clock) = setup(Duration::from_secs(3600));
        manager.credentials("a").await.unwrap();
        clock.advance(Duration::from_secs(3400)); // inside renew_ahead, still valid
        source.fail_next.store(1000, Ordering::SeqCst);
        let attempts = RenewPolicy::default().attempts;
        for _ in 0..50 {
            assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok1");
            until("background renewal done", || !manager.is_renewing("a")).await;
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1 + attempts, "one failed renewal, not fifty");
        clock.advance(RenewPolicy::default().failure_hold * 5);
        manager.credentials("a").await.unwrap();
        until("background renewal done", || !manager.is_renewing("a")).await;
        assert_eq!(source.calls.load(Ordering::SeqCst), 1 + 2 * attempts, "tried again after the pause");
    }

    #[tokio::test]
    async fn a_renewal_that_began_before_a_reset_keeps_out_of_the_cache() {
        let (manager, source, _clock) = setup(Duration::from_secs(3600));
        let held = source.gate.acquire_many(1000).await.unwrap();
        let m = manager.clone();
        let before = tokio::spawn(async move { m.credentials("a").await.map(|c| c.creds.token.expose().to_owned()) });
        until("renewal started", || manager.is_renewing("a")).await;
        manager.reset("a"); // registered again
        drop(held);
        assert_eq!(before.await.unwrap().unwrap(), "tok1", "its waiter gets its outcome");
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok2", "the new grant's");
    }

    #[tokio::test]
    async fn concurrent_waiters_share_one_renewal() {
        let (manager, source, _clock) = setup(Duration::from_secs(3600));
        let tasks: Vec<_> = (0..200)
            .map(|_| {
                let m = manager.clone();
                tokio::spawn(async move { m.credentials("a").await.map(|c| c.creds.token.expose().to_owned()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "tok1");
        }
        assert_eq!(source.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn invalidate_only_drops_the_refused_token() {
        let (manager, source, _clock) = setup(Duration::from_secs(3600));
        manager.credentials("a").await.unwrap();
        manager.invalidate("a", &Secret::new("someone-else"));
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok1");
        manager.invalidate("a", &Secret::new("tok1"));
        manager.invalidate("a", &Secret::new("tok1"));
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok2");
        assert_eq!(source.calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn transient_errors_are_retried_then_held_briefly() {
        let (manager, source, clock) = setup(Duration::from_secs(3600));
        source.fail_next.store(2, Ordering::SeqCst);
        assert_eq!(manager.credentials("a").await.unwrap().creds.token.expose(), "tok3");
        manager.invalidate("a", &Secret::new("tok3"));
        source.fail_next.store(10, Ordering::SeqCst);
        let err = manager.credentials("a").await.unwrap_err();
        assert!(matches!(err, TokenError::Provider(ref e) if e.is_transient()), "{err:?}");
        let calls = source.calls.load(Ordering::SeqCst);
        assert!(manager.credentials("a").await.is_err());
        assert_eq!(source.calls.load(Ordering::SeqCst), calls, "held failure must not call again");
        clock.advance(Duration::from_secs(3));
        source.fail_next.store(0, Ordering::SeqCst);
        assert!(manager.credentials("a").await.is_ok());
    }

    /// HubiC's behaviour: the same token until it expires, then a new one.
    #[derive(Debug)]
    struct SameUntilExpiry {
        clock: Arc<ManualClock>,
        calls: AtomicU32,
        current: Mutex<Option<(String, SystemTime)>>,
    }

    #[async_trait::async_trait]
    impl CredentialSource for SameUntilExpiry {
        async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
            let now = self.clock.now();
            let mut current = self.current.lock().unwrap();
            let (token, expires) = match current.as_ref() {
                Some((t, e)) if *e > now => (t.clone(), *e),
                _ => (format!("tok{n}"), now + Duration::from_secs(3600)),
            };
            *current = Some((token.clone(), expires));
            Ok(SwiftCredentials { token: Secret::new(token), endpoint: "http://up/v1/AUTH_x".into(), expires })
        }
        async fn usage(&self, _creds: &SwiftCredentials) -> Result<Usage, ProviderError> {
            Ok(Usage { used: 0, quota: 0 })
        }
        fn reset(&self) {}
    }

    #[tokio::test]
    async fn a_provider_that_keeps_its_token_costs_one_call_per_expiry() {
        let clock = Arc::new(ManualClock::new(SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000)));
        let source =
            Arc::new(SameUntilExpiry { clock: clock.clone(), calls: AtomicU32::new(0), current: Mutex::new(None) });
        let manager = Arc::new(TokenManager::new(
            [("a".to_owned(), source.clone() as Arc<dyn CredentialSource>)],
            clock.clone(),
            RenewPolicy::default(),
        ));
        // Six hours of requests every 30 s: six tokens.
        let mut tokens = std::collections::BTreeSet::new();
        for _ in 0..(6 * 120) {
            let c = manager.credentials("a").await.unwrap();
            assert!(c.creds.expires > clock.now(), "never hands out an expired token");
            tokens.insert(c.creds.token.expose().to_owned());
            // Let a background renewal, if one started, finish before time moves on.
            while manager.is_renewing("a") {
                tokio::task::yield_now().await;
            }
            clock.advance(Duration::from_secs(30));
        }
        assert_eq!(tokens.len(), 6);
        // One early renewal discovers the provider keeps its token; then one call per token.
        assert!(source.calls.load(Ordering::SeqCst) <= 7, "{} calls", source.calls.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn unknown_accounts_are_refused() {
        let (manager, _, _) = setup(Duration::from_secs(10));
        assert!(matches!(manager.credentials("zz").await, Err(TokenError::UnknownAccount)));
    }
}
