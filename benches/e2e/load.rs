//! The load generator: hyper clients, plain and TLS, and the requests each bench section sends
//! along a route to storage.

use std::path::Path;
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use crate::upstream::{boxed, Boxed, Repeat};
use crate::KIB;

type HttpClient = Client<HttpConnector, Boxed>;
type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Boxed>;

#[derive(Clone)]
pub(crate) enum Load {
    Plain(HttpClient),
    Tls(TlsClient),
}

impl Load {
    async fn send(&self, req: Request<Boxed>) -> Response<Incoming> {
        match self {
            Load::Plain(c) => c.request(req).await.expect("request"),
            Load::Tls(c) => c.request(req).await.expect("request"),
        }
    }
}

/// The plain and the TLS client (trusting `certs-dev/ca.crt`).
pub(crate) fn clients() -> (Load, Load) {
    // No Nagle on the load generator either: a body's last partial segment would otherwise
    // wait for the gateway's delayed ACK (40 ms).
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let plain = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(128).build(http.clone());
    let ca = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev/ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let tls = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(128).build(https);
    (Load::Plain(plain), Load::Tls(tls))
}

/// One way to reach storage (a path, in the table and the JSON): a name, its client, its
/// storage URL and token.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) name: &'static str,
    pub(crate) load: Load,
    pub(crate) url: String,
    pub(crate) token: String,
    /// The proxy's process, whose CPU time is counted; `None` for the direct path.
    pub(crate) pid: Option<u32>,
}

fn empty() -> Boxed {
    boxed(http_body_util::Empty::new())
}

pub(crate) async fn get_bytes(p: &Route, size: u64) -> u64 {
    let req = Request::get(format!("{}/c/{size}", p.url)).header("x-auth-token", &p.token).body(empty()).unwrap();
    let resp = p.load.send(req).await;
    assert_eq!(resp.status(), 200, "{} GET", p.name);
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.expect("body").data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, size, "{} GET length", p.name);
    n
}

pub(crate) async fn put_bytes(p: &Route, size: u64, buf: &Bytes) {
    let req = Request::put(format!("{}/c/{size}", p.url))
        .header("x-auth-token", &p.token)
        .header("content-length", size)
        .body(boxed(Repeat { buf: buf.clone(), remaining: size }))
        .unwrap();
    let resp = p.load.send(req).await;
    assert_eq!(resp.status(), 201, "{} PUT", p.name);
}

/// Objects of `size` moved one after another for one throughput cell: enough for
/// `cell_bytes` (64 MiB in the benches). One 1 MiB transfer takes under a millisecond, shorter
/// than this VM's scheduling hiccups, so a cell of one such transfer swung from 0.05 to 0.66 of
/// direct within five rounds.
pub(crate) fn batch(size: u64, cell_bytes: u64) -> u64 {
    (cell_bytes / size).max(1)
}

/// MB/s of `count` transfers of `size` in a row (on one kept-alive connection, as a client
/// uploading many segments uses it).
pub(crate) async fn throughput(p: &Route, op: &str, size: u64, count: u64, buf: &Bytes) -> f64 {
    let t = Instant::now();
    for _ in 0..count {
        if op == "GET" {
            get_bytes(p, size).await;
        } else {
            put_bytes(p, size, buf).await;
        }
    }
    (size * count) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// (requests/s, p50 µs, p99 µs) for `total` 4 KiB GETs at `concurrency`.
pub(crate) async fn small_gets(p: &Route, concurrency: usize, total: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                get_bytes(&p, 4 * KIB).await;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

/// `small_gets` at c=1 for `total` requests, after `total / 4` that are not counted. A c=1 run
/// starts with its threads where the run before left them, and on this VM that can be the fast
/// placement for the first thousand requests or so, before the scheduler spreads the threads
/// over both vCPUs: runs of 1 024 requests from a cold start measured that transient (the relay
/// added 23-27 µs in them, 150-180 µs in runs of 4 096 and more). A `--quick` run (256 + 1 024)
/// can still catch it.
pub(crate) async fn c1_gets(p: &Route, total: usize) -> (f64, f64, f64) {
    small_gets(p, 1, total / 4).await;
    small_gets(p, 1, total).await
}

/// v1.0 auth requests/s for `total` logins as `user` with `key` at `url`, at `concurrency`.
pub(crate) async fn auths(load: &Load, url: &str, user: &str, key: &str, concurrency: usize, total: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (load, url, user, key) = (load.clone(), url.to_owned(), user.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / concurrency {
                let req =
                    Request::get(&url).header("x-auth-user", &user).header("x-auth-key", &key).body(empty()).unwrap();
                let resp = load.send(req).await;
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

/// The gateway at `base`'s storage URL and token for the bench user.
pub(crate) async fn login(load: &Load, base: &str) -> (String, String) {
    let req = Request::get(format!("{base}/auth/v1.0"))
        .header("x-auth-user", "bench")
        .header("x-auth-key", "bench-key")
        .body(empty())
        .unwrap();
    let resp = load.send(req).await;
    assert_eq!(resp.status(), 200, "gateway auth");
    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
    (h("x-storage-url"), h("x-auth-token"))
}
