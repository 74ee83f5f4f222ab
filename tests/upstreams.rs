//! Keystone v3, Swift v1 and static accounts end to end on port 0, against the emulator's
//! Keystone and Swift v1 auth in front of its built-in storage: both modes, renewal ahead of
//! expiry and after a 401, backoff on 429, the catalog's regions, and what a client sees when
//! the account's auth fails.

mod common;

use std::time::Duration;

use common::raw::{self, full};
use common::{header, Stack, KEY, LOGIN, PASSWORD, USER};
use swiftgate::config::{AccountConfig, Mode};
use swiftgate::emulator::Emulator;

fn account(toml: &str) -> AccountConfig {
    toml::from_str(toml).unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

/// Password auth scoped to the user's project by name, with `extra` keys.
fn keystone_password(emu: &Emulator, extra: &str) -> AccountConfig {
    let (project, _) = emu.keystone_project(LOGIN).unwrap();
    account(&format!(
        "name = \"ks\"\nprovider = \"keystone\"\nauth_url = \"{}/v3\"\nusername = \"{LOGIN}\"\npassword = \"{PASSWORD}\"\nproject = \"{project}\"\n{extra}",
        emu.base_url()
    ))
}

fn keystone_app_credential(emu: &Emulator) -> AccountConfig {
    let (id, secret) = emu.add_application_credential(LOGIN);
    account(&format!(
        "name = \"ksapp\"\nprovider = \"keystone\"\nauth_url = \"{}/v3\"\napplication_credential_id = \"{id}\"\napplication_credential_secret = \"{secret}\"\n",
        emu.base_url()
    ))
}

fn keystone_calls(stack: &Stack) -> u64 {
    stack.emu().count("keystone_password") + stack.emu().count("keystone_application_credential")
}

/// An object written and read back through the gateway with the token v1.0 auth handed out.
async fn round_trip(stack: &Stack, object: &str) -> String {
    let (url, token) = stack.storage_login().await;
    let t = [("x-auth-token", token.as_str()), ("content-length", "5")];
    assert_eq!(raw::send("PUT", &format!("{url}/c"), &t[..1], full("")).await.status / 100, 2);
    let put = raw::send("PUT", &format!("{url}/c/{object}"), &t, full("hello")).await;
    assert_eq!(put.status, 201, "{:?}", put.body);
    let get = raw::send("GET", &format!("{url}/c/{object}"), &t[..1], full("")).await;
    assert_eq!((get.status, get.body.as_ref()), (200, &b"hello"[..]));
    url
}

#[tokio::test]
async fn keystone_password_and_application_credential_serve_in_proxy_mode() {
    for by in ["name", "id", "domain ids", "credential"] {
        let stack = Stack::with_account(Mode::Proxy, |_| {}, |emu| match by {
            "name" => keystone_password(emu, ""),
            "domain ids" => keystone_password(emu, "user_domain_id = \"default\"\nproject_domain_id = \"default\"\n"),
            "id" => {
                let (_, id) = emu.keystone_project(LOGIN).unwrap();
                account(&format!(
                    "name = \"ks\"\nprovider = \"keystone\"\nauth_url = \"{}\"\nusername = \"{LOGIN}\"\nuser_domain = \"Default\"\npassword = \"{PASSWORD}\"\nproject_id = \"{id}\"\n",
                    emu.base_url()
                ))
            }
            _ => keystone_app_credential(emu),
        })
        .await;
        let url = round_trip(&stack, "o").await;
        let swift_account = stack.emu().swift_account(LOGIN).unwrap();
        assert_eq!(url, format!("{}/v1/{swift_account}", stack.gw.url), "{by}");
        let resp = stack.auth(USER, KEY).await;
        assert!(header(&resp, "x-auth-token-expires").parse::<u64>().unwrap() > 80000, "{by}");
        // Keystone's own token: its life is expires_at - issued_at (the emulator's default 24 h).
        let cached = stack.gw.gateway.tokens().credentials(stack.config.accounts[0].name()).await.unwrap();
        let life = cached.creds.expires.duration_since(stack.shared_clock.now()).unwrap();
        assert!(life > Duration::from_secs(86390) && life <= Duration::from_secs(86400), "{by}: {life:?}");
        assert_eq!(keystone_calls(&stack), 1, "{by}: one token for the whole run");
        // Registration is HubiC's alone.
        let page = stack.http.get(format!("{}/register", stack.gw.url)).send().await.unwrap();
        assert_eq!(page.status(), 404, "{by}");
    }
}

#[tokio::test]
async fn redirect_mode_hands_out_keystones_token_and_the_catalogs_url() {
    let stack = Stack::with_account(Mode::Redirect, |_| {}, |emu| keystone_password(emu, "")).await;
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 200);
    let url = header(&resp, "x-storage-url").to_owned();
    let token = header(&resp, "x-auth-token").to_owned();
    assert_eq!(url, format!("{}/v1/{}", stack.emu().base_url(), stack.emu().swift_account(LOGIN).unwrap()));
    assert!(token.starts_with("gAAAAA"), "Keystone's token: {token}");
    let left: u64 = header(&resp, "x-auth-token-expires").parse().unwrap();
    assert!((86000..=86400).contains(&left), "{left}");
    let head = raw::send("HEAD", &url, &[("x-auth-token", &token)], full("")).await;
    assert_eq!(head.status, 204);
}

