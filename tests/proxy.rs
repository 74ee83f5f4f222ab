//! Proxy mode end to end on port 0: gateway tokens, every verb, byte-exact paths, header rules,
//! transparent renewal on upstream 401 (replayed and 100-continue-gated bodies), failures.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::raw::{self, chunked, full};
use common::{header, Stack, KEY, LOGIN, USER};
use swiftgate::config::Mode;
use swiftgate::emulator::StorageConfig;

async fn proxy_stack() -> Stack {
    let stack = Stack::start_mode(Mode::Proxy, |_| {}).await;
    stack.register().await;
    stack
}

fn md5_hex(data: &[u8]) -> String {
    use md5::{Digest, Md5};
    hex::encode(Md5::digest(data))
}

fn pattern(len: usize, seed: u32) -> Bytes {
    (0..len as u32).map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8).collect::<Vec<u8>>().into()
}

#[tokio::test]
async fn auth_hands_out_gateway_urls_and_tokens() {
    let stack = proxy_stack().await;
    let account = stack.emu().swift_account(LOGIN).unwrap();
    let (url, token) = stack.storage_login().await;
    assert_eq!(url, format!("{}/v1/{account}", stack.gw.url));
    assert!(token.starts_with("SG1_"), "{token}");
    let again = stack.auth(USER, KEY).await;
    assert_eq!(header(&again, "x-auth-token"), token, "same token within its life");
    assert_eq!(header(&again, "x-storage-token"), token);
    let expires: u64 = header(&again, "x-auth-token-expires").parse().unwrap();
    assert!(expires > 86000 && expires <= 86400);
    // /info comes from upstream.
    let info: serde_json::Value =
        stack.http.get(format!("{}/info", stack.gw.url)).send().await.unwrap().json().await.unwrap();
    assert!(info["swift"]["max_file_size"].is_u64(), "{info}");
}

#[tokio::test]
async fn info_never_makes_the_gateway_call_the_provider() {
    // /info is anonymous: it is asked of the last known upstream, even with expired
    // credentials, and never renews them.
    let stack = proxy_stack().await;
    stack.storage_login().await;
    stack.clock.advance(std::time::Duration::from_secs(25 * 3600));
    stack.emu().reset_counters();
    let info: serde_json::Value =
        stack.http.get(format!("{}/info", stack.gw.url)).send().await.unwrap().json().await.unwrap();
    assert!(info["swift"]["max_file_size"].is_u64(), "{info}");
    assert_eq!((stack.emu().count("token_refresh_token"), stack.emu().count("credentials")), (0, 0));
}

