//! The HubiC emulator against the shapes real clients relied on (`hubic-api.md`): consent page,
//! error redirects, token endpoint JSON and errors, the `/1.0` API and the admin knobs.

mod common;

use std::time::Duration;

use base64::Engine;
use common::{header, Stack, LOGIN, PASSWORD};

fn authorize_query(stack: &Stack, overrides: &[(&str, Option<&str>)]) -> String {
    let redirect = stack.app.redirect_uri.clone();
    let mut params = vec![
        ("client_id", Some(stack.app.client_id.clone())),
        ("redirect_uri", Some(redirect)),
        ("scope", Some("usage.r,credentials.r".to_owned())),
        ("response_type", Some("code".to_owned())),
        ("state", Some("st4te".to_owned())),
    ];
    for (k, v) in overrides {
        if let Some(p) = params.iter_mut().find(|(pk, _)| pk == k) {
            p.1 = v.map(str::to_owned);
        }
    }
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in &params {
        if let Some(v) = v {
            s.append_pair(k, v);
        }
    }
    s.finish()
}

async fn consent(stack: &Stack) -> String {
    let url = format!("{}/oauth/auth/?{}", stack.emulator.base_url(), authorize_query(stack, &[]));
    let resp = stack.http.get(url).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(header(&resp, "content-type").starts_with("text/html"));
    let page = resp.text().await.unwrap();
    swiftgate::register::scrape_oauth_id(&page).expect("oauth id")
}

