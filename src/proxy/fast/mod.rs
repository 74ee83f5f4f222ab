//! The fast path: the commonest storage requests, relayed without hyper.
//!
//! A `GET` or `HEAD` on an HTTP/1.1 connection, with no body, a valid gateway token and the
//! account's credentials cached and not due for renewal, goes upstream as the bench's floor
//! relay sends it: the request head is parsed in place and written upstream with the fields
//! that never cross the gateway left out and the upstream token, `Host` and forwarding fields
//! added; the answer's head is parsed in place and written to the client the same way, and its
//! body (`Content-Length`, or none) is relayed from one buffer in as few writes as it came in
//! reads. No header map, no request or response object, no second task: the whole exchange
//! runs in the client connection's task, on one upstream connection it keeps.
//!
//! A download's body is copied, never spliced: with upstream and client on the same machine
//! (the bench, or a Swift proxy on the gateway's host), spliced pages reach the client still
//! the upstream's, and both ends then copy them more slowly than the gateway's two copies
//! cost (`benches/FINDINGS.md` has the measurements). Uploads show no such loss.
//!
//! A `PUT` with a `Content-Length` is taken too, under the proxy's replay policy:
//! - a body of at most the replay buffer goes upstream as it comes and is kept in the client's
//!   read buffer meanwhile, so that a `401` or any answer the fast path does not relay hands
//!   the whole request to the proxy;
//! - a larger one waits behind `Expect: 100-continue`, as the proxy sends it, and only once
//!   upstream answers `100` (or the expect timeout passes) goes upstream: from the client's
//!   socket to upstream's through a pipe ([`super::splice`]), never entering user space, when
//!   neither side is TLS, else copied through a buffer. An answer before `100` (a `401`, a
//!   `413`) leaves the body unread, and the request goes to the proxy, which renews and
//!   retries or relays the answer.
//!
//! Anything else hands the connection to hyper, with the request still unanswered, before a
//! byte of answer has been written: another method or HTTP version, a chunked body, `Expect`,
//! `Upgrade`, a `Connection` field naming other fields, a path outside storage, a missing or bad
//! token, credentials that need renewing, an upstream that cannot be reached or closed a parked
//! connection, and answers the relay does not frame (1xx, chunked, read-until-close) or that
//! need the proxy's judgement (401, which renews and retries). The request is then sent again
//! by the hyper engine, which is safe: `GET`, `HEAD` and `PUT` are idempotent. hyper serves the
//! connection from then on.
//!
//! What crosses and what does not is the proxy's [`policy`]; this engine only frames bytes.
//! It exists because hyper's request and answer objects cost most of a small request's
//! instructions (`benches/instructions.sh` counts them).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::policy::{self, ConnectionOptions, Failure, Policy, Replay, Wait, TOKEN_MARGIN};
use super::pool::Pools;
use super::pool::Raw;
use super::splice::{Broke, Pipe};
use crate::metrics::Kind;
use crate::server::{Connection, Engine, InProgress, Peer, Prefixed, Served, Signals};
use crate::tokens::{Cached, TokenManager};

mod head;
mod upload;

use head::*;
use upload::*;

/// What the fast path needs from the gateway: which paths are storage paths, and whose a
/// gateway token is.
pub trait Authority: Sync {
    /// True when `path` (no query) is answered by the proxy, not by one of the gateway's own
    /// endpoints.
    fn is_storage(&self, path: &str) -> bool;
    /// The user (by index) and account `token` stands for, if it is a valid gateway token now.
    fn holder_of(&self, token: &str) -> Option<(usize, &str)>;
    /// The user with index `user` and its account, for the access log.
    fn acting(&self, user: usize) -> Option<crate::server::Acting>;
    /// What a request for `path` is for, for the metrics.
    fn kind(&self, path: &str) -> crate::metrics::Kind;
    /// The credentials cache.
    fn tokens(&self) -> &TokenManager;
    /// The answer to a request for one of the gateway's own endpoints that needs nothing but
    /// the request's head, if `path` is one; `from` is the client's address.
    fn head_only<'a>(
        &'a self,
        method: &'a http::Method,
        path: &str,
        headers: &'a http::HeaderMap,
        from: std::net::IpAddr,
    ) -> Option<impl std::future::Future<Output = http::Response<crate::body::Body>> + Send + 'a>;
}