#[tokio::test]
async fn every_verb_passes_through() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let t = [("x-auth-token", token.as_str())];
    let with = |extra: &[(&'static str, &'static str)]| {
        let mut h: Vec<(&str, &str)> = t.to_vec();
        h.extend_from_slice(extra);
        h
    };
    assert_eq!(raw::send("PUT", &format!("{url}/c1"), &t, full("")).await.status, 201);
    let data = pattern(200_000, 1);
    let put = raw::send(
        "PUT",
        &format!("{url}/c1/obj"),
        &with(&[("content-type", "text/x-test"), ("x-object-meta-colour", "blue")]),
        full(data.clone()),
    )
    .await;
    assert_eq!(put.status, 201);
    assert_eq!(put.header("etag"), md5_hex(&data));
    let head = raw::send("HEAD", &format!("{url}/c1/obj"), &t, full("")).await;
    assert_eq!(head.status, 200);
    assert_eq!(head.header("content-length"), "200000", "HEAD keeps the object's length");
    assert_eq!(head.header("x-object-meta-colour"), "blue");
    assert!(head.body.is_empty());
    let get = raw::send("GET", &format!("{url}/c1/obj"), &t, full("")).await;
    assert_eq!((get.status, get.header("content-type")), (200, "text/x-test"));
    assert_eq!(get.body, data);
    let range = raw::send("GET", &format!("{url}/c1/obj"), &with(&[("range", "bytes=10-19")]), full("")).await;
    assert_eq!((range.status, range.header("content-range")), (206, "bytes 10-19/200000"));
    assert_eq!(range.body, data.slice(10..20));
    let cond = raw::send(
        "GET",
        &format!("{url}/c1/obj"),
        &[("x-auth-token", &token), ("if-none-match", &md5_hex(&data))],
        full(""),
    )
    .await;
    assert_eq!(cond.status, 304);
    let post = raw::send("POST", &format!("{url}/c1/obj"), &with(&[("x-object-meta-colour", "red")]), full("")).await;
    assert_eq!(post.status, 202);
    let copy = raw::send("COPY", &format!("{url}/c1/obj"), &with(&[("destination", "c1/copied")]), full("")).await;
    assert_eq!(copy.status, 201);
    let copy2 = raw::send("PUT", &format!("{url}/c1/copied2"), &with(&[("x-copy-from", "c1/obj")]), full("")).await;
    assert_eq!(copy2.status, 201);
    let got = raw::send("GET", &format!("{url}/c1/copied2"), &t, full("")).await;
    assert_eq!((got.body.clone(), got.header("x-object-meta-colour")), (data.clone(), "red"));
    let chunks: Vec<Bytes> = (0..8).map(|i| pattern(70_000, i)).collect();
    let whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let ch = raw::send("PUT", &format!("{url}/c1/chunked"), &t, chunked(chunks)).await;
    assert_eq!((ch.status, ch.header("etag").to_owned()), (201, md5_hex(&whole)));
    let list = raw::send("GET", &format!("{url}/c1?format=json&prefix=co"), &t, full("")).await;
    let names: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&list.body)
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["copied", "copied2"]);
    let options = raw::send("OPTIONS", &format!("{url}/c1/obj"), &t, full("")).await;
    assert_eq!(options.status, 405, "upstream's answer passes through");
    assert_eq!(raw::send("DELETE", &format!("{url}/c1/obj"), &t, full("")).await.status, 204);
    assert_eq!(raw::send("GET", &format!("{url}/c1/obj"), &t, full("")).await.status, 404);
    let account = raw::send("HEAD", &url, &t, full("")).await;
    assert_eq!((account.status, account.header("x-account-container-count")), (204, "3"));
}

#[tokio::test]
async fn paths_and_queries_go_upstream_byte_for_byte() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let t = [("x-auth-token", token.as_str())];
    raw::send("PUT", &format!("{url}/p"), &t, full("")).await;
    let cases = [
        ("a%20b/%C3%BC%2Fc//d/", "a b/ü/c//d/"),
        ("a%2Fb", "a/b"),
        ("a//b", "a//b"),
        ("/lead", "/lead"),
        ("trail/", "trail/"),
        ("plus+sign", "plus+sign"),
        ("pct%2525", "pct%25"),
        ("q%3Fmark", "q?mark"),
        ("uni%C3%A9", "unié"),
        ("dots/../x", "dots/../x"),
    ];
    for (sent, _) in cases {
        let put = raw::send("PUT", &format!("{url}/p/{sent}"), &t, full(sent.as_bytes().to_vec())).await;
        assert_eq!(put.status, 201, "{sent}");
        let get = raw::send("GET", &format!("{url}/p/{sent}"), &t, full("")).await;
        assert_eq!(get.body, sent.as_bytes(), "{sent}");
    }
    let list = raw::send("GET", &format!("{url}/p?format=json"), &t, full("")).await;
    let mut names: Vec<String> = serde_json::from_slice::<Vec<serde_json::Value>>(&list.body)
        .unwrap()
        .iter()
        .map(|o| o["name"].as_str().unwrap().to_owned())
        .collect();
    names.sort();
    let mut want: Vec<String> = cases.iter().map(|(_, stored)| (*stored).to_owned()).collect();
    want.sort();
    assert_eq!(names, want);
    let bad = raw::send("PUT", &format!("{url}/p/bad%FF"), &t, full("x")).await;
    assert_eq!(bad.status, 412, "upstream's verdict on invalid UTF-8 passes through");
    // `+` in a query is a space; %2B is a plus.
    raw::send("PUT", &format!("{url}/p/plus%20space"), &t, full("x")).await;
    let space = raw::send("GET", &format!("{url}/p?prefix=plus+"), &t, full("")).await;
    assert_eq!(String::from_utf8_lossy(&space.body), "plus space\n");
    let plus = raw::send("GET", &format!("{url}/p?prefix=plus%2B"), &t, full("")).await;
    assert_eq!(String::from_utf8_lossy(&plus.body), "plus+sign\n");
}

