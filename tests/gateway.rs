//! The gateway end to end on port 0 against the in-process emulator: registration flows,
//! v1.0 auth, token keeping under controlled time, restarts and damaged state.

mod common;

use std::time::Duration;

use common::{header, Stack, KEY, LOGIN, PASSWORD, USER};

#[tokio::test]
async fn browser_registration_stores_the_refresh_token() {
    let stack = Stack::start().await;
    stack.register().await;
    let path = stack.state.path().join("accounts").join("alice.json");
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"refresh_token\""), "{text}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    }
    assert_eq!(stack.emu().count("token_authorization_code"), 1);
    assert_eq!(stack.emu().count("oauth_auth_get"), 1);
}

#[tokio::test]
async fn registration_form_is_posted_not_queried_and_checks_the_key() {
    let stack = Stack::start().await;
    let (status, page) =
        swiftgate::demo::browser_register(&stack.gw.url, USER, "wrong", LOGIN, PASSWORD).await.unwrap();
    assert_eq!(status, 401);
    assert!(page.contains("Unknown user or wrong key"), "{page}");
    let resp = stack.http.get(format!("{}/register", stack.gw.url)).send().await.unwrap();
    let page = resp.text().await.unwrap();
    assert!(page.contains("method=\"post\""), "{page}");
}