async fn post_consent(stack: &Stack, fields: &[(&str, &str)]) -> reqwest::Response {
    let mut s = form_urlencoded::Serializer::new(String::new());
    for (k, v) in fields {
        s.append_pair(k, v);
    }
    stack
        .http
        .post(format!("{}/oauth/auth", stack.emulator.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(s.finish())
        .send()
        .await
        .unwrap()
}

/// Walks consent and returns the code from the redirect.
async fn code(stack: &Stack) -> String {
    let oauth = consent(stack).await;
    let resp =
        post_consent(stack, &[("oauth", &oauth), ("action", "accepted"), ("login", LOGIN), ("user_pwd", PASSWORD)])
            .await;
    let location = header(&resp, "location").to_owned();
    let query = location.split_once('?').unwrap().1;
    query.split('&').next().unwrap().strip_prefix("code=").unwrap().to_owned()
}

fn basic(stack: &Stack) -> String {
    let raw = format!("{}:{}", stack.app.client_id, stack.app.client_secret.expose());
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

async fn token_call(stack: &Stack, auth: Option<&str>, body: &str) -> (u16, String, String) {
    let mut req = stack
        .http
        .post(format!("{}/oauth/token/", stack.emulator.base_url()))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let ct = header(&resp, "content-type").to_owned();
    (resp.status().as_u16(), ct, resp.text().await.unwrap())
}

async fn exchange(stack: &Stack) -> (String, String) {
    let code = code(stack).await;
    let body = format!("code={code}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (status, _, text) = token_call(stack, Some(&basic(stack)), &body).await;
    assert_eq!(status, 200, "{text}");
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    (doc["refresh_token"].as_str().unwrap().to_owned(), doc["access_token"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn bare_oauth_redirects_with_a_trailing_slash() {
    let stack = Stack::start().await;
    let resp = stack.http.get(format!("{}/oauth", stack.emulator.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 301);
    assert_eq!(header(&resp, "location"), format!("{}/oauth/", stack.emulator.base_url()));
    assert_eq!(header(&resp, "server"), "nginx/1.4.7");
    assert!(!header(&resp, "date").is_empty());
}

#[tokio::test]
async fn consent_page_has_the_line_scrapers_match() {
    let stack = Stack::start().await;
    let url = format!("{}/oauth/auth?{}", stack.emulator.base_url(), authorize_query(&stack, &[]));
    let page = stack.http.get(url).send().await.unwrap().text().await.unwrap();
    let line = page.lines().find(|l| l.contains("name=\"oauth\"")).unwrap();
    // The union of the real clients' patterns (hubic_token's needs `action` on the same line).
    let start = line.find("<input type=\"hidden\" name=\"oauth\" value=\"").unwrap();
    let rest = &line[start + 41..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    assert_eq!(digits.len(), 6);
    assert!(rest[digits.len()..].starts_with("\"><input type=\"hidden\" name=\"action\""), "{line}");
}

#[tokio::test]
async fn invalid_authorize_requests_redirect_with_error_first() {
    let stack = Stack::start().await;
    type Overrides<'a> = &'a [(&'a str, Option<&'a str>)];
    let cases: [(Overrides, &str, &str); 5] = [
        (&[("scope", None)], "invalid_request", "missing+arguments"),
        (&[("redirect_uri", Some("http://elsewhere.example/cb"))], "invalid_request", "please+verify+redirect+uri"),
        (&[("response_type", Some("nope"))], "unsupported_response_type", "response+type+must+be+set+to+code+or+token"),
        (&[("scope", Some("credentials.x"))], "invalid_scope", "please+verify+scope"),
        (&[("client_id", Some("api_hubic_unknown"))], "unauthorized_client", "please+verify+credentials"),
    ];
    for (overrides, error, description) in cases {
        let url = format!("{}/oauth/auth/?{}", stack.emulator.base_url(), authorize_query(&stack, overrides));
        let resp = stack.http.get(url).send().await.unwrap();
        assert_eq!(resp.status(), 302, "{error}");
        let location = header(&resp, "location");
        let query = location.split_once('?').unwrap().1;
        assert_eq!(query, format!("error={error}&error_description={description}"), "{location}");
    }
    let resp = stack.http.get(format!("{}/oauth/auth/?client_id=x", stack.emulator.base_url())).send().await.unwrap();
    assert_eq!(resp.status(), 400, "no redirect_uri to send the error to");
}

#[tokio::test]
async fn consent_post_outcomes() {
    let stack = Stack::start().await;
    // Wrong password: the page again, message on the line after class="text-error".
    let oauth = consent(&stack).await;
    let resp =
        post_consent(&stack, &[("oauth", &oauth), ("action", "accepted"), ("login", LOGIN), ("user_pwd", "bad")]).await;
    assert_eq!(resp.status(), 200);
    let page = resp.text().await.unwrap();
    let mut lines = page.lines().skip_while(|l| !l.contains("class=\"text-error\""));
    lines.next().unwrap();
    assert_eq!(lines.next().unwrap().trim(), "Authentication failed, please check your credentials");
    // Same oauth id, right password, perimeters as repeated fields: code, scope, state in order.
    let resp = post_consent(
        &stack,
        &[
            ("oauth", &oauth),
            ("action", "accepted"),
            ("login", LOGIN),
            ("user_pwd", PASSWORD),
            ("credentials", "r"),
            ("usage", "r"),
        ],
    )
    .await;
    assert_eq!(resp.status(), 302);
    let location = header(&resp, "location").to_owned();
    let (base, query) = location.split_once('?').unwrap();
    assert_eq!(base, stack.app.redirect_uri);
    let parts: Vec<&str> = query.split('&').collect();
    assert_eq!(parts.len(), 3, "{query}");
    let code = parts[0].strip_prefix("code=").unwrap();
    assert_eq!(code.len(), 32);
    assert!(code[..10].chars().all(|c| c.is_ascii_digit()) && code[10..].chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(parts[1], "scope=usage.r,credentials.r");
    assert_eq!(parts[2], "state=st4te");
    // The state comes back exactly as sent: hubic_token's is base64 with a bare `+`.
    let query = authorize_query(&stack, &[("state", None)]) + "&state=QUJD+ZA/x%3D=";
    let page = stack.http.get(format!("{}/oauth/auth/?{query}", stack.emulator.base_url())).send().await.unwrap();
    let oauth = swiftgate::register::scrape_oauth_id(&page.text().await.unwrap()).unwrap();
    let resp =
        post_consent(&stack, &[("oauth", &oauth), ("action", "accepted"), ("login", LOGIN), ("user_pwd", PASSWORD)])
            .await;
    assert!(header(&resp, "location").ends_with("&state=QUJD+ZA/x%3D="), "{}", header(&resp, "location"));
    // Refusal.
    let oauth = consent(&stack).await;
    let resp =
        post_consent(&stack, &[("oauth", &oauth), ("action", "refused"), ("login", LOGIN), ("user_pwd", PASSWORD)])
            .await;
    assert_eq!(resp.status(), 302);
    assert!(header(&resp, "location").contains("?error=access_denied&"));
}

#[tokio::test]
async fn code_exchange_has_hubics_exact_shape() {
    let stack = Stack::start().await;
    let code = code(&stack).await;
    let body = format!("code={code}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (status, ct, text) = token_call(&stack, Some(&basic(&stack)), &body).await;
    assert_eq!((status, ct.as_str()), (200, "application/json"));
    assert!(text.starts_with("{\"refresh_token\":\""), "{text}");
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).unwrap().keys().cloned().collect();
    assert_eq!(keys, ["refresh_token", "expires_in", "access_token", "token_type"]);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["expires_in"], 21600);
    assert_eq!(doc["token_type"], "Bearer");
    assert_eq!(doc["refresh_token"].as_str().unwrap().len(), 64);
    // Codes are single use.
    let (status, _, text) = token_call(&stack, Some(&basic(&stack)), &body).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error_description":"invalid code","error":"invalid_request"}"#));
}

#[tokio::test]
async fn token_endpoint_client_authentication_styles() {
    let stack = Stack::start().await;
    let (refresh, _) = exchange(&stack).await;
    let id = stack.app.client_id.clone();
    let secret = stack.app.client_secret.expose().to_owned();
    let refresh_body = format!("refresh_token={refresh}&grant_type=refresh_token");
    // Basic header; body fields; body fields beside a garbage Basic header (Swift Explorer).
    for (auth, extra) in [
        (Some(basic(&stack)), String::new()),
        (None, format!("&client_id={id}&client_secret={secret}")),
        (Some("Basic [B@1a2b3c".to_owned()), format!("&client_id={id}&client_secret={secret}")),
    ] {
        let (status, _, text) = token_call(&stack, auth.as_deref(), &format!("{refresh_body}{extra}")).await;
        assert_eq!(status, 200, "{text}");
        let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text)
            .unwrap()
            .keys()
            .cloned()
            .collect();
        assert_eq!(keys, ["expires_in", "access_token", "token_type"], "no new refresh token on refresh");
    }
    // Multipart body, as the seed gateway sent it.
    let form = format!(
        "--b0undary\r\nContent-Disposition: form-data; name=\"refresh_token\"\r\n\r\n{refresh}\r\n--b0undary\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nrefresh_token\r\n--b0undary--\r\n"
    );
    let resp = stack
        .http
        .post(format!("{}/oauth/token", stack.emulator.base_url()))
        .header("authorization", basic(&stack))
        .header("content-type", "multipart/form-data; boundary=b0undary")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Errors, exact bodies.
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{id}:nope")));
    let cases = [
        (
            Some(wrong.as_str()),
            refresh_body.clone(),
            401,
            r#"{"error_description":"please verify credentials","error":"unauthorized_client"}"#,
        ),
        (
            None,
            refresh_body.clone(),
            401,
            r#"{"error_description":"please verify credentials","error":"unauthorized_client"}"#,
        ),
        (
            Some(basic(&stack).leak() as &str),
            "refresh_token=bogus&grant_type=refresh_token".to_owned(),
            400,
            r#"{"error_description":"invalid refresh token","error":"invalid_request"}"#,
        ),
        (
            Some(basic(&stack).leak() as &str),
            "refresh_token=x".to_owned(),
            400,
            r#"{"error_description":"missing parameters","error":"invalid_request"}"#,
        ),
        (
            Some(basic(&stack).leak() as &str),
            "grant_type=password".to_owned(),
            400,
            r#"{"error_description":"grant type must be set to authorization_code","error":"invalid_request"}"#,
        ),
    ];
    for (auth, body, want_status, want_body) in cases {
        let (status, _, text) = token_call(&stack, auth, &body).await;
        assert_eq!((status, text.as_str()), (want_status, want_body), "{body}");
    }
}

#[tokio::test]
async fn codes_expire_and_grants_belong_to_their_app() {
    // A second app, registered beside the stack's own.
    let other = swiftgate::emulator::AppSpec::random("http://127.0.0.1:9/callback");
    let other_basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            other.client_id,
            other.client_secret.expose()
        ))
    );
    let stack = Stack::start_with(|c| c.apps.push(other)).await;
    // A code lives 10 minutes.
    let stale = code(&stack).await;
    stack.clock.advance(Duration::from_secs(601));
    let body = format!("code={stale}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (status, _, text) = token_call(&stack, Some(&basic(&stack)), &body).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error_description":"expired code","error":"invalid_request"}"#));
    // A code and a refresh token are good only for the app they were issued to.
    let fresh = code(&stack).await;
    let body = format!("code={fresh}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (status, _, text) = token_call(&stack, Some(&other_basic), &body).await;
    assert_eq!((status, text.as_str()), (400, r#"{"error_description":"invalid code","error":"invalid_request"}"#));
    let (refresh, _) = exchange(&stack).await;
    let body = format!("refresh_token={refresh}&grant_type=refresh_token");
    let (status, _, text) = token_call(&stack, Some(&other_basic), &body).await;
    assert_eq!(
        (status, text.as_str()),
        (400, r#"{"error_description":"invalid refresh token","error":"invalid_request"}"#)
    );
    assert_eq!(token_call(&stack, Some(&basic(&stack)), &body).await.0, 200, "its own app may");
}

#[tokio::test]
async fn a_new_authorisation_revokes_the_previous_refresh_token() {
    let stack = Stack::start().await;
    let (first, _) = exchange(&stack).await;
    let (second, _) = exchange(&stack).await;
    let call = |t: &str| format!("refresh_token={t}&grant_type=refresh_token");
    assert_eq!(token_call(&stack, Some(&basic(&stack)), &call(&first)).await.0, 400);
    assert_eq!(token_call(&stack, Some(&basic(&stack)), &call(&second)).await.0, 200);
}

#[tokio::test]
async fn api_endpoints_and_their_errors() {
    let stack = Stack::start().await;
    let (_, access) = exchange(&stack).await;
    let get = |path: &str, token: &str| {
        let req = stack.http.get(format!("{}{path}", stack.emulator.base_url())).bearer_auth(token);
        async move {
            let r = req.send().await.unwrap();
            let ct = header(&r, "content-type").to_owned();
            (r.status().as_u16(), ct, r.text().await.unwrap())
        }
    };
    let (status, ct, text) = get("/1.0/account/credentials", &access).await;
    assert_eq!((status, ct.as_str()), (200, "application/json; charset=utf8"));
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).unwrap().keys().cloned().collect();
    assert_eq!(keys, ["token", "endpoint", "expires"]);
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    let expires = doc["expires"].as_str().unwrap();
    assert_eq!(expires.len(), 25, "{expires}");
    assert!(expires.ends_with("+01:00") || expires.ends_with("+02:00"), "{expires}");
    let account = stack.emu().swift_account(LOGIN).unwrap();
    assert_eq!(doc["endpoint"], format!("{}/v1/{account}", stack.emulator.base_url()));
    // The same Swift token until it expires, with a trailing slash too.
    let (_, _, again) = get("/1.0/account/credentials/", &access).await;
    assert_eq!(serde_json::from_str::<serde_json::Value>(&again).unwrap()["token"], doc["token"]);
    let (status, _, text) = get("/1.0/account/usage", &access).await;
    assert_eq!(status, 200);
    assert_eq!(text, format!("{{\"quota\":{},\"used\":0}}", 10u64 * 1024u64.pow(4)));
    let (status, _, text) = get("/1.0/account", &access).await;
    assert_eq!(status, 200);
    let keys: Vec<String> =
        serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(&text).unwrap().keys().cloned().collect();
    assert_eq!(keys, ["email", "firstname", "lastname", "activated", "creationDate", "language", "status", "offer"]);
    // Errors.
    let (status, _, text) = get("/1.0/account/credentials", "bogus").await;
    assert_eq!((status, text.as_str()), (401, r#"{"error":"invalid_token","error_description":"not found"}"#));
    stack.clock.advance(Duration::from_secs(21601));
    let (status, _, text) = get("/1.0/account/usage", &access).await;
    assert_eq!((status, text.as_str()), (401, r#"{"error":"invalid_token","error_description":"expired"}"#));
    let (_, fresh) = exchange(&stack).await;
    stack.emu().revoke(true, false, false);
    let (status, _, text) = get("/1.0/account", &fresh).await;
    assert_eq!((status, text.as_str()), (403, r#"{"error":"invalid_token","error_description":"revoked"}"#));
}

#[tokio::test]
async fn missing_scope_is_insufficient_scope() {
    let stack = Stack::start().await;
    let url =
        format!("{}/oauth/auth/?{}", stack.emulator.base_url(), authorize_query(&stack, &[("scope", Some("usage.r"))]));
    let page = stack.http.get(url).send().await.unwrap().text().await.unwrap();
    let oauth = swiftgate::register::scrape_oauth_id(&page).unwrap();
    let resp =
        post_consent(&stack, &[("oauth", &oauth), ("action", "accepted"), ("login", LOGIN), ("user_pwd", PASSWORD)])
            .await;
    let location = header(&resp, "location").to_owned();
    let code = location.split_once("code=").unwrap().1.split('&').next().unwrap().to_owned();
    let body = format!("code={code}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (_, _, text) = token_call(&stack, Some(&basic(&stack)), &body).await;
    let access = serde_json::from_str::<serde_json::Value>(&text).unwrap()["access_token"].as_str().unwrap().to_owned();
    let resp = stack
        .http
        .get(format!("{}/1.0/account/credentials", stack.emulator.base_url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(
        resp.text().await.unwrap(),
        r#"{"error":"insufficient_scope","error_description":"this scope is insufficient"}"#
    );
}

#[tokio::test]
async fn storage_checks_swift_tokens() {
    let stack = Stack::start_with(|c| c.swift_token_ttl = Duration::from_secs(60)).await;
    let (_, access) = exchange(&stack).await;
    let creds: serde_json::Value = stack
        .http
        .get(format!("{}/1.0/account/credentials", stack.emulator.base_url()))
        .bearer_auth(&access)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let (endpoint, token) = (creds["endpoint"].as_str().unwrap(), creds["token"].as_str().unwrap());
    let list = stack.http.get(format!("{endpoint}?format=json")).header("x-auth-token", token).send().await.unwrap();
    assert_eq!(list.status(), 200);
    let names: Vec<String> = list
        .json::<Vec<serde_json::Value>>()
        .await
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["default", "default_segments"]);
    let bad = stack.http.get(endpoint).header("x-auth-token", "bogus").send().await.unwrap();
    assert_eq!(bad.status(), 401);
    assert!(bad.text().await.unwrap().starts_with("<html><h1>Unauthorized</h1><p>This server could not verify t"));
    stack.clock.advance(Duration::from_secs(61));
    let expired = stack.http.head(endpoint).header("x-auth-token", token).send().await.unwrap();
    assert_eq!(expired.status(), 401);
}

#[tokio::test]
async fn admin_knobs_over_http() {
    let stack = Stack::start().await;
    let admin = |path: &str, body: &str| {
        stack.http.post(format!("{}/_admin/{path}", stack.emulator.base_url())).body(body.to_owned()).send()
    };
    assert_eq!(admin("fail", r#"{"status":509,"count":2,"endpoint":"token"}"#).await.unwrap().status(), 200);
    let (status, _, _) = token_call(&stack, None, "grant_type=refresh_token").await;
    assert_eq!(status, 509);
    let (status, _, _) = token_call(&stack, None, "grant_type=refresh_token").await;
    assert_eq!(status, 509);
    let (status, _, _) = token_call(&stack, None, "grant_type=refresh_token").await;
    assert_eq!(status, 401, "faults are used up");
    assert_eq!(admin("fail", "{nope").await.unwrap().status(), 400);
    assert_eq!(admin("ttl", r#"{"access_token_ttl":5}"#).await.unwrap().status(), 200);
    let (_, _) = exchange(&stack).await;
    let counters: serde_json::Value = stack
        .http
        .get(format!("{}/_admin/counters", stack.emulator.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(counters["token_refresh_token"], 3);
    assert_eq!(counters["token_authorization_code"], 1);
    let resp = admin("users", r#"{"login":"bob@example.com","password":"pw"}"#).await.unwrap();
    let doc: serde_json::Value = resp.json().await.unwrap();
    assert!(doc["swift_account"].as_str().unwrap().starts_with("AUTH_"));
}

#[tokio::test]
async fn access_token_ttl_knob_applies() {
    let stack = Stack::start_with(|c| c.access_token_ttl = Duration::from_secs(5)).await;
    let code = code(&stack).await;
    let body = format!("code={code}&redirect_uri={}&grant_type=authorization_code", stack.app.redirect_uri);
    let (_, _, text) = token_call(&stack, Some(&basic(&stack)), &body).await;
    assert!(text.contains("\"expires_in\":5,"), "{text}");
}

/// Keystone v3 as the emulator answers it: a scoped token with its catalog, an unscoped one
/// without, and Keystone's 400 and 401.
#[tokio::test]
async fn keystone_tokens_are_scoped_unscoped_or_refused_as_keystone_does() {
    let stack = Stack::start().await;
    let base = stack.emu().base_url().to_owned();
    let (project, project_id) = stack.emu().keystone_project(LOGIN).unwrap();
    let ask = |doc: serde_json::Value| {
        let http = stack.http.clone();
        let url = format!("{base}/v3/auth/tokens");
        async move {
            let resp = http.post(url).json(&doc).send().await.unwrap();
            let token = resp.headers().get("x-subject-token").map(|v| v.to_str().unwrap().to_owned());
            (resp.status().as_u16(), token, resp.json::<serde_json::Value>().await.unwrap())
        }
    };
    let user = |domain: serde_json::Value, password: &str| serde_json::json!({ "methods": ["password"], "password": { "user": { "name": LOGIN, "domain": domain, "password": password } } });
    let scoped =
        ask(serde_json::json!({ "auth": { "identity": user(serde_json::json!({ "name": "Default" }), PASSWORD),
        "scope": { "project": { "name": project, "domain": { "id": "default" } } } } }))
        .await;
    assert_eq!(scoped.0, 201);
    assert!(scoped.1.is_some());
    assert_eq!(scoped.2["token"]["project"]["id"], project_id.as_str());
    let stores: Vec<&serde_json::Value> =
        scoped.2["token"]["catalog"].as_array().unwrap().iter().filter(|s| s["type"] == "object-store").collect();
    assert_eq!(stores.len(), 1);
    assert!(scoped.2["token"]["expires_at"].as_str().unwrap().ends_with(".000000Z"), "{}", scoped.2);
    let unscoped =
        ask(serde_json::json!({ "auth": { "identity": user(serde_json::json!({ "id": "default" }), PASSWORD) } }))
            .await;
    assert_eq!(unscoped.0, 201);
    assert!(
        unscoped.2["token"].get("catalog").is_none() && unscoped.2["token"].get("project").is_none(),
        "{}",
        unscoped.2
    );
    let wrong =
        ask(serde_json::json!({ "auth": { "identity": user(serde_json::json!({ "name": "Default" }), "nope") } }))
            .await;
    assert_eq!((wrong.0, wrong.2["error"]["code"].as_u64()), (401, Some(401)));
    let other_project =
        ask(serde_json::json!({ "auth": { "identity": user(serde_json::json!({ "name": "Default" }), PASSWORD),
        "scope": { "project": { "id": "0000" } } } }))
        .await;
    assert_eq!(other_project.0, 401);
    let no_domain = ask(serde_json::json!({ "auth": { "identity": { "methods": ["password"],
        "password": { "user": { "name": LOGIN, "password": PASSWORD } } } } }))
    .await;
    assert_eq!(no_domain.0, 400);
    assert_eq!(stack.emu().count("keystone_password"), 5);
}
