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

pub use crate::body::MAX_HEAD;

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
/// Time open connections get to finish once shutdown starts, by default.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);
/// Bytes read from the socket at once beneath TLS: rustls asks for 4 KiB at a time, which
/// would cost a system call per TLS record on uploads.
const TLS_READ_BUFFER: usize = 64 * 1024;
/// Encrypted bytes rustls may hold before a write returns, so a bulk chunk leaves in few
/// `writev` calls rather than one per 64 KiB.
const TLS_SEND_BUFFER: usize = 256 * 1024;

pub mod admission;
mod conn;
mod observe;
mod takeover;
mod tls;
mod workers;

pub(crate) use conn::InProgress;
use conn::{watch_idle, Tracked};
pub use conn::{Counted, Handler, Peer, Signals};
pub use observe::{redacted, Acting, Engine, Observer};
pub use takeover::{Connection, Prefixed, Served};
pub use tls::{hangups, tls_acceptor, Certificates, Hangups, TlsError};
pub use workers::{run_workers, worker_index};

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
    /// Connections one client address may hold open; one more is closed at once.
    pub connections_per_address: usize,
    /// Bytes all connections together may hold before their first request begins: a
    /// connection whose read would pass it is closed.
    pub head_memory: usize,
    /// What counts and logs requests; nothing does without one.
    pub observer: Option<Arc<Observer>>,
    /// Time open connections get to finish once shutdown starts (a request in flight goes on,
    /// an idle connection closes); 30 s by default.
    pub drain_timeout: Duration,
    /// Cancelled to cut a drain short (a second SIGTERM).
    pub hurry: tokio_util::sync::CancellationToken,
    /// The event loops that serve together ([`run_workers`]): none stops serving before the
    /// drain of all of them is done, so that a connection one accepts late is not dropped with
    /// its loop while another still drains.
    /// [`run_workers`] sets it; leave it at its default.
    pub drain_group: Arc<DrainGroup>,
}

/// Event loops still draining.
#[derive(Debug)]
pub struct DrainGroup(tokio::sync::watch::Sender<usize>);

impl DrainGroup {
    /// A group of `loops` event loops (at least one).
    pub fn new(loops: usize) -> Arc<Self> {
        Arc::new(DrainGroup(tokio::sync::watch::Sender::new(loops.max(1))))
    }

    /// One loop's own connections are gone.
    fn done(&self) {
        self.0.send_modify(|left| *left = left.saturating_sub(1));
    }

    /// Resolves once every loop's are.
    async fn all_done(&self) {
        let _ = self.0.subscribe().wait_for(|left| *left == 0).await;
    }
}

impl Default for ServeOptions {
    fn default() -> Self {
        ServeOptions {
            tls: None,
            http1_only: false,
            idle_close: IDLE_CLOSE,
            stall_cut: crate::config::ProxySettings::default().stall_cut(),
            connections_per_address: admission::CONNECTIONS_PER_ADDRESS,
            head_memory: admission::HEAD_MEMORY,
            observer: None,
            drain_timeout: DRAIN_TIMEOUT,
            hurry: tokio_util::sync::CancellationToken::new(),
            drain_group: DrainGroup::new(1),
        }
    }
}

/// Serves `handler` on `listener` until `shutdown` completes, then drains: connections open then
/// finish what they are doing (idle ones close at once) while new ones are still served, until
/// the first are all gone (in every loop of the drain group), `drain_timeout` has passed, or
/// `hurry` is cancelled.
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
    // Each connection accepted before the drain holds a receiver until it has finished: the
    // drain waits for them all. Those accepted while draining hold one of `late`, which never
    // fires: the handler answers their requests as a draining server does (a load balancer's
    // readiness probe gets its 503), and the drain does not wait for them.
    let (stop, _) = tokio::sync::watch::channel(());
    let (late, _) = tokio::sync::watch::channel(());
    let mut draining = false;
    let mut drained = false;
    let drain_end = tokio::time::sleep(Duration::MAX / 4);
    tokio::pin!(shutdown, drain_end);
    let idle_close = options.idle_close.max(Duration::from_millis(1));
    let stall_cut = options.stall_cut;
    let admission = admission::Admission::new(options.connections_per_address, options.head_memory);
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
            () = &mut shutdown, if !draining => {
                draining = true;
                let _ = stop.send(());
                let now = tokio::time::Instant::now();
                drain_end.as_mut().reset(now.checked_add(options.drain_timeout).unwrap_or(now + Duration::from_secs(86_400)));
                continue;
            }
            () = stop.closed(), if draining && !drained => {
                drained = true;
                options.drain_group.done();
                continue;
            }
            () = options.drain_group.all_done(), if drained => break,
            () = &mut drain_end, if draining => {
                tracing::warn!("connections still open at the end of the drain; closing them");
                break;
            }
            () = options.hurry.cancelled(), if draining => {
                tracing::warn!("drain cut short; closing the connections still open");
                break;
            }
        };
        let Some(admitted) = admission.admit(peer.ip()) else {
            tracing::debug!(%peer, "closed a connection: its address holds as many as it may");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let stopping = if draining { late.subscribe() } else { stop.subscribe() };
        let handler = handler.clone();
        let builders = builders.clone();
        let tls = options.tls.clone();
        let client = Arc::new(Peer::observed(peer, options.observer.clone()));
        let watched = client.clone();
        let (idle_tx, idle_rx) = oneshot::channel::<()>();
        let open = options.observer.as_ref().map(|o| o.metrics.connection());
        let stream = Counted { io: stream, peer: client.clone(), admitted, _open: open };
        let (fast, peer_of_fast) = (handler.clone(), client.clone());
        let connection = async move {
            let mut signals = Signals::new(stopping, idle_rx);
            let service = hyper::service::service_fn(move |req| {
                let (handler, client) = (handler.clone(), client.clone());
                async move {
                    let kind = handler.kind(req.uri().path());
                    let target = || req.uri().path_and_query().map_or("/", |p| p.as_str()).to_owned();
                    let request = client.begin_request(kind, req.method(), target);
                    let resp = handler.handle(req, client).await;
                    let trans_id = resp.headers().get("x-trans-id").map(|v| v.as_bytes());
                    let acting = || resp.extensions().get::<Acting>().cloned();
                    let request = request.answered(resp.status().as_u16(), Engine::Hyper, trans_id, acting);
                    Ok::<_, Infallible>(resp.map(|body| Tracked { body, request }))
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
    let mut signals = StopSignals::new()?;
    Ok(async move { signals.next().await })
}

/// SIGINT and SIGTERM as they come: the first starts a drain, the next cuts it short.
pub struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Registers for both: from now on they no longer end the process.
    pub fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(StopSignals { interrupt: signal(SignalKind::interrupt())?, terminate: signal(SignalKind::terminate())? })
    }

    /// Resolves at the next of either.
    pub async fn next(&mut self) {
        tokio::select! {
            _ = self.interrupt.recv() => {},
            _ = self.terminate.recv() => {},
        }
    }
}

#[cfg(test)]
mod tests;