#[tokio::test]
async fn callback_refuses_unknown_reused_and_error_states() {
    let stack = Stack::start().await;
    let get = |q: &str| {
        let url = format!("{}/callback?{q}", stack.gw.url);
        let http = stack.http.clone();
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let (status, page) = get("code=123&state=nope").await;
    assert_eq!(status, 400);
    assert!(page.contains("unknown, already used or expired"), "{page}");
    let (state, _) = stack.gw.gateway.registrar().unwrap().begin("alice").await.unwrap();
    let (status, page) =
        get(&format!("state={state}&error=access_denied&error_description=%3Cb%3Euser+refused%3C%2Fb%3E")).await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied: &lt;b&gt;user refused&lt;/b&gt;"), "HubiC's words, escaped: {page}");
    let (status, _) = get(&format!("state={state}&code=1")).await;
    assert_eq!(status, 400, "a state works once");
    // HubiC's own error redirects carry no state: its reason is shown all the same.
    let (status, page) = get("error=invalid_request&error_description=please+verify+redirect+uri").await;
    assert_eq!(status, 400);
    assert!(page.contains("invalid_request: please verify redirect uri"), "{page}");
    // Anyone can send a browser there: without a pending state, only HubiC's own wording shows.
    let (status, page) = get("error=access_denied&error_description=Send+your+key+to+evil.example").await;
    assert_eq!(status, 400);
    assert!(page.contains("access_denied") && !page.contains("evil.example"), "{page}");
    let (_, page) = get("error=%3Cscript%3E&error_description=please+retry").await;
    assert!(!page.contains("script") && page.contains("please retry"), "{page}");
    // One account's pending registrations are capped: one more forgets the oldest.
    let cap = swiftgate::register::PENDING_PER_ACCOUNT;
    let mut states = Vec::new();
    for _ in 0..=cap {
        states.push(stack.gw.gateway.registrar().unwrap().begin("alice").await.unwrap().0);
    }
    let (_, page) = get(&format!("state={}&code=1", states[0])).await;
    assert!(page.contains("unknown, already used or expired"), "the oldest is forgotten: {page}");
    for state in &states[1..] {
        // Known: the code goes to HubiC, which refuses it.
        let (_, page) = get(&format!("state={state}&code=1")).await;
        assert!(!page.contains("unknown, already used or expired"), "{page}");
    }
}

#[tokio::test]
async fn autoregister_fills_hubics_form() {
    let stack = Stack::start().await;
    let form = |password: &str| {
        form_urlencoded::Serializer::new(String::new())
            .append_pair("user", USER)
            .append_pair("key", KEY)
            .append_pair("login", LOGIN)
            .append_pair("password", password)
            .finish()
    };
    let post = |body: String| {
        stack
            .http
            .post(format!("{}/autoregister", stack.gw.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    let resp = post(form("not-the-password")).await.unwrap();
    assert_eq!(resp.status(), 400);
    let page = resp.text().await.unwrap();
    assert!(page.contains("Authentication failed, please check your credentials"), "{page}");
    assert!(!page.contains("not-the-password"));
    let resp = post(form(PASSWORD)).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.auth(USER, KEY).await.status(), 200);
}

#[tokio::test]
async fn autoregister_reports_a_page_it_does_not_recognise() {
    let stack = Stack::start().await;
    // Point the registrar at a server that is not HubiC: the emulator's 404 page.
    let client = std::sync::Arc::new(
        swiftgate::provider::hubic::HubicClient::new(
            &format!("{}/nothing-here", stack.emulator.base_url()),
            &stack.app.client_id,
            stack.app.client_secret.clone(),
            stack.clock.clone(),
        )
        .unwrap(),
    );
    let store = std::sync::Arc::new(swiftgate::store::FileStore::open(stack.state.path()).unwrap());
    let registrar = swiftgate::register::Registrar::new(
        client,
        store,
        stack.gw.gateway.tokens().clone(),
        &stack.gw.url,
        "credentials.r",
        vec!["alice".to_owned()],
        None,
    );
    let err = registrar.autoregister("alice", LOGIN, &swiftgate::secret::Secret::new(PASSWORD)).await.unwrap_err();
    assert!(err.to_string().contains("has no hidden `oauth` input"), "{err}");
}

#[tokio::test]
async fn v1_auth_answers_like_tempauth() {
    let stack = Stack::start().await;
    stack.register().await;
    let account = stack.emu().swift_account(LOGIN).unwrap();
    for path in ["/auth/v1.0", "/auth/v1.0/", "/v1.0", "/auth", "/auth/1.0"] {
        for (uh, kh) in
            [("X-Auth-User", "X-Auth-Key"), ("X-Storage-User", "X-Storage-Pass"), ("x-auth-user", "x-auth-key")]
        {
            let resp = stack
                .http
                .get(format!("{}{path}", stack.gw.url))
                .header(uh, USER)
                .header(kh, KEY)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200, "{path} {uh}");
            let token = header(&resp, "x-auth-token").to_owned();
            assert!(!token.is_empty());
            assert_eq!(header(&resp, "x-storage-token"), token);
            assert_eq!(header(&resp, "x-storage-url"), format!("{}/v1/{account}", stack.emulator.base_url()));
            assert_eq!(header(&resp, "content-length"), "0");
            let expires: u64 = header(&resp, "x-auth-token-expires").parse().unwrap();
            assert!(expires > 86000 && expires <= 86400, "{expires}");
            assert!(resp.bytes().await.unwrap().is_empty());
        }
    }
    // Storage works with what was handed out (redirect mode).
    let resp = stack.auth(USER, KEY).await;
    let (url, token) = (header(&resp, "x-storage-url").to_owned(), header(&resp, "x-auth-token").to_owned());
    let put = stack
        .http
        .put(format!("{url}/default/hello.txt"))
        .header("x-auth-token", &token)
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 201);
    let get = stack.http.get(format!("{url}/default/hello.txt")).header("x-auth-token", &token).send().await.unwrap();
    assert_eq!(get.text().await.unwrap(), "hello");
}

#[tokio::test]
async fn v1_auth_failures() {
    let stack = Stack::start().await;
    // Not registered yet: valid credentials, but nothing to hand out.
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 403);
    let text = resp.text().await.unwrap();
    assert!(text.contains("/register") && text.contains("swiftgate register"), "{text}");
    stack.register().await;
    let cases: [(Option<(&str, &str)>, u16); 4] =
        [(Some((USER, "wrong")), 401), (Some(("mallory", KEY)), 401), (Some((USER, "")), 401), (None, 401)];
    for (creds, want) in cases {
        let mut req = stack.http.get(format!("{}/auth/v1.0", stack.gw.url));
        if let Some((u, k)) = creds {
            req = req.header("X-Auth-User", u).header("X-Auth-Key", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), want, "{creds:?}");
        assert!(header(&resp, "www-authenticate").starts_with("Swift realm="), "{creds:?}");
        assert!(header(&resp, "x-auth-token").is_empty());
    }
    // GET only, as tempauth.
    for method in [reqwest::Method::POST, reqwest::Method::HEAD] {
        let url = format!("{}/auth/v1.0", stack.gw.url);
        let resp = stack.http.request(method.clone(), url).header("X-Auth-User", USER).header("X-Auth-Key", KEY);
        let resp = resp.send().await.unwrap();
        assert_eq!((resp.status().as_u16(), header(&resp, "allow")), (405, "GET"), "{method}");
    }
}

