//! Login starvation: a flood of wrong keys cannot hold up other users' logins. In a test binary
//! of its own, so that no other test competes for the machine while it measures a login's wait.

mod common;

use std::time::Duration;

use common::{header, Stack, KEY, USER};

/// A flood of wrong keys for one user from one address (127.0.0.2), 400 clients in a tight
/// loop, cannot hold up another user's login from another address (127.0.0.3) whose key is not
/// cached yet: the flood is answered `429` past a few pending key checks, and the login waits
/// behind those few at most. The flood runs on a runtime of its own, as another machine's
/// clients would: on the gateway's, its 400 tasks would queue ahead of every task of the login.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_wrong_keys_does_not_starve_another_users_login() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;
    let stack = Stack::start_custom(
        swiftgate::config::Mode::Proxy,
        |_| {},
        |config| {
            let mut bob = config.users[0].clone();
            bob.account = Some(config.users[0].account.clone().unwrap_or_else(|| USER.to_owned()));
            bob.name = "bob".into();
            config.users.push(bob);
        },
    )
    .await;
    stack.register().await;
    let auth = format!("{}/auth/v1.0", stack.gw.url);
    let from = |last: u8| {
        let address = std::net::IpAddr::from([127, 0, 0, last]);
        reqwest::Client::builder().local_address(address).build().expect("a client")
    };
    let (flooder, stop) = (from(2), Arc::new(AtomicBool::new(false)));
    let attacker = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (answered, deferred) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let flood: Vec<_> = (0..400)
        .map(|_| {
            let (client, auth, stop) = (flooder.clone(), auth.clone(), stop.clone());
            let (answered, deferred) = (answered.clone(), deferred.clone());
            attacker.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let sent = client.get(&auth).header("x-auth-user", USER).header("x-auth-key", "wrong").send();
                    let Ok(resp) = sent.await else { continue };
                    assert!(matches!(resp.status().as_u16(), 401 | 429), "{}", resp.status());
                    if resp.status() == 429 {
                        assert_eq!(header(&resp, "retry-after"), "1");
                        deferred.fetch_add(1, Ordering::Relaxed);
                    }
                    answered.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    // The flood is under way once it has had a few hundred answers.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while answered.load(Ordering::Relaxed) < 400 {
        assert!(tokio::time::Instant::now() < deadline, "the flood got no answers");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (before, started) = (answered.load(Ordering::Relaxed), std::time::Instant::now());
    let login = from(3).get(&auth).header("x-auth-user", "bob").header("x-auth-key", KEY).send().await.unwrap();
    let latency = started.elapsed();
    let rate = (answered.load(Ordering::Relaxed) - before) as f64 / latency.as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    for task in flood {
        task.await.unwrap();
    }
    attacker.shutdown_background();
    println!(
        "flood: {rate:.0} answers/s, {} of {} answered 429; bob's login took {latency:?}",
        deferred.load(Ordering::Relaxed),
        answered.load(Ordering::Relaxed)
    );
    assert_eq!(login.status(), 200);
    assert!(latency < Duration::from_secs(1), "bob's login took {latency:?}");
    assert!(deferred.load(Ordering::Relaxed) > 0, "the flood was bounded");
}
