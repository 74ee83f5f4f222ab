//! The proxy's fast path (`src/proxy/fast.rs`): the storage GETs and HEADs it answers itself,
//! what it leaves to the proxy on the same connection, and that a client cannot tell the two
//! apart. `RunningGateway::fast_answers` tells which path answered.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::Stack;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1::SendRequest;
use md5::Digest;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a test waits for an answer the gateway owes it.
const DEADLINE: Duration = Duration::from_secs(10);

/// The storage path of a logged-in stack's user, and the gateway token.
async fn login(stack: &Stack) -> (String, String) {
    let (url, token) = stack.storage_login().await;
    (url.strip_prefix(&stack.gw.url).unwrap().to_owned(), token)
}

/// A logged-in stack in front of the pattern upstream (`common::pattern`): the pattern's
/// chunks, the upstream (to keep it), the stack, the storage path and the token.
async fn pattern_stack() -> (Arc<Vec<Bytes>>, common::Served, Stack, String, String) {
    let parts = common::pattern::chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let stack = Stack::in_front_of(&upstream.origin).await;
    let (path, token) = login(&stack).await;
    (parts, upstream, stack, path, token)
}

/// Answers from the fast path since `login` (whose own answer it gave).
fn fast_since_login(stack: &Stack) -> u64 {
    stack.gw.fast_answers() - 1
}

/// Reads `count` answers from `stream`, each framed by its `Content-Length`: (head, body).
async fn answers(stream: &mut TcpStream, count: usize) -> Vec<(String, Vec<u8>)> {
    let read = async {
        let (mut buf, mut got) = (Vec::new(), Vec::new());
        loop {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
                let length = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
                let length: usize = length.map_or(0, |h| std::str::from_utf8(h.value).unwrap().parse().unwrap());
                if buf.len() >= n + length {
                    got.push((String::from_utf8_lossy(&buf[..n]).into_owned(), buf[n..n + length].to_vec()));
                    buf.drain(..n + length);
                    if got.len() == count {
                        return got;
                    }
                    continue;
                }
            }
            let mut chunk = [0u8; 8192];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0, "the connection closed after {} answers of {count}", got.len());
            buf.extend_from_slice(&chunk[..n]);
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("the answers in time")
}

/// True once `stream` ends (within the deadline).
async fn ends(stream: &mut TcpStream) -> bool {
    matches!(tokio::time::timeout(DEADLINE, stream.read(&mut [0u8; 64])).await, Ok(Ok(0)) | Ok(Err(_)))
}

/// One HTTP/1 connection to the gateway, through hyper's client.
async fn connection(stack: &Stack) -> SendRequest<Empty<Bytes>> {
    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(stack.gw.addr).await.unwrap());
    let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    send
}

/// Sends `method path` with the token on `send`'s connection: status and body.
async fn ask(send: &mut SendRequest<Empty<Bytes>>, method: &str, path: &str, token: &str) -> (u16, Bytes) {
    let req =
        http::Request::builder().method(method).uri(path).header("x-auth-token", token).body(Empty::new()).unwrap();
    let exchange = async {
        let resp = send.send_request(req).await.unwrap();
        (resp.status().as_u16(), resp.into_body().collect().await.unwrap().to_bytes())
    };
    tokio::time::timeout(DEADLINE, exchange).await.expect("an answer in time")
}

#[tokio::test]
async fn pipelined_gets_are_answered_in_order_with_upstreams_head_as_written() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let get = |n: u32| format!("GET {path}/kept/{n} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(format!("{}{}{}", get(1), get(2), get(3)).as_bytes()).await.unwrap();
    for (head, body) in answers(&mut client, 3).await {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        // hyper would have written the name in lower case.
        assert!(head.contains("\r\nContent-Length: 2\r\n"), "{head}");
        assert_eq!(body, b"ok");
    }
    assert_eq!(fast_since_login(&stack), 3);
    assert_eq!(faulty.storage_connections.load(Ordering::SeqCst), 1, "one upstream connection, kept");
}