#[tokio::test]
async fn gateway_tokens_are_checked() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let account_url = url.clone();
    for (tok, want) in [(Some("bogus"), 401), (Some("SG1_AAAA"), 401), (None, 401)] {
        let headers: Vec<(&str, &str)> = tok.map(|t| vec![("x-auth-token", t)]).unwrap_or_default();
        let resp = raw::send("GET", &account_url, &headers, full("")).await;
        assert_eq!(resp.status, want, "{tok:?}");
    }
    // X-Storage-Token works too.
    assert_eq!(raw::send("HEAD", &url, &[("x-storage-token", &token)], full("")).await.status, 204);
    // Another account's path.
    let other = format!("{}/v1/AUTH_0123456789abcdef0123456789abcdef/c", stack.gw.url);
    let resp = raw::send("GET", &other, &[("x-auth-token", &token)], full("")).await;
    assert_eq!(resp.status, 403);
    // A rejected upload with no Expect still gets its answer (the body is drained, no reset).
    let resp = raw::send("PUT", &format!("{url}/c/x"), &[("x-auth-token", "bogus")], full(pattern(3_000_000, 3))).await;
    assert_eq!(resp.status, 401);
    // Expired gateway token (24 h).
    stack.clock.advance(Duration::from_secs(86401));
    assert_eq!(raw::send("HEAD", &url, &[("x-auth-token", &token)], full("")).await.status, 401);
}

#[tokio::test]
async fn upstream_401s_are_renewed_and_retried_transparently() {
    // A 64 KiB replay buffer: small PUTs are kept and replayed, larger ones wait for 100.
    let stack = Stack::start_custom(Mode::Proxy, |_| {}, |c| c.proxy.replay_buffer = 64 * 1024).await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    let t = [("x-auth-token", token.as_str())];
    assert_eq!(raw::send("PUT", &format!("{url}/r"), &t, full("")).await.status, 201);
    let small = pattern(30_000, 5);
    let large = pattern(3_000_000, 6);
    let chunks: Vec<Bytes> = (0..20).map(|i| pattern(100_000, i)).collect();
    let chunked_whole: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
    let calls = stack.emu().count("credentials");
    type Step = (&'static str, &'static str, raw::Boxed, u16);
    let steps: Vec<(Step, Option<Vec<u8>>)> = vec![
        (("GET", "", full(""), 200), None),
        (("PUT", "/r/small", full(small.clone()), 201), Some(small.to_vec())),
        (("PUT", "/r/large", full(large.clone()), 201), Some(large.to_vec())),
        (("PUT", "/r/chunked", chunked(chunks.clone()), 201), Some(chunked_whole.clone())),
        (("DELETE", "/r/small", full(""), 204), None),
    ];
    for (i, ((method, path, body, want), content)) in steps.into_iter().enumerate() {
        stack.emu().revoke(false, true, false);
        let resp = raw::send(method, &format!("{url}{path}"), &t, body).await;
        assert_eq!(resp.status, want, "{method} {path}");
        assert_eq!(
            stack.emu().count("credentials"),
            calls + i as u64 + 1,
            "one renewal per revocation ({method} {path})"
        );
        if let Some(content) = content {
            let back = raw::send("GET", &format!("{url}{path}"), &t, full("")).await;
            assert!(back.body == content, "{path} content differs");
        }
    }
}

#[tokio::test]
async fn concurrent_401s_share_one_renewal() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    raw::send("PUT", &format!("{url}/c"), &[("x-auth-token", &token)], full("")).await;
    stack.emu().revoke(false, true, false);
    let calls = stack.emu().count("credentials");
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (url, token) = (url.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            raw::send("PUT", &format!("{url}/c/o{i}"), &[("x-auth-token", &token)], full(format!("body {i}")))
                .await
                .status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), 201);
    }
    assert_eq!(stack.emu().count("credentials"), calls + 1);
}

