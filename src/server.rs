//! The listener: accepts TCP connections, terminates TLS (tokio-rustls, HTTP/1.1 and h2 by
//! ALPN), serves HTTP with hyper's HTTP/1 and h2 connections, and shuts down gracefully.
//!
//! Both the gateway and the emulator run on [`run`]; it knows nothing about routes. Tests hand
//! it a `127.0.0.1:0` listener and their own shutdown future.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

use crate::body::Body;

/// The largest request head an HTTP/1 client may send (431 beyond). Swift itself refuses a
/// header line over 8 KiB and object metadata over 4 KiB in all; hyper's default would be its
/// read limit, 408 KiB, and the read limit here is 1 MiB (`body::MAX_READ`). A head comes
/// before any authentication, so this is what a connection holds for a client that never
/// finishes one. (h2 heads are bounded by hyper's 16 KiB header list size.)
pub const MAX_HEAD: usize = 64 * 1024;
/// Time a client gets to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection that has no request in progress and begins none for this long (up to twice
/// this long) is closed: see [`ServeOptions::idle_close`].
const IDLE_CLOSE: Duration = Duration::from_secs(30);
/// Longest time between two timer deadlines of an event loop while it serves. Tokio's timer
/// wakes its event loop with a system call whenever a new deadline falls before the one it
/// last went to sleep with. Per request the header timers went the wrong way round (hyper's
/// 30 s header timer followed the proxy's 120 s upstream one), so without an earlier deadline
/// always pending, every request at low concurrency paid one `write` to the loop's eventfd and
/// one more `epoll_wait`. (hyper's header timer is gone since, see [`Peer::quiet`].)
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
    /// Requests begun and responses ended on the connection so far.
    activity: AtomicU64,
    /// Requests whose response has not ended (or been dropped) yet.
    in_progress: AtomicUsize,
    /// Of those, the ones whose handler has answered: their response is being sent.
    responding: AtomicUsize,
    /// Writes to the client's socket that sent something.
    written: AtomicU64,
    /// Reads from the client's socket that got something.
    read: AtomicU64,
}

impl Peer {
    /// Describes `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        let forwarded_for = http::HeaderValue::from_str(&addr.ip().to_string())
            .unwrap_or_else(|_| http::HeaderValue::from_static("unknown"));
        Peer {
            addr,
            forwarded_for,
            activity: AtomicU64::new(0),
            in_progress: AtomicUsize::new(0),
            responding: AtomicUsize::new(0),
            written: AtomicU64::new(0),
            read: AtomicU64::new(0),
        }
    }

    /// Counts a request as begun and in progress until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InProgress {
        self.activity.fetch_add(1, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress { peer: self.clone(), responding: false }
    }

    /// Resolves with [`Quiet::Idle`] once the connection has had no request in progress, and
    /// no request begun or response ended, for a whole `period`: bytes that trickle in do not
    /// count, a request must begin. Resolves with [`Quiet::Stalled`] once a response has been on
    /// its way for `stall` without a request begun or ended and without a byte read from or
    /// written to the client. Checked every `period`, so up to a `period` late. One timer per
    /// connection, re-armed every `period`, stands in for hyper's header-read timer, which was
    /// made, registered and cancelled for every request (about 1 850 instructions per request,
    /// `benches/instructions.sh`).
    async fn quiet(&self, period: Duration, stall: Duration) -> Quiet {
        let moved = || {
            (
                self.activity.load(Ordering::Relaxed),
                self.read.load(Ordering::Relaxed),
                self.written.load(Ordering::Relaxed),
            )
        };
        let mut seen = moved();
        let mut stalled = Duration::ZERO;
        loop {
            tokio::time::sleep(period).await;
            let now = moved();
            if now.0 == seen.0 && self.in_progress.load(Ordering::Relaxed) == 0 {
                return Quiet::Idle;
            }
            if now == seen && self.responding.load(Ordering::Relaxed) > 0 {
                stalled += period;
                if stalled >= stall {
                    return Quiet::Stalled;
                }
            } else {
                stalled = Duration::ZERO;
            }
            seen = now;
        }
    }

    /// Resolves once `counter` has not moved for a whole `period`: checked every `period`, so
    /// after `period` to twice that.
    async fn still(counter: &AtomicU64, period: Duration) {
        let mut seen = counter.load(Ordering::Relaxed);
        loop {
            tokio::time::sleep(period).await;
            let now = counter.load(Ordering::Relaxed);
            if now == seen {
                return;
            }
            seen = now;
        }
    }
}