/// Header fields a request head may have for the fast path to take it (hyper's limit is 100;
/// a head with more goes to hyper).
const MAX_REQUEST_FIELDS: usize = 64;
/// Header fields an answer's head may have: as many as the hyper engine takes.
const MAX_RESPONSE_FIELDS: usize = crate::body::MAX_FIELDS;
/// What the client's read buffer grows by.
const CLIENT_READ: usize = 8 * 1024;
/// What an upstream connection's read buffer starts at; it doubles, up to
/// [`crate::body::MAX_READ`], while a body fills it, and goes back to this after a large body.
const UPSTREAM_READ: usize = 16 * 1024;

/// The buffer an upload's body is copied through when it cannot be spliced (see
/// [`copy_body`]): the floor relay's size.
const COPY_CHUNK: usize = 256 * 1024;

/// The methods the fast path takes, for the policy's questions.
static GET: http::Method = http::Method::GET;
static HEAD: http::Method = http::Method::HEAD;
static PUT: http::Method = http::Method::PUT;

/// A request the fast path takes.
struct Taken {
    /// The request head's length in the client's buffer.
    head_len: usize,
    head_request: bool,
    /// A `PUT`'s body.
    upload: Option<Upload>,
    /// The client sent `Connection: close`.
    close: bool,
    /// The client sent `Connection: keep-alive`, which its answer says too, as Swift's does.
    keep_alive: bool,
    /// The gateway user whose token it carries, by index.
    user: usize,
    cached: Arc<Cached>,
}

impl Taken {
    /// What the client's buffer `buf` holds of the request: its head, and of an upload's body
    /// what has come (all of it, once a kept upload has gone upstream).
    fn in_buffer(&self, buf: &[u8]) -> usize {
        let body = self.upload.as_ref().map_or(0, |u| usize::try_from(u.len).unwrap_or(usize::MAX));
        self.head_len + (buf.len() - self.head_len).min(body)
    }

    /// True while the proxy could still send the whole request: anything but an upload larger
    /// than the replay buffer, whose body is not kept.
    fn replayable(&self) -> bool {
        self.upload.as_ref().is_none_or(|u| u.kept)
    }
}

/// An upload's body, as the fast path sends it.
struct Upload {
    /// Its length.
    len: u64,
    /// At most the replay buffer: read into the client's buffer and kept there while it goes
    /// upstream, so that whatever upstream answers, the whole request can still go to the
    /// proxy. Larger, it goes once upstream asks for it, and is not kept.
    kept: bool,
}

/// A body-less request for one of the gateway's own endpoints (see [`Authority::head_only`]).
struct Own {
    head_len: usize,
    head_request: bool,
    close: bool,
    method: http::Method,
    path: String,
    headers: http::HeaderMap,
}

/// What a look at the client's buffer found.
enum Look {
    /// No whole head yet.
    Partial,
    /// Not for the fast path.
    Decline,
    /// Taken: the upstream head is written out.
    Take(Taken),
    /// For the gateway itself, answered here too.
    Own(Own),
    /// A body-less request whose target is not UTF-8, which hyper would refuse with `400`:
    /// answered here with Swift's [`policy::INVALID_PATH`].
    InvalidPath { head_len: usize, method: http::Method, target: String, close: bool },
}

/// How an exchange ended.
enum Exchange {
    /// Answered; the client's connection may carry another request unless `close`.
    Done {
        /// The answer said `connection: close`.
        close: bool,
    },
    /// Nothing written to the client: hyper answers it.
    Decline,
    /// The connection cannot go on (the client went, or upstream broke off a body).
    Cut,
}

/// Why no upstream answer head came.
enum Unreached {
    /// An answer the proxy may read differently (a head too large, malformed), or an upload's
    /// head answered before its body was asked for: it goes there.
    Decline,
    /// Answered with the proxy's error page.
    Failed(Failure),
    /// The client broke off an upload's body: the connection cannot go on.
    Cut,
    /// Upstream stopped taking an upload's body, of which the client still has `unread`
    /// bytes to send: the client gets a 502 and the connection ends.
    Abandoned { unread: u64 },
}

/// An answer's head, whole at the start of its connection's buffer.
#[derive(Clone, Copy)]
struct Head {
    /// Its length.
    len: usize,
    /// Its status code.
    code: u16,
}

