//! Upstream HTTP/1 connections, one pool per worker thread, on hyper's client connection API.
//!
//! A request takes the most recently parked connection to its origin (so a few connections
//! stay warm and the rest age out), or opens one. Its connection goes back to the pool when the
//! response body has been read to its end, without a task of its own: whether the connection
//! can carry another request is checked when it is next taken. A request that a parked
//! connection could not even start to send (upstream closed it meanwhile) is sent again on
//! another connection; nothing else is retried here.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, Uri};
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioIo;

use super::stream::UpstreamBody;

/// How long a parked connection may wait to be taken again before it is dropped.
/// Below the idle timeouts upstream servers apply (Swift's proxy server: 60 s), so a parked
/// connection is seldom closed by upstream just as a request goes out on it.
pub(super) const IDLE_LIFE: Duration = Duration::from_secs(30);

/// Most connections parked per origin and worker.
const MAX_IDLE: usize = 64;

/// How long a taken connection may take to become ready. Its last response was read to the end,
/// so its task needs a moment at most, unless upstream answered before taking a whole request
/// body, which then still streams; such a connection is not worth waiting for, and is dropped.
const READY_WAIT: Duration = Duration::from_millis(100);

/// Why no response came.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection could be opened (refused, unresolvable, TLS failed, timed out).
    #[error("cannot connect upstream: {0}")]
    Connect(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The connection failed before a complete response head arrived.
    #[error("upstream connection failed: {error}")]
    Exchange {
        /// Why.
        #[source]
        error: hyper::Error,
        /// The connection had carried an earlier exchange.
        reused: bool,
    },
}

impl SendError {
    /// True when a connection that had carried an earlier exchange was closed by upstream
    /// without a byte of answer: most likely it had timed out, idle, as the request went out,
    /// and a safe request can go again on a new connection.
    pub fn is_stale(&self) -> bool {
        let SendError::Exchange { error, reused: true } = self else { return false };
        let reset = std::error::Error::source(error)
            .and_then(|e| e.downcast_ref::<std::io::Error>())
            .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset);
        error.is_incomplete_message() || reset
    }
}

/// A parked connection, and whether it can carry another request.
pub(super) trait Reusable {
    /// True once the connection is known to be closed, without asking the socket.
    fn known_closed(&self) -> bool;
    /// True if it can carry a request now: checked when it is taken from the pool.
    fn usable(&mut self) -> bool;
}

impl Reusable for SendRequest<UpstreamBody> {
    fn known_closed(&self) -> bool {
        self.is_closed()
    }

    fn usable(&mut self) -> bool {
        !self.is_closed()
    }
}

/// An upstream connection the fast path ([`super::fast`]) speaks HTTP/1.1 on itself, parked
/// only after an answer read to its end and no further.
pub(super) struct Raw {
    pub(super) io: TokioIo<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>>,
    pub(super) buf: bytes::BytesMut,
}

impl Raw {
    /// The socket itself, when the connection is plain (no TLS).
    pub(super) fn plain(&self) -> Option<&tokio::net::TcpStream> {
        match self.io.inner() {
            MaybeHttpsStream::Http(io) => Some(io.inner()),
            MaybeHttpsStream::Https(_) => None,
        }
    }
}

impl Reusable for Raw {
    fn known_closed(&self) -> bool {
        false
    }

    /// Usable when a read would wait: upstream has neither closed it nor sent bytes that no
    /// request asked for (an answer's body beyond its framing, which the next request would
    /// otherwise take for its answer). hyper's client finds the same by reading idle
    /// connections. Costs a `recv` only when the socket was last seen readable.
    fn usable(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        let mut byte = [0u8; 1];
        let mut probe = tokio::io::ReadBuf::new(&mut byte);
        matches!(tokio::io::AsyncRead::poll_read(Pin::new(&mut self.io), &mut cx, &mut probe), Poll::Pending)
    }
}

/// Connections to one origin waiting for their next request, and since when.
type Waiting<C> = Vec<(C, Instant)>;

/// Connections parked by one worker, by origin (`scheme://authority`).
struct Parked<C> {
    /// Keyed with rustc-hash's hasher: origins come from the provider, not from clients.
    idle: Mutex<rustc_hash::FxHashMap<Arc<str>, Waiting<C>>>,
}

impl<C> Default for Parked<C> {
    fn default() -> Self {
        Parked { idle: Mutex::default() }
    }
}

impl<C: Reusable> Parked<C> {
    /// The most recently parked live connection to `origin`, dropping stale ones on the way.
    fn take(&self, origin: &str) -> Option<C> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(origin)?;
        while let Some((mut conn, since)) = list.pop() {
            if since.elapsed() < IDLE_LIFE && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn park(&self, origin: Arc<str>, conn: C) {
        if conn.known_closed() {
            return;
        }
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(origin).or_default();
        if list.len() >= MAX_IDLE {
            // The oldest goes: it is the one least likely to be taken before it ages out.
            list.remove(0);
        }
        list.push((conn, Instant::now()));
    }
}

/// One pool per worker thread and the connector that opens connections.
pub struct Pools {
    parked: Box<[Arc<Parked<SendRequest<UpstreamBody>>>]>,
    raw: Box<[Parked<Raw>]>,
    connector: HttpsConnector<HttpConnector>,
}

impl Pools {
    /// Pools for `workers` worker threads, opening connections with `connector`.
    pub fn new(connector: HttpsConnector<HttpConnector>, workers: usize) -> Pools {
        let workers = workers.max(1);
        Pools {
            parked: (0..workers).map(|_| Arc::default()).collect(),
            raw: (0..workers).map(|_| Parked::default()).collect(),
            connector,
        }
    }

