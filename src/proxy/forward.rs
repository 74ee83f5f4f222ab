//! The hyper engine: every request the fast engine does not take, as hyper's server hands it
//! over, sent upstream with hyper's client under the [`policy`](super::policy).
//!
//! Replay: body-less requests are re-sent; a body of at most `replay_buffer` bytes is kept (as
//! the same `Bytes`) while it streams and re-sent; a larger or chunked body is sent with
//! `Expect: 100-continue` and held back until upstream answers 100, so a 401 (which Swift sends
//! before 100) costs no byte. Only a 401 after the body was streamed reaches the client.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header;
use http::{Request, Response, StatusCode, Uri};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::policy::{self, Failure, Replay, Wait, TOKEN_MARGIN};
use super::pool;
use super::stream::{ClientBodyError, Gate, IdleTimeout, Returned, UpstreamBody};
use super::{Proxy, Target};
use crate::body::Body;
use crate::front;
use crate::tokens::{Cached, TokenManager};

impl Proxy {
    /// Forwards an authenticated request of `account` (or an anonymous one, for tempurl and
    /// public containers, when `account` is `None` and `anonymous` names the target).
    ///
    /// The paths a request seldom takes (a retry after a 401, a body's hand-back, connecting)
    /// are boxed. A future is as large as its largest state, and hyper's server moves this one
    /// into place for every request, so a rare state kept inline costs every request a copy.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        peer: &crate::server::Peer,
        tokens: &Arc<TokenManager>,
        account: Option<&str>,
        anonymous: Option<Arc<Cached>>,
    ) -> Response<Body> {
        let (parts, client_body) = req.into_parts();
        if !policy::method_forwarded(&parts.method) {
            return drain_then(Some(client_body), policy::method_refused());
        }
        if !policy::only_chunked(&parts.headers) {
            return drain_then(Some(client_body), policy::unknown_coding());
        }
        let has_body = !client_body.is_end_stream();
        let declared =
            parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        let replay_as = self.policy.replay(has_body, declared);
        let gated = replay_as == Replay::Gated;
        let expects_continue =
            parts.headers.get(header::EXPECT).is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        let keep_alive = policy::asks_keep_alive(&parts.headers);
        let mut headers = parts.headers;
        policy::strip_request_headers(&mut headers);
        let path_and_query = parts.uri.path_and_query().cloned();
        let mut replay = Vec::new();
        let mut rest = has_body.then_some(client_body);
        if let Some(body) = rest.as_mut().filter(|_| declared.is_none() && !expects_continue) {
            // A chunked body whose client asked no `100 Continue` is on its way anyway: its first
            // chunk is read before anything goes upstream, so that malformed framing gets its
            // `400` there. One that waits for `100` waits for upstream's, as ever.
            match Box::pin(tokio::time::timeout(self.policy.timeout(Wait::Idle), body.frame())).await {
                Ok(Some(Ok(frame))) => replay.extend(frame.into_data().ok()),
                Ok(Some(Err(_))) => return Failure::ClientBody.response(),
                Ok(None) => {}
                Err(_) => return Failure::ClientIdle.response(),
            }
        }
        let mut refused: Option<crate::secret::Secret> = None;
        let mut resent = 0;
        loop {
            let retried = refused.is_some();
            let cached = match (account, &anonymous, &refused) {
                (Some(account), _, None) => tokens.credentials_lasting(account, TOKEN_MARGIN).await,
                (Some(account), _, Some(token)) => {
                    Box::pin(tokens.credentials_except(account, token, crate::tokens::REFUSAL_PATIENCE)).await
                }
                (None, Some(c), _) => Ok(c.clone()),
                (None, None, _) => return drain_then(rest, front::unauthorized(parts.uri.path())),
            };
            let cached = match cached {
                Ok(c) => c,
                Err(e) => return drain_then(rest, front::token_error_response(&e, self.policy.public_origin())),
            };
            let target = &cached.target;
            if !target.covers(parts.uri.path()) {
                return drain_then(rest, policy::misdirected(parts.uri.path(), target));
            }
            // Origin form, as HTTP/1 sends it to an origin server; `Host` names the upstream.
            let uri = match &path_and_query {
                Some(pq) => Uri::from(pq.clone()),
                None => Uri::from_static("/"),
            };
            let gate = gated.then(|| Arc::new(Gate::default()));
            let sent = has_body.then(|| Arc::new(tokio::sync::Notify::new()));
            // Only a body has anything to hand back (what was sent, what the client still has).
            let (back_tx, back_rx) = if has_body {
                let (tx, rx) = tokio::sync::oneshot::channel();
                (Some(tx), Some(rx))
            } else {
                (None, None)
            };
            let budget = self.policy.replay_budget(retried);
            let body = UpstreamBody::new(std::mem::take(&mut replay), rest.take(), gate.clone(), budget, back_tx)
                .notify_end(sent.clone())
                .idle_timeout(self.policy.timeout(Wait::Idle));
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.version_mut() = http::Version::HTTP_11;
            *up.headers_mut() = headers.clone();
            let fields = up.headers_mut();
            self.policy.add_fields(target, &peer.forwarded_for, replay_as, account.is_some(), |name, _, value| {
                fields.insert(name, value.clone());
            });
            if let Some(gate) = &gate {
                let gate = gate.clone();
                hyper::ext::on_informational(&mut up, move |res| {
                    if res.status() == StatusCode::CONTINUE {
                        gate.open();
                    }
                });
            }
            let result = self.send(target, up, gate.as_deref(), sent.as_deref()).await;
            // Upstream answered without asking for the body: the body stays with the client.
            let body_unsent = gate.as_ref().is_some_and(|g| !g.is_open());
            if let Some(gate) = &gate {
                gate.cancel();
            }
            let resp = match result {
                Ok(resp) => resp,
                Err(Failure::Stale) if self.policy.resends(&parts.method, has_body, resent) => {
                    resent += 1;
                    continue;
                }
                // The client's unsent body is drained, so that a client that sends it all
                // before reading (http.client) reads the answer instead of a broken pipe.
                Err(failure) => return drain_then(handed_back(back_rx).await.and_then(|r| r.rest), failure.response()),
            };
            let returned = match back_rx {
                Some(back_rx) if body_unsent || resp.status() == StatusCode::UNAUTHORIZED => {
                    handed_back(Some(back_rx)).await
                }
                _ => None,
            };
            // Without a body there is nothing to keep; with one, all of it must have been kept.
            let replayable = !has_body || returned.as_ref().is_some_and(|r| r.sent.is_some());
            let renewable = account.is_some() && cached.renews;
            if self.policy.renews(resp.status().as_u16(), renewable, retried, replayable) {
                // The upstream token was refused: renew (shared with every other waiter) and
                // retry once, sending what was kept and then the rest of the client's body.
                tracing::info!(status = 401, "upstream refused its token; renewed, retrying");
                let r = returned.unwrap_or(Returned { sent: None, rest: None });
                replay = r.sent.unwrap_or_default();
                rest = r.rest;
                refused = Some(cached.creds.token.clone());
                continue;
            }
            return drain_then(returned.and_then(|r| r.rest), self.respond(resp, target, keep_alive));
        }
    }

    /// Sends one attempt. While a gated body waits for `100 Continue`, the gate opens after the
    /// expect timeout (RFC 9110 lets a client stop waiting). The header timeout runs only once
    /// the body is sent: an upload has no total time limit.
    async fn send(
        &self,
        target: &Target,
        up: Request<UpstreamBody>,
        gate: Option<&Gate>,
        sent: Option<&tokio::sync::Notify>,
    ) -> Result<Response<pool::Pooled>, Failure> {
        let request = self.pools.send(&target.origin, &target.connect_to, up);
        tokio::pin!(request);
        if gate.is_some() || sent.is_some() {
            // Boxed, as every path a GET never takes (see `Proxy::forward`), and the request
            // future passed pinned: a future passed by value is held twice.
            if let Some(answer) = Box::pin(self.wait_for_body(request.as_mut(), gate, sent)).await {
                return answer;
            }
        }
        match tokio::time::timeout(self.policy.timeout(Wait::AnswerHead), request).await {
            Ok(r) => finish(r),
            Err(_) => Err(Failure::Timeout),
        }
    }

    /// Until the request's body is all sent: what [`send`](Self::send) adds for a body, or the
    /// answer if it came earlier.
    async fn wait_for_body(
        &self,
        mut request: Pin<&mut impl Future<Output = Result<Response<pool::Pooled>, pool::SendError>>>,
        gate: Option<&Gate>,
        sent: Option<&tokio::sync::Notify>,
    ) -> Option<Result<Response<pool::Pooled>, Failure>> {
        if let Some(gate) = gate {
            tokio::select! {
                r = &mut request => return Some(finish(r)),
                () = tokio::time::sleep(self.policy.timeout(Wait::Continue)) => gate.open(),
            }
        }
        if let Some(sent) = sent {
            tokio::select! {
                r = &mut request => return Some(finish(r)),
                () = sent.notified() => {}
            }
        }
        None
    }

    /// The upstream answer as the client gets it: hop-by-hop headers dropped, absolute
    /// locations pointing at upstream rewritten to the gateway, the body streamed; with
    /// `Connection: keep-alive` if the client asked for it ([`policy::asks_keep_alive`]).
    fn respond(&self, resp: Response<pool::Pooled>, target: &Target, keep_alive: bool) -> Response<Body> {
        let (mut parts, upstream_body) = resp.into_parts();
        policy::strip_response_headers(&mut parts.headers);
        if keep_alive {
            parts.headers.insert(header::CONNECTION, http::HeaderValue::from_static("keep-alive"));
        }
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(rewritten) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| self.policy.relocated(v, target))
                .and_then(|v| http::HeaderValue::from_str(&v).ok())
            {
                parts.headers.insert(name, rewritten);
            }
        }
        let body = IdleTimeout::new(upstream_body, self.policy.timeout(Wait::Idle));
        Response::from_parts(parts, BodyExt::boxed(body))
    }

    /// `GET /info` from the upstream of `target`.
    pub async fn info(&self, target: &Target) -> Response<Body> {
        let Some(path) = target.info_path() else {
            return crate::body::text(StatusCode::BAD_GATEWAY, "no upstream /info\n");
        };
        let mut up = Request::new(UpstreamBody::empty());
        *up.uri_mut() = Uri::from(path);
        up.headers_mut().insert(header::HOST, target.host.clone());
        match self.send(target, up, None, None).await {
            Ok(resp) => self.respond(resp, target, false),
            Err(failure) => failure.response(),
        }
    }
}