/// What reading an answer's head from upstream found.
enum AnswerHead {
    /// The head is whole.
    Whole(Head),
    /// The connection ended or failed before a byte came.
    Nothing,
    /// Not a head the fast path reads (too large, or malformed), or the connection failed
    /// within it.
    Other,
}

/// Counts kept by one worker, on a cache line of their own so workers never contend for them.
#[derive(Default)]
#[repr(align(64))]
pub(super) struct WorkerCounts {
    /// Requests the fast engine answered.
    pub(super) answers: AtomicU64,
    /// Of those, the ones whose body it relayed with `splice(2)`.
    pub(super) spliced: AtomicU64,
}

impl WorkerCounts {
    /// The sum over all workers of the count `which` picks.
    pub(super) fn total(all: &[WorkerCounts], which: fn(&WorkerCounts) -> &AtomicU64) -> u64 {
        all.iter().map(|c| which(c).load(Ordering::Relaxed)).sum()
    }
}

/// The fast engine: the proxy's policy, the upstream connections it shares with the hyper
/// engine, and the workers' counts.
pub(super) struct FastPath<'a> {
    policy: &'a Policy,
    pools: &'a Pools,
    counts: &'a [WorkerCounts],
}

impl<'a> FastPath<'a> {
    pub(super) fn new(policy: &'a Policy, pools: &'a Pools, counts: &'a [WorkerCounts]) -> Self {
        FastPath { policy, pools, counts }
    }

