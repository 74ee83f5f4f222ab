//! The gateway over TLS with the development certificates: HTTP/1.1 and h2 offered by ALPN.

mod common;

use std::sync::Arc;

use swiftgate::server::{self, ServeOptions};

fn certs() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev")
}

#[tokio::test]
async fn serves_https_with_h2_and_http11_by_alpn() {
    let stack = common::Stack::start().await;
    let acceptor = server::tls_acceptor(&certs().join("server.crt"), &certs().join("server.key")).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(
        listener,
        stack.gw.gateway.clone(),
        ServeOptions { tls: Some(acceptor), ..ServeOptions::default() },
        async {
            let _ = rx.await;
        },
    ));

    let ca = std::fs::read(certs().join("ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    // HTTP/1.1 is preferred (hyper's h2 server cannot send 100 Continue); h2 when it is all
    // the client speaks.
    for (offer, want) in [
        (vec![b"h2".to_vec(), b"http/1.1".to_vec()], b"http/1.1".as_slice()),
        (vec![b"h2".to_vec()], b"h2".as_slice()),
        (vec![b"http/1.1".to_vec()], b"http/1.1".as_slice()),
    ] {
        let mut config = rustls::ClientConfig::builder().with_root_certificates(roots.clone()).with_no_client_auth();
        config.alpn_protocols = offer;
        let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
        let tls = connector.connect(name, tcp).await.unwrap();
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