#[tokio::test]
async fn large_bodies_go_whole_both_ways_and_the_connection_goes_on() {
    let (parts, _upstream, stack, path, token) = pattern_stack().await;
    // An odd length, so the last splice and the last read are short ones; the pattern catches
    // a byte lost, repeated or out of place.
    let len = 24 * common::pattern::MIB + 5;
    let put = stack.http.put(format!("{}{path}/c/big", stack.gw.url)).header("x-auth-token", &token);
    assert_eq!(put.body(vec![0u8; len as usize]).send().await.unwrap().status(), 201);
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let get = |name: &str| format!("GET {path}/c/{name} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(format!("{}{}{}", get("big"), get("big"), get("missing")).as_bytes()).await.unwrap();
    let got = answers(&mut client, 3).await;
    for (head, body) in &got[..2] {
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert_eq!(body.len() as u64, len);
        assert_eq!(hex::encode(md5::Md5::digest(body)), common::pattern::expected_md5(len, &parts));
    }
    assert!(got[2].0.starts_with("HTTP/1.1 404 Not Found\r\n"), "{}", got[2].0);
    assert_eq!(fast_since_login(&stack), 4, "the upload and the three GETs");
    assert_eq!(stack.gw.spliced_answers(), 1, "the upload's body; downloads are copied");
}

#[tokio::test]
async fn a_slow_reader_of_a_large_body_is_not_taken_for_a_stalled_one() {
    // The stall cut must see the download's writes, or it cuts a download the client is
    // reading.
    let (_, _upstream, stack, path, token) = pattern_stack().await;
    let len = 32 * common::pattern::MIB;
    let put = stack.http.put(format!("{}{path}/c/big", stack.gw.url)).header("x-auth-token", &token);
    assert_eq!(put.body(vec![0u8; len as usize]).send().await.unwrap().status(), 201);
    let options = swiftgate::server::ServeOptions {
        idle_close: Duration::from_millis(50),
        stall_cut: Duration::from_millis(300),
        ..Default::default()
    };
    let (addr, stop, task) = common::serve_gateway(stack.gw.gateway.clone(), options).await;
    let mut client = TcpStream::connect(addr).await.unwrap();
    let get = format!("GET {path}/c/big HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(get.as_bytes()).await.unwrap();
    let read = async {
        let (mut got, mut chunk) = (0u64, vec![0u8; 64 * 1024]);
        let mut next_pause = 0;
        loop {
            match client.read(&mut chunk).await {
                Ok(0) | Err(_) => return got,
                Ok(n) => got += n as u64,
            }
            if got >= next_pause {
                // Workload shaping, not synchronisation: a reader of about 20 MiB/s, so the
                // download lasts several stall periods while it never stalls for one.
                tokio::time::sleep(Duration::from_millis(100)).await;
                next_pause += 2 * common::pattern::MIB;
            }
            if got > len {
                return got;
            }
        }
    };
    let got = tokio::time::timeout(Duration::from_secs(30), read).await.expect("the download in time");
    assert!(got > len, "the whole body came ({got} bytes with the head)");
    assert_eq!(stack.gw.spliced_answers(), 1, "the upload");
    let _ = stop.send(());
    task.await.unwrap();
}

#[tokio::test]
async fn upstream_going_quiet_mid_body_cuts_the_download_after_the_idle_timeout() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of_with(&faulty.origin, |c| c.proxy.idle_timeout = 1).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let get = format!("GET {path}/stall/x HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(get.as_bytes()).await.unwrap();
    let read = async {
        let (mut got, mut chunk) = (0usize, vec![0u8; 64 * 1024]);
        while let Ok(n @ 1..) = client.read(&mut chunk).await {
            got += n;
        }
        got
    };
    let got = tokio::time::timeout(DEADLINE, read).await.expect("the connection cut, not held");
    assert!((1_000_000..10_000_000).contains(&got), "{got} bytes: the part sent, then the cut");
}

/// A PUT of `len` bytes of the pattern to `object`, head and body.
fn pattern_put(object: &str, token: &str, len: u64, parts: &[Bytes]) -> Vec<u8> {
    let mut sent = common::put_head(object, token, len).into_bytes();
    common::pattern::pieces(len, parts).for_each(|piece| sent.extend_from_slice(piece));
    sent
}

/// Checks that the answer `head` says upstream stored `len` bytes of the pattern whole: a 201
/// whose ETag is the pattern's MD5.
fn assert_stored_whole(head: &str, len: u64, parts: &[Bytes]) {
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    let md5 = common::pattern::expected_md5(len, parts);
    assert!(head.to_ascii_lowercase().contains(&format!("etag: {md5}\r\n")), "{head}");
}

/// Sends a PUT of `len` bytes of the pattern to `object` on `client` in one write, and checks
/// that upstream stored it whole.
async fn put_pattern_whole(client: &mut TcpStream, object: &str, token: &str, len: u64, parts: &[Bytes]) {
    client.write_all(&pattern_put(object, token, len, parts)).await.unwrap();
    assert_stored_whole(&answers(client, 1).await.remove(0).0, len, parts);
}

#[tokio::test]
async fn large_uploads_go_from_socket_to_socket_whole_and_the_connection_goes_on() {
    let (parts, _upstream, stack, path, token) = pattern_stack().await;
    // Past the 4 MiB replay buffer, an odd length; then a GET of it on the same connection,
    // sent behind the body before any answer is read.
    let len = 9 * common::pattern::MIB + 3;
    let mut sent = pattern_put(&format!("{path}/c/up"), &token, len, &parts);
    sent.extend_from_slice(format!("GET {path}/c/up HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n").as_bytes());
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    client.write_all(&sent).await.unwrap();
    let got = answers(&mut client, 2).await;
    assert_stored_whole(&got[0].0, len, &parts);
    let md5 = common::pattern::expected_md5(len, &parts);
    assert_eq!(hex::encode(md5::Md5::digest(&got[1].1)), md5, "the object came back as sent");
    assert_eq!(fast_since_login(&stack), 2);
    assert_eq!(stack.gw.spliced_answers(), 1, "the upload's body");
    // One of the replay buffer's size is kept while it goes, not spliced; so is an empty one.
    for (name, len) in [("small", 4 << 20), ("empty", 0)] {
        put_pattern_whole(&mut client, &format!("{path}/c/{name}"), &token, len, &parts).await;
    }
    assert_eq!((fast_since_login(&stack), stack.gw.spliced_answers()), (4, 1));
}

#[tokio::test]
async fn an_upload_whose_body_came_with_its_head_goes_whole_past_a_zero_replay_buffer() {
    // Nothing kept for a replay: even a few bytes wait behind `Expect`, and when the whole
    // body came in the head's read there is nothing left to splice.
    let parts = common::pattern::chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let stack = Stack::in_front_of_with(&upstream.origin, |c| c.proxy.replay_buffer = 0).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    put_pattern_whole(&mut client, &format!("{path}/c/tiny"), &token, 5, &parts).await;
    assert_eq!((fast_since_login(&stack), stack.gw.spliced_answers()), (1, 0));
}

#[tokio::test]
async fn an_upload_whose_token_upstream_refuses_goes_to_the_proxy_before_its_body_is_read() {
    let stack = Stack::start_mode(swiftgate::config::Mode::Proxy, |_| {}).await;
    stack.register().await;
    let (path, token) = login(&stack).await;
    let container = stack.http.put(format!("{}{path}/c", stack.gw.url)).header("x-auth-token", &token);
    assert_eq!(container.send().await.unwrap().status(), 201);
    // Upstream refuses the cached token: a large body was not asked for yet, a small one was
    // kept; either way the proxy gets the whole request, renews and sends it once.
    for len in [5u32 << 20, 1 << 20] {
        let (renewals, fast) = (stack.emu().count("credentials"), stack.gw.fast_answers());
        stack.emu().revoke(false, true, false);
        let body: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
        client.write_all(common::put_head(&format!("{path}/c/{len}"), &token, len.into()).as_bytes()).await.unwrap();
        client.write_all(&body).await.unwrap();
        let got = answers(&mut client, 1).await;
        assert!(got[0].0.starts_with("HTTP/1.1 201 Created\r\n"), "{}", got[0].0);
        assert_eq!(stack.emu().count("credentials"), renewals + 1, "one renewal");
        assert_eq!(stack.gw.fast_answers(), fast, "declined, then answered by the proxy");
        let back = stack.http.get(format!("{}{path}/c/{len}", stack.gw.url)).header("x-auth-token", &token);
        assert!(back.send().await.unwrap().bytes().await.unwrap() == body, "stored as sent");
    }
}

#[tokio::test]
async fn a_client_that_breaks_off_a_spliced_upload_is_cut_and_nothing_is_stored() {
    let (_, _upstream, stack, path, token) = pattern_stack().await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    client.write_all(common::put_head(&format!("{path}/c/part"), &token, 16 << 20).as_bytes()).await.unwrap();
    client.write_all(&vec![1u8; 6 << 20]).await.unwrap();
    client.shutdown().await.unwrap();
    assert!(ends(&mut client).await, "the gateway ends the connection");
    let head = stack.http.head(format!("{}{path}/c/part", stack.gw.url)).header("x-auth-token", &token);
    assert_eq!(head.send().await.unwrap().status(), 404, "no object from a part of a body");
    assert_eq!(stack.gw.spliced_answers(), 0);
}

/// A PUT of `len` bytes to the faulty upstream's `dir/o`, through a gateway whose expect
/// timeout is 1 s, sent whole before its answer is read: the upstream and the stack (to keep
/// them), the answer's head and the connection.
async fn put_to_faulty(dir: &str, len: u64) -> (common::faulty::Faulty, Stack, String, TcpStream) {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of_with(&faulty.origin, |c| c.proxy.expect_timeout = 1).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    client.write_all(common::put_head(&format!("{path}/{dir}/o"), &token, len).as_bytes()).await.unwrap();
    client.write_all(&vec![2u8; len as usize]).await.unwrap();
    let head = answers(&mut client, 1).await.remove(0).0;
    (faulty, stack, head, client)
}

#[tokio::test]
async fn an_upstream_that_never_asks_for_the_body_gets_it_after_the_expect_timeout() {
    // Its `100`, come after the body, is passed over for the answer behind it.
    let (_faulty, stack, head, _) = put_to_faulty("late100", 5 << 20).await;
    assert!(head.starts_with("HTTP/1.1 201 Created\r\n"), "{head}");
    assert!(head.contains(&format!("X-Received: {}\r\n", 5 << 20)), "{head}");
    assert_eq!((fast_since_login(&stack), stack.gw.spliced_answers()), (1, 1));
}

#[tokio::test]
async fn an_upstream_that_breaks_off_a_spliced_upload_gets_the_client_a_502() {
    // It resets after about 1 MB of the body; the client, sending all before it reads, still
    // reads the 502.
    // 64 MiB is more than the sockets' buffers hold: unless the gateway reads and discards
    // the rest, the client's send fails.
    let (_faulty, stack, head, mut client) = put_to_faulty("c", 64 << 20).await;
    assert!(head.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{head}");
    assert!(head.contains("connection: close\r\n"), "{head}");
    assert!(ends(&mut client).await);
    assert_eq!(stack.gw.spliced_answers(), 0);
}

#[tokio::test]
async fn a_connection_goes_on_through_the_proxy_after_an_answer_the_fast_path_leaves() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/1"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(fast_since_login(&stack), 1);
    // A chunked answer: the fast path hands the connection, and the request, to hyper.
    assert_eq!(ask(&mut send, "GET", &format!("{path}/chunked/a"), &token).await, (200, Bytes::from("hello")));
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/2"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/3"), "AUTH_bad").await.0, 401);
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/4"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(fast_since_login(&stack), 1, "hyper serves the connection from the hand-over on");
}

