//! Generated request heads, odd forms included (bare LF, obs-fold, bare CR, NUL, two lengths,
//! `Transfer-Encoding` with `Content-Length`, `_` spellings, forwarding claims, malformed chunk
//! sizes), each followed on its connection by a plain sentinel request, through a gateway on the
//! fast engine and one on hyper's. Whatever the head, the client gets an answer below 500 (or
//! Swift's 501) or the connection closes; every head upstream receives has CRLF line ends and
//! none of the fields that never cross; and no byte of the sentinel ever reaches upstream inside
//! another request. The case count is fixed and the seed printed (`SWIFTGATE_HEADS_SEED`
//! replays it).

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::Stack;

/// Generated heads per engine.
const CASES: u32 = 128;

/// How long any one exchange may take before the test calls it hung.
const DEADLINE: Duration = Duration::from_secs(10);

/// Request fields that must never reach upstream, in lower case.
const NEVER_UPSTREAM: &[&str] = &[
    "x-auth-user",
    "x-auth-key",
    "x_auth_token",
    "x_storage_token",
    "x_forwarded_for",
    "content_length",
    "x-real-ip",
    "true-client-ip",
    "x-forwarded-server",
    "x-forwarded-prefix",
    "forwarded",
    "authorization",
    "x-hop",
    "keep-alive",
    "te",
];

/// One request as upstream received it.
#[derive(Debug, Clone)]
struct Received {
    head: String,
    body: Vec<u8>,
}

/// Reads one request from `stream` (whose unread bytes start in `buf`): its head and its body,
/// framed by `Content-Length` or chunked coding. `None` when the connection ends or the request
/// cannot be framed.
async fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Received> {
    let head_end = loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        fill(stream, buf).await?;
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    buf.drain(..head_end);
    if head.to_ascii_lowercase().contains("\r\nexpect: 100-continue\r\n") {
        stream.write_all(b"HTTP/1.1 100 Continue\r\n\r\n").await.ok()?;
    }
    let field =
        |name: &str| head.split("\r\n").find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case(name)));
    let mut body = Vec::new();
    if field("transfer-encoding").is_some() {
        loop {
            let line_end = loop {
                if let Some(end) = buf.windows(2).position(|w| w == b"\r\n") {
                    break end;
                }
                fill(stream, buf).await?;
            };
            let size = usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).ok()?.trim(), 16).ok()?;
            buf.drain(..line_end + 2);
            while buf.len() < size + 2 {
                fill(stream, buf).await?;
            }
            body.extend_from_slice(&buf[..size]);
            buf.drain(..size + 2);
            if size == 0 {
                break;
            }
        }
    } else if let Some((_, value)) = field("content-length") {
        let len: usize = value.trim().parse().ok()?;
        while buf.len() < len {
            fill(stream, buf).await?;
        }
        body = buf.drain(..len).collect();
    }
    Some(Received { head, body })
}