#[tokio::test]
async fn expiry_is_renewed_ahead_without_401() {
    let stack = Stack::start_mode(Mode::Proxy, |c| c.swift_token_ttl = Duration::from_secs(120)).await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    let storage_before = stack.emu().count("storage");
    for _ in 0..5 {
        stack.clock.advance(Duration::from_secs(121));
        assert_eq!(raw::send("HEAD", &url, &[("x-auth-token", &token)], full("")).await.status, 204);
    }
    // Each request found its credentials stale and renewed before going upstream: no 401 and
    // no retry, so exactly one upstream request each.
    assert_eq!(stack.emu().count("storage"), storage_before + 5);
}

#[tokio::test]
async fn header_rules_both_ways() {
    let echo = common::echo::start().await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (url, token) = stack.storage_login().await;
    assert_eq!(url, format!("{}/v1/AUTH_echo", stack.gw.url));
    // Headers that must arrive upstream unchanged, and headers that must not arrive at all.
    let kept = [
        ("x-object-meta-kept", "yes"),
        ("if-none-match", "*"),
        ("x-object-manifest", "c/segs/"),
        ("content-type", "application/x-test"),
        ("content-encoding", "gzip"),
        ("destination", "c/d"),
    ];
    let dropped = [
        ("connection", "x-client-hop"),
        ("x-client-hop", "secret"),
        ("x-forwarded-host", "evil.example"),
        ("x-cluster-client-ip", "6.6.6.6"),
        ("forwarded", "for=6.6.6.6"),
        ("proxy-authorization", "Basic eA=="),
    ];
    let mut sent = vec![("x-auth-token", token.as_str()), ("x-forwarded-for", "6.6.6.6")];
    sent.extend(kept);
    sent.extend(dropped);
    let resp = raw::send("PUT", &format!("{url}/c/o%2Fx?multipart-manifest=put&a=b+c"), &sent, full("hello")).await;
    assert_eq!(resp.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(seen["method"], "PUT");
    assert_eq!(seen["target"], "/v1/AUTH_echo/c/o%2Fx?multipart-manifest=put&a=b+c");
    let h = &seen["headers"];
    assert_eq!(h["x-auth-token"], common::echo::TOKEN, "the upstream token replaces the gateway's");
    assert_eq!(h["host"], echo.origin.trim_start_matches("http://"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    for (gone, _) in dropped {
        assert!(h.get(gone).is_none(), "{gone} must not reach upstream: {h}");
    }
    for (name, value) in kept.into_iter().chain([("content-length", "5")]) {
        assert_eq!(h[name], value, "{name}");
    }
    // Response side.
    assert_eq!(resp.header("location"), format!("{}/v1/AUTH_echo/c/moved", stack.gw.url));
    assert_eq!(resp.header("content-location"), "https://elsewhere.example/v1/x", "other origins are left alone");
    assert_eq!(resp.header("x-object-meta-kept"), "yes");
    assert_eq!(resp.header("x-resp-hop"), "");
    assert_eq!(resp.header("keep-alive"), "");
}

/// A proxy stack whose user has logged in (storage URL and token returned), after which the
/// emulator, and with it the storage, went away.
async fn logged_in_with_upstream_down() -> (Stack, String, String) {
    let mut stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let placeholder = swiftgate::emulator::Emulator::start(
        swiftgate::emulator::EmulatorConfig::default(),
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    std::mem::replace(&mut stack.emulator, placeholder).stop().await;
    (stack, url, token)
}

#[tokio::test]
async fn upstream_down_is_a_swift_style_503() {
    let (_stack, url, token) = logged_in_with_upstream_down().await;
    let resp = raw::send("GET", &url, &[("x-auth-token", &token)], full("")).await;
    assert_eq!(resp.status, 503);
    assert!(String::from_utf8_lossy(&resp.body).starts_with("<html><h1>Service Unavailable</h1>"));
}

#[tokio::test]
async fn an_upload_to_a_down_upstream_gets_its_503_not_a_reset() {
    // The review's case, as python-swiftclient's http.client sends: the whole body, and only
    // then a read. The gateway drains the body it did not send so the client reads the 503, as
    // it does when upstream answers before taking the body.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (_stack, url, token) = logged_in_with_upstream_down().await;
    let uri: http::Uri = url.parse().unwrap();
    let body = pattern(11_000_000, 3);
    let mut s = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str()).await.unwrap();
    let head = format!(
        "PUT {}/default/o HTTP/1.1\r\nhost: gw\r\nx-auth-token: {token}\r\ncontent-length: {}\r\n\r\n",
        uri.path(),
        body.len()
    );
    let exchange = async {
        s.write_all(head.as_bytes()).await?;
        s.write_all(&body).await?;
        let mut answer = vec![0u8; 12];
        s.read_exact(&mut answer).await?;
        Ok::<_, std::io::Error>(answer)
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(60), exchange).await.expect("no answer in 60 s");
    let answer = answer.expect("an answer, not a broken connection");
    assert_eq!(String::from_utf8_lossy(&answer), "HTTP/1.1 503");
}

#[tokio::test]
async fn a_bad_token_gets_its_401_before_any_100_continue() {
    // swift-protocol §3.1: a client that sends `Expect: 100-continue` with a token the gateway
    // refuses reads the 401 at once, without a `100 Continue` first and without sending its body.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = proxy_stack().await;
    let (url, _) = stack.storage_login().await;
    let uri: http::Uri = url.parse().unwrap();
    let mut s = tokio::net::TcpStream::connect(uri.authority().unwrap().as_str()).await.unwrap();
    let head = format!(
        "PUT {}/default/o HTTP/1.1\r\nhost: gw\r\nx-auth-token: SG1_bogus\r\nexpect: 100-continue\r\ncontent-length: 1000000\r\n\r\n",
        uri.path()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = vec![0u8; 12];
    tokio::time::timeout(std::time::Duration::from_secs(30), s.read_exact(&mut answer))
        .await
        .expect("an answer without the body")
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&answer), "HTTP/1.1 401");
}

#[tokio::test]
async fn an_upload_refused_before_100_gets_its_answer_not_a_reset() {
    // Found by the compatibility suite: Swift answers 413 to a too-large PUT before asking for
    // the body; a client that sent no Expect must read that 413, so the gateway drains the body.
    let stack = Stack::start_mode(Mode::Proxy, |c| {
        c.storage = StorageConfig::BuiltIn { data_dir: None, max_file_size: 10 * 1024 * 1024 };
    })
    .await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    let resp = raw::try_send(
        "PUT",
        &format!("{url}/default/too-big"),
        &[("x-auth-token", &token)],
        full(pattern(11_000_000, 9)),
    )
    .await
    .expect("an answer, not a broken connection");
    assert_eq!(resp.status, 413);
}

#[tokio::test]
async fn info_beside_a_prefixed_storage_path_comes_from_upstream() {
    // An upstream mounted under /swift: its storage URL is /swift/v1/AUTH_…, and
    // python-swiftclient asks for /info beside /v1, at /swift/info.
    let echo = common::echo::start_under("/swift").await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (url, _) = stack.storage_login().await;
    assert!(url.ends_with("/swift/v1/AUTH_echo"), "{url}");
    let resp = raw::send("GET", &format!("{}/swift/info", stack.gw.url), &[], full("")).await;
    assert_eq!(resp.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(seen["target"], "/swift/info", "asked of upstream beside its /v1");
}

#[tokio::test]
async fn anonymous_requests_go_upstream_without_credentials() {
    // tempurl, formpost and public containers carry no token: they are forwarded to the
    // account's last known upstream as they are, without the upstream token.
    let echo = common::echo::start().await;
    let mut stack = Stack::in_front_of(&echo.origin).await;
    let url = format!("{}/v1/AUTH_echo/c/o?temp_url_sig=abc&temp_url_expires=1", stack.gw.url);
    // After a restart nothing is cached until the start-up warm-up (what `serve` runs) has run.
    stack.restart_gateway().await;
    assert_eq!(raw::send("GET", &url, &[], full("")).await.status, 401, "no known upstream yet");
    stack.gw.gateway.tokens().clone().warm_up().await;
    let resp = raw::send("GET", &url, &[], full("")).await;
    assert_eq!(resp.status, 200);
    let seen: serde_json::Value = serde_json::from_slice(&resp.body).unwrap();
    assert_eq!(seen["target"], "/v1/AUTH_echo/c/o?temp_url_sig=abc&temp_url_expires=1");
    assert!(seen["headers"].get("x-auth-token").is_none(), "no credentials added: {seen}");
    // A refused token (as after a failed renewal, HubiC down) empties the cache; anonymous
    // requests need only the target, and keep it.
    let tokens = stack.gw.gateway.tokens().clone();
    let held = tokens.cached_for_path("/v1/AUTH_echo/c/o").expect("a target");
    tokens.invalidate("alice", &held.creds.token);
    assert_eq!(raw::send("GET", &url, &[], full("")).await.status, 200, "the target is kept");
}

/// Swift allows 90 metadata items on an account, a container or an object, and answers them
/// with a dozen fields of its own: more than hyper's default 100 fields, in both directions.
/// Each head is asked of both engines: the fast path (a plain `GET`/`HEAD`) and hyper's (the
/// same with `Content-Length: 0`, which the fast path hands over, as Python's http.client sends).
#[tokio::test]
async fn ninety_metadata_items_pass_both_engines_both_ways() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let meta = |kind: &str| -> Vec<(String, String)> {
        (0..90).map(|i| (format!("x-{kind}-meta-item{i:02}"), format!("value {i}"))).collect()
    };
    // Over 100 request fields: the 90 items and twenty more the upstream ignores.
    let padding: Vec<(String, String)> = (0..20).map(|i| (format!("x-padding-{i:02}"), "p".to_owned())).collect();
    let send = |method: &'static str, target: String, kind: &'static str, extra: Vec<(String, String)>| {
        let token = token.clone();
        async move {
            let mut h: Vec<(String, String)> = vec![("x-auth-token".into(), token)];
            h.extend(extra);
            let refs: Vec<(&str, &str)> = h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let answer = raw::send(method, &target, &refs, full("")).await;
            (kind, answer)
        }
    };
    let zero = ("content-length".to_owned(), "0".to_owned());
    let with_meta = |kind| meta(kind).into_iter().chain(padding.clone()).chain([zero.clone()]).collect::<Vec<_>>();
    assert_eq!(send("POST", url.clone(), "account", with_meta("account")).await.1.status, 204);
    assert_eq!(send("PUT", format!("{url}/many"), "container", with_meta("container")).await.1.status, 201);
    assert_eq!(send("PUT", format!("{url}/many/obj"), "object", with_meta("object")).await.1.status, 201);
    for (target, kind) in
        [(url.clone(), "account"), (format!("{url}/many"), "container"), (format!("{url}/many/obj"), "object")]
    {
        for method in ["HEAD", "GET"] {
            for hyper_engine in [false, true] {
                let before = stack.gw.fast_answers();
                let extra = if hyper_engine { vec![zero.clone()] } else { Vec::new() };
                let (_, answer) = send(method, target.clone(), kind, extra).await;
                let engine = if hyper_engine { "hyper" } else { "fast" };
                assert!(answer.status / 100 == 2, "{method} {kind} on {engine}: {}", answer.status);
                let items =
                    answer.headers.keys().filter(|k| k.as_str().starts_with(&format!("x-{kind}-meta-"))).count();
                assert_eq!(items, 90, "{method} {kind} on {engine}");
                assert!(answer.headers.len() > 90, "{method} {kind} on {engine}");
                let fast = !hyper_engine && common::fast_engine();
                assert_eq!(stack.gw.fast_answers() - before, u64::from(fast), "{method} {kind} on {engine}");
            }
        }
    }
}

/// `Transfer-Encoding: gzip, chunked` would have the compressed bytes stored as the object:
/// Swift's 501, on either engine, and nothing stored.
#[tokio::test]
async fn a_transfer_coding_other_than_chunked_gets_501_and_stores_nothing() {
    let stack = proxy_stack().await;
    let (url, token) = stack.storage_login().await;
    let t = [("x-auth-token", token.as_str())];
    let gz = [("x-auth-token", token.as_str()), ("transfer-encoding", "gzip, chunked")];
    let put = raw::send("PUT", &format!("{url}/default/gz"), &gz, chunked(vec![pattern(1000, 3)])).await;
    assert_eq!(put.status, 501, "{:?}", put.body);
    assert_eq!(raw::send("GET", &format!("{url}/default/gz"), &t, full("")).await.status, 404);
    let plain = raw::send("PUT", &format!("{url}/default/plain"), &t, chunked(vec![pattern(1000, 3)])).await;
    assert_eq!(plain.status, 201, "chunked alone passes");
}