    /// Sends `req` (origin-form URI, `Host` set) to `origin`, reached at `connect_to`. The
    /// response body hands its connection back to the caller's worker pool once read to its end.
    pub async fn send(
        &self,
        origin: &Arc<str>,
        connect_to: &Uri,
        mut req: Request<UpstreamBody>,
    ) -> Result<Response<Pooled>, SendError> {
        let parked = &self.parked[crate::server::worker_index() % self.parked.len()];
        loop {
            let (mut sender, reused) = match self.take_ready(parked, origin).await {
                Some(sender) => (sender, true),
                // Boxed, as every path a request seldom takes: see `Proxy::forward`.
                None => (Box::pin(self.connect(connect_to)).await?, false),
            };
            match sender.try_send_request(req).await {
                Ok(resp) => {
                    let lease = Lease { parked: parked.clone(), origin: origin.clone(), sender };
                    return Ok(resp.map(|body| Pooled { body, lease: Some(lease) }));
                }
                Err(mut e) => match e.take_message() {
                    // Never written: upstream closed the parked connection meanwhile.
                    Some(unsent) if reused => req = unsent,
                    _ => return Err(SendError::Exchange { error: e.into_error(), reused }),
                },
            }
        }
    }

    /// A parked connection to `origin` that can take a request now.
    async fn take_ready(
        &self,
        parked: &Parked<SendRequest<UpstreamBody>>,
        origin: &str,
    ) -> Option<SendRequest<UpstreamBody>> {
        while let Some(mut sender) = parked.take(origin) {
            if sender.is_ready() {
                return Some(sender);
            }
            if let Ok(Ok(())) = Box::pin(tokio::time::timeout(READY_WAIT, sender.ready())).await {
                return Some(sender);
            }
        }
        None
    }

    /// A stream to `uri`'s origin, through the connector (TCP options, TLS).
    async fn open(&self, uri: &Uri) -> Result<MaybeHttpsStream<TokioIo<tokio::net::TcpStream>>, SendError> {
        tower::ServiceExt::oneshot(self.connector.clone(), uri.clone()).await.map_err(SendError::Connect)
    }

    /// A new connection to `uri`'s origin, driven by a task on the caller's worker.
    async fn connect(&self, uri: &Uri) -> Result<SendRequest<UpstreamBody>, SendError> {
        let io = self.open(uri).await?;
        // Answers keep upstream's field-name case (hyper's server writes them so), as the fast
        // engine and Swift itself do: some clients compare names case-sensitively.
        let (sender, conn) = http1::Builder::new()
            .preserve_header_case(true)
            .max_buf_size(crate::body::MAX_READ)
            .max_headers(crate::body::MAX_FIELDS)
            .handshake(io)
            .await
            .map_err(|e| SendError::Connect(Box::new(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(cause = %e, "upstream connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// A parked raw connection to `origin` from the caller's worker pool.
    pub(super) fn take_raw(&self, origin: &str) -> Option<Raw> {
        self.raw[crate::server::worker_index() % self.raw.len()].take(origin)
    }

    /// Parks a raw connection, clean (its last answer read to the end), in the caller's worker
    /// pool.
    pub(super) fn park_raw(&self, origin: Arc<str>, raw: Raw) {
        self.raw[crate::server::worker_index() % self.raw.len()].park(origin, raw);
    }

    /// A new raw connection to `uri`'s origin.
    pub(super) async fn connect_raw(&self, uri: &Uri) -> Result<Raw, SendError> {
        Ok(Raw { io: TokioIo::new(self.open(uri).await?), buf: bytes::BytesMut::new() })
    }
}

/// A connection lent to one exchange.
struct Lease {
    parked: Arc<Parked<SendRequest<UpstreamBody>>>,
    origin: Arc<str>,
    sender: SendRequest<UpstreamBody>,
}

impl Lease {
    fn give_back(self) {
        self.parked.park(self.origin, self.sender);
    }
}

/// A response body that parks its connection again once read to its end. Dropped earlier, it
/// takes the connection down with it (hyper cannot reuse a connection with unread bytes).
pub struct Pooled {
    body: Incoming,
    lease: Option<Lease>,
}

impl HttpBody for Pooled {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let polled = Pin::new(&mut self.body).poll_frame(cx);
        if let Poll::Ready(None) = polled {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        // A body nobody had to read (HEAD, 204, 304, an empty 401) ends where it starts.
        if self.body.is_end_stream() {
            if let Some(lease) = self.lease.take() {
                lease.give_back();
            }
        }
    }
}
