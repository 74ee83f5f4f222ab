//! The token manager under a manual clock and counting sources: caching, early and
//! single-flight renewal, failures held and retried, providers that keep their token.

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
    async fn usage(&self, _creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
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
    async fn usage(&self, _creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
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
