//! The proxy when things break: upstream resets mid-GET and mid-PUT, a client that vanishes
//! mid-upload. A broken transfer must never look like a success, and nothing may leak.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use common::raw::{self, full};
use common::Stack;
use http_body_util::BodyExt;
use swiftgate::config::Mode;

/// The faulty upstream behind a proxy-mode gateway, registered and logged in: the upstream, the
/// stack (both stopped on drop), and the gateway's storage URL and token.
struct Faulted {
    faulty: common::faulty::Faulty,
    _stack: Stack,
    url: String,
    token: String,
}

async fn faulted() -> Faulted {
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (url, token) = stack.storage_login().await;
    Faulted { faulty, _stack: stack, url, token }
}

#[tokio::test]
async fn sequential_requests_share_one_upstream_connection() {
    let f = faulted().await;
    for i in 0..5 {
        let got = raw::send("GET", &format!("{}/kept/{i}", f.url), &[("x-auth-token", &f.token)], full("")).await;
        assert_eq!((got.status, &got.body[..]), (200, &b"ok"[..]), "request {i}");
    }
    assert_eq!(f.faulty.storage_connections.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_get_that_a_parked_connection_drops_goes_again_on_a_new_one() {
    let f = faulted().await;
    let first = raw::send("GET", &format!("{}/once/a", f.url), &[("x-auth-token", &f.token)], full("")).await;
    assert_eq!(first.status, 200);
    // Goes out on the parked connection, which upstream closes unanswered.
    let second = raw::send("GET", &format!("{}/once/b", f.url), &[("x-auth-token", &f.token)], full("")).await;
    assert_eq!((second.status, &second.body[..]), (200, &b"ok"[..]));
    assert_eq!(f.faulty.storage_connections.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn upstream_reset_mid_get_breaks_the_clients_transfer() {
    let f = faulted().await;
    let got = raw::send("GET", &format!("{}/c/o", f.url), &[("x-auth-token", &f.token)], full("")).await;
    assert_eq!(got.status, 200, "the head arrived before the break");
    assert!(got.body_failed, "a truncated body must fail, not end cleanly");
}

#[tokio::test]
async fn upstream_reset_mid_put_is_a_502() {
    let f = faulted().await;
    let body = Bytes::from(vec![b'p'; 3_000_000]);
    let put = raw::send("PUT", &format!("{}/c/o", f.url), &[("x-auth-token", &f.token)], full(body)).await;
    assert_eq!(put.status, 502);
}

#[tokio::test]
async fn a_client_that_vanishes_mid_put_aborts_the_upstream_upload() {
    let stack = Stack::start_mode(Mode::Proxy, |_| {}).await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    assert_eq!(raw::send("PUT", &format!("{url}/c"), &[("x-auth-token", &token)], full("")).await.status, 201);
    let metrics = tokio::runtime::Handle::current().metrics();
    let baseline = metrics.num_alive_tasks();
    // A chunked upload that sends 2 MiB and then fails on the client side.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
    let body = BodyExt::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    let put = tokio::spawn({
        let url = format!("{url}/c/vanishing");
        let token = token.clone();
        async move { raw::try_send("PUT", &url, &[("x-auth-token", &token)], body).await }
    });
    for _ in 0..2 {
        tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![b'v'; 1 << 20])))).await.unwrap();
    }
    tx.send(Err(std::io::Error::other("client gave up"))).await.unwrap();
    drop(tx);
    let _ = put.await;
    // The object never appears upstream, and every task the transfer started ends.
    let head = raw::send("HEAD", &format!("{url}/c/vanishing"), &[("x-auth-token", &token)], full("")).await;
    assert_eq!(head.status, 404);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while metrics.num_alive_tasks() > baseline {
        assert!(tokio::time::Instant::now() < deadline, "{} tasks alive, {baseline} before", metrics.num_alive_tasks());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn tokio_stream_from<T: Send + 'static>(
    mut rx: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> + Send + 'static {
    futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
}

#[tokio::test]
async fn a_client_that_stalls_mid_upload_is_cut_off_after_the_idle_timeout() {
    let stack = Stack::start_custom(Mode::Proxy, |_| {}, |c| c.proxy.idle_timeout = 1).await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<hyper::body::Frame<Bytes>, std::io::Error>>(4);
    tx.send(Ok(hyper::body::Frame::data(Bytes::from(vec![b's'; 65536])))).await.unwrap();
    let body = BodyExt::boxed(http_body_util::StreamBody::new(tokio_stream_from(rx)));
    // The sender stays alive but sends nothing more: the gateway must give up, not wait forever.
    let answer = tokio::time::timeout(
        Duration::from_secs(20),
        raw::try_send("PUT", &format!("{url}/default/stalled"), &[("x-auth-token", &token)], body),
    )
    .await
    .expect("the gateway gave up on the idle upload");
    drop(tx);
    // Swift's answer to a body that stops coming: 408.
    if let Ok(answer) = answer {
        assert_eq!(answer.status, 408);
    }
    let head = raw::send("HEAD", &format!("{url}/default/stalled"), &[("x-auth-token", &token)], full("")).await;
    assert_eq!(head.status, 404, "nothing stored");
}

/// A chunked body whose framing is malformed (`-5`, `0x5`, a size overlong for a `u64`) gets
/// `400`, the client's fault, not a `502`; upstream, which got part of it, stores nothing.
#[tokio::test]
async fn a_malformed_chunked_body_gets_400_and_nothing_is_stored() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stack = Stack::start_mode(Mode::Proxy, |_| {}).await;
    stack.register().await;
    let (url, token) = stack.storage_login().await;
    let path = url.strip_prefix(&stack.gw.url).unwrap().to_owned();
    assert_eq!(raw::send("PUT", &format!("{url}/c"), &[("x-auth-token", &token)], full("")).await.status, 201);
    for (name, chunks) in [
        ("negative", "5\r\nhello\r\n-5\r\nhello\r\n0\r\n\r\n"),
        ("hex-prefixed", "0x5\r\nhello\r\n0\r\n\r\n"),
        ("overlong", "5\r\nhello\r\nFFFFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n"),
    ] {
        let mut client = tokio::net::TcpStream::connect(stack.gw.addr).await.unwrap();
        let head = format!(
            "PUT {path}/c/{name} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nTransfer-Encoding: chunked\r\n\r\n{chunks}"
        );
        client.write_all(head.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let read = async {
            while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
                let mut chunk = [0u8; 1024];
                match client.read(&mut chunk).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => answer.extend_from_slice(&chunk[..n]),
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(10), read).await.expect("an answer in time");
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 400 Bad Request\r\n"), "{name}: {answer}");
        let stored = raw::send("HEAD", &format!("{url}/c/{name}"), &[("x-auth-token", &token)], full("")).await;
        assert_eq!(stored.status, 404, "{name}");
    }
}

/// A chunked body whose first chunk's size is malformed, from a client that asked no
/// `100 Continue`, gets its `400` before anything goes upstream.
#[tokio::test]
async fn a_malformed_first_chunk_is_refused_before_anything_goes_upstream() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let faulty = common::faulty::start().await;
    let stack = Stack::in_front_of(&faulty.origin).await;
    let (url, token) = stack.storage_login().await;
    let path = url.strip_prefix(&stack.gw.url).unwrap().to_owned();
    let mut client = tokio::net::TcpStream::connect(stack.gw.addr).await.unwrap();
    let head = format!(
        "PUT {path}/kept/o HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nTransfer-Encoding: chunked\r\n\r\n0x5\r\nhello\r\n0\r\n\r\n"
    );
    client.write_all(head.as_bytes()).await.unwrap();
    let mut answer = [0u8; 24];
    tokio::time::timeout(Duration::from_secs(10), client.read_exact(&mut answer)).await.expect("in time").unwrap();
    assert!(answer.starts_with(b"HTTP/1.1 400 Bad Request"), "{}", String::from_utf8_lossy(&answer));
    assert_eq!(faulty.storage_connections.load(Ordering::SeqCst), 0, "nothing went upstream");
}