#[tokio::test]
async fn requests_the_fast_path_leaves_are_answered_by_the_proxy() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    // A bad token, then a storage path of another account: each on a connection of its own.
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/1"), "AUTH_bad").await.0, 401);
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "GET", "/v1/AUTH_other/kept/1", &token).await.0, 403);
    assert_eq!(fast_since_login(&stack), 0);
}

#[tokio::test]
async fn a_silent_upstream_gets_a_504_and_the_connection_goes_on() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of_with(&faulty.origin, |c| c.proxy.header_timeout = 1).await;
    let (path, token) = login(&stack).await;
    let mut send = connection(&stack).await;
    let (status, page) = ask(&mut send, "GET", &format!("{path}/silent/x"), &token).await;
    assert_eq!(status, 504);
    assert!(page.starts_with(b"<html><h1>Gateway Timeout</h1>"), "{page:?}");
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/1"), &token).await, (200, Bytes::from("ok")));
    // A HEAD's 504 carries no body: the next answer on the connection is read as itself.
    assert_eq!(ask(&mut send, "HEAD", &format!("{path}/silent/y"), &token).await, (504, Bytes::new()));
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/2"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(fast_since_login(&stack), 4);
}

#[tokio::test]
async fn fields_are_dropped_and_added_as_by_the_proxy_whatever_their_case() {
    let echo = common::echo::start().await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let head = format!(
        "GET {path}/plain/o%2Fx?format=json&a=b+c HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\
         X-Auth-User: alice\r\nX-Auth-Key: alice-key\r\nAuthorization: Basic eA==\r\nForwarded: for=6.6.6.6\r\n\
         X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-Proto: gopher\r\nProxy-Authorization: Basic eA==\r\nTE: trailers\r\n\
         Keep-Alive: timeout=5\r\nConnection: Keep-Alive\r\nX-Object-Meta-Kept: yes\r\nIf-None-Match: *\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let (answer, body) = answers(&mut client, 1).await.remove(0);
    assert_eq!(fast_since_login(&stack), 1);
    let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(seen["target"], format!("{path}/plain/o%2Fx?format=json&a=b+c"));
    let h = &seen["headers"];
    assert_eq!(h["x-auth-token"], common::echo::TOKEN, "the upstream token replaces the gateway's");
    assert_eq!(h["host"], echo.origin.trim_start_matches("http://"));
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    for gone in ["x-auth-user", "x-auth-key", "authorization", "forwarded", "proxy-authorization", "te", "keep-alive"] {
        assert!(h.get(gone).is_none(), "{gone} must not reach upstream: {h}");
    }
    assert_eq!((&h["x-object-meta-kept"], &h["if-none-match"]), (&"yes".into(), &"*".into()));
    let answer = answer.to_ascii_lowercase();
    assert!(answer.contains(&format!("\r\nlocation: {}/v1/auth_echo/c/moved\r\n", stack.gw.url)), "{answer}");
    assert!(answer.contains("\r\ncontent-location: https://elsewhere.example/v1/x\r\n"), "{answer}");
    // Upstream's hop-by-hop fields stay upstream; the client's `Connection: Keep-Alive` is
    // answered in kind, as Swift answers it.
    assert!(!answer.contains("\r\nkeep-alive:"), "hop-by-hop fields stay upstream: {answer}");
    assert_eq!(answer.matches("\r\nconnection:").count(), 1, "{answer}");
    assert!(answer.contains("\r\nconnection: keep-alive\r\n"), "{answer}");
}

#[tokio::test]
async fn head_answers_carry_no_body() {
    let echo = common::echo::start().await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (path, token) = login(&stack).await;
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "HEAD", &format!("{path}/plain/a"), &token).await, (200, Bytes::new()));
    let (status, body) = ask(&mut send, "GET", &format!("{path}/plain/b"), &token).await;
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["method"], "GET");
    assert_eq!(fast_since_login(&stack), 2);
}