/// What [`Peer::quiet`] found.
enum Quiet {
    /// No request in progress, none begun or ended, for a period.
    Idle,
    /// A response being sent, and nothing moved on the connection for the stall time.
    Stalled,
}

/// The idle close of one connection (see [`ServeOptions::idle_close`]), a task of its own so
/// the connection's task never polls its timer (a timer polled beside the connection cost 800
/// instructions per request). It ends when the connection does (which drops the receiver of
/// `close`), or asks the connection to close gracefully and then cuts it if its writes make no
/// progress for a period (see [`Counted`]), or cuts it at once if a response on its way has
/// stalled (see [`ServeOptions::stall_cut`]).
async fn watch_idle(
    peer: Arc<Peer>,
    connection: tokio::task::AbortHandle,
    mut close: oneshot::Sender<()>,
    period: Duration,
    stall: Duration,
) {
    let quiet = tokio::select! {
        () = close.closed() => return,
        quiet = peer.quiet(period, stall) => quiet,
    };
    if let Quiet::Stalled = quiet {
        tracing::info!(peer = %peer.addr, stalled_s = stall.as_secs(), "cut a connection whose response moved no byte");
        connection.abort();
        return;
    }
    tracing::debug!(peer = %peer.addr, "closing an idle connection");
    let _ = close.send(());
    Peer::still(&peer.written, period).await;
    if !connection.is_finished() {
        tracing::debug!(peer = %peer.addr, "cut an idle connection that did not close");
        connection.abort();
    }
}

/// The client's socket, counting the writes that sent something and the reads that got
/// something. After an idle close has been asked for, a connection whose writes make no
/// progress for a period is cut (a request head that is only partly in, which hyper's graceful
/// close waits for, or a client that reads nothing), while one still sending a response's tail
/// to a slow reader is left to finish. While a response is being sent, a connection on which
/// neither moves for the stall time is cut ([`ServeOptions::stall_cut`]).
pub struct Counted {
    io: tokio::net::TcpStream,
    peer: Arc<Peer>,
}

impl Counted {
    /// The socket, for reads that bypass tokio's I/O traits (`splice(2)`); each that got
    /// something is told with [`got`](Self::got).
    pub(crate) fn socket(&self) -> &tokio::net::TcpStream {
        &self.io
    }

    /// Counts a read made on [`socket`](Self::socket) that got something.
    pub(crate) fn got(&self) {
        self.peer.read.fetch_add(1, Ordering::Relaxed);
    }

