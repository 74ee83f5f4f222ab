//! The bodies on the streaming path: the request body sent upstream ([`UpstreamBody`]: held
//! back behind a 100-continue gate, remembering what it sent so a 401 can be replayed) and
//! the idle timeout for bodies in either direction ([`IdleTimeout`]).
//!
//! Chunks pass through as the same `Bytes` (a kept chunk is a reference-count increment, not
//! a copy); nothing here locks or formats.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::task::AtomicWaker;
use http_body::{Body as HttpBody, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use crate::body::BoxError;

/// Why the client's body could not be sent upstream: the client's fault, which the proxy
/// answers as Swift does.
#[derive(Debug, thiserror::Error)]
pub enum ClientBodyError {
    /// The client sent nothing for the idle timeout.
    #[error("the client's body went idle")]
    Idle,
    /// The body could not be read: malformed chunked framing, or the client broke off.
    #[error("the client's body could not be read: {0}")]
    Broken(#[source] hyper::Error),
}

const GATE_CLOSED: u8 = 0;
const GATE_OPEN: u8 = 1;
const GATE_CANCELLED: u8 = 2;

/// Holds a request body back until upstream answers `100 Continue` (opened from hyper's
/// informational callback) or gives its final answer first (cancelled). Lock-free.
#[derive(Debug, Default)]
pub struct Gate {
    state: AtomicU8,
    waker: AtomicWaker,
}

impl Gate {
    /// Lets the body flow.
    pub fn open(&self) {
        let _ = self.state.compare_exchange(GATE_CLOSED, GATE_OPEN, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// Upstream answered without asking for the body: end the upload attempt, keep the body.
    pub fn cancel(&self) {
        let _ = self.state.compare_exchange(GATE_CLOSED, GATE_CANCELLED, Ordering::AcqRel, Ordering::Acquire);
        self.waker.wake();
    }

    /// True once opened.
    pub fn is_open(&self) -> bool {
        self.state.load(Ordering::Acquire) == GATE_OPEN
    }

    fn poll_state(&self, cx: &mut Context<'_>) -> Poll<u8> {
        let state = self.state.load(Ordering::Acquire);
        if state != GATE_CLOSED {
            return Poll::Ready(state);
        }
        self.waker.register(cx.waker());
        match self.state.load(Ordering::Acquire) {
            GATE_CLOSED => Poll::Pending,
            other => Poll::Ready(other),
        }
    }
}

/// What the upstream body hands back when it is done or dropped: the chunks it sent (if they
/// all fit in the replay budget) and the client body's unread rest.
#[derive(Debug)]
pub struct Returned {
    /// Every chunk before `rest`: those sent so far and those still to be replayed; `None` if
    /// more than the budget was sent.
    pub sent: Option<Vec<Bytes>>,
    /// The client's body from where the attempt stopped reading; `None` once it ended.
    pub rest: Option<Incoming>,
}

/// The request body of one upstream attempt: replayed chunks first, then the client's body.
pub struct UpstreamBody {
    replay: std::vec::IntoIter<Bytes>,
    rest: Option<Incoming>,
    gate: Option<Arc<Gate>>,
    /// Chunks sent, kept for a replay while `kept_len <= budget`.
    kept: Option<Vec<Bytes>>,
    kept_len: u64,
    budget: u64,
    back: Option<tokio::sync::oneshot::Sender<Returned>>,
    /// Told when the last byte went upstream (the response wait starts then).
    end: Option<Arc<tokio::sync::Notify>>,
    /// Fails the upload when the client stops sending.
    idle: Option<IdleClock>,
}

impl UpstreamBody {
    /// A body that sends `replay` then `rest`, waits for `gate` if given, and keeps up to
    /// `budget` bytes of what it sends for one replay; `back`, if given, receives the remains.
    pub fn new(
        replay: Vec<Bytes>,
        rest: Option<Incoming>,
        gate: Option<Arc<Gate>>,
        budget: u64,
        back: Option<tokio::sync::oneshot::Sender<Returned>>,
    ) -> Self {
        UpstreamBody {
            replay: replay.into_iter(),
            rest,
            gate,
            kept: Some(Vec::new()),
            kept_len: 0,
            budget,
            back,
            end: None,
            idle: None,
        }
    }

    /// Fails the body (and so the upstream upload) when the client sends nothing for `idle`.
    pub fn idle_timeout(mut self, idle: Duration) -> Self {
        if self.rest.is_some() {
            self.idle = Some(IdleClock::new(idle));
        }
        self
    }

    /// A body with nothing to send.
    pub fn empty() -> Self {
        UpstreamBody::new(Vec::new(), None, None, 0, None)
    }

    /// Notifies `end` once the whole body has been handed to hyper.
    pub fn notify_end(mut self, end: Option<Arc<tokio::sync::Notify>>) -> Self {
        self.end = end;
        self
    }

    fn finished(&mut self) {
        self.rest = None;
        self.hand_back();
        if let Some(end) = self.end.take() {
            end.notify_one();
        }
    }

    fn keep(&mut self, chunk: &Bytes) {
        if let Some(kept) = &mut self.kept {
            self.kept_len += chunk.len() as u64;
            if self.kept_len <= self.budget {
                kept.push(chunk.clone());
            } else {
                self.kept = None;
            }
        }
    }

    fn hand_back(&mut self) {
        if let Some(back) = self.back.take() {
            // What was to be replayed and was not sent yet comes back too, after what was.
            let sent = self.kept.take().map(|mut sent| {
                sent.extend(self.replay.by_ref());
                sent
            });
            let _ = back.send(Returned { sent, rest: self.rest.take() });
        }
    }
}

impl Drop for UpstreamBody {
    fn drop(&mut self) {
        self.hand_back();
    }
}

impl HttpBody for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if let Some(gate) = &this.gate {
            match ready!(gate.poll_state(cx)) {
                GATE_OPEN => this.gate = None,
                _ => return Poll::Ready(Some(Err("upstream answered before 100 Continue".into()))),
            }
        }
        if let Some(chunk) = this.replay.next() {
            this.keep(&chunk);
            if this.replay.len() == 0 && this.rest.is_none() {
                this.finished();
            }
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        let Some(rest) = this.rest.as_mut() else {
            this.finished();
            return Poll::Ready(None);
        };
        let polled = Pin::new(rest).poll_frame(cx);
        if polled.is_pending() {
            if this.idle.as_mut().is_some_and(|clock| clock.expired(cx)) {
                this.rest = None;
                this.kept = None;
                return Poll::Ready(Some(Err(ClientBodyError::Idle.into())));
            }
            return Poll::Pending;
        }
        if let Some(clock) = &mut this.idle {
            clock.activity();
        }
        match ready!(polled) {
            Some(Ok(frame)) => {
                if let Some(chunk) = frame.data_ref() {
                    let chunk = chunk.clone();
                    this.keep(&chunk);
                }
                // hyper stops polling once a Content-Length body is complete, so notice the end
                // here rather than waiting for a `None` that may never be asked for.
                if this.rest.as_ref().is_some_and(HttpBody::is_end_stream) {
                    this.finished();
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Some(Err(e)) => {
                // The client went away or broke its body: upstream must see an aborted upload,
                // and what was kept is no longer a whole body to replay.
                this.rest = None;
                this.kept = None;
                Poll::Ready(Some(Err(ClientBodyError::Broken(e).into())))
            }
            None => {
                this.finished();
                Poll::Ready(None)
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.replay.len() == 0 && self.rest.as_ref().is_none_or(|r| r.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let rest = self.rest.as_ref().map_or_else(|| SizeHint::with_exact(0), HttpBody::size_hint);
        let sent_replay: u64 = self.replay.as_slice().iter().map(|b| b.len() as u64).sum();
        let mut hint = SizeHint::new();
        hint.set_lower(rest.lower() + sent_replay);
        if let Some(upper) = rest.upper() {
            hint.set_upper(upper + sent_replay);
        }
        hint
    }
}

/// Tracks activity on a body and says when it has been idle too long. The timer is made the
/// first time the body has to wait (a body whose chunks are always ready never needs one) and
/// re-armed only when it fires, not on every chunk.
struct IdleClock {
    idle: Duration,
    last: Instant,
    timer: Option<Pin<Box<Sleep>>>,
}

impl IdleClock {
    fn new(idle: Duration) -> Self {
        IdleClock { idle, last: Instant::now(), timer: None }
    }

    fn activity(&mut self) {
        self.last = Instant::now();
    }

    /// True once `idle` has passed without activity; otherwise arranges a wake-up.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        let IdleClock { idle, last, timer } = self;
        let timer = timer.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(*last + *idle)));
        while timer.as_mut().poll(cx).is_ready() {
            let deadline = *last + *idle;
            if Instant::now() >= deadline {
                return true;
            }
            timer.as_mut().reset(deadline);
        }
        false
    }
}

/// Fails a body that produces no frame for `idle`; no total time limit.
pub struct IdleTimeout<B> {
    inner: B,
    clock: IdleClock,
}

impl<B> IdleTimeout<B> {
    /// Wraps `inner`.
    pub fn new(inner: B, idle: Duration) -> Self {
        IdleTimeout { inner, clock: IdleClock::new(idle) }
    }
}

impl<B> HttpBody for IdleTimeout<B>
where
    B: HttpBody<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.clock.activity();
                Poll::Ready(frame.map(|r| r.map_err(Into::into)))
            }
            Poll::Pending if this.clock.expired(cx) => Poll::Ready(Some(Err("body idle timeout".into()))),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