#[tokio::test]
async fn connection_close_is_answered_in_kind_and_kept() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let head = format!("GET {path}/kept/1 HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nConnection: close\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let (answer, body) = answers(&mut client, 1).await.remove(0);
    assert!(answer.contains("\r\nconnection: close\r\n"), "{answer}");
    assert_eq!(body, b"ok");
    assert!(ends(&mut client).await, "the gateway closes the connection");
    assert_eq!(fast_since_login(&stack), 1);
}

#[tokio::test]
async fn shutdown_ends_an_idle_fast_path_connection_at_once() {
    let faulty = common::faulty::start().await;
    let mut stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let head = format!("GET {path}/kept/1 HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    assert_eq!(answers(&mut client, 1).await[0].1, b"ok");
    assert_eq!(fast_since_login(&stack), 1);
    // The drain gives connections 10 s; an idle one must not hold it up.
    let halted = tokio::time::timeout(Duration::from_secs(5), stack.gw.halt()).await;
    assert!(halted.is_ok(), "the server's drain waited for an idle connection");
    assert!(ends(&mut client).await, "the idle connection is closed");
}

#[tokio::test]
async fn auth_and_info_on_a_connection_keep_it_on_the_fast_path() {
    let echo = common::echo::start().await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (path, _) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let auth = format!(
        "GET /auth/v1.0 HTTP/1.1\r\nHost: gw\r\nX-Auth-User: {}\r\nX-Auth-Key: {}\r\n\r\n",
        common::USER,
        common::KEY
    );
    client.write_all(auth.as_bytes()).await.unwrap();
    let (answer, _) = answers(&mut client, 1).await.remove(0);
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    let token = answer.lines().find_map(|l| l.strip_prefix("x-auth-token: ")).expect("a token").to_owned();
    assert!(answer.contains(&format!("\r\nx-storage-url: {}{path}\r\n", stack.gw.url)), "{answer}");
    let requests = format!(
        "GET /info HTTP/1.1\r\nHost: gw\r\n\r\nGET {path}/plain/a HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n\
         GET /auth/v1.0 HTTP/1.1\r\nHost: gw\r\nX-Auth-User: {}\r\nX-Auth-Key: wrong\r\n\r\n",
        common::USER
    );
    client.write_all(requests.as_bytes()).await.unwrap();
    let got = answers(&mut client, 3).await;
    assert!(got[0].0.starts_with("HTTP/1.1 200 OK\r\n"), "/info: {}", got[0].0);
    let seen: serde_json::Value = serde_json::from_slice(&got[1].1).unwrap();
    assert_eq!(seen["target"], format!("{path}/plain/a"));
    assert!(got[2].0.starts_with("HTTP/1.1 401 Unauthorized\r\n"), "{}", got[2].0);
    assert_eq!(fast_since_login(&stack), 4, "the connection never went to hyper");
}

#[tokio::test]
async fn a_stray_answer_upstream_sends_with_its_own_is_never_taken_for_the_next() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "HEAD", &format!("{path}/extra/1"), &token).await, (200, Bytes::new()));
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/2"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(faulty.storage_connections.load(Ordering::SeqCst), 2, "the connection that sent it is dropped");
}