#[tokio::test]
async fn a_restart_keeps_the_registration() {
    let mut stack = Stack::start().await;
    stack.register().await;
    let before = header(&stack.auth(USER, KEY).await, "x-auth-token").to_owned();
    stack.restart_gateway().await;
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 200);
    // HubiC hands out the same Swift token until it expires; the new process got it again
    // through a refresh of the stored token, not through a new registration.
    assert_eq!(header(&resp, "x-auth-token"), before);
    assert_eq!(stack.emu().count("token_authorization_code"), 1);
    assert_eq!(stack.emu().count("token_refresh_token"), 2);
}

#[tokio::test]
async fn concurrent_auths_after_expiry_cause_one_refresh_and_one_credentials_call() {
    let stack = Stack::start().await;
    stack.register().await;
    assert_eq!(stack.auth(USER, KEY).await.status(), 200);
    // Past both the 6 h access token and the 24 h Swift token.
    stack.clock.advance(Duration::from_secs(25 * 3600));
    stack.emu().reset_counters();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let http = stack.http.clone();
        let url = format!("{}/auth/v1.0", stack.gw.url);
        tasks.push(tokio::spawn(async move {
            let r = http.get(url).header("X-Auth-User", USER).header("X-Auth-Key", KEY).send().await.unwrap();
            (r.status().as_u16(), r.headers().get("x-auth-token").map(|v| v.to_str().unwrap().to_owned()))
        }));
    }
    let mut tokens = std::collections::HashSet::new();
    for t in tasks {
        let (status, token) = t.await.unwrap();
        assert_eq!(status, 200);
        tokens.insert(token.unwrap());
    }
    assert_eq!(tokens.len(), 1, "every waiter got the one renewed token");
    assert_eq!(stack.emu().count("token_refresh_token"), 1);
    assert_eq!(stack.emu().count("credentials"), 1);
}

#[tokio::test]
async fn swift_tokens_are_renewed_early_in_the_background() {
    let stack = Stack::start_with(|c| c.swift_token_ttl = Duration::from_secs(3600)).await;
    stack.register().await;
    let first = header(&stack.auth(USER, KEY).await, "x-auth-token").to_owned();
    // 56 min in: inside the 5 min renewal window, and the token is still valid.
    stack.clock.advance(Duration::from_secs(56 * 60));
    let during = stack.auth(USER, KEY).await;
    assert_eq!(header(&during, "x-auth-token"), first, "the valid token is served while renewing");
    // HubiC returns the same Swift token until it expires, so the renewal is seen in the
    // emulator's counter; poll it, and the end of the renewal, with a deadline.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while stack.emu().count("credentials") < 2 || stack.gw.gateway.tokens().is_renewing("alice") {
        assert!(tokio::time::Instant::now() < deadline, "no background renewal");
        tokio::task::yield_now().await;
    }
    // After expiry, a new token is minted and fetched once.
    stack.clock.advance(Duration::from_secs(5 * 60));
    let after = stack.auth(USER, KEY).await;
    assert_ne!(header(&after, "x-auth-token"), first);
    let expires: u64 = header(&after, "x-auth-token-expires").parse().unwrap();
    assert!(expires > 3500, "{expires}");
    assert_eq!(stack.emu().count("credentials"), 3);
}

