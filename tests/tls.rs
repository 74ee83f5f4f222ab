//! The gateway over TLS with the development certificates: HTTP/1.1 and h2 offered by ALPN.

mod common;

use std::sync::Arc;

use md5::Digest;
use swiftgate::server::{self, ServeOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn certs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev")
}

/// `gateway` served over TLS on a port of its own: its address, the sender that stops it, and
/// the serving task.
async fn serve_tls(
    gateway: Arc<swiftgate::gateway::Gateway>,
) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let acceptor = server::tls_acceptor(&certs().join("server.crt"), &certs().join("server.key")).unwrap().0;
    common::serve_gateway(gateway, ServeOptions { tls: Some(acceptor), ..ServeOptions::default() }).await
}

/// The development CA, as roots to trust.
fn roots() -> rustls::RootCertStore {
    let ca = std::fs::read(certs().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    roots
}

/// A TLS connection to `addr` as `localhost`, offering `alpn`.
async fn connect(
    addr: std::net::SocketAddr,
    alpn: Vec<Vec<u8>>,
) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
    let mut config = rustls::ClientConfig::builder().with_root_certificates(roots()).with_no_client_auth();
    config.alpn_protocols = alpn;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap()
}

#[tokio::test]
async fn serves_https_with_h2_and_http11_by_alpn() {
    let stack = common::Stack::start().await;
    let (addr, tx, task) = serve_tls(stack.gw.gateway.clone()).await;
    let ca = std::fs::read(certs().join("ca.crt")).unwrap();
    // HTTP/1.1 is preferred (hyper's h2 server cannot send 100 Continue); h2 when it is all
    // the client speaks.
    for (offer, want) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"http/1.1".as_slice()),
        (vec![b"h2".to_vec()], b"h2".as_slice()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".as_slice()),
    ] {
        let tls = connect(addr, offer).await;
        assert_eq!(tls.get_ref().1.alpn_protocol(), Some(want));
        // And a request over the protocol negotiated.
        let io = hyper_util::rt::TokioIo::new(tls);
        let req = || http::Request::get("https://localhost/healthz").body(String::new()).unwrap();
        let status = if want == b"h2" {
            let (mut send, conn) =
                hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io).await.unwrap();
            tokio::spawn(conn);
            send.send_request(req()).await.unwrap().status()
        } else {
            let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
            tokio::spawn(conn);
            let mut req = req();
            req.headers_mut().insert("host", http::HeaderValue::from_static("localhost"));
            send.send_request(req).await.unwrap().status()
        };
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(want));
    }

    // A real request over HTTPS, verified against the development CA.
    let client =
        reqwest::Client::builder().add_root_certificate(reqwest::Certificate::from_pem(&ca).unwrap()).build().unwrap();
    let resp = client.get(format!("https://localhost:{}/healthz", addr.port())).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let _ = tx.send(());
    task.await.unwrap();
}

/// A download through the TLS listener arrives whole without waiting for the connection to go
/// idle: what rustls holds when the socket is full leaves only on a flush (the proxy's fast
/// path once kept a download's tail there until the idle close).
#[tokio::test]
async fn a_large_download_over_tls_arrives_whole_and_at_once() {
    let parts = common::pattern::chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let stack = common::Stack::in_front_of(&upstream.origin).await;
    let (url, token) = stack.storage_login().await;
    let len = 24 * common::pattern::MIB;
    let put = stack.http.put(format!("{url}/c/big")).header("x-auth-token", &token).body(vec![0u8; len as usize]);
    assert_eq!(put.send().await.unwrap().status(), 201);
    let (addr, tx, task) = serve_tls(stack.gw.gateway.clone()).await;
    let (before, spliced) = (stack.gw.fast_answers(), stack.gw.spliced_answers());
    let io = hyper_util::rt::TokioIo::new(connect(addr, vec![b"http/1.1".to_vec()]).await);
    let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
    tokio::spawn(conn);
    let path = url.strip_prefix(&stack.gw.url).unwrap();
    let req = http::Request::get(format!("{path}/c/big"))
        .header("host", "localhost")
        .header("x-auth-token", &token)
        .body(String::new())
        .unwrap();
    let download = async {
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), 200);
        let body = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        (body.len() as u64, hex::encode(md5::Md5::digest(&body)))
    };
    // The idle close would let a stuck tail out after 30 s.
    let got = tokio::time::timeout(std::time::Duration::from_secs(20), download).await.expect("the whole body in time");
    assert_eq!(got, (len, common::pattern::expected_md5(len, &parts)));
    assert_eq!(stack.gw.fast_answers() - before, 1, "the download took the fast path");
    // On the same connection, uploads take the fast path too, neither spliced: one of at most
    // the replay buffer is kept while it goes, a larger one is copied once upstream asks for
    // it. The pattern upstream's ETag is the MD5 of what it stored.
    for (name, size, fast) in [("small", 1 << 20, 2), ("large", 5 << 20, 3)] {
        let body = "k".repeat(size);
        let md5 = hex::encode(md5::Md5::digest(body.as_bytes()));
        let put = http::Request::put(format!("{path}/c/{name}"))
            .header("host", "localhost")
            .header("x-auth-token", &token)
            .body(body)
            .unwrap();
        let resp = send.send_request(put).await.unwrap();
        assert_eq!(resp.status(), 201, "{name}");
        assert_eq!(resp.headers()["etag"], md5.as_str(), "{name}");
        assert_eq!(stack.gw.fast_answers() - before, fast, "{name}");
    }
    assert_eq!(stack.gw.spliced_answers(), spliced, "no splice under TLS");
    let _ = tx.send(());
    task.await.unwrap();
}

/// A TLS client's upload larger than the replay buffer is copied, not spliced; an upstream that
/// breaks off its body gets the client a 502 (it reads it after sending the whole body), and
/// the connection is closed.
#[tokio::test]
async fn an_upstream_that_breaks_off_a_copied_upload_gets_the_tls_client_a_502() {
    let faulty = common::faulty::start().await;
    let stack = common::Stack::in_front_of_with(&faulty.origin, |c| c.proxy.expect_timeout = 1).await;
    let (url, token) = stack.storage_login().await;
    let (addr, tx, task) = serve_tls(stack.gw.gateway.clone()).await;
    let path = url.strip_prefix(&stack.gw.url).unwrap();
    let before = stack.gw.fast_answers();
    let mut tls = connect(addr, vec![b"http/1.1".to_vec()]).await;
    // More than the sockets' buffers hold: unless the gateway reads and discards the rest, the
    // client's send fails.
    let len = 64u64 << 20;
    tls.write_all(common::put_head(&format!("{path}/c/o"), &token, len).as_bytes()).await.unwrap();
    tls.write_all(&vec![2u8; len as usize]).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(20), tls.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(read.is_ok(), "the connection ends: {answer}");
    assert!(answer.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{answer}");
    assert!(answer.contains("connection: close\r\n"), "{answer}");
    assert_eq!(stack.gw.fast_answers() - before, 1, "answered by the fast path, not the proxy");
    assert_eq!(stack.gw.spliced_answers(), 0);
    let _ = tx.send(());
    task.await.unwrap();
}