    fn count(&self, sent: &std::task::Poll<std::io::Result<usize>>) {
        if matches!(sent, std::task::Poll::Ready(Ok(n)) if *n > 0) {
            self.peer.written.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl tokio::io::AsyncRead for Counted {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let got = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            self.peer.read.fetch_add(1, Ordering::Relaxed);
        }
        got
    }
}

impl tokio::io::AsyncWrite for Counted {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let sent = Pin::new(&mut self.io).poll_write(cx, buf);
        self.count(&sent);
        sent
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        let sent = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.count(&sent);
        sent
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// A request in progress on its connection (see [`Peer::begin`]), and once its handler has
/// answered, a response being sent. Its end counts as activity: hyper drops a response body
/// once its last chunk is in hyper's write buffer, which can still hold a MiB or more for a
/// slow client (`body::MAX_READ`), so the quiet period starts again there.
pub(crate) struct InProgress {
    peer: Arc<Peer>,
    responding: bool,
}

impl InProgress {
    /// The handler has answered: from now on the connection may stall (see [`Peer::quiet`]).
    pub(crate) fn responding(mut self) -> Self {
        self.peer.responding.fetch_add(1, Ordering::Relaxed);
        self.responding = true;
        self
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        if self.responding {
            self.peer.responding.fetch_sub(1, Ordering::Relaxed);
        }
        self.peer.activity.fetch_add(1, Ordering::Relaxed);
        self.peer.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until it ends or is dropped.
struct Tracked {
    body: Body,
    _request: InProgress,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Something that answers requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers `req`, which arrived from `peer`.
    fn handle(&self, req: Request<Incoming>, peer: Arc<Peer>) -> impl Future<Output = Response<Body>> + Send;

    /// Serves the requests of an HTTP/1 connection from `peer` itself for as long as it can,
    /// then hands the connection to hyper, with the bytes it has read and not answered, to be
    /// served through [`handle`](Self::handle); or ends it. It must end the connection once
    /// `signals` fire between requests. By default it hands the connection over at once.
    fn serve_h1<S>(&self, io: S, peer: &Arc<Peer>, signals: &mut Signals) -> impl Future<Output = Served<S>> + Send
    where
        S: Connection,
    {
        let _ = (peer, signals);
        async move { Served::HandOver(Prefixed::new(bytes::Bytes::new(), io)) }
    }
}

/// A client's connection as [`Handler::serve_h1`] gets it: the plain socket or TLS over it.
pub trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// The socket itself, when the connection is plain (no TLS): what is written to it goes to
    /// the client as it is.
    fn plain(&self) -> Option<&Counted> {
        None
    }
}

impl Connection for Counted {
    fn plain(&self) -> Option<&Counted> {
        Some(self)
    }
}

impl Connection for tokio_rustls::server::TlsStream<tokio::io::BufReader<Counted>> {}

/// How [`Handler::serve_h1`] left a connection.
pub enum Served<S> {
    /// Ended (closed, or cut).
    Done,
    /// To be served by hyper from here on.
    HandOver(Prefixed<S>),
}

/// A stream whose reads first return `prefix`: bytes read from it already and not consumed.
pub struct Prefixed<S> {
    prefix: bytes::Bytes,
    io: S,
}

impl<S> Prefixed<S> {
    /// `io`, with `prefix` to be read again first.
    pub fn new(prefix: bytes::Bytes, io: S) -> Self {
        Prefixed { prefix, io }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// What asks a connection to finish: the server stopping, or the connection's idle close.
pub struct Signals {
    /// Resolves once either comes. One future for the connection's life, polled in place: a
    /// connection waits for it between every two requests, and a new wait each time cost a
    /// new registration with the stop channel.
    either: Pin<Box<dyn Future<Output = ()> + Send>>,
    fired: bool,
    /// Held until the connection ends: the server's drain waits for every receiver to go.
    _stopping: tokio::sync::watch::Receiver<()>,
}

impl Signals {
    fn new(stopping: tokio::sync::watch::Receiver<()>, idle: oneshot::Receiver<()>) -> Self {
        let mut watched = stopping.clone();
        let either = Box::pin(async move {
            tokio::select! {
                _ = watched.changed() => {}
                _ = idle => {}
            }
        });
        Signals { either, fired: false, _stopping: stopping }
    }

    /// Resolves once the server stops or the connection has been idle too long (at once if
    /// either has happened already). Cancel-safe.
    pub async fn fired(&mut self) {
        if !self.fired {
            (&mut self.either).await;
            self.fired = true;
        }
    }
}

/// How to serve.
#[derive(Clone)]
pub struct ServeOptions {
    /// Terminate TLS with this acceptor.
    pub tls: Option<TlsAcceptor>,
    /// Speak HTTP/1.1 only (HubiC's front end never offered h2).
    pub http1_only: bool,
    /// A connection with no request in progress that begins none for this long (to twice
    /// this long) is closed gracefully: a client that connects and sends nothing, trickles a
    /// request head, or keeps an idle connection open. hyper finishes sending what it holds
    /// first, and says GOAWAY on h2. Like nginx's `keepalive_timeout` and
    /// `client_header_timeout` together. 30 s by default; at least 1 ms.
    pub idle_close: Duration,
    /// A connection sending a response on which no byte is read or written, and no request
    /// begins or ends, for this long (checked every `idle_close`) is cut: a client that stopped
    /// reading its download. hyper stops polling a body it cannot write, so the streaming
    /// path's own idle timeout never sees such a stall. Longer than that idle timeout, which
    /// answers first where the wait is upstream's:
    /// [`ProxySettings::stall_cut`](crate::config::ProxySettings::stall_cut), 330 s by default.
    /// A request whose handler has not answered yet is left to the handler's own timeouts.
    pub stall_cut: Duration,
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            http1_only: false,
            idle_close: IDLE_CLOSE,
            stall_cut: crate::config::ProxySettings::default().stall_cut(),
        }
    }
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
    // hyper's own header-read timer costs a timer per request; `Peer::quiet` does its work.
    let mut h1 = http1::Builder::new();
    h1.timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(crate::body::MAX_READ)
        .max_header_size(MAX_HEAD)
        .max_headers(crate::body::MAX_FIELDS);
    let mut h2 = http2::Builder::new(TokioExecutor::new());
    h2.timer(TokioTimer::new());
    let builders = Arc::new((h1, h2));
    let http1_only = options.http1_only;
    // Each connection holds a receiver until it has finished: the drain waits for them all.
    let (stop, _) = tokio::sync::watch::channel(());
    tokio::pin!(shutdown);
    let idle_close = options.idle_close.max(Duration::from_millis(1));
    let stall_cut = options.stall_cut;
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
        let stopping = stop.subscribe();
        let handler = handler.clone();
        let builders = builders.clone();
        let tls = options.tls.clone();
        let client = Arc::new(Peer::new(peer));
        let watched = client.clone();
        let (idle_tx, idle_rx) = oneshot::channel::<()>();
        let stream = Counted { io: stream, peer: client.clone() };
        let (fast, peer_of_fast) = (handler.clone(), client.clone());
        let connection = async move {
            let mut signals = Signals::new(stopping, idle_rx);
            let service = hyper::service::service_fn(move |req| {
                let (handler, client) = (handler.clone(), client.clone());
                async move {
                    let request = client.begin();
                    let resp = handler.handle(req, client).await;
                    Ok::<_, Infallible>(resp.map(|body| Tracked { body, _request: request.responding() }))
                }
            });
            let result = match tls {
                Some(acceptor) => {
                    let stream = tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, stream);
                    let mut tls_stream = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls_stream)) => tls_stream,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, cause = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => return,
                    };
                    tls_stream.get_mut().1.set_buffer_limit(Some(TLS_SEND_BUFFER));
                    if !http1_only && tls_stream.get_ref().1.alpn_protocol() == Some(b"h2") {
                        let conn = builders.1.serve_connection(TokioIo::new(tls_stream), service);
                        until_done(conn, |c| c.graceful_shutdown(), signals).await
                    } else {
                        let io = match fast.serve_h1(tls_stream, &peer_of_fast, &mut signals).await {
                            Served::Done => return,
                            Served::HandOver(io) => io,
                        };
                        let conn = builders.0.serve_connection(TokioIo::new(io), service);
                        until_done(conn, |c| c.graceful_shutdown(), signals).await
                    }
                }
                // Plain connections speak HTTP/1: no Swift client uses h2 without TLS.
                None => {
                    let io = match fast.serve_h1(stream, &peer_of_fast, &mut signals).await {
                        Served::Done => return,
                        Served::HandOver(io) => io,
                    };
                    let conn = builders.0.serve_connection(TokioIo::new(io), service);
                    until_done(conn, |c| c.graceful_shutdown(), signals).await
                }
            };
            if let Err(e) = result {
                tracing::debug!(%peer, cause = %e, "connection ended with an error");
            }
        };
        tokio::spawn(watch_idle(watched, tokio::spawn(connection).abort_handle(), idle_tx, idle_close, stall_cut));
    }
    drop(listener);
    let _ = stop.send(());
    if tokio::time::timeout(DRAIN_TIMEOUT, stop.closed()).await.is_err() {
        tracing::warn!("connections still open after the drain timeout; closing");
    }
}