#[tokio::test]
async fn access_token_expiry_is_tracked_after_a_refresh() {
    // The seed gateway forgot to update the access-token expiry after a refresh, so every later
    // cache miss refreshed again. Here: Swift tokens live 1 h, access tokens 6 h.
    let stack = Stack::start_with(|c| c.swift_token_ttl = Duration::from_secs(3600)).await;
    stack.register().await;
    for _ in 0..4 {
        assert_eq!(stack.auth(USER, KEY).await.status(), 200);
        stack.clock.advance(Duration::from_secs(3601));
    }
    assert_eq!(stack.emu().count("credentials"), 4);
    assert_eq!(stack.emu().count("token_refresh_token"), 1, "one access token serves 4 hours");
}

#[tokio::test]
async fn redirect_mode_stops_handing_out_a_swift_token_revoked_early() {
    // HubiC sometimes revoked Swift tokens before their expiry. In redirect mode the gateway
    // never sees the 401 that follows, so it asks upstream before handing a token out again.
    let stack = Stack::start().await;
    stack.register().await;
    let first = stack.auth(USER, KEY).await;
    let revoked = header(&first, "x-auth-token").to_owned();
    stack.emu().revoke(false, true, false);
    stack.clock.advance(Duration::from_secs(11));
    let again = stack.auth(USER, KEY).await;
    assert_eq!(again.status(), 200);
    let (url, token) = (header(&again, "x-storage-url").to_owned(), header(&again, "x-auth-token").to_owned());
    assert_ne!(token, revoked, "the revoked token is not handed out again");
    let head = stack.http.head(&url).header("x-auth-token", &token).send().await.unwrap();
    assert_eq!(head.status(), 204, "the new one works");
}

#[tokio::test]
async fn a_revoked_grant_asks_for_registration_and_transient_errors_are_retried() {
    let stack = Stack::start().await;
    stack.register().await;
    stack.emu().fail_next(500, 2, Some("credentials"));
    assert_eq!(stack.auth(USER, KEY).await.status(), 200, "two 500s absorbed by retries");
    assert_eq!(stack.emu().count("credentials"), 3);
    stack.emu().revoke(true, true, true);
    stack.clock.advance(Duration::from_secs(25 * 3600));
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 403);
    assert!(resp.text().await.unwrap().contains("register again"));
    // Registering again heals the account without a restart.
    stack.register().await;
    assert_eq!(stack.auth(USER, KEY).await.status(), 200);
}

#[tokio::test]
async fn hubic_down_gives_503_with_retry_after() {
    let stack = Stack::start().await;
    stack.register().await;
    stack.emu().fail_next(509, 10, Some("token"));
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 503);
    assert_eq!(header(&resp, "retry-after"), "2");
}

