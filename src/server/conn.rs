//! One client connection: its peer, the counted socket and the idle and stall watch over it,
//! the tracking of requests in progress, the handler trait, and the signals that end it.

use super::*;

/// The other end of a connection, with what the proxy forwards about it computed once per
/// connection rather than per request.
#[derive(Debug)]
pub struct Peer {
    /// The client's address.
    pub addr: SocketAddr,
    /// The client's IP as an `X-Forwarded-For` value.
    pub forwarded_for: http::HeaderValue,
    /// Requests begun and responses ended on the connection so far.
    pub(super) activity: AtomicU64,
    /// Requests whose response has not ended (or been dropped) yet.
    pub(super) in_progress: AtomicUsize,
    /// Of those, the ones whose handler has answered: their response is being sent.
    pub(super) responding: AtomicUsize,
    /// Writes to the client's socket that sent something.
    pub(super) written: AtomicU64,
    /// Reads from the client's socket that got something.
    pub(super) read: AtomicU64,
    /// Bytes read from the client's socket, and written to it.
    pub(super) bytes_in: AtomicU64,
    pub(super) bytes_out: AtomicU64,
    /// Of those read, the ones already charged to a request in the access log.
    pub(super) logged_in: AtomicU64,
    /// What counts and logs the connection's requests, if anything does.
    pub(super) observer: Option<Arc<super::observe::Observer>>,
}

impl Peer {
    /// Describes `addr`.
    pub fn new(addr: SocketAddr) -> Self {
        Self::observed(addr, None)
    }

    /// Describes `addr`, whose requests `observer` counts and logs.
    pub fn observed(addr: SocketAddr, observer: Option<Arc<super::observe::Observer>>) -> Self {
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
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            logged_in: AtomicU64::new(0),
            observer,
        }
    }

    /// Counts a request as begun and in progress until the guard is dropped.
    pub(crate) fn begin(self: &Arc<Self>) -> InProgress {
        self.activity.fetch_add(1, Ordering::Relaxed);
        self.in_progress.fetch_add(1, Ordering::Relaxed);
        InProgress { peer: self.clone(), responding: false, record: None }
    }

    /// Resolves with [`Quiet::Idle`] once the connection has had no request in progress, and
    /// no request begun or response ended, for a whole `period`: bytes that trickle in do not
    /// count, a request must begin. Resolves with [`Quiet::Stalled`] once a response has been on
    /// its way for `stall` without a request begun or ended and without a byte read from or
    /// written to the client. Checked every `period`, so up to a `period` late. One timer per
    /// connection, re-armed every `period`, stands in for hyper's header-read timer, which was
    /// made, registered and cancelled for every request (about 1 850 instructions per request,
    /// `benches/instructions.sh`).
    pub(super) async fn quiet(&self, period: Duration, stall: Duration) -> Quiet {
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
    pub(super) async fn still(counter: &AtomicU64, period: Duration) {
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
pub(super) enum Quiet {
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
pub(super) async fn watch_idle(
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
    pub(super) io: tokio::net::TcpStream,
    pub(super) peer: Arc<Peer>,
    /// The connection's place in the per-address count and the head budget.
    pub(super) admitted: super::admission::Admitted,
    /// Counted in the metrics' open connections while it lives.
    pub(super) _open: Option<crate::metrics::OpenConnection>,
}

impl Counted {
    /// The socket, for reads that bypass tokio's I/O traits (`splice(2)`); each that got
    /// something is told with [`got`](Self::got).
    pub(crate) fn socket(&self) -> &tokio::net::TcpStream {
        &self.io
    }

    /// Counts a read of `n` bytes made on [`socket`](Self::socket).
    pub(crate) fn got(&self, n: usize) {
        self.peer.read.fetch_add(1, Ordering::Relaxed);
        self.peer.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
        if let Some(observer) = &self.peer.observer {
            observer.metrics.bytes_in(n);
        }
    }

    pub(super) fn count(&self, sent: &std::task::Poll<std::io::Result<usize>>) {
        if let std::task::Poll::Ready(Ok(n)) = *sent {
            if n > 0 {
                self.peer.written.fetch_add(1, Ordering::Relaxed);
                self.peer.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
                if let Some(observer) = &self.peer.observer {
                    observer.metrics.bytes_out(n);
                }
            }
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
        let n = buf.filled().len() - before;
        if n > 0 {
            let this = &mut *self;
            this.got(n);
            if !this.admitted.read(n, || this.peer.activity.load(Ordering::Relaxed) > 0) {
                tracing::info!(peer = %this.peer.addr, "closed a connection: request heads not yet read hold the whole head budget");
                return std::task::Poll::Ready(Err(std::io::Error::other("the head memory budget is spent")));
            }
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
    pub(super) peer: Arc<Peer>,
    pub(super) responding: bool,
    /// What the metrics and the access log keep of it (see `observe`).
    pub(super) record: Option<super::observe::Record>,
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
        self.log();
        if self.responding {
            self.peer.responding.fetch_sub(1, Ordering::Relaxed);
        }
        self.peer.activity.fetch_add(1, Ordering::Relaxed);
        self.peer.in_progress.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A response body that keeps its request counted as in progress until it ends or is dropped.
pub(super) struct Tracked {
    pub(super) body: Body,
    pub(super) request: InProgress,
}

impl http_body::Body for Tracked {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(Some(Ok(frame))) = &polled {
            if let Some(data) = frame.data_ref() {
                self.request.sent(data.len() as u64);
            }
        }
        polled
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
    /// What a request for `path` is for, for the metrics.
    fn kind(&self, path: &str) -> crate::metrics::Kind {
        let _ = path;
        crate::metrics::Kind::Ops
    }

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

/// What asks a connection to finish: the server stopping, or the connection's idle close.
pub struct Signals {
    /// Resolves once either comes. One future for the connection's life, polled in place: a
    /// connection waits for it between every two requests, and a new wait each time cost a
    /// new registration with the stop channel.
    pub(super) either: Pin<Box<dyn Future<Output = ()> + Send>>,
    pub(super) fired: bool,
    /// Held until the connection ends: the server's drain waits for every receiver to go.
    pub(super) _stopping: tokio::sync::watch::Receiver<()>,
}

impl Signals {
    pub(super) fn new(stopping: tokio::sync::watch::Receiver<()>, idle: oneshot::Receiver<()>) -> Self {
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
