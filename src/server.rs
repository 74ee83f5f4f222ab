//! The listener: accepts TCP connections, terminates TLS (tokio-rustls, HTTP/1.1 and h2 by
//! ALPN), serves HTTP with hyper-util's auto builder, and shuts down gracefully.
//!
//! Both the gateway and the emulator run on [`run`]; it knows nothing about routes. Tests hand
//! it a `127.0.0.1:0` listener and their own shutdown future.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;

/// Time a client gets to finish the TLS handshake or send request headers.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest time between two timer deadlines of an event loop while it serves. Tokio's timer
/// wakes its event loop with a system call whenever a new deadline falls before the one it
/// last went to sleep with. Per request the header timers go the wrong way round (hyper's 30 s
/// header timer follows the proxy's 120 s upstream one), so without an earlier deadline always
/// pending, every request at low concurrency paid one `write` to the loop's eventfd and one
/// more `epoll_wait`.
const TIMER_TICK: Duration = Duration::from_secs(10);
/// Time open connections get to finish once shutdown starts.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes read from the socket at once beneath TLS: rustls asks for 4 KiB at a time, which
/// would cost a system call per TLS record on uploads.
const TLS_READ_BUFFER: usize = 64 * 1024;
/// Encrypted bytes rustls may hold before a write returns, so a bulk chunk leaves in few
/// `writev` calls rather than one per 64 KiB.
const TLS_SEND_BUFFER: usize = 256 * 1024;

/// The other end of a connection, with what the proxy forwards about it computed once per
/// connection rather than per request.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's IP as an `X-Forwarded-For` value.
    pub forwarded_for: http::HeaderValue,
}