    /// Serves storage requests of an HTTP/1 connection (see the module's description) until
    /// one is not for the fast path, then hands the connection to hyper.
    pub(super) async fn serve<S, A>(&self, auth: &A, mut io: S, peer: &Arc<Peer>, signals: &mut Signals) -> Served<S>
    where
        S: Connection,
        A: Authority,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut answered = false;
        let hand_over = loop {
            // Once the server stops or the idle close has come, no further request is begun
            // (one already read included); a new connection's first is still answered.
            if answered && signals.fired().now_or_never().is_some() {
                break false;
            }
            let taken = match self.look(auth, &buf, peer, &mut out) {
                Look::Take(taken) => taken,
                Look::Own(own) => match answer_own(auth, &mut io, &own, peer).await {
                    Exchange::Done { close } => {
                        self.count_answer();
                        buf.advance(own.head_len);
                        answered = true;
                        if close {
                            break false;
                        }
                        continue;
                    }
                    Exchange::Decline => break true,
                    Exchange::Cut => return Served::Done,
                },
                Look::InvalidPath { head_len, method, target, close } => {
                    let (status, page) = policy::INVALID_PATH;
                    let request = peer.begin_request(Kind::Storage, &method, || target);
                    let head_request = method == http::Method::HEAD;
                    let page = answer_page(&mut io, head_request, close, request, status, "text/plain", page);
                    if let Exchange::Cut = page.await {
                        return Served::Done;
                    }
                    self.count_answer();
                    buf.advance(head_len);
                    answered = true;
                    if close {
                        break false;
                    }
                    continue;
                }
                Look::Decline => break true,
                Look::Partial => {
                    if buf.capacity() - buf.len() < CLIENT_READ / 2 {
                        buf.reserve(CLIENT_READ);
                    }
                    let read = if buf.is_empty() {
                        // Between requests: the server's stop and the idle close end the
                        // connection here.
                        tokio::select! {
                            read = io.read_buf(&mut buf) => read,
                            () = signals.fired() => break false,
                        }
                    } else {
                        io.read_buf(&mut buf).await
                    };
                    match read {
                        Ok(0) | Err(_) => break false,
                        Ok(_) => continue,
                    }
                }
            };
            let method = match (taken.head_request, taken.upload.is_some()) {
                (true, _) => &HEAD,
                (false, true) => &PUT,
                (false, false) => &GET,
            };
            let target = || request_target(&buf).to_owned();
            let mut request = peer.begin_request(Kind::Storage, method, target);
            request.acting(|| auth.acting(taken.user));
            match self.exchange(&mut io, &mut buf, &taken, &mut out, request, signals).await {
                Exchange::Done { close } => {
                    self.count_answer();
                    buf.advance(taken.in_buffer(&buf));
                    if buf.is_empty() && buf.capacity() > crate::server::MAX_HEAD {
                        // What a kept upload grew it to.
                        buf = BytesMut::new();
                    }
                    answered = true;
                    if close {
                        break false;
                    }
                }
                Exchange::Decline => break true,
                Exchange::Cut => return Served::Done,
            }
        };
        if hand_over {
            return Served::HandOver(Prefixed::new(buf.freeze(), io));
        }
        let _ = io.shutdown().await;
        Served::Done
    }

    /// The caller's worker's counts (see [`Proxy::fast_answers`](super::Proxy::fast_answers)).
    fn counts(&self) -> &WorkerCounts {
        &self.counts[crate::server::worker_index() % self.counts.len()]
    }

    /// Counts an answer.
    fn count_answer(&self) {
        self.counts().answers.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a body relayed by `splice(2)`.
    fn count_spliced(&self) {
        self.counts().spliced.fetch_add(1, Ordering::Relaxed);
    }

    /// Sends the head in `out` upstream (and an upload's body, which starts in the client's
    /// buffer `buf`) and relays the answer to the client, or declines before writing a byte to
    /// the client or losing one of the request (an upload's body read and not kept).
    async fn exchange<S>(
        &self,
        client: &mut S,
        buf: &mut BytesMut,
        taken: &Taken,
        out: &mut Vec<u8>,
        request: InProgress,
        signals: &mut Signals,
    ) -> Exchange
    where
        S: Connection,
    {
        let target = &taken.cached.target;
        // Uploads are boxed, as every path a GET never takes (see the hyper engine's `forward`).
        let reached = if let Some(upload) = &taken.upload {
            if upload.kept {
                Box::pin(self.upload_kept(client, buf, taken, upload.len, out)).await
            } else {
                let body_start = &buf[taken.head_len..taken.in_buffer(buf)];
                Box::pin(self.upload(client, taken, upload.len, body_start, out)).await
            }
        } else {
            // Connecting, sending and the answer's head, within the header timeout.
            let method = if taken.head_request { &HEAD } else { &GET };
            let reach = self.reach(target, method, out, None);
            match tokio::time::timeout(self.policy.timeout(Wait::AnswerHead), reach).await {
                Ok(reached) => reached.map(|(up, head)| (up, head.map_or(0, |h| h.len))),
                Err(_) => Err(Unreached::Failed(Failure::Timeout)),
            }
        };
        let (mut up, head) = match reached {
            Ok(reached) => reached,
            Err(Unreached::Decline) => return Exchange::Decline,
            Err(Unreached::Failed(failure)) => {
                if let Failure::Timeout = failure {
                    tracing::warn!("upstream request failed: no answer within the header timeout");
                }
                return answer_failure(client, taken.head_request, taken.close, request, failure).await;
            }
            Err(Unreached::Cut) => return Exchange::Cut,
            Err(Unreached::Abandoned { unread }) => {
                // As the proxy does (`drain_then`): what the client still sends is read and
                // discarded, so that one sending its whole body before reading gets the
                // answer, not a reset.
                // Within the proxy's bounds for a rejected upload.
                let answered = answer_failure(client, taken.head_request, true, request, Failure::Broken).await;
                if let Exchange::Done { .. } = answered {
                    let (drain, mut sink) = (unread.min(policy::DRAIN_LIMIT), tokio::io::sink());
                    let discard = copy_body(client, &mut sink, drain, policy::DRAIN_TIME);
                    let _ = tokio::time::timeout(policy::DRAIN_TIME, discard).await;
                }
                return answered;
            }
        };
        // The server stopping or the idle close, come meanwhile, close the connection after
        // this answer, which says so.
        let close = taken.close || signals.fired().now_or_never().is_some();
        let Some(answer) = self.client_head(&up.buf[..head], taken, close, target, out) else {
            if taken.replayable() {
                return Exchange::Decline;
            }
            // The body is gone: the proxy cannot send the request again.
            tracing::warn!("upstream's answer to an upload is not one the fast path relays");
            return answer_failure(client, taken.head_request, taken.close, request, Failure::Broken).await;
        };
        let trans_id = answer.trans_id.clone().map(|at| &up.buf[at]);
        // The answer is committed from here: a failure cuts the connection.
        let mut request = request.answered(answer.code, Engine::Fast, trans_id, || None);
        up.buf.advance(head);
        let mut left = answer.body;
        let first = up.buf.len().min(left as usize);
        if write_two(client, out, &up.buf[..first]).await.is_err() {
            return Exchange::Cut;
        }
        request.sent(first as u64);
        left -= first as u64;
        let mut clean = up.buf.len() == first;
        let mut room = UPSTREAM_READ;
        while left > 0 {
            up.buf.clear();
            if up.buf.capacity() < room {
                up.buf.reserve(room);
            }
            let n = match tokio::time::timeout(self.policy.timeout(Wait::Idle), up.io.read_buf(&mut up.buf)).await {
                Ok(Ok(n)) if n > 0 => n,
                _ => {
                    tracing::warn!("upstream broke off an answer's body");
                    return Exchange::Cut;
                }
            };
            if n == up.buf.capacity() && room < crate::body::MAX_READ {
                room *= 2;
            }
            let take = n.min(left as usize);
            clean = n == take;
            if client.write_all(&up.buf[..take]).await.is_err() {
                return Exchange::Cut;
            }
            request.sent(take as u64);
            left -= take as u64;
        }
        // A TLS stream may hold the tail until flushed.
        if client.flush().await.is_err() {
            return Exchange::Cut;
        }
        if clean && !answer.upstream_closes {
            if up.buf.capacity() > 2 * UPSTREAM_READ {
                up.buf = BytesMut::new();
            }
            up.buf.clear();
            self.pools.park_raw(target.origin.clone(), up);
        }
        Exchange::Done { close }
    }
}