fn finish(result: Result<Response<pool::Pooled>, pool::SendError>) -> Result<Response<pool::Pooled>, Failure> {
    result.map_err(|e| {
        let failure = match e {
            pool::SendError::Connect(_) => Failure::Unreachable,
            _ if e.is_stale() => Failure::Stale,
            pool::SendError::Exchange { ref error, .. } => match client_body_error(error) {
                Some(ClientBodyError::Idle) => Failure::ClientIdle,
                Some(ClientBodyError::Broken(_)) => Failure::ClientBody,
                None => Failure::Broken,
            },
        };
        match failure {
            Failure::Stale => tracing::debug!(cause = %e, "a parked upstream connection was dead"),
            Failure::ClientBody | Failure::ClientIdle => tracing::info!(cause = %e, "the client's request body failed"),
            _ => tracing::warn!(cause = %e, "upstream request failed"),
        }
        failure
    })
}

/// The client's body's failure that made an exchange fail, if that is what did.
fn client_body_error(error: &hyper::Error) -> Option<&ClientBodyError> {
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        if let Some(found) = e.downcast_ref::<ClientBodyError>() {
            return Some(found);
        }
        source = e.source();
    }
    None
}

/// What an attempt's body handed back once hyper let go of it (within 10 s).
async fn handed_back(back: Option<tokio::sync::oneshot::Receiver<Returned>>) -> Option<Returned> {
    match Box::pin(tokio::time::timeout(Duration::from_secs(10), back?)).await {
        Ok(Ok(r)) => Some(r),
        _ => None,
    }
}

/// Answers with `resp`, first reading (and discarding) what the client is still sending, up to
/// a bound, so a client that sent no `Expect` reads the answer instead of a reset.
pub fn drain_then(body: Option<Incoming>, resp: Response<Body>) -> Response<Body> {
    if let Some(body) = body {
        tokio::spawn(async move {
            let drain = async move {
                let mut body = body;
                let mut seen: u64 = 0;
                while let Some(Ok(frame)) = body.frame().await {
                    seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if seen > policy::DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(policy::DRAIN_TIME, drain).await;
        });
    }
    resp
}
