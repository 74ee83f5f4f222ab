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
//! cost. The machine spent more CPU per GiB and a 1 GiB `GET` came at two thirds of the
//! copying rate (`benches/e2e.rs`, its whole-machine CPU line). Uploads show no such loss.
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
//! by [`Proxy::forward`], which is safe: `GET`, `HEAD` and `PUT` are idempotent. hyper serves the
//! connection from then on.
//!
//! Found where the gateway's CPU per small request went: 40 000 user-space instructions per
//! 4 KiB `GET`, where the floor relay executes 5 000 (`benches/instructions.sh`).

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::sync::Arc;

use bytes::{Buf, BytesMut};
use futures_util::FutureExt;
use tokio::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pool::Raw;
use super::splice::{Broke, Pipe};
use super::{dropped_from_requests, dropped_from_responses, hop_by_hop, Failure, Proxy, TOKEN_MARGIN};
use crate::server::{Connection, InProgress, Peer, Prefixed, Served, Signals};
use crate::tokens::{Cached, TokenManager};

/// What the fast path needs from the gateway: which paths are storage paths, and whose a
/// gateway token is.
pub trait Authority: Sync {
    /// True when `path` (no query) is answered by the proxy, not by one of the gateway's own
    /// endpoints.
    fn is_storage(&self, path: &str) -> bool;
    /// The account `token` stands for, if it is a valid gateway token now.
    fn account_of(&self, token: &str) -> Option<&str>;
    /// The credentials cache.
    fn tokens(&self) -> &TokenManager;
    /// The answer to a request for one of the gateway's own endpoints that needs nothing but
    /// the request's head, if `path` is one.
    fn head_only<'a>(
        &'a self,
        method: &'a http::Method,
        path: &str,
        headers: &'a http::HeaderMap,
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

/// A request the fast path takes.
struct Taken {
    /// The request head's length in the client's buffer.
    head_len: usize,
    head_request: bool,
    /// A `PUT`'s body.
    upload: Option<Upload>,
    /// The client sent `Connection: close`.
    close: bool,
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

impl Proxy {
    /// Serves storage requests of an HTTP/1 connection (see the module's description) until
    /// one is not for the fast path, then hands the connection to hyper.
    pub async fn serve_h1<S, A>(&self, auth: &A, mut io: S, peer: &Arc<Peer>, signals: &mut Signals) -> Served<S>
    where
        S: Connection,
        A: Authority,
    {
        if !self.settings.fast_path {
            return Served::HandOver(Prefixed::new(bytes::Bytes::new(), io));
        }
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
                Look::Own(own) => match answer_own(auth, &mut io, &own, peer.begin()).await {
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
            match self.exchange(&mut io, &mut buf, &taken, &mut out, peer.begin(), signals).await {
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

    /// The caller's worker's counts (see [`Proxy::fast_answers`]).
    fn counts(&self) -> &super::WorkerCounts {
        &self.fast_counts[crate::server::worker_index() % self.fast_counts.len()]
    }

    /// Counts an answer in [`Proxy::fast_answers`].
    fn count_answer(&self) {
        self.counts().answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a body relayed by `splice(2)` in [`Proxy::spliced_answers`].
    fn count_spliced(&self) {
        self.counts().spliced.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Parses the request head at the start of `buf` and, when the fast path takes it, writes
    /// the head upstream gets into `out` (which holds anything on a decline).
    fn look(&self, auth: &impl Authority, buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Look {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_REQUEST_FIELDS];
        let mut req = httparse::Request::new(&mut []);
        let head_len = match req.parse_with_uninit_headers(buf, &mut fields) {
            // hyper answers a head over the limit with 431.
            Ok(httparse::Status::Complete(n)) if n <= crate::server::MAX_HEAD => n,
            Ok(httparse::Status::Partial) if buf.len() < crate::server::MAX_HEAD => return Look::Partial,
            _ => return Look::Decline,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Look::Decline };
        let (head_request, put) = match method {
            "GET" => (false, false),
            "HEAD" => (true, false),
            "PUT" => (false, true),
            _ => return Look::Decline,
        };
        // `http` takes a URI of up to 65 534 bytes (414 beyond).
        if target.len() >= usize::from(u16::MAX) {
            return Look::Decline;
        }
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        // Origin form, in the characters `http`'s URI parser accepts unquoted (hyper refuses
        // others with 400, so they go to hyper).
        if !path.starts_with('/') || !target.bytes().all(plain_target_byte) {
            return Look::Decline;
        }
        if !auth.is_storage(path) {
            return own(req.headers, head_len, head_request, method, path);
        }
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut token = None;
        let mut storage_token = None;
        let mut close = false;
        let mut length = None;
        let mut lower = [0u8; 32];
        let mut lines = Lines::new(buf);
        for field in req.headers.iter() {
            let name = lowered(field.name, &mut lower);
            match name {
                Some("content-length") if put => {
                    let Some(n) = content_length(field.value) else { return Look::Decline };
                    match length {
                        Some(l) if l != n => return Look::Decline,
                        // One `Content-Length` upstream, as hyper sends it.
                        Some(_) => {
                            lines.flush(out);
                            continue;
                        }
                        None => length = Some(n),
                    }
                }
                Some("content-length" | "transfer-encoding" | "expect" | "upgrade") => return Look::Decline,
                Some("connection") => match connection_close(field.value) {
                    Some(c) => close |= c,
                    None => return Look::Decline,
                },
                Some("x-auth-token") if token.is_none() => token = Some(field.value),
                Some("x-storage-token") if storage_token.is_none() => storage_token = Some(field.value),
                _ => {}
            }
            if name.is_some_and(|n| hop_by_hop(n).is_some() || dropped_from_requests(n).is_some()) {
                lines.flush(out);
            } else {
                lines.keep(out, field);
            }
        }
        lines.flush(out);
        let Some(token) = token.or(storage_token).and_then(|t| std::str::from_utf8(t).ok()) else {
            return Look::Decline;
        };
        let Some(cached) = auth.account_of(token).and_then(|account| auth.tokens().ready(account, TOKEN_MARGIN)) else {
            return Look::Decline;
        };
        let target_of = &cached.target;
        if !target_of.covers(path) {
            return Look::Decline;
        }
        let upload = match length {
            Some(len) => Some(Upload { len, kept: len <= self.settings.replay_buffer }),
            _ if put => return Look::Decline,
            _ => None,
        };
        if upload.as_ref().is_some_and(|u| !u.kept) {
            push_field(out, b"expect", b"100-continue");
        }
        push_field(out, b"host", target_of.host.as_bytes());
        push_field(out, b"x-auth-token", target_of.token.as_bytes());
        push_field(out, b"x-forwarded-for", peer.forwarded_for.as_bytes());
        push_field(out, b"x-forwarded-proto", self.forwarded_proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        Look::Take(Taken { head_len, head_request, upload, close, cached })
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
        // Uploads are boxed, as every path a GET never takes (see `Proxy::forward`).
        let reached = if let Some(upload) = &taken.upload {
            if upload.kept {
                Box::pin(self.upload_kept(client, buf, taken, upload.len, out)).await
            } else {
                let body_start = &buf[taken.head_len..taken.in_buffer(buf)];
                Box::pin(self.upload(client, taken, upload.len, body_start, out)).await
            }
        } else {
            // Connecting, sending and the answer's head, within the header timeout, as in
            // `Proxy::send`.
            let reach = self.reach(target, out, None);
            match tokio::time::timeout(self.settings.header_timeout, reach).await {
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
                    let (drain, mut sink) = (unread.min(super::DRAIN_LIMIT), tokio::io::sink());
                    let discard = copy_body(client, &mut sink, drain, super::DRAIN_TIME);
                    let _ = tokio::time::timeout(super::DRAIN_TIME, discard).await;
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
        up.buf.advance(head);
        // The answer is committed from here: a failure cuts the connection.
        let _request = request.responding();
        let mut left = answer.body;
        let first = up.buf.len().min(left as usize);
        if write_two(client, out, &up.buf[..first]).await.is_err() {
            return Exchange::Cut;
        }
        left -= first as u64;
        let mut clean = up.buf.len() == first;
        let mut room = UPSTREAM_READ;
        while left > 0 {
            up.buf.clear();
            if up.buf.capacity() < room {
                up.buf.reserve(room);
            }
            let n = match tokio::time::timeout(self.settings.idle_timeout, up.io.read_buf(&mut up.buf)).await {
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

    /// An upload larger than the replay buffer: its head (in `out`) upstream, then, once
    /// upstream asks for it, its body from the client (spliced or copied), then the answer's
    /// head (see the module's description): the connection and the head's length in its buffer.
    async fn upload<S: Connection>(
        &self,
        client: &mut S,
        taken: &Taken,
        len: u64,
        body_start: &[u8],
        out: &[u8],
    ) -> Result<(Raw, usize), Unreached> {
        let target = &taken.cached.target;
        // Before the body, every failure leaves the request whole for the proxy.
        let reach = self.reach(target, out, Some(self.settings.expect_timeout));
        let mut up = match tokio::time::timeout(self.settings.header_timeout, reach).await {
            Ok(Ok((up, None))) => up,
            Ok(Ok((mut up, Some(head)))) if head.code == 100 => {
                up.buf.advance(head.len);
                up
            }
            _ => return Err(Unreached::Decline),
        };
        // From here the client's body is being read: a failure cuts the connection.
        let (left, idle) = (len - body_start.len() as u64, self.settings.idle_timeout);
        // A pipe only where it can serve: both sides plain and something left to move.
        let splicing = left > 0 && client.plain().is_some() && up.plain().is_some();
        let pipe = if splicing { Pipe::new() } else { None };
        let broke = if !matches!(tokio::time::timeout(idle, up.io.write_all(body_start)).await, Ok(Ok(()))) {
            Some((Broke::Sink, 0))
        } else if let (Some(pipe), Some(from), Some(to)) = (pipe, client.plain(), up.plain()) {
            let spliced = pipe.relay(from.socket(), to, left, idle, || from.got()).await;
            if spliced.is_ok() {
                self.count_spliced();
            }
            spliced.err()
        } else {
            // Also with nothing left: a TLS upstream may hold the body's start until flushed.
            copy_body(client, &mut up.io, left, idle).await.err()
        };
        match broke {
            None => {}
            Some((Broke::Source, _)) => {
                tracing::info!("a client broke off an upload's body");
                return Err(Unreached::Cut);
            }
            Some((Broke::Sink, taken)) => {
                tracing::warn!("upstream request failed: it stopped taking an upload's body");
                return Err(Unreached::Abandoned { unread: left - taken });
            }
        };
        // The answer's head, within the header timeout from the body's end, as in
        // `Proxy::send`; a `100` that came after the expect timeout is passed over.
        let answer = async {
            loop {
                match answer_head(&mut up).await {
                    AnswerHead::Whole(head) if head.code < 200 => up.buf.advance(head.len),
                    AnswerHead::Whole(head) => return Some(head.len),
                    _ => return None,
                }
            }
        };
        match tokio::time::timeout(self.settings.header_timeout, answer).await {
            Ok(Some(head)) => Ok((up, head)),
            Ok(None) => {
                tracing::warn!("upstream request failed: no answer to an upload's body");
                Err(Unreached::Failed(Failure::Broken))
            }
            Err(_) => Err(Unreached::Failed(Failure::Timeout)),
        }
    }

    /// An upload of `len` bytes the proxy would keep for a replay: its head (in `out`) and its
    /// body go upstream as they come, the body read into the client's buffer `buf` behind the
    /// head and kept there; then the answer's head (see [`Upload::kept`]): the connection and
    /// the head's length in its buffer. Any failure before that head declines, with the whole
    /// request in `buf` or still on the client's socket.
    async fn upload_kept<S: Connection>(
        &self,
        client: &mut S,
        buf: &mut BytesMut,
        taken: &Taken,
        len: u64,
        out: &[u8],
    ) -> Result<(Raw, usize), Unreached> {
        let target = &taken.cached.target;
        // At most the replay buffer, which the configuration keeps far below `usize::MAX`.
        let end = taken.head_len + usize::try_from(len).map_err(|_| Unreached::Decline)?;
        // Any failure before the answer's head declines (see above).
        let (mut up, _) = self.raw_connection(target).await.map_err(|_| Unreached::Decline)?;
        let idle = self.settings.idle_timeout;
        let mut sent = buf.len().min(end);
        let first = write_two(&mut up.io, out, &buf[taken.head_len..sent]);
        if !matches!(tokio::time::timeout(idle, first).await, Ok(Ok(()))) {
            return Err(Unreached::Decline);
        }
        while sent < end {
            if buf.capacity() - buf.len() < CLIENT_READ {
                buf.reserve((end - buf.len()).clamp(CLIENT_READ, crate::body::MAX_READ));
            }
            match tokio::time::timeout(idle, client.read_buf(buf)).await {
                Ok(Ok(n)) if n > 0 => {}
                _ => {
                    tracing::info!("a client broke off an upload's body");
                    return Err(Unreached::Cut);
                }
            }
            let to = buf.len().min(end);
            if !matches!(tokio::time::timeout(idle, up.io.write_all(&buf[sent..to])).await, Ok(Ok(()))) {
                return Err(Unreached::Decline);
            }
            sent = to;
        }
        if !matches!(tokio::time::timeout(idle, up.io.flush()).await, Ok(Ok(()))) {
            return Err(Unreached::Decline);
        }
        match tokio::time::timeout(self.settings.header_timeout, answer_head(&mut up)).await {
            Ok(AnswerHead::Whole(head)) => Ok((up, head.len)),
            _ => Err(Unreached::Decline),
        }
    }

    /// A parked connection to `target`'s origin, or a new one, its buffer empty; and whether
    /// it was parked.
    async fn raw_connection(&self, target: &super::Target) -> Result<(Raw, bool), Unreached> {
        let (mut up, reused) = match self.pools.take_raw(&target.origin) {
            Some(raw) => (raw, true),
            // Boxed, as every path a request seldom takes (see `Proxy::forward`).
            None => match Box::pin(self.pools.connect_raw(&target.connect_to)).await {
                Ok(raw) => (raw, false),
                Err(e) => {
                    tracing::warn!(cause = %e, "upstream request failed");
                    return Err(Unreached::Failed(Failure::Unreachable));
                }
            },
        };
        up.buf.clear();
        Ok((up, reused))
    }

    /// Sends the head in `out` to `target` on a parked connection or a new one, and reads the
    /// answer's head: the connection and the head's length in its buffer, or, with `expect`,
    /// `None` if no head came within that time. A parked connection that upstream closed
    /// meanwhile (it ends before a byte of answer) is dropped and the request goes again on
    /// another, as in the proxy's pool.
    async fn reach(
        &self,
        target: &super::Target,
        out: &[u8],
        expect: Option<std::time::Duration>,
    ) -> Result<(Raw, Option<Head>), Unreached> {
        loop {
            let (mut up, reused) = self.raw_connection(target).await?;
            let sent = match up.io.write_all(out).await {
                Ok(()) => up.io.flush().await,
                Err(e) => Err(e),
            };
            let head = match (sent, expect) {
                (Ok(()), None) => answer_head(&mut up).await,
                (Ok(()), Some(wait)) => match tokio::time::timeout(wait, answer_head(&mut up)).await {
                    Ok(head) => head,
                    Err(_) => return Ok((up, None)),
                },
                (Err(_), _) => AnswerHead::Nothing,
            };
            match head {
                AnswerHead::Whole(head) => return Ok((up, Some(head))),
                AnswerHead::Nothing if reused => {
                    tracing::debug!("a parked upstream connection was dead");
                }
                AnswerHead::Nothing => {
                    tracing::warn!("upstream request failed: the connection ended without an answer");
                    return Err(Unreached::Failed(Failure::Broken));
                }
                AnswerHead::Other => return Err(Unreached::Decline),
            }
        }
    }

    /// The client's answer head from upstream's (`head`), written into `out`, saying
    /// `connection: close` if `close`; `None` for an answer the fast path leaves to the proxy
    /// (see the module's description).
    fn client_head(
        &self,
        head: &[u8],
        taken: &Taken,
        close: bool,
        target: &super::Target,
        out: &mut Vec<u8>,
    ) -> Option<Answer> {
        let mut fields = [const { MaybeUninit::uninit() }; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut []);
        httparse::ParserConfig::default().parse_response_with_uninit_headers(&mut resp, head, &mut fields).ok()?;
        let code = resp.code?;
        // A 401 before an upload's body is declined earlier (see `Proxy::upload`); after it,
        // the proxy could not send the body again either, so it goes to the client.
        if !(200..=599).contains(&code) || (code == 401 && taken.replayable() && taken.cached.renews) {
            return None;
        }
        // HTTP/1.0 closes after an answer unless it says otherwise; not worth keeping apart.
        let mut upstream_closes = resp.version != Some(1);
        // hyper's server drops a length from answers that have no body of any kind.
        let no_body = code == 204 || code == 304;
        out.clear();
        // The reason phrase as upstream wrote it, as hyper relays it.
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(&[b'0' + (code / 100) as u8, b'0' + (code / 10 % 10) as u8, b'0' + (code % 10) as u8]);
        out.push(b' ');
        out.extend_from_slice(resp.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let mut length = None;
        let mut dated = false;
        let mut lower = [0u8; 32];
        let mut lines = Lines::new(head);
        for field in resp.headers.iter() {
            let name = lowered(field.name, &mut lower);
            match name {
                Some("transfer-encoding") => return None,
                Some("content-length") => {
                    let n = content_length(field.value)?;
                    match length {
                        Some(l) if l != n => return None,
                        // One `Content-Length`, as hyper writes it.
                        Some(_) => {
                            lines.flush(out);
                            continue;
                        }
                        None => length = Some(n),
                    }
                    if no_body {
                        lines.flush(out);
                        continue;
                    }
                }
                Some("connection") => upstream_closes |= connection_close(field.value)?,
                Some("date") => dated = true,
                Some("location" | "content-location") => {
                    if let Some(value) = visible_ascii(field.value).and_then(|v| self.relocated(v, target)) {
                        lines.flush(out);
                        push_field(out, field.name.as_bytes(), value.as_bytes());
                        continue;
                    }
                }
                _ => {}
            }
            if name.is_some_and(|n| hop_by_hop(n).is_some() || dropped_from_responses(n).is_some()) {
                lines.flush(out);
            } else {
                lines.keep(out, field);
            }
        }
        lines.flush(out);
        let body = if taken.head_request || no_body { 0 } else { length? };
        if !dated {
            // hyper's server adds one; Swift always sends its own.
            push_field(out, b"date", httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
        }
        if close {
            push_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        Some(Answer { body, upstream_closes })
    }
}

/// A request for the gateway's own endpoints, if it has no body and its fields all make a
/// `HeaderMap`.
fn own(fields: &[httparse::Header<'_>], head_len: usize, head_request: bool, method: &str, path: &str) -> Look {
    let mut headers = http::HeaderMap::with_capacity(fields.len());
    let mut close = false;
    let mut lower = [0u8; 32];
    for field in fields {
        match lowered(field.name, &mut lower) {
            Some("content-length" | "transfer-encoding" | "expect" | "upgrade") => return Look::Decline,
            Some("connection") => match connection_close(field.value) {
                Some(c) => close |= c,
                None => return Look::Decline,
            },
            _ => {}
        }
        let (Ok(name), Ok(value)) =
            (http::HeaderName::from_bytes(field.name.as_bytes()), http::HeaderValue::from_bytes(field.value))
        else {
            return Look::Decline;
        };
        headers.append(name, value);
    }
    let Ok(method) = http::Method::from_bytes(method.as_bytes()) else { return Look::Decline };
    Look::Own(Own { head_len, head_request, close, method, path: path.to_owned(), headers })
}

/// Most bytes of a gateway endpoint's answer the fast path writes (its own answers are a few
/// hundred bytes, upstream's `/info` a few KiB).
const OWN_BODY_LIMIT: usize = 1024 * 1024;

/// Answers `own` with what the gateway answers to it, or declines if it has no such answer.
async fn answer_own<S, A>(auth: &A, client: &mut S, own: &Own, request: InProgress) -> Exchange
where
    S: AsyncWrite + Unpin,
    A: Authority,
{
    let Some(answer) = auth.head_only(&own.method, &own.path, &own.headers) else { return Exchange::Decline };
    let (parts, body) = answer.await.into_parts();
    let _request = request.responding();
    let Some(body) = collect(body).await else {
        tracing::warn!("an answer of the gateway's could not be read; connection closed");
        return Exchange::Cut;
    };
    let mut head = format!("HTTP/1.1 {}\r\n", parts.status).into_bytes();
    let mut dated = false;
    for (name, value) in &parts.headers {
        if matches!(name.as_str(), "content-length" | "transfer-encoding" | "connection") {
            continue;
        }
        dated |= name == http::header::DATE;
        push_field(&mut head, name.as_str().as_bytes(), value.as_bytes());
    }
    push_field(&mut head, b"content-length", body.len().to_string().as_bytes());
    if !dated {
        push_field(&mut head, b"date", httpdate::fmt_http_date(std::time::SystemTime::now()).as_bytes());
    }
    if own.close {
        push_field(&mut head, b"connection", b"close");
    }
    head.extend_from_slice(b"\r\n");
    let body = if own.head_request { &[][..] } else { &body[..] };
    match write_two(client, &head, body).await {
        Ok(()) if client.flush().await.is_ok() => Exchange::Done { close: own.close },
        _ => Exchange::Cut,
    }
}

/// `body`, whole, if it ends within [`OWN_BODY_LIMIT`] bytes and
/// [`crate::body::SMALL_BODY_TIME`].
async fn collect(mut body: crate::body::Body) -> Option<BytesMut> {
    use http_body_util::BodyExt;
    let read = async {
        let mut whole = BytesMut::new();
        while let Some(frame) = body.frame().await {
            if let Ok(data) = frame.ok()?.into_data() {
                if whole.len() + data.len() > OWN_BODY_LIMIT {
                    return None;
                }
                whole.extend_from_slice(&data);
            }
        }
        Some(whole)
    };
    tokio::time::timeout(crate::body::SMALL_BODY_TIME, read).await.ok()?
}

/// What the client's answer carries.
struct Answer {
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

/// A `Content-Length` value: digits only, as hyper reads it.
fn content_length(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// `value` as text if it is visible ASCII (with spaces and tabs), as `HeaderValue::to_str`
/// takes it.
fn visible_ascii(value: &[u8]) -> Option<&str> {
    value.iter().all(|&b| b == b'\t' || (0x20..0x7f).contains(&b)).then(|| std::str::from_utf8(value).ok())?
}

/// `name` in ASCII lower case, in `into`, if it fits (no field the gateway looks for is longer).
fn lowered<'a>(name: &str, into: &'a mut [u8; 32]) -> Option<&'a str> {
    let into = into.get_mut(..name.len())?;
    for (to, from) in into.iter_mut().zip(name.bytes()) {
        *to = from.to_ascii_lowercase();
    }
    std::str::from_utf8(into).ok()
}

/// Whether a `Connection` field asks to close; `None` when it names anything but `close` and
/// `keep-alive` (fields to drop, which the fast path leaves to the proxy).
fn connection_close(value: &[u8]) -> Option<bool> {
    let mut close = false;
    for option in value.split(|&b| b == b',') {
        let option = option.trim_ascii();
        if option.eq_ignore_ascii_case(b"close") {
            close = true;
        } else if !option.is_empty() && !option.eq_ignore_ascii_case(b"keep-alive") {
            return None;
        }
    }
    Some(close)
}

/// A request-target byte `http`'s URI parser takes as it is.
fn plain_target_byte(b: u8) -> bool {
    matches!(b, 0x21..=0x7e) && !matches!(b, b'"' | b'#' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}')
}

/// Copies header lines of a head into an outgoing one as they were written, each run of
/// consecutive kept lines in one copy (four small copies per field were a tenth of the fast
/// path's instructions).
struct Lines<'a> {
    head: &'a [u8],
    /// The run of kept lines not copied yet: its start and end in `head`.
    run: Option<(usize, usize)>,
}

impl<'a> Lines<'a> {
    fn new(head: &'a [u8]) -> Self {
        Lines { head, run: None }
    }

    /// Keeps `field`'s line, one that httparse found in `head`.
    fn keep(&mut self, out: &mut Vec<u8>, field: &httparse::Header<'_>) {
        let Some((start, end)) = self.line(field) else {
            // Not where it should be: written out afresh (never happens with httparse).
            self.flush(out);
            push_field(out, field.name.as_bytes(), field.value);
            return;
        };
        match &mut self.run {
            Some((_, run_end)) if *run_end == start => *run_end = end,
            _ => {
                self.flush(out);
                self.run = Some((start, end));
            }
        }
    }

    /// Copies the run of kept lines, if any.
    fn flush(&mut self, out: &mut Vec<u8>) {
        if let Some((start, end)) = self.run.take() {
            out.extend_from_slice(&self.head[start..end]);
        }
    }

    /// Where `field`'s line lies in `head`, its line ending included: from its name to the
    /// first line feed after its value (httparse leaves none inside a value).
    fn line(&self, field: &httparse::Header<'_>) -> Option<(usize, usize)> {
        let base = self.head.as_ptr() as usize;
        let start = (field.name.as_ptr() as usize).checked_sub(base)?;
        let after_name = start + field.name.len();
        let value_end = (field.value.as_ptr() as usize).checked_sub(base).map(|v| v + field.value.len());
        // An empty value may point anywhere: then look from the name on.
        let from = value_end.filter(|&v| !field.value.is_empty() && v >= after_name).unwrap_or(after_name);
        let feed = self.head.get(from..)?.iter().position(|&b| b == b'\n')?;
        Some((start, from + feed + 1))
    }
}

fn push_field(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
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
    let _request = request.responding();
    let (status, page) = failure.page();
    let closing = if close { "connection: close\r\n" } else { "" };
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n{closing}date: {}\r\n\r\n",
        page.len(),
        httpdate::fmt_http_date(std::time::SystemTime::now()),
    );
    let page = if head_request { "" } else { page.as_str() };
    match write_two(client, head.as_bytes(), page.as_bytes()).await {
        Ok(()) if client.flush().await.is_ok() => Exchange::Done { close },
        _ => Exchange::Cut,
    }
}

/// Copies the `left` bytes of an upload's body from the client to `to` through a buffer:
/// upstream (a TLS client or upstream, or no pipe to be had), or a sink for a body upstream
/// stopped taking. It reads no further than the body's end: what follows belongs to the next
/// request. A wait on either side longer than `idle` breaks
/// the copy, which then tells how many bytes it had taken from the client.
async fn copy_body<S: Connection, W: AsyncWrite + Unpin>(
    client: &mut S,
    to: &mut W,
    left: u64,
    idle: std::time::Duration,
) -> Result<(), (Broke, u64)> {
    let mut chunk = vec![0u8; usize::try_from(left).unwrap_or(usize::MAX).min(COPY_CHUNK)];
    let mut taken = 0u64;
    while taken < left {
        let room = usize::try_from(left - taken).unwrap_or(usize::MAX).min(chunk.len());
        let n = match tokio::time::timeout(idle, client.read(&mut chunk[..room])).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return Err((Broke::Source, taken)),
        };
        taken += n as u64;
        if !matches!(tokio::time::timeout(idle, to.write_all(&chunk[..n])).await, Ok(Ok(()))) {
            return Err((Broke::Sink, taken));
        }
    }
    // A TLS upstream may hold the tail until flushed.
    match tokio::time::timeout(idle, to.flush()).await {
        Ok(Ok(())) => Ok(()),
        _ => Err((Broke::Sink, taken)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_options_the_fast_path_takes() {
        for (value, want) in [
            (&b"close"[..], Some(true)),
            (b"Keep-Alive", Some(false)),
            (b"keep-alive, close", Some(true)),
            (b" , ", Some(false)),
            (b"close, X-Foo", None),
            (b"upgrade", None),
        ] {
            assert_eq!(connection_close(value), want, "{}", String::from_utf8_lossy(value));
        }
    }

    #[test]
    fn kept_lines_are_copied_as_written() {
        let head = b"GET / HTTP/1.1\r\nA: 1\r\nDrop: x\r\nB:  two \r\nC:\r\nD: 4\nE: 5\r\n\r\n";
        let mut fields = [httparse::EMPTY_HEADER; 8];
        let mut req = httparse::Request::new(&mut fields);
        assert!(req.parse(head).unwrap().is_complete());
        let mut out = Vec::new();
        let mut lines = Lines::new(head);
        for field in req.headers.iter() {
            if field.name == "Drop" {
                lines.flush(&mut out);
            } else {
                lines.keep(&mut out, field);
            }
        }
        lines.flush(&mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "A: 1\r\nB:  two \r\nC:\r\nD: 4\nE: 5\r\n");
    }

    #[test]
    fn names_are_lowered_when_they_fit() {
        let mut into = [0u8; 32];
        assert_eq!(lowered("X-Auth-Token", &mut into), Some("x-auth-token"));
        assert_eq!(lowered(&"x".repeat(33), &mut into), None);
    }

    #[test]
    fn target_bytes_are_those_the_uri_parser_takes() {
        for b in 0..=255u8 {
            if plain_target_byte(b) {
                let target = [b'/', b'a', b, b'b'];
                assert!(http::uri::PathAndQuery::try_from(&target[..]).is_ok(), "byte {b:#x}");
            }
        }
        let taken = "/v1/AUTH_a/c/o%20b?format=json&x=~!$'()*+,;=:@";
        assert!(taken.bytes().all(plain_target_byte));
        for refused in ["/a b", "/a\"b", "/a{b", "/a|b", "/a\x7f", "/\u{e9}"] {
            assert!(!refused.bytes().all(plain_target_byte), "{refused}");
        }
    }
}