#[tokio::test]
async fn a_token_upstream_revoked_is_renewed_on_the_401_once_for_every_waiter() {
    let stack = Stack::with_account(Mode::Proxy, |_| {}, |emu| keystone_password(emu, "")).await;
    let url = round_trip(&stack, "o").await;
    let (_, token) = stack.storage_login().await;
    stack.emu().revoke(false, true, false);
    let gets = (0..20).map(|_| {
        let (url, token) = (url.clone(), token.clone());
        tokio::spawn(
            async move { raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await },
        )
    });
    for get in gets {
        let get = get.await.unwrap();
        assert_eq!((get.status, get.body.as_ref()), (200, &b"hello"[..]));
    }
    assert_eq!(keystone_calls(&stack), 2, "one renewal for twenty refusals");
}

#[tokio::test]
async fn tokens_are_renewed_ahead_of_expiry_about_once_per_life() {
    let stack =
        Stack::with_account(Mode::Proxy, |c| c.swift_token_ttl = Duration::from_secs(3600), keystone_app_credential)
            .await;
    let url = round_trip(&stack, "o").await;
    let (_, token) = stack.storage_login().await;
    // Five token lives of requests every two minutes, on the shared manual clock. Renewed
    // ahead (five minutes before expiry), a token never has less than that left once a
    // request has passed: renewed at the end, or only after a 401, it would.
    for _ in 0..(5 * 30) {
        stack.clock.advance(Duration::from_secs(120));
        let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
        assert_eq!(get.status, 200);
        common::until_idle(&stack).await;
        let held = stack.gw.gateway.tokens().credentials("ksapp").await.unwrap();
        let left = held.creds.expires.duration_since(stack.shared_clock.now()).unwrap_or_default();
        assert!(left > Duration::from_secs(300), "renewed late: {left:?} left");
    }
    let calls = keystone_calls(&stack);
    assert!((5..=7).contains(&calls), "{calls} token requests over five lives");
}

#[tokio::test]
async fn a_rate_limit_is_waited_out_and_the_held_token_serves_meanwhile() {
    let stack = Stack::with_account(
        Mode::Proxy,
        |c| c.swift_token_ttl = Duration::from_secs(3600),
        |emu| keystone_password(emu, ""),
    )
    .await;
    // One 429 (Retry-After: 1) before the first token: the client waits, then gets in.
    stack.emu().fail_next(429, 1, Some("keystone"));
    let started = std::time::Instant::now();
    let url = round_trip(&stack, "o").await;
    assert!(started.elapsed() >= Duration::from_secs(1), "Retry-After honoured");
    assert_eq!(keystone_calls(&stack), 2);
    // Inside the renewal window with Keystone refusing: the valid token keeps serving.
    let (_, token) = stack.storage_login().await;
    stack.emu().fail_next(429, 1000, Some("keystone"));
    stack.clock.advance(Duration::from_secs(3600 - 200));
    let before = keystone_calls(&stack);
    for _ in 0..5 {
        let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
        assert_eq!(get.status, 200);
        common::until_idle(&stack).await;
    }
    let attempts = u64::from(swiftgate::tokens::RenewPolicy::default().attempts);
    assert_eq!(keystone_calls(&stack) - before, attempts, "one early renewal's attempts, then a pause");
    // Once it is gone, the client is told to come back, with the delay Keystone asked for.
    stack.clock.advance(Duration::from_secs(200));
    let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
    assert_eq!((get.status, get.header("retry-after")), (503, "1"), "{:?}", get.body);
}

