//! Upstream Swift tokens that live 2 s, real time, 30 s of uploads and downloads of every
//! shape through the proxy, a revocation mid-transfer: zero client-visible errors, and about
//! one renewal per expiry.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::raw::{self, chunked, full};
use common::Stack;
use swiftgate::clock::SystemClock;
use swiftgate::config::Mode;

const RUN: Duration = Duration::from_secs(30);
const TOKEN_LIFE: Duration = Duration::from_secs(2);

fn pattern(len: usize, seed: u32) -> Bytes {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect::<Vec<u8>>().into()
}

/// One client loop: PUT `data` (shaped by `kind`), GET it back, compare; until `RUN` is over.
async fn worker(url: String, token: String, kind: &'static str, data: Bytes) -> (u32, Vec<String>) {
    let started = Instant::now();
    let mut rounds = 0;
    let mut errors = Vec::new();
    while started.elapsed() < RUN {
        let path = format!("{url}/soak/{kind}-{rounds}");
        let t = ("x-auth-token", token.as_str());
        let put = match kind {
            "chunked" => {
                let chunks: Vec<Bytes> =
                    (0..data.len()).step_by(1 << 20).map(|i| data.slice(i..(i + (1 << 20)).min(data.len()))).collect();
                raw::send("PUT", &path, &[t], chunked(chunks)).await
            }
            "expect" => raw::send("PUT", &path, &[t, ("expect", "100-continue")], full(data.clone())).await,
            _ => raw::send("PUT", &path, &[t], full(data.clone())).await,
        };
        if put.status != 201 {
            errors.push(format!("{kind} PUT round {rounds}: {}", put.status));
        }
        let get = raw::send("GET", &path, &[t], full("")).await;
        if get.status != 200 || get.body_failed || get.body != data {
            errors.push(format!("{kind} GET round {rounds}: {} (failed body: {})", get.status, get.body_failed));
        }
        let del = raw::send("DELETE", &path, &[t], full("")).await;
        if del.status != 204 {
            errors.push(format!("{kind} DELETE round {rounds}: {}", del.status));
        }
        rounds += 1;
    }
    (rounds, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_seconds_of_traffic_across_two_second_tokens() {
    let stack = Stack::start_mode(Mode::Proxy, |c| {
        c.clock = Arc::new(SystemClock);
        c.swift_token_ttl = TOKEN_LIFE;
    })
    .await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    assert_eq!(raw::send("PUT", &format!("{url}/soak"), &[("x-auth-token", &token)], full("")).await.status, 201);
    let before = stack.emu().count("credentials");
    let small = pattern(20_000, 1);
    let big = pattern(50 << 20, 2);
    let workers = [("small", small.clone()), ("expect", small), ("length", big.clone()), ("chunked", big)];
    let handles: Vec<_> =
        workers.into_iter().map(|(kind, data)| tokio::spawn(worker(url.clone(), token.clone(), kind, data))).collect();
    // A revocation in the middle of whatever is in flight.
    let revoke_at = Instant::now() + RUN / 2;
    while Instant::now() < revoke_at {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stack.emu().revoke(false, true, false);
    let mut total = 0;
    for h in handles {
        let (rounds, errors) = h.await.unwrap();
        assert!(errors.is_empty(), "client-visible errors: {errors:#?}");
        assert!(rounds > 0);
        total += rounds;
    }
    let renewals = stack.emu().count("credentials") - before;
    let expiries = (RUN.as_secs() / TOKEN_LIFE.as_secs()) + 2;
    eprintln!("{total} rounds, {renewals} renewals for about {expiries} token lifetimes");
    assert!(renewals >= expiries / 2, "tokens were not renewed: {renewals}");
    assert!(renewals <= expiries + 4, "{renewals} renewals: one per request, not one per expiry");
    assert!(total as u64 > renewals, "more requests than renewals");
}
