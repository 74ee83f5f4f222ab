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
//! Anything else hands the connection to hyper, with the request still unanswered, before a
//! byte of answer has been written: another method or HTTP version, a body, `Expect`,
//! `Upgrade`, a `Connection` field naming other fields, a path outside storage, a missing or bad
//! token, credentials that need renewing, an upstream that cannot be reached or closed a parked
//! connection, and answers the relay does not frame (1xx, chunked, read-until-close) or that
//! need the proxy's judgement (401, which renews and retries). The request is then sent again
//! by [`Proxy::forward`], which is safe: `GET` and `HEAD` are idempotent. hyper serves the
//! connection from then on.
//!
//! Found where the gateway's CPU per small request went: 40 000 user-space instructions per
//! 4 KiB `GET`, where the floor relay executes 5 000 (`benches/instructions.sh`).

use std::io::IoSlice;
use std::sync::Arc;
use std::time::Instant;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::pool::Raw;
use super::{dropped_from_requests, dropped_from_responses, hop_by_hop, Failure, Proxy, TOKEN_MARGIN};
use crate::server::{InProgress, Peer, Prefixed, Served, Signals};
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
}

/// Header fields a request head may have for the fast path to take it (hyper's limit is 100;
/// a head with more goes to hyper).
const MAX_REQUEST_FIELDS: usize = 64;
/// Header fields an answer's head may have (Swift sends up to 90 metadata fields and a few
/// of its own; more goes to hyper).
const MAX_RESPONSE_FIELDS: usize = 128;
/// What the client's read buffer grows by.
const CLIENT_READ: usize = 8 * 1024;
/// What an upstream connection's read buffer starts at; it doubles, up to
/// [`crate::body::MAX_READ`], while a body fills it, and goes back to this after a large body.
const UPSTREAM_READ: usize = 16 * 1024;

/// A request the fast path takes.
struct Taken {
    /// The request head's length in the client's buffer.
    head_len: usize,
    head_request: bool,
    /// The client sent `Connection: close`.
    close: bool,
    cached: Arc<Cached>,
}

/// What a look at the client's buffer found.
enum Look {
    /// No whole head yet.
    Partial,
    /// Not for the fast path.
    Decline,
    /// Taken: the upstream head is written out.
    Take(Taken),
}

/// How an exchange ended.
enum Exchange {
    /// Answered; the client's connection may carry another request.
    Done,
    /// Nothing written to the client: hyper answers it.
    Decline,
    /// The connection cannot go on (the client went, or upstream broke off a body).
    Cut,
}

/// The upstream connection a client connection keeps between its requests.
struct Held {
    origin: Arc<str>,
    raw: Raw,
    since: Instant,
}