#[tokio::test]
async fn the_catalogs_region_is_chosen_and_a_wrong_one_is_named() {
    let regions = |c: &mut swiftgate::emulator::EmulatorConfig| c.keystone_regions = vec!["GRA".into(), "SBG".into()];
    let stack = Stack::with_account(Mode::Proxy, regions, |emu| keystone_password(emu, "region = \"SBG\"\n")).await;
    let url = round_trip(&stack, "o").await;
    // The emulator serves SBG's storage under `/SBG/v1/` only: the round trip went there.
    assert!(url.starts_with(&format!("{}/SBG/v1/AUTH_", stack.gw.url)), "{url}");
    for (extra, cause) in [
        ("", "several regions (GRA, SBG): set `region`"),
        ("region = \"BHS\"\n", "no object-store endpoint in region BHS"),
    ] {
        let stack = Stack::with_account(Mode::Proxy, regions, |emu| keystone_password(emu, extra)).await;
        let resp = stack.auth(USER, KEY).await;
        assert_eq!(resp.status(), 502);
        let text = resp.text().await.unwrap();
        assert!(text.contains(cause) && text.contains("account ks"), "{text}");
    }
}

#[tokio::test]
async fn a_refused_login_gets_the_client_a_502_naming_the_cause_and_no_secret() {
    for (wrong, keys) in [
        ("password", format!("password = \"wrong-password\"\nproject = \"{LOGIN}\"")),
        ("project", format!("password = \"{PASSWORD}\"\nproject = \"someone-else\"")),
    ] {
        let stack = Stack::with_account(
            Mode::Proxy,
            |_| {},
            |emu| {
                account(&format!(
                    "name = \"ks\"\nprovider = \"keystone\"\nauth_url = \"{}/v3\"\nusername = \"{LOGIN}\"\n{keys}\n",
                    emu.base_url()
                ))
            },
        )
        .await;
        let resp = stack.auth(USER, KEY).await;
        assert_eq!(resp.status(), 502, "{wrong}");
        let text = resp.text().await.unwrap();
        assert!(text.contains("account ks: Keystone answered 401 Unauthorized"), "{wrong}: {text}");
        assert!(!text.contains("wrong-password") && !text.contains(PASSWORD), "{text}");
    }
}

#[tokio::test]
async fn anonymous_and_info_requests_find_a_keystone_accounts_upstream() {
    let stack = Stack::with_account(Mode::Proxy, |_| {}, |emu| keystone_password(emu, "")).await;
    stack.gw.gateway.tokens().clone().warm_up().await;
    let info: serde_json::Value =
        stack.http.get(format!("{}/info", stack.gw.url)).send().await.unwrap().json().await.unwrap();
    assert!(info["swift"]["max_file_size"].is_u64(), "{info}");
    let account = stack.emu().swift_account(LOGIN).unwrap();
    // Without a token the request goes upstream as it is, and upstream answers it.
    let anonymous = raw::send("GET", &format!("{}/v1/{account}/c", stack.gw.url), &[], full("")).await;
    assert_eq!(anonymous.status, 401, "upstream's own refusal");
    assert_eq!(anonymous.header("www-authenticate"), format!("Swift realm=\"{account}\""));
}