/// Serves `conn` to its end. When the server stops or the connection has been idle, asks it to
/// finish gracefully (`shut`): hyper closes an HTTP/1 connection at once if it is idle or has
/// seen nothing yet, lets a response in progress finish, flushing what it holds, and says
/// GOAWAY on h2; it goes on waiting for a request head that is only partly in (the idle watch
/// cuts that, see `Counted`). `signals` are held until the end: the server's drain waits for
/// its stop receiver to go.
async fn until_done<C: Future>(conn: C, shut: fn(Pin<&mut C>), mut signals: Signals) -> C::Output {
    tokio::pin!(conn);
    tokio::select! {
        biased;
        out = conn.as_mut() => return out,
        () = signals.fired() => {}
    }
    shut(conn.as_mut());
    let out = conn.await;
    drop(signals);
    out
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

/// Writes a readiness announcement (a base URL, the demo's `export` lines) to `out` in one write
/// and flushes it. The announcement is a courtesy to whoever started the process: if it cannot
/// be written (a reader that closed the pipe, a full disk), a warning goes to the log and the
/// server goes on serving, as it would for any other failed log line. One write, so that a
/// reader of a pipe sees all of it or none of it (up to `PIPE_BUF`, 4 KiB, on Linux).
pub fn announce(out: &mut (dyn std::io::Write + Send), text: &str) {
    if let Err(e) = out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        tracing::warn!(cause = %e, "cannot write the announcement to stdout; serving on");
    }
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

    /// Answers `/quick` at once, `/big` at once with 16 MiB (more than the socket buffers
    /// hold, so hyper still holds a tail when the body has ended), `/late` after five idle
    /// periods, and `/slow` at once with a body whose one chunk comes five idle periods later:
    /// work in progress that outlasts the idle close.
    /// `/endless` answers with a body that never ends and notifies the third field when it is
    /// dropped.
    struct Slow(Duration, bytes::Bytes, Arc<tokio::sync::Notify>);

    /// A response body that never ends, notifying when dropped.
    struct Endless(bytes::Bytes, Arc<tokio::sync::Notify>);

    impl Drop for Endless {
        fn drop(&mut self) {
            self.1.notify_one();
        }
    }

    impl http_body::Body for Endless {
        type Data = bytes::Bytes;
        type Error = crate::body::BoxError;

        fn poll_frame(
            self: Pin<&mut Self>,
            _cx: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.0.clone()))))
        }
    }

    const BIG: usize = 16 << 20;

    impl Handler for Slow {
        async fn handle(&self, req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
            let late = 5 * self.0;
            match req.uri().path() {
                "/quick" => return crate::body::text(http::StatusCode::OK, "quick"),
                "/big" => return crate::body::text(http::StatusCode::OK, self.1.clone()),
                "/endless" => return Response::new(Endless(self.1.slice(..64 * 1024), self.2.clone()).boxed()),
                "/late" => {
                    tokio::time::sleep(late).await;
                    return crate::body::text(http::StatusCode::OK, "late");
                }
                _ => {}
            }
            let (tx, rx) =
                tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>>(1);
            tokio::spawn(async move {
                tokio::time::sleep(late).await;
                let _ = tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"slow")))).await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
            Response::new(http_body_util::StreamBody::new(stream).boxed())
        }
    }

    /// A server answering with [`Slow`], closing idle connections after `period`.
    struct SlowServer {
        addr: SocketAddr,
        stop: oneshot::Sender<()>,
        server: tokio::task::JoinHandle<()>,
        /// Notified when an `/endless` body is dropped.
        dropped: Arc<tokio::sync::Notify>,
    }

    impl SlowServer {
        async fn start(period: Duration) -> SlowServer {
            Self::start_with(period, ServeOptions::default().stall_cut).await
        }

        /// With `stall` as [`ServeOptions::stall_cut`].
        async fn start_with(period: Duration, stall: Duration) -> SlowServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let (stop, stopped) = oneshot::channel::<()>();
            let options = ServeOptions { idle_close: period, stall_cut: stall, ..ServeOptions::default() };
            // Made before anything is timed: 16 MiB take a while to fill in a debug build.
            let big = bytes::Bytes::from(vec![b'b'; BIG]);
            let dropped = Arc::new(tokio::sync::Notify::new());
            let server = tokio::spawn(run(listener, Arc::new(Slow(period, big, dropped.clone())), options, async {
                let _ = stopped.await;
            }));
            SlowServer { addr, stop, server, dropped }
        }

        async fn connect(&self) -> tokio::net::TcpStream {
            tokio::net::TcpStream::connect(self.addr).await.unwrap()
        }

        /// Stops the server and waits until it has drained.
        async fn stop(self) {
            self.stop.send(()).unwrap();
            self.server.await.unwrap();
        }
    }

    /// Reads until the server closes the connection (or `deadline` passes, which fails),
    /// writing one byte of a never-ending header line before each read when `trickle` is set.
    async fn closed_within(s: &mut tokio::net::TcpStream, deadline: Duration, trickle: bool) -> Vec<u8> {
        let until = tokio::time::Instant::now() + deadline;
        let mut seen = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            assert!(tokio::time::Instant::now() < until, "the connection was not closed in {deadline:?}");
            if trickle && s.write_all(b"a").await.is_err() {
                return seen;
            }
            match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
                Ok(Ok(0)) | Ok(Err(_)) => return seen,
                Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
                Err(_) => {}
            }
        }
    }

    /// A connection that sends nothing or trickles a request head byte by byte is closed
    /// without an answer, and one that stays open after its response is closed too.
    #[tokio::test]
    async fn a_connection_that_begins_no_request_is_closed() {
        let period = Duration::from_millis(100);
        let server = SlowServer::start(period).await;
        let mut silent = server.connect().await;
        assert!(closed_within(&mut silent, 20 * period, false).await.is_empty());
        let mut trickling = server.connect().await;
        trickling.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
        assert!(closed_within(&mut trickling, 20 * period, true).await.is_empty());
        let mut kept = server.connect().await;
        kept.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(closed_within(&mut kept, 20 * period, false).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("4\r\nslow\r\n0\r\n\r\n"), "{answer}");
        server.stop().await;
    }

    /// A client that stops reading a response that has not ended is cut once nothing has
    /// moved for the stall time, and the response body is dropped (in the gateway, with it the
    /// upstream connection). A response whose body waits for less than that, with nothing
    /// moving, is sent whole; so is one whose handler takes longer than the stall time to
    /// answer (its own timeouts govern it).
    #[tokio::test]
    async fn a_response_that_moves_no_byte_is_cut() {
        let period = Duration::from_millis(200);
        let stall = 10 * period;
        let server = SlowServer::start_with(period, stall).await;
        let mut stuck = server.connect().await;
        let asked = tokio::time::Instant::now();
        stuck.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let cut = tokio::time::timeout(Duration::from_secs(20), server.dropped.notified()).await;
        cut.expect("a response nobody reads was not cut in 20 s");
        assert!(asked.elapsed() >= stall, "cut after {:?}, before the stall time", asked.elapsed());
        // What the socket buffers held, then the end.
        assert!(!closed_within(&mut stuck, Duration::from_secs(10), false).await.is_empty());
        let mut waiting = server.connect().await;
        waiting.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(closed_within(&mut waiting, 20 * period, false).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("4\r\nslow\r\n0\r\n\r\n"), "{answer}");
        server.stop().await;
        let server = SlowServer::start_with(period, 2 * period).await;
        let mut late = server.connect().await;
        late.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let answer = String::from_utf8(closed_within(&mut late, 20 * period, false).await).unwrap();
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("late"), "{answer}");
        server.stop().await;
    }

    /// The first 12 bytes of the answer on `r` ("HTTP/1.1 200"), within 10 s.
    async fn status_of(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
        let mut line = [0u8; 12];
        let read = tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut line)).await;
        read.expect("no answer in 10 s").unwrap();
        String::from_utf8_lossy(&line).into_owned()
    }

    /// A request head just under `MAX_HEAD` is served; one just over it, or far over the read
    /// limit, is refused with 431.
    #[tokio::test]
    async fn a_request_head_beyond_max_head_gets_431() {
        let server = SlowServer::start(Duration::from_secs(1)).await;
        let under = MAX_HEAD - 1024;
        for (field, status) in [(under, "200"), (MAX_HEAD, "431"), (4 * crate::body::MAX_READ, "431")] {
            let mut head = b"GET /quick HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
            head.resize(head.len() + field, b'a');
            head.extend_from_slice(b"\r\n\r\n");
            let (mut read, mut write) = server.connect().await.into_split();
            // The server may answer and close before it has all of a refused head.
            let writer = tokio::spawn(async move { write.write_all(&head).await.map(|_| write) });
            assert_eq!(status_of(&mut read).await, format!("HTTP/1.1 {status}"), "{field} bytes");
            let taken = tokio::time::timeout(Duration::from_secs(10), writer).await;
            drop(taken.expect("the head was not taken in 10 s"));
        }
        server.stop().await;
    }

    /// A connection on which nothing has been sent does not hold the server's drain (10 s):
    /// hyper's graceful close ends an HTTP/1 connection that has seen no bytes at once, as
    /// hyper-util's auto builder did while it waited for the first bytes.
    #[tokio::test]
    async fn an_unused_connection_does_not_hold_the_drain() {
        let server = SlowServer::start(Duration::from_secs(60)).await;
        let mut unused = server.connect().await;
        let mut used = server.connect().await;
        used.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        assert_eq!(status_of(&mut used).await, "HTTP/1.1 200");
        let deadline = Duration::from_secs(5);
        tokio::time::timeout(deadline, server.stop()).await.expect("the drain waited for an unused connection");
        assert!(closed_within(&mut unused, deadline, false).await.is_empty());
        // The rest of its answer, then the close.
        assert!(closed_within(&mut used, deadline, false).await.ends_with(b"quick"));
    }

    /// A connection that begins a request every quarter period stays open past the longest an
    /// idle one is kept (two periods).
    #[tokio::test]
    async fn a_connection_in_use_stays_open() {
        let period = Duration::from_secs(1);
        let server = SlowServer::start(period).await;
        let mut s = server.connect().await;
        let until = tokio::time::Instant::now() + period * 5 / 2;
        let mut buf = vec![0u8; 4096];
        while tokio::time::Instant::now() < until {
            s.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
            let n = tokio::time::timeout(period, s.read(&mut buf)).await.unwrap().unwrap();
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("quick"), "{answer}");
            // The client's pace, not synchronisation: a request every quarter period.
            tokio::time::sleep(period / 4).await;
        }
        server.stop().await;
    }

    /// A client that reads its response slowly gets all of it: hyper drops the response body
    /// while its tail still waits in hyper's write buffer, and an idle close then lets hyper
    /// finish sending, for as long as the client keeps taking some of it, before it closes.
    /// (A client that takes nothing for a whole period after that is cut, like nginx's
    /// `send_timeout`.)
    #[tokio::test]
    async fn a_slow_reader_gets_its_whole_response() {
        let period = Duration::from_millis(200);
        let server = SlowServer::start(period).await;
        let mut s = server.connect().await;
        s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        // The client's pace, not synchronisation: it reads nothing for one and a half periods
        // (the idle close is asked for one to two periods after the body ended, and its tail is
        // still in hyper's buffer then), then reads on, well within the period the cut allows.
        tokio::time::sleep(period * 3 / 2).await;
        let answer = closed_within(&mut s, Duration::from_secs(30), false).await;
        let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| answer.len() - i - 4);
        assert_eq!(body, Some(BIG), "{:?}", String::from_utf8_lossy(&answer[..answer.len().min(200)]));
        server.stop().await;
    }

    /// A request whose answer, or whose response body, takes several idle periods keeps its
    /// connection: only a connection with nothing in progress is idle.
    #[tokio::test]
    async fn a_request_in_progress_keeps_its_connection() {
        let period = Duration::from_millis(50);
        let server = SlowServer::start(period).await;
        for (path, body) in [("/late", "late"), ("/slow", "slow")] {
            let mut s = server.connect().await;
            s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes())
                .await
                .unwrap();
            let mut out = String::new();
            tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
            assert!(out.starts_with("HTTP/1.1 200") && out.contains(body), "{path}: {out}");
        }
        server.stop().await;
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