#[tokio::test]
async fn a_corrupted_state_file_is_a_clear_error() {
    let mut stack = Stack::start().await;
    stack.register().await;
    let path = stack.state.path().join("accounts").join("alice.json");
    let full = std::fs::read(&path).unwrap();
    std::fs::write(&path, &full[..full.len() / 3]).unwrap();
    stack.restart_gateway().await;
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 502);
    let text = resp.text().await.unwrap();
    assert!(text.contains("could not obtain storage credentials"), "{text}");
    // The gateway still serves everything else.
    let health = stack.http.get(format!("{}/healthz", stack.gw.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn usage_page_in_json_and_html() {
    let stack = Stack::start().await;
    stack.register().await;
    let url = format!("{}/usage", stack.gw.url);
    let resp = stack.http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(header(&resp, "www-authenticate").contains("Basic"));
    let resp =
        stack.http.get(&url).basic_auth(USER, Some(KEY)).header("accept", "application/json").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(doc["quota"], 10u64 * 1024u64.pow(4));
    assert_eq!(doc["quota_human"], "10.0 TiB");
    assert_eq!(doc["used"], 0);
    let resp = stack.http.get(&url).header("X-Auth-User", USER).header("X-Auth-Key", KEY).send().await.unwrap();
    let page = resp.text().await.unwrap();
    assert!(page.contains("0 B used of 10.0 TiB"), "{page}");
    // HubiC's usage call needs no Swift token: it answers while credentials cannot be had.
    stack.emu().fail_next(500, 100, Some("credentials"));
    let resp =
        stack.http.get(&url).basic_auth(USER, Some(KEY)).header("accept", "application/json").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(stack.emu().count("credentials"), 0, "no Swift token asked for");
}

#[tokio::test]
async fn usage_and_storage_share_one_access_token_refresh() {
    // Once the 6 h access token has expired, concurrent /usage calls and a credentials renewal
    // wait for one refresh between them.
    let stack = Stack::start().await;
    stack.register().await;
    stack.storage_login().await;
    stack.clock.advance(std::time::Duration::from_secs(25 * 3600));
    stack.emu().reset_counters();
    let url = format!("{}/usage", stack.gw.url);
    let usages = (0..8).map(|_| {
        let req = stack.http.get(&url).basic_auth(USER, Some(KEY)).header("accept", "application/json");
        async move { req.send().await.unwrap().status().as_u16() }
    });
    let (statuses, login) = tokio::join!(futures_util::future::join_all(usages), stack.storage_login());
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    assert!(!login.1.is_empty());
    assert_eq!(stack.emu().count("token_refresh_token"), 1, "one refresh for all of them");
}

#[tokio::test]
async fn ops_endpoints() {
    let stack = Stack::start().await;
    let health = stack.http.get(format!("{}/healthz", stack.gw.url)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let info: serde_json::Value =
        stack.http.get(format!("{}/info", stack.gw.url)).send().await.unwrap().json().await.unwrap();
    assert!(info["swift"]["version"].as_str().unwrap().starts_with("swiftgate"));
    let missing = stack.http.get(format!("{}/nope", stack.gw.url)).send().await.unwrap();
    assert_eq!(missing.status(), 404);
}

#[tokio::test]
async fn a_consent_link_completed_in_another_browser_is_refused() {
    // A gateway user starts /register and sends the HubiC link to someone else; that person's
    // consent must not bind their HubiC account to the user, because their browser lacks the
    // registration cookie.
    let stack = Stack::start().await;
    let form = format!("user={USER}&key={KEY}");
    let resp = stack
        .http
        .post(format!("{}/register", stack.gw.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 302);
    let cookie = header(&resp, "set-cookie").to_owned();
    assert!(cookie.starts_with("swiftgate_registration=") && cookie.contains("HttpOnly"), "{cookie}");
    let authorize = header(&resp, "location").to_owned();
    let page = stack.http.get(&authorize).send().await.unwrap().text().await.unwrap();
    let oauth = swiftgate::register::scrape_oauth_id(&page).unwrap();
    let consent = stack
        .http
        .post(format!("{}/oauth/auth/", stack.emulator.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("oauth={oauth}&action=accepted&login=alice%40example.com&user_pwd={PASSWORD}"))
        .send()
        .await
        .unwrap();
    let callback = header(&consent, "location").to_owned();
    let resp = stack.http.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert!(resp.text().await.unwrap().contains("another browser"));
    assert!(!stack.state.path().join("accounts").join("alice.json").exists());
    // Nor can whoever learnt the state cancel the registration with an error callback.
    let state = callback.split(['?', '&']).find_map(|p| p.strip_prefix("state=")).expect("a state").to_owned();
    let cancel = format!("{}/callback?state={state}&error=access_denied", stack.gw.url);
    assert_eq!(stack.http.get(&cancel).send().await.unwrap().status(), 400);
    // The browser that began it still completes it.
    let value = cookie.split(';').next().expect("name=value").to_owned();
    let resp = stack.http.get(&callback).header("cookie", value).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    assert!(stack.state.path().join("accounts").join("alice.json").exists());
}

#[tokio::test]
async fn a_registration_form_posted_from_another_site_is_refused() {
    // Another site's page that posts a user's key to /register would send the visitor, with
    // the registration cookie, to HubiC's consent: their storage would end up the user's.
    let stack = Stack::start_custom(
        swiftgate::config::Mode::Redirect,
        |_| {},
        |c| c.public_url = Some("https://gw.example.org/swift".into()),
    )
    .await;
    let host = stack.gw.url.trim_start_matches("http://").to_owned();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut req = stack
            .http
            .post(format!("{}/register", stack.gw.url))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(format!("user={USER}&key={KEY}"));
        for (k, v) in headers {
            req = req.header(k, v);
        }
        async move { req.send().await.unwrap() }
    };
    for refused in [
        vec![("origin", "https://evil.example".to_owned())],
        vec![("origin", "null".to_owned())],
        vec![("origin", format!("http://{host}")), ("sec-fetch-site", "cross-site".to_owned())],
        vec![("origin", format!("http://{host}")), ("sec-fetch-site", "same-site".to_owned())],
        // public_url's host, but not its scheme.
        vec![("origin", "http://gw.example.org".to_owned())],
    ] {
        let resp = post(refused.clone()).await;
        assert_eq!(resp.status(), 403, "{refused:?}");
        assert!(resp.headers().get("set-cookie").is_none());
    }
    for accepted in [
        vec![],
        vec![("origin", format!("http://{host}")), ("sec-fetch-site", "same-origin".to_owned())],
        // The host the form was sent to.
        vec![("origin", format!("http://{host}"))],
        // public_url's origin, with Host rewritten by a reverse proxy; default port written or not.
        vec![("origin", "https://gw.example.org".to_owned())],
        vec![("origin", "https://GW.example.org:443".to_owned())],
        // A no-referrer policy: Origin null, but the browser says same-origin.
        vec![("origin", "null".to_owned()), ("sec-fetch-site", "same-origin".to_owned())],
    ] {
        let resp = post(accepted.clone()).await;
        assert_eq!(resp.status(), 302, "{accepted:?}");
        // The browser comes back to <public_url>/callback, so the cookie's path is that one.
        let cookie = header(&resp, "set-cookie");
        assert!(cookie.contains("; Path=/swift/callback;") && cookie.ends_with("; Secure"), "{cookie}");
    }
}

#[tokio::test]
async fn a_grant_written_by_another_process_replaces_the_cached_tokens() {
    // `swiftgate register` run while `serve` runs writes the store from another process; serve
    // notices and drops the old grant's tokens, as a registration of its own does.
    let stack = Stack::start().await;
    stack.register().await;
    assert_eq!(stack.auth(USER, KEY).await.status(), 200);
    let registrar = stack.gw.gateway.registrar().unwrap();
    registrar.check_store().await; // records what is there
    registrar.check_store().await;
    let calls = stack.emu().count("credentials");
    assert_eq!(stack.auth(USER, KEY).await.status(), 200);
    assert_eq!(stack.emu().count("credentials"), calls, "nothing changed, nothing dropped");
    let other = swiftgate::store::FileStore::open(stack.state.path()).unwrap();
    let grant = swiftgate::store::Grant {
        refresh_token: swiftgate::secret::Secret::new("written-by-another-process"),
        scope: "credentials.r".into(),
        registered_at: 1,
    };
    swiftgate::store::GrantStore::save(&other, "alice", &grant).await.unwrap();
    registrar.check_store().await;
    // The old grant's credentials are gone; renewing with the new (made-up) grant fails (the
    // watch's own renewal or the auth's, whichever comes first).
    let resp = stack.auth(USER, KEY).await;
    assert_eq!(resp.status(), 403, "{:?}", resp.text().await);
}