async fn fill(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Option<()> {
    let mut chunk = [0u8; 16 * 1024];
    match stream.read(&mut chunk).await {
        Ok(n) if n > 0 => {
            buf.extend_from_slice(&chunk[..n]);
            Some(())
        }
        _ => None,
    }
}

/// A raw Swift-like upstream: v1.0 auth, then every storage request recorded as received and
/// answered `200` with `ok`.
async fn upstream(received: Arc<Mutex<Vec<Received>>>) -> (String, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let own = origin.clone();
    let task = tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (received, origin) = (received.clone(), own.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(request) = read_request(&mut stream, &mut buf).await {
                    let answer = if request.head.starts_with("GET /auth/v1.0") {
                        format!(
                            "HTTP/1.1 200 OK\r\nX-Storage-Url: {origin}/v1/AUTH_heads\r\nX-Auth-Token: AUTH_tkheads\r\n\
                             X-Auth-Token-Expires: 86400\r\nContent-Length: 0\r\n\r\n"
                        )
                    } else {
                        let head_request = request.head.starts_with("HEAD ");
                        received.lock().unwrap().push(request);
                        let body = if head_request { "" } else { "ok" };
                        format!("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{body}")
                    };
                    if stream.write_all(answer.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (origin, task)
}

/// One generated request: its head's field lines (each with its own line end) and the bytes
/// sent after the head.
#[derive(Clone, Debug)]
struct Case {
    method: &'static str,
    name: String,
    lines: Vec<&'static str>,
    body: &'static str,
}

fn case_strategy() -> impl Strategy<Value = Case> {
    let line = prop::sample::select(vec![
        "X-Object-Meta-A: v\r\n",
        "X-Object-Meta-Bare: lf\n",
        "X-Fold: a\r\n folded\r\n",
        "X-CR: a\rb\r\n",
        "X-Nul: a\0b\r\n",
        "Content-Length: 5\r\n",
        "Content-Length: 6\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5, 5\r\n",
        "Transfer-Encoding: chunked\r\n",
        "Transfer-Encoding: gzip, chunked\r\n",
        "Transfer_Encoding: chunked\r\n",
        "Content_Length: 3\r\n",
        "X_Auth_Token: AUTH_forged\r\n",
        "X_Storage_Token: AUTH_forged\r\n",
        "X_Forwarded_For: 6.6.6.6\r\n",
        "X-Real-IP: 6.6.6.6\r\n",
        "True-Client-IP: 6.6.6.6\r\n",
        "X-Forwarded-Server: evil\r\n",
        "X-Forwarded-Prefix: /evil\r\n",
        "Forwarded: for=6.6.6.6\r\n",
        "X-Auth-User: alice\r\n",
        "X-Auth-Key: k\r\n",
        "Authorization: Basic eA==\r\n",
        "Connection: X-Hop\r\nX-Hop: 1\r\n",
        "Keep-Alive: timeout=5\r\n",
        "TE: trailers\r\n",
        "Expect: 100-continue\r\n",
        " Leading: space\r\n",
        "Bad Name: x\r\n",
        "X-Empty:\r\n",
        "Upgrade: websocket\r\n",
    ]);
    (
        prop::sample::select(vec!["GET", "HEAD", "PUT", "POST", "DELETE"]),
        "[a-z0-9]{1,8}",
        prop::collection::vec(line, 0..6),
        prop::sample::select(vec![
            "",
            "hello",
            "5\r\nhello\r\n0\r\n\r\n",
            "5\r\nhello\r\n-5\r\nhello\r\n0\r\n\r\n",
            "0x5\r\nhello\r\n0\r\n\r\n",
            "FFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n",
        ]),
    )
        .prop_map(|(method, name, lines, body)| Case { method, name, lines, body })
}

/// Reads the answers on `client` until two have come or it closes: their statuses and bodies.
async fn answers(client: &mut TcpStream, head_first: bool) -> Vec<(u16, Vec<u8>)> {
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let read = async {
        while got.len() < 2 {
            let mut fields = [httparse::EMPTY_HEADER; 64];
            let mut resp = httparse::Response::new(&mut fields);
            if let Ok(httparse::Status::Complete(n)) = resp.parse(&buf) {
                let code = resp.code.unwrap_or(0);
                let length = resp.headers.iter().find(|h| h.name.eq_ignore_ascii_case("content-length"));
                let length: usize = length.and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok()).unwrap_or(0);
                // A HEAD's answer has no body, whatever its length says.
                let length = if got.is_empty() && head_first { 0 } else { length };
                if buf.len() >= n + length {
                    got.push((code, buf[n..n + length].to_vec()));
                    buf.drain(..n + length);
                    continue;
                }
            }
            if fill(client, &mut buf).await.is_none() {
                break;
            }
        }
    };
    tokio::time::timeout(DEADLINE, read).await.expect("answers or a close in time");
    got
}

/// A gateway in front of `origin` on the fast engine or hyper's: the stack, the storage path
/// and the token.
async fn gateway(origin: &str, fast_path: bool) -> (Stack, String, String) {
    let (stack, url, token) = Stack::swift_v1(origin, "heads", fast_path).await;
    let path = url.strip_prefix(&stack.gw.url).unwrap().to_owned();
    (stack, path, token)
}

/// Checks what upstream received since `from`: CRLF line ends, no field that never crosses, and
/// no sentinel inside a body.
fn check_received(received: &[Received], engine: &str) -> Result<(), TestCaseError> {
    for request in received {
        let head = &request.head;
        prop_assert!(
            !head.bytes().enumerate().any(|(i, b)| b == b'\n' && (i == 0 || head.as_bytes()[i - 1] != b'\r')),
            "a bare LF reached upstream on {}: {:?}",
            engine,
            head
        );
        for line in head.split("\r\n").skip(1) {
            let name = line.split(':').next().unwrap_or("").to_ascii_lowercase();
            prop_assert!(
                !NEVER_UPSTREAM.contains(&name.as_str()),
                "{} reached upstream on {}: {:?}",
                name,
                engine,
                head
            );
        }
        let body = String::from_utf8_lossy(&request.body);
        prop_assert!(!body.contains("X-Sentinel"), "the sentinel reached upstream inside a body on {}", engine);
        if head.contains("X-Sentinel") || head.contains("x-sentinel") {
            prop_assert!(head.split("\r\n").next().unwrap_or("").contains("/sentinel "), "{:?}", head);
        }
    }
    Ok(())
}

#[test]
fn odd_heads_are_framed_or_refused_and_never_bleed_into_the_next_request() {
    let seed: [u8; 32] = match std::env::var("SWIFTGATE_HEADS_SEED") {
        Ok(hex) => hex::decode(hex).ok().and_then(|b| b.try_into().ok()).expect("SWIFTGATE_HEADS_SEED: 64 hex digits"),
        Err(_) => rand::random(),
    };
    println!("heads: {CASES} cases per engine, seed {} (SWIFTGATE_HEADS_SEED replays it)", hex::encode(seed));
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let (task, fast, hyper) = runtime.block_on(async {
        let (origin, task) = upstream(received.clone()).await;
        (task, gateway(&origin, true).await, gateway(&origin, false).await)
    });
    let config = Config { cases: CASES, failure_persistence: None, ..Config::default() };
    let mut runner = TestRunner::new_with_rng(config, TestRng::from_seed(RngAlgorithm::ChaCha, &seed));
    // How many requests reached upstream, and how many sentinels came back answered `ok`, over
    // the run: the cases must exercise both, not only refusals.
    let (forwarded, sentinels) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
    let result = runner.run(&case_strategy(), |case| {
        for (engine, (stack, path, token)) in [("fast", &fast), ("hyper", &hyper)] {
            received.lock().unwrap().clear();
            let got = runtime.block_on(async {
                let mut client = TcpStream::connect(stack.gw.addr).await.unwrap();
                let mut head =
                    format!("{} {path}/c/{} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n", case.method, case.name);
                head.extend(case.lines.iter().copied());
                head.push_str("\r\n");
                head.push_str(case.body);
                head.push_str(&format!(
                    "GET {path}/sentinel HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nX-Sentinel: 1\r\n\r\n"
                ));
                // The gateway may close before it has read everything: a failed write is fine.
                let _ = client.write_all(head.as_bytes()).await;
                answers(&mut client, case.method == "HEAD").await
            });
            if let Some((status, _)) = got.first() {
                prop_assert!(*status < 500 || *status == 501, "{} answered {} for {:?}", engine, status, case);
            }
            check_received(&received.lock().unwrap(), engine)?;
            forwarded.fetch_add(received.lock().unwrap().len(), std::sync::atomic::Ordering::Relaxed);
            if got.get(1).is_some_and(|(status, body)| *status == 200 && body == b"ok") {
                sentinels.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            // The gateway still serves.
            let healthy = runtime.block_on(async {
                reqwest::get(format!("{}/healthz", stack.gw.url)).await.map(|r| r.status().as_u16()).unwrap_or(0)
            });
            prop_assert_eq!(healthy, 200, "{} stopped serving after {:?}", engine, case);
        }
        Ok(())
    });
    drop((fast, hyper));
    task.abort();
    if let Err(e) = result {
        panic!("seed {}: {e}", hex::encode(seed));
    }
    let (forwarded, sentinels) = (forwarded.into_inner(), sentinels.into_inner());
    println!("heads: {forwarded} requests reached upstream, {sentinels} sentinels answered");
    assert!(forwarded > CASES as usize && sentinels > 0, "the cases exercised too little");
}