impl Proxy {
    /// Serves storage requests of an HTTP/1 connection (see the module's description) until
    /// one is not for the fast path, then hands the connection to hyper.
    pub async fn serve_h1<S, A>(&self, auth: &A, mut io: S, peer: &Arc<Peer>, signals: &mut Signals) -> Served<S>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
        A: Authority,
    {
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut held: Option<Held> = None;
        let hand_over = loop {
            let taken = match self.look(auth, &buf, peer, &mut out) {
                Look::Take(taken) => taken,
                Look::Decline => break true,
                Look::Partial => {
                    if buf.capacity() - buf.len() < CLIENT_READ / 2 {
                        buf.reserve(CLIENT_READ);
                    }
                    let read = if buf.is_empty() {
                        // Between requests: the server's stop and the idle close end the
                        // connection here.
                        tokio::select! {
                            biased;
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
            match self.exchange(&mut io, &taken, &mut held, &mut out, peer.begin()).await {
                Exchange::Done => {
                    let count = &self.fast_answers[crate::server::worker_index() % self.fast_answers.len()];
                    count.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    buf.advance(taken.head_len);
                    if taken.close {
                        break false;
                    }
                }
                Exchange::Decline => break true,
                Exchange::Cut => return Served::Done,
            }
        };
        if let Some(held) = held {
            if held.since.elapsed() < super::pool::IDLE_LIFE {
                self.pools.park_raw(held.origin, held.raw);
            }
        }
        if hand_over {
            return Served::HandOver(Prefixed::new(buf.freeze(), io));
        }
        let _ = io.shutdown().await;
        Served::Done
    }

    /// Parses the request head at the start of `buf` and, when the fast path takes it, writes
    /// the head upstream gets into `out`.
    fn look(&self, auth: &impl Authority, buf: &[u8], peer: &Peer, out: &mut Vec<u8>) -> Look {
        let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_FIELDS];
        let mut req = httparse::Request::new(&mut fields);
        let head_len = match req.parse(buf) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) if buf.len() < crate::server::MAX_HEAD => return Look::Partial,
            _ => return Look::Decline,
        };
        let (Some(method), Some(target), Some(1)) = (req.method, req.path, req.version) else { return Look::Decline };
        let head_request = match method {
            "GET" => false,
            "HEAD" => true,
            _ => return Look::Decline,
        };
        let path = target.split_once('?').map_or(target, |(path, _)| path);
        // Origin form, in the characters `http`'s URI parser accepts unquoted (hyper refuses
        // others with 400, so they go to hyper).
        if !path.starts_with('/') || !target.bytes().all(plain_target_byte) || !auth.is_storage(path) {
            return Look::Decline;
        }
        let mut token = None;
        let mut storage_token = None;
        let mut close = false;
        let mut lower = [0u8; 32];
        for field in req.headers.iter() {
            match lowered(field.name, &mut lower) {
                Some("content-length" | "transfer-encoding" | "expect" | "upgrade") => return Look::Decline,
                Some("connection") => match connection_close(field.value) {
                    Some(c) => close |= c,
                    None => return Look::Decline,
                },
                Some("x-auth-token") if token.is_none() => token = Some(field.value),
                Some("x-storage-token") if storage_token.is_none() => storage_token = Some(field.value),
                _ => {}
            }
        }
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
        out.clear();
        out.extend_from_slice(method.as_bytes());
        out.push(b' ');
        out.extend_from_slice(target.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        for field in req.headers.iter() {
            let dropped = lowered(field.name, &mut lower)
                .is_some_and(|n| hop_by_hop(n).is_some() || dropped_from_requests(n).is_some());
            if !dropped {
                push_field(out, field.name.as_bytes(), field.value);
            }
        }
        push_field(out, b"host", target_of.host.as_bytes());
        push_field(out, b"x-auth-token", target_of.token.as_bytes());
        push_field(out, b"x-forwarded-for", peer.forwarded_for.as_bytes());
        push_field(out, b"x-forwarded-proto", self.forwarded_proto.as_bytes());
        out.extend_from_slice(b"\r\n");
        Look::Take(Taken { head_len, head_request, close, cached })
    }

    /// Sends the head in `out` upstream and relays the answer to the client, or declines
    /// before writing a byte to the client.
    async fn exchange<S>(
        &self,
        client: &mut S,
        taken: &Taken,
        held: &mut Option<Held>,
        out: &mut Vec<u8>,
        request: InProgress,
    ) -> Exchange
    where
        S: AsyncWrite + Unpin,
    {
        let target = &taken.cached.target;
        // A parked connection that upstream closed meanwhile fails below, before any answer:
        // declined, the request goes again through the proxy, which retries on a new one.
        let mut up = match held.take() {
            Some(h) if *h.origin == *target.origin && h.since.elapsed() < super::pool::IDLE_LIFE => h.raw,
            other => {
                if let Some(h) = other {
                    self.pools.park_raw(h.origin, h.raw);
                }
                match self.pools.take_raw(&target.origin) {
                    Some(raw) => raw,
                    // Boxed, as every path a request seldom takes (see `Proxy::forward`).
                    None => match Box::pin(self.pools.connect_raw(&target.connect_to)).await {
                        Ok(raw) => raw,
                        Err(_) => return Exchange::Decline,
                    },
                }
            }
        };
        if up.io.write_all(out).await.is_err() {
            return Exchange::Decline;
        }
        up.buf.clear();
        if up.buf.capacity() < UPSTREAM_READ {
            up.buf.reserve(UPSTREAM_READ);
        }
        let head = match tokio::time::timeout(self.settings.header_timeout, answer_head(&mut up)).await {
            Ok(Some(head)) => head,
            Ok(None) => return Exchange::Decline,
            Err(_) => {
                tracing::warn!("upstream request failed: no answer within the header timeout");
                let _request = request.responding();
                return match write_page(client, Failure::Timeout).await {
                    Ok(()) => Exchange::Done,
                    Err(_) => Exchange::Cut,
                };
            }
        };
        let Some(answer) = self.client_head(&up.buf[..head], taken, target, out) else {
            return Exchange::Decline;
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
        if up.buf.capacity() > 4 * UPSTREAM_READ {
            up.buf = BytesMut::new();
        }
        up.buf.clear();
        if clean && !answer.close {
            *held = Some(Held { origin: target.origin.clone(), raw: up, since: Instant::now() });
        }
        Exchange::Done
    }

    /// The client's answer head from upstream's (`head`), written into `out`; `None` for an
    /// answer the fast path leaves to the proxy (see the module's description).
    fn client_head(&self, head: &[u8], taken: &Taken, target: &super::Target, out: &mut Vec<u8>) -> Option<Answer> {
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
        let mut resp = httparse::Response::new(&mut fields);
        resp.parse(head).ok()?;
        let code = resp.code?;
        if !(200..=599).contains(&code) || code == 401 {
            return None;
        }
        let status = http::StatusCode::from_u16(code).ok()?;
        let mut length = None;
        let mut close = false;
        let mut lower = [0u8; 32];
        for field in resp.headers.iter() {
            match lowered(field.name, &mut lower) {
                Some("transfer-encoding") => return None,
                Some("content-length") => {
                    let n = std::str::from_utf8(field.value).ok()?.trim().parse::<u64>().ok()?;
                    if length.is_some_and(|l| l != n) {
                        return None;
                    }
                    length = Some(n);
                }
                Some("connection") => close |= connection_close(field.value)?,
                _ => {}
            }
        }
        let body = if taken.head_request || code == 204 || code == 304 { 0 } else { length? };
        out.clear();
        out.extend_from_slice(b"HTTP/1.1 ");
        out.extend_from_slice(status.as_str().as_bytes());
        out.push(b' ');
        out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
        out.extend_from_slice(b"\r\n");
        for field in resp.headers.iter() {
            let name = lowered(field.name, &mut lower);
            if name.is_some_and(|n| hop_by_hop(n).is_some() || dropped_from_responses(n).is_some()) {
                continue;
            }
            if matches!(name, Some("location" | "content-location")) {
                let relocated = std::str::from_utf8(field.value).ok().and_then(|v| self.relocated(v, target));
                if let Some(value) = relocated {
                    push_field(out, field.name.as_bytes(), value.as_bytes());
                    continue;
                }
            }
            push_field(out, field.name.as_bytes(), field.value);
        }
        if taken.close {
            push_field(out, b"connection", b"close");
        }
        out.extend_from_slice(b"\r\n");
        Some(Answer { body, close })
    }
}

/// What the client's answer carries.
struct Answer {
    /// Body bytes to relay.
    body: u64,
    /// Upstream closes the connection after it.
    close: bool,
}

/// Reads upstream's answer until its head is whole: the head's length in `up.buf`. `None` if
/// the connection ends or fails first, or the head is too large.
async fn answer_head(up: &mut Raw) -> Option<usize> {
    loop {
        if !up.buf.is_empty() {
            let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_FIELDS];
            match httparse::Response::new(&mut fields).parse(&up.buf) {
                Ok(httparse::Status::Complete(n)) => return Some(n),
                Ok(httparse::Status::Partial) if up.buf.len() < crate::server::MAX_HEAD => {}
                _ => return None,
            }
        }
        if up.buf.capacity() == up.buf.len() {
            up.buf.reserve(UPSTREAM_READ);
        }
        match up.io.read_buf(&mut up.buf).await {
            Ok(n) if n > 0 => {}
            _ => return None,
        }
    }
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

/// Writes the error page of `failure` as a whole answer.
async fn write_page<S: AsyncWrite + Unpin>(io: &mut S, failure: Failure) -> std::io::Result<()> {
    let (status, page) = failure.page();
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/html; charset=utf-8\r\ncontent-length: {}\r\n\r\n",
        page.len()
    );
    write_two(io, head.as_bytes(), page.as_bytes()).await
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