#[tokio::test]
async fn a_stray_answer_upstream_sends_later_is_never_taken_for_the_next() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut send = connection(&stack).await;
    assert_eq!(ask(&mut send, "HEAD", &format!("{path}/late/1"), &token).await, (200, Bytes::new()));
    // The stray answer now waits in the parked connection's socket.
    faulty.late.0.notify_one();
    tokio::time::timeout(DEADLINE, faulty.late.1.notified()).await.expect("the stray answer sent");
    assert_eq!(ask(&mut send, "GET", &format!("{path}/kept/2"), &token).await, (200, Bytes::from("ok")));
    assert_eq!(faulty.storage_connections.load(Ordering::SeqCst), 2, "the connection that sent it is dropped");
    assert_eq!(fast_since_login(&stack), 2);
}

#[tokio::test]
async fn a_head_over_the_limit_gets_hypers_431() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
    let big = "m".repeat(swiftgate::server::MAX_HEAD);
    let head =
        format!("GET {path}/kept/1 HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nX-Object-Meta-Big: {big}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let (answer, _) = answers(&mut client, 1).await.remove(0);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    assert_eq!(fast_since_login(&stack), 0);
}

/// The head of the next answer on `stream`, whatever its framing.
async fn next_head(stream: &mut TcpStream) -> String {
    let read = async {
        let mut buf = Vec::new();
        while !buf.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8; 1];
            assert_eq!(stream.read(&mut byte).await.unwrap(), 1, "the connection closed within a head");
            buf.push(byte[0]);
        }
        String::from_utf8_lossy(&buf).into_owned()
    };
    tokio::time::timeout(DEADLINE, read).await.expect("a head in time")
}