#[tokio::test]
async fn swift_v1_accounts_honour_the_token_life_upstream_states() {
    let stack = Stack::with_account(
        Mode::Proxy,
        |c| c.swift_token_ttl = Duration::from_secs(600),
        |emu| {
            account(&format!(
                "name = \"rgw\"\nprovider = \"swift-v1\"\nauth_url = \"{}/auth/v1.0\"\nuser = \"{LOGIN}\"\nkey = \"{PASSWORD}\"\n",
                emu.base_url()
            ))
        },
    )
    .await;
    let url = round_trip(&stack, "o").await;
    let (_, token) = stack.storage_login().await;
    assert_eq!(stack.emu().count("v1auth"), 1);
    let cached = stack.gw.gateway.tokens().credentials("rgw").await.unwrap();
    let left = cached.creds.expires.duration_since(stack.shared_clock.now()).unwrap();
    assert!(left <= Duration::from_secs(600) && left > Duration::from_secs(590), "{left:?}");
    // A revoked token: renewed on the 401.
    stack.emu().revoke(false, true, false);
    let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
    assert_eq!(get.status, 200);
    assert_eq!(stack.emu().count("v1auth"), 2);
    // A wrong key is named to the client.
    let bad = stack
        .rebuilt(|config, emu| {
            config.accounts = vec![account(&format!(
                "name = \"rgw\"\nprovider = \"swift-v1\"\nauth_url = \"{}/auth/v1.0\"\nuser = \"{LOGIN}\"\nkey = \"nope\"\n",
                emu.base_url()
            ))];
        })
        .await;
    let resp = bad.auth(USER, KEY).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("Swift v1 auth") && text.contains("401"), "{text}");
}

#[tokio::test]
async fn a_static_token_passes_upstreams_401_as_it_is_and_follows_its_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    let path = file.clone();
    let stack = Stack::with_account(
        Mode::Proxy,
        |_| {},
        |emu| {
            let (token, endpoint, _) = emu.current_swift_token(LOGIN);
            std::fs::write(&path, format!("{token}\n")).unwrap();
            account(&format!(
                "name = \"fixed\"\nprovider = \"static\"\nstorage_url = \"{endpoint}\"\ntoken_file = \"{}\"\n",
                path.display()
            ))
        },
    )
    .await;
    let watcher = tokio::spawn(stack.gw.gateway.tokens().clone().watch_sources(Duration::from_millis(20)));
    let url = round_trip(&stack, "o").await;
    let (_, token) = stack.storage_login().await;
    stack.emu().revoke(false, true, false);
    let started = std::time::Instant::now();
    let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
    assert_eq!(get.status, 401, "nothing to renew: upstream's answer as it is");
    assert!(started.elapsed() < Duration::from_secs(2), "no wait for a new token");
    // The file gets a new token: it is used without a restart.
    let (fresh, _, _) = stack.emu().current_swift_token(LOGIN);
    std::fs::write(&file, format!("{fresh}\n")).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
        if get.status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the new token was never used");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A file gone missing names the cause once the cache is dropped, and anonymous requests
    // still find their upstream meanwhile.
    std::fs::remove_file(&file).unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let get = raw::send("GET", &format!("{url}/c/o"), &[("x-auth-token", &token)], full("")).await;
        if get.status == 502 {
            assert!(String::from_utf8_lossy(&get.body).contains("cannot read"), "{:?}", get.body);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the missing file was never noticed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let path = url.trim_start_matches(&stack.gw.url).to_owned();
    assert!(stack.gw.gateway.tokens().cached_for_path(&format!("{path}/c/o")).is_some(), "the target is kept");
    watcher.abort();
}

/// The configuration's `Debug` output, an account's failure and the client's answer to it hold
/// no secret of the account's.
#[tokio::test]
async fn account_secrets_stay_out_of_debug_output_and_answers() {
    let stack = Stack::with_account(Mode::Proxy, |_| {}, |emu| {
        let (id, _) = emu.add_application_credential(LOGIN);
        account(&format!(
            "name = \"ksapp\"\nprovider = \"keystone\"\nauth_url = \"{}/v3\"\napplication_credential_id = \"{id}\"\napplication_credential_secret = \"secret-not-this-one\"\n",
            emu.base_url()
        ))
    })
    .await;
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    let err = stack.gw.gateway.tokens().credentials("ksapp").await.unwrap_err();
    let printed = format!("{:?} {text} {err} {err:?}", stack.config);
    assert!(printed.contains("Keystone answered 401") && !printed.contains("secret-not-this-one"), "{printed}");
}