impl Peer {
    /// Describes `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let forwarded_for = http::HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Peer { addr, forwarded_for }
    }
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`, which arrived from `peer`.
    fn handle(&self, req: Request<Incoming>, peer: Arc<Peer>) -> impl Future<Output = Response<Body>> + Send;
}

/// How to serve.
#[derive(Clone, Default)]
pub struct ServeOptions {
    /// Terminate TLS with this acceptor.
    pub tls: Option<TlsAcceptor>,
    /// Speak HTTP/1.1 only (HubiC's front end never offered h2).
    pub http1_only: bool,
}

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The files hold no usable certificate or key, or they do not match.
    #[error("{0}")]
    Invalid(String),
}

/// A TLS acceptor for the PEM certificate chain and key, offering HTTP/1.1 and h2 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{}: no certificate found", cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", key.display())))?
        .ok_or_else(|| TlsError::Invalid(format!("{}: no private key found", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not fit together: {e}")))?;
    // HTTP/1.1 first: Swift clients send `Expect: 100-continue` on uploads, and hyper's h2
    // server cannot answer it, so a Go client (rclone, restic) that picked h2 would wait its
    // 1 s expect timeout on every PUT. A client that offers only h2 still gets it.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `handler` on `listener` until `shutdown` completes, then lets open connections
/// finish (bounded by a drain timeout).
pub async fn run<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(HANDSHAKE_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    if options.http1_only {
        builder = builder.http1_only();
    }
    let builder = Arc::new(builder);
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    let mut tick = tokio::time::interval(TIMER_TICK);
    loop {
        let (stream, peer) = tokio::select! {
            _ = tick.tick() => continue,
            accepted = listener.accept() => match accepted {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    tracing::warn!(cause = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let watcher = graceful.watcher();
        let handler = handler.clone();
        let builder = builder.clone();
        let tls = options.tls.clone();
        tokio::spawn(async move {
            let client = Arc::new(Peer::new(peer));
            let service = hyper::service::service_fn(move |req| {
                let (handler, client) = (handler.clone(), client.clone());
                async move { Ok::<_, Infallible>(handler.handle(req, client).await) }
            });
            let result = match tls {
                Some(acceptor) => match tokio::time::timeout(
                    HANDSHAKE_TIMEOUT,
                    acceptor.accept(tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, stream)),
                )
                .await
                {
                    Ok(Ok(mut tls_stream)) => {
                        tls_stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
                        let conn = builder.serve_connection(TokioIo::new(tls_stream), service);
                        watcher.watch(conn.into_owned()).await
                    }
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                        return;
                    }
                    Err(_) => return,
                },
                None => {
                    let conn = builder.serve_connection(TokioIo::new(stream), service);
                    watcher.watch(conn.into_owned()).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, cause = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN_TIMEOUT, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing");
    }
}

thread_local! {
    static WORKER: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The index of the worker thread the caller runs on: 0 outside [`run_workers`]' extra threads.
/// Per-worker state (the proxy's upstream connection pools) is picked by it.
pub fn worker_index() -> usize {
    WORKER.with(std::cell::Cell::get)
}

/// Serves `handler` on `workers` event loops: the caller's runtime is worker 0, and each other
/// worker is a thread with its own single-threaded runtime. All accept from the same listening
/// socket, so a connection lives on one thread from accept to close and its request, upstream
/// connection and body chunks never hop between threads. Returns once every worker has
/// drained after `shutdown`.
pub async fn run_workers<H: Handler>(
    listener: TcpListener,
    handler: Arc<H>,
    options: ServeOptions,
    workers: usize,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let stop = tokio_util::sync::CancellationToken::new();
    // Whichever way this returns, workers already started stop too.
    let _stop_on_return = stop.clone().drop_guard();
    let shared = listener.into_std()?;
    let mut threads = Vec::new();
    for index in 1..workers.max(1) {
        let listener = shared.try_clone()?;
        let (handler, options, worker_stop) = (handler.clone(), options.clone(), stop.clone());
        threads.push(std::thread::Builder::new().name(format!("swiftgate-worker-{index}")).spawn(
            move || -> std::io::Result<()> {
                WORKER.with(|w| w.set(index));
                let served = tokio::runtime::Builder::new_current_thread().enable_all().build().and_then(|runtime| {
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener)?;
                        run(listener, handler, options, worker_stop.cancelled_owned()).await;
                        Ok(())
                    })
                });
                if let Err(e) = &served {
                    // The other workers go on serving; the error is also returned at shutdown.
                    tracing::error!(worker = index, cause = %e, "worker could not start");
                }
                served
            },
        )?);
    }
    let listener = TcpListener::from_std(shared)?;
    let stopper = async {
        shutdown.await;
        stop.cancel();
    };
    tokio::join!(stopper, run(listener, handler, options, stop.cancelled()));
    let mut result = Ok(());
    for thread in threads {
        let joined = tokio::task::spawn_blocking(move || thread.join()).await;
        match joined {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => result = Err(e),
            Ok(Err(_)) | Err(_) => result = Err(std::io::Error::other("a worker thread panicked")),
        }
    }
    result
}

/// Registers for SIGINT and SIGTERM at once and returns a future that resolves on the first of
/// them. Call it before announcing readiness: a handler installed only when the future is first
/// polled leaves a window in which a signal sent on that announcement kills the process
/// outright, skipping the cleanup that follows the future.
pub fn shutdown_signal() -> std::io::Result<impl std::future::Future<Output = ()> + Send + 'static> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        Ok(async move {
            tokio::select! {
                _ = interrupt.recv() => {},
                _ = terminate.recv() => {},
            }
        })
    }
    #[cfg(not(unix))]
    {
        Ok(async {
            let _ = tokio::signal::ctrl_c().await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// Answers with the index of the worker thread that served the request.
    struct WhichWorker;

    impl Handler for WhichWorker {
        async fn handle(&self, _req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
            let text = format!("{}", worker_index());
            Response::new(http_body_util::Full::new(bytes::Bytes::from(text)).map_err(|e| match e {}).boxed())
        }
    }

    /// A signal that lands between `shutdown_signal()` and the first poll of its future is
    /// caught, not fatal: a process announces readiness in that window. Were the handlers
    /// installed lazily, this SIGTERM would end the test binary.
    #[cfg(unix)]
    #[tokio::test]
    async fn shutdown_signal_catches_a_signal_sent_before_the_first_poll() {
        let stop = shutdown_signal().unwrap();
        let pid = std::process::id().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        tokio::time::timeout(std::time::Duration::from_secs(10), stop).await.expect("SIGTERM resolves the future");
    }

    #[tokio::test]
    async fn workers_serve_from_one_listener_and_all_stop() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run_workers(listener, Arc::new(WhichWorker), ServeOptions::default(), 3, async {
            let _ = stop_rx.await;
        }));
        let mut seen = std::collections::BTreeSet::new();
        let mut clients = Vec::new();
        for _ in 0..24 {
            clients.push(tokio::spawn(async move {
                let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
                s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                assert!(out.starts_with("HTTP/1.1 200"), "{out}");
                out.rsplit("\r\n\r\n").next().unwrap().parse::<usize>().unwrap()
            }));
        }
        for c in clients {
            seen.insert(c.await.unwrap());
        }
        assert!(seen.iter().all(|&w| w < 3), "{seen:?}");
        stop_tx.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(15), server).await.expect("workers did not stop").unwrap().unwrap();
        // Every worker closed its copy of the listening socket.
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