/// What Swift's functional tests compare, the same on both engines (a request with
/// `Content-Length: 0` goes to hyper's): upstream's field names in the case upstream wrote
/// them, Swift's codes for paths that name no account, start with an empty segment or are not
/// UTF-8, the account as a 401's realm, and `Connection: keep-alive` answered in kind.
#[tokio::test]
async fn both_engines_answer_field_case_paths_and_realms_as_swift_does() {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (path, token) = login(&stack).await;
    for (engine, extra) in [("fast", ""), ("hyper", "Content-Length: 0\r\n")] {
        let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
        for (method, target, auth, status) in [
            ("GET", format!("{path}/cased/o"), token.as_str(), "200 OK"),
            ("HEAD", format!("{path}/cased/o"), token.as_str(), "200 OK"),
            ("GET", "/v1".to_owned(), token.as_str(), "412 Precondition Failed"),
            ("GET", "/v1/".to_owned(), token.as_str(), "412 Precondition Failed"),
            ("HEAD", format!("/{path}/kept/o"), token.as_str(), "404 Not Found"),
            ("GET", "/v1/AUTH_other/kept/o".to_owned(), token.as_str(), "403 Forbidden"),
            ("GET", format!("{path}/kept/o"), "AUTH_bad", "401 Unauthorized"),
        ] {
            let head = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {auth}\r\n{extra}\r\n");
            client.write_all(head.as_bytes()).await.unwrap();
            let answer = next_head(&mut client).await;
            let what = format!("{method} {target} on {engine}: {answer}");
            assert!(answer.starts_with(&format!("HTTP/1.1 {status}\r\n")), "{what}");
            let length = answer.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().unwrap())
            });
            if method == "GET" {
                let mut body = vec![0u8; length.expect("a length")];
                client.read_exact(&mut body).await.unwrap();
            }
            if status == "200 OK" {
                assert!(answer.contains("\r\nX-Object-Meta-Color: blue\r\n"), "{what}");
                assert!(answer.contains("\r\nX-Trans-Id: tx1\r\n"), "{what}");
            }
            if status == "401 Unauthorized" {
                let realm = answer.lines().find(|l| l.to_ascii_lowercase().starts_with("www-authenticate:"));
                assert_eq!(realm.map(|l| &l[17..]), Some(" Swift realm=\"AUTH_faulty\""), "{what}");
            }
        }
        // `Connection: keep-alive` is answered in kind, as Swift answers it. (A decline above
        // handed the connection to hyper for good.)
        let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
        let head = format!(
            "GET {path}/cased/o HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nConnection: keep-alive\r\n{extra}\r\n"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let (answer, _) = answers(&mut client, 1).await.remove(0);
        assert!(answer.to_ascii_lowercase().contains("\r\nconnection: keep-alive\r\n"), "{engine}: {answer}");
        // A target that is not UTF-8 gets Swift's 412 where a connection's heads are read first,
        // and the connection goes on.
        let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
        let mut head = format!("PUT {path}/").into_bytes();
        head.extend_from_slice(b"\xff\xfe\xa0");
        head.extend_from_slice(
            format!(" HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nContent-Length: 0\r\n\r\n").as_bytes(),
        );
        client.write_all(&head).await.unwrap();
        let (answer, body) = answers(&mut client, 1).await.remove(0);
        assert!(answer.starts_with("HTTP/1.1 412 Precondition Failed\r\n"), "{engine}: {answer}");
        assert_eq!(body, b"Invalid UTF8 or contains NULL", "{engine}");
        let head = format!("HEAD {path}/cased/o HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n{extra}\r\n");
        client.write_all(head.as_bytes()).await.unwrap();
        assert!(next_head(&mut client).await.starts_with("HTTP/1.1 200 OK\r\n"), "{engine}");
    }
}