/// What the client's answer carries.
struct Answer {
    /// Its status code.
    code: u16,
    /// Where upstream's `X-Trans-Id` value is in its head, for the access log.
    trans_id: Option<std::ops::Range<usize>>,
    /// Body bytes to relay.
    body: u64,
    /// Upstream closes the connection after it.
    upstream_closes: bool,
}

/// Reads upstream's answer until its head, at the start of the connection's buffer, is whole.
async fn answer_head(up: &mut Raw) -> AnswerHead {
    loop {
        if !up.buf.is_empty() {
            let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
            let mut resp = httparse::Response::new(&mut []);
            let parsed =
                httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, &up.buf, &mut fields);
            match (parsed, resp.code) {
                (Ok(httparse::Status::Complete(len)), Some(code)) => return AnswerHead::Whole(Head { len, code }),
                (Ok(httparse::Status::Partial), _) if up.buf.len() < crate::server::MAX_HEAD => {}
                _ => return AnswerHead::Other,
            }
        }
        if up.buf.capacity() - up.buf.len() < UPSTREAM_READ / 2 {
            up.buf.reserve(UPSTREAM_READ);
        }
        match up.io.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => {}
            _ if up.buf.is_empty() => return AnswerHead::Nothing,
            _ => return AnswerHead::Other,
        }
    }
}

/// Writes `a` then `b`, in one `writev` when the socket takes both.
async fn write_two<S: AsyncWrite + Unpin>(io: &mut S, a: &[u8], b: &[u8]) -> std::io::Result<()> {
    let (mut a, mut b) = (a, b);
    while !a.is_empty() {
        let n = io.write_vectored(&[IoSlice::new(a), IoSlice::new(b)]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::WriteZero.into());
        }
        let from_a = n.min(a.len());
        a = &a[from_a..];
        b = &b[n - from_a..];
    }
    io.write_all(b).await
}

/// Answers with the proxy's error page for `failure` (its head only, to a `HEAD`), saying
/// `connection: close` if `close`.
async fn answer_failure<S: AsyncWrite + Unpin>(
    client: &mut S,
    head_request: bool,
    close: bool,
    request: InProgress,
    failure: Failure,
) -> Exchange {
    let (status, page) = failure.page();
    answer_page(client, head_request, close, request, status, "text/html; charset=utf-8", &page).await
}

/// Writes an answer of the gateway's own: `page` as `content_type`.
async fn answer_page<S: AsyncWrite + Unpin>(
    client: &mut S,
    head_request: bool,
    close: bool,
    request: InProgress,
    status: http::StatusCode,
    content_type: &str,
    page: &str,
) -> Exchange {
    let mut request = request.answered(status.as_u16(), Engine::Fast, None, || None);
    let closing = if close { "connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n{closing}date: {}\r\n\r\n",
        page.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    let page = if head_request { "" } else { page };
    request.sent(page.len() as u64);
    match write_two(client, head.as_bytes(), page.as_bytes()).await {
        Ok(()) if client.flush().await.is_ok() => Exchange::Done { close },
        _ => Exchange::Cut,
    }
}

#[cfg(test)]
mod tests;