/// On both engines: every field that claims to say who the client is stays behind, and so does
/// the `_` spelling of every field the gateway strips or reads (a WSGI server reads
/// `X_Auth_Token` as `X-Auth-Token`); `TRACE`, `TRACK` and `CONNECT` are refused at the gateway.
#[tokio::test]
async fn forwarding_claims_aliases_and_echoing_methods_stay_behind_on_both_engines() {
    let echo = common::echo::start().await;
    let stack = Stack::in_front_of(&echo.origin).await;
    let (path, token) = login(&stack).await;
    for (engine, extra) in [("fast", ""), ("hyper", "Content-Length: 0\r\n")] {
        let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
        let head = format!(
            "GET {path}/plain/o HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nX-Real-IP: 6.6.6.6\r\n\
             True-Client-IP: 6.6.6.6\r\nX-Forwarded-Server: evil\r\nX-Forwarded-Prefix: /evil\r\n\
             X_Forwarded_For: 6.6.6.6\r\nX_Auth_Token: AUTH_forged\r\nX_Storage_Token: AUTH_forged\r\n\
             Content_Length: 5\r\nX_Auth_User: alice\r\nX_Object_Meta_Under: kept\r\n{extra}\r\n"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let (answer, body) = answers(&mut client, 1).await.remove(0);
        assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{engine}: {answer}");
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let h = &seen["headers"];
        for gone in [
            "x-real-ip",
            "true-client-ip",
            "x-forwarded-server",
            "x-forwarded-prefix",
            "x_forwarded_for",
            "x_auth_token",
            "x_storage_token",
            "content_length",
            "x_auth_user",
        ] {
            assert!(h.get(gone).is_none(), "{gone} must not reach upstream on {engine}: {h}");
        }
        assert_eq!(h["x-auth-token"], common::echo::TOKEN, "{engine}");
        assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{engine}");
        assert_eq!(h["x_object_meta_under"], "kept", "{engine}: other `_` names pass");
        for method in ["TRACE", "TRACK", "CONNECT"] {
            let target = if method == "CONNECT" { "gw:80".to_owned() } else { format!("{path}/plain/o") };
            let head = format!("{method} {target} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n{extra}\r\n");
            let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
            client.write_all(head.as_bytes()).await.unwrap();
            let (answer, body) = answers(&mut client, 1).await.remove(0);
            assert!(answer.starts_with("HTTP/1.1 405 Method Not Allowed\r\n"), "{method} on {engine}: {answer}");
            assert!(!String::from_utf8_lossy(&body).contains(common::echo::TOKEN), "{method} on {engine}");
        }
    }
}
