//! Proxy mode's streaming path: a client's storage request goes to the account's current
//! upstream endpoint with the upstream token, byte for byte, and the answer comes back the same
//! way; an upstream 401 renews the upstream token (single-flight, shared with auth) and retries
//! once when the body can still be sent again.
//!
//! Replay policy: body-less requests are re-sent; a body of at most `replay_buffer` bytes is
//! kept (as the same `Bytes`) while it streams and re-sent; a larger or chunked body is sent with
//! `Expect: 100-continue` and held back until upstream answers 100, so a 401 (which Swift sends
//! before 100) costs no byte. Only a 401 after the body was streamed reaches the client.

mod fast;
mod pool;
mod splice;
pub mod stream;

pub use fast::Authority;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http::header::{self, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, Uri};
use http_body::Body as HttpBody;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;

use crate::body::{self, Body};
pub use crate::config::ProxySettings;
use crate::front;
pub use crate::target::Target;
use crate::tokens::{Cached, TokenManager};
use stream::{Gate, IdleTimeout, Returned, UpstreamBody};

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the upstream TLS client: {0}")]
pub struct ClientError(String);

/// The client's gateway token (also the upstream token's field).
pub const X_AUTH_TOKEN: HeaderName = HeaderName::from_static("x-auth-token");
/// The older name of [`X_AUTH_TOKEN`], still sent by some clients.
pub const X_STORAGE_TOKEN: HeaderName = HeaderName::from_static("x-storage-token");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// `Some` of the literal that `$name` equals, as a `&'static str`, so a header can be removed
/// by it without cloning the (possibly allocated) name found in the map.
macro_rules! one_of {
    ($name:expr, $($n:literal)|+) => {
        match $name {
            $($n => Some($n),)+
            _ => None,
        }
    };
}

/// Hop-by-hop header fields (RFC 9110 §7.6.1): never forwarded, either way.
fn hop_by_hop(name: &str) -> Option<&'static str> {
    one_of!(name, "connection" | "keep-alive" | "proxy-connection" | "te" | "trailer" | "transfer-encoding" | "upgrade")
}

/// Further request fields that never travel upstream: the gateway's own token and its users'
/// credentials (v1.0 auth headers, Basic), `Host` and `Expect` (set here), proxy credentials,
/// and client-supplied forwarding fields.
fn dropped_from_requests(name: &str) -> Option<&'static str> {
    one_of!(
        name,
        "proxy-authorization"
            | "authorization"
            | "x-auth-user"
            | "x-auth-key"
            | "x-storage-user"
            | "x-storage-pass"
            | "host"
            | "expect"
            | "x-auth-token"
            | "x-storage-token"
            | "forwarded"
            | "x-forwarded-for"
            | "x-forwarded-proto"
            | "x-forwarded-host"
            | "x-forwarded-port"
            | "x-cluster-client-ip"
    )
}

/// Further response fields that never reach the client.
fn dropped_from_responses(name: &str) -> Option<&'static str> {
    one_of!(name, "proxy-authenticate")
}

/// Removes from a client's request what never travels upstream (see [`strip`]).
pub fn strip_request_headers(headers: &mut HeaderMap) {
    strip(headers, dropped_from_requests);
}

/// Removes from upstream's answer what never reaches the client (see [`strip`]).
pub fn strip_response_headers(headers: &mut HeaderMap) {
    strip(headers, dropped_from_responses);
}

/// Removes the hop-by-hop fields, those that `Connection` names, and those `extra` picks.
/// Each pass finds one name to remove among the names present: a request carries a handful
/// and loses one or two, so this allocates nothing unless `Connection` lists fields (looking
/// up every name that might have to go cost more than the rest of a request's header work, and
/// collecting the names to remove cost an allocation, and another for each that was cloned).
fn strip(headers: &mut HeaderMap, extra: fn(&str) -> Option<&'static str>) {
    // What `Connection` lists goes first, while it is still there to say what it lists.
    if headers.contains_key(header::CONNECTION) {
        let listed: Vec<HeaderName> = headers
            .keys()
            .filter(|name| {
                let name = name.as_str();
                headers
                    .get_all(header::CONNECTION)
                    .iter()
                    .filter_map(|v| v.to_str().ok())
                    .flat_map(|v| v.split(','))
                    .any(|token| token.trim().eq_ignore_ascii_case(name))
            })
            .cloned()
            .collect();
        for name in listed {
            headers.remove(name);
        }
    }
    while let Some(name) = headers.keys().find_map(|name| hop_by_hop(name.as_str()).or_else(|| extra(name.as_str()))) {
        headers.remove(name);
    }
}

/// The streaming proxy.
pub struct Proxy {
    /// One connection pool per worker thread, so an upstream connection is driven by the same
    /// event loop as the client connections that use it.
    pools: pool::Pools,
    settings: ProxySettings,
    public_origin: String,
    forwarded_proto: HeaderValue,
    /// What the fast path did, per worker.
    fast_counts: Box<[WorkerCounts]>,
}

/// Counts kept by one worker, on a cache line of their own so workers never contend for them.
#[derive(Default)]
#[repr(align(64))]
struct WorkerCounts {
    /// Requests the fast path answered.
    answers: std::sync::atomic::AtomicU64,
    /// Of those, the ones whose body it relayed with `splice(2)`.
    spliced: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("settings", &self.settings).finish()
    }
}

fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

impl Proxy {
    /// A proxy answering as `public_url` (scheme://host[:port], no path), used from `workers`
    /// worker threads (see [`crate::server::worker_index`]).
    pub fn new(settings: ProxySettings, public_url: &str, workers: usize) -> Result<Proxy, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(settings.extra_ca.as_deref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let pools = pool::Pools::new(https, workers);
        let forwarded_proto =
            HeaderValue::from_static(if public_url.starts_with("https://") { "https" } else { "http" });
        Ok(Proxy {
            pools,
            settings,
            public_origin: public_url.trim_end_matches('/').to_owned(),
            forwarded_proto,
            fast_counts: (0..workers.max(1)).map(|_| WorkerCounts::default()).collect(),
        })
    }

    /// Requests answered by the fast path (see [`fast`]) since the start, over all workers.
    pub fn fast_answers(&self) -> u64 {
        self.fast_counts.iter().map(|c| c.answers.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// Of the fast path's answers, those whose body went from socket to socket through the
    /// kernel alone (see [`splice`]), since the start.
    pub fn spliced_answers(&self) -> u64 {
        self.fast_counts.iter().map(|c| c.spliced.load(std::sync::atomic::Ordering::Relaxed)).sum()
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProxySettings {
        &self.settings
    }

    /// Forwards an authenticated request of `account` (or an anonymous one, for tempurl and
    /// public containers, when `account` is `None` and `anonymous` names the target).
    ///
    /// The paths a request seldom takes (a retry after a 401, a body's hand-back, connecting)
    /// are boxed. A future is as large as its largest state, and hyper's server moves this one
    /// into place for every request: boxing them took the gateway's request future from 5 776
    /// to 4 920 bytes.
    pub async fn forward(
        &self,
        req: Request<Incoming>,
        peer: &crate::server::Peer,
        tokens: &Arc<TokenManager>,
        account: Option<&str>,
        anonymous: Option<Arc<Cached>>,
    ) -> Response<Body> {
        let (parts, client_body) = req.into_parts();
        if !only_chunked(&parts.headers) {
            // hyper takes `gzip, chunked` apart as chunked and hands over the compressed bytes:
            // sent on, they would be stored as the object's, as if that were its content.
            return drain_then(
                Some(client_body),
                body::text(StatusCode::NOT_IMPLEMENTED, "transfer codings other than chunked are not implemented\n"),
            );
        }
        let has_body = !client_body.is_end_stream();
        let declared =
            parts.headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
        // Bodies that fit the replay buffer are kept while they stream; larger or unknown-length
        // ones wait behind Expect: 100-continue.
        let gated = has_body && declared.is_none_or(|n| n > self.settings.replay_buffer);
        let mut headers = parts.headers;
        strip_request_headers(&mut headers);
        headers.insert(X_FORWARDED_FOR, peer.forwarded_for.clone());
        headers.insert(X_FORWARDED_PROTO, self.forwarded_proto.clone());
        if gated {
            headers.insert(header::EXPECT, HeaderValue::from_static("100-continue"));
        }
        let path_and_query = parts.uri.path_and_query().cloned();
        let mut replay = Vec::new();
        let mut rest = has_body.then_some(client_body);
        let mut refused: Option<crate::secret::Secret> = None;
        // GET and HEAD without a body may go again when a parked connection turns out dead.
        let safe = !has_body && (parts.method == http::Method::GET || parts.method == http::Method::HEAD);
        let mut resent = false;
        loop {
            let retried = refused.is_some();
            let cached = match (account, &anonymous, &refused) {
                (Some(account), _, None) => tokens.credentials_lasting(account, TOKEN_MARGIN).await,
                (Some(account), _, Some(token)) => {
                    Box::pin(tokens.credentials_except(account, token, crate::tokens::REFUSAL_PATIENCE)).await
                }
                (None, Some(c), _) => Ok(c.clone()),
                (None, None, _) => return drain_then(rest, front::unauthorized()),
            };
            let cached = match cached {
                Ok(c) => c,
                Err(e) => return drain_then(rest, front::token_error_response(&e, &self.public_origin)),
            };
            let target = &cached.target;
            if !target.covers(parts.uri.path()) {
                return drain_then(
                    rest,
                    body::text(StatusCode::FORBIDDEN, "this token is not valid for that account\n"),
                );
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
            let budget = if retried { 0 } else { self.settings.replay_buffer };
            let body = UpstreamBody::new(std::mem::take(&mut replay), rest.take(), gate.clone(), budget, back_tx)
                .notify_end(sent.clone())
                .idle_timeout(self.settings.idle_timeout);
            let mut up = Request::new(body);
            *up.method_mut() = parts.method.clone();
            *up.uri_mut() = uri;
            *up.version_mut() = http::Version::HTTP_11;
            *up.headers_mut() = headers.clone();
            up.headers_mut().insert(header::HOST, target.host.clone());
            if account.is_some() {
                up.headers_mut().insert(X_AUTH_TOKEN, target.token.clone());
            }
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
                Err(Failure::Stale) if safe && !resent => {
                    resent = true;
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
            if resp.status() == StatusCode::UNAUTHORIZED && renewable && !retried && replayable {
                // The upstream token was refused: renew (shared with every other waiter) and
                // retry once, sending what was kept and then the rest of the client's body.
                tracing::info!(status = 401, "upstream refused its token; renewed, retrying");
                let r = returned.unwrap_or(Returned { sent: None, rest: None });
                replay = r.sent.unwrap_or_default();
                rest = r.rest;
                refused = Some(cached.creds.token.clone());
                continue;
            }
            return drain_then(returned.and_then(|r| r.rest), self.respond(resp, target));
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
        match tokio::time::timeout(self.settings.header_timeout, request).await {
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
                () = tokio::time::sleep(self.settings.expect_timeout) => gate.open(),
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
    /// locations pointing at upstream rewritten to the gateway, the body streamed.
    fn respond(&self, resp: Response<pool::Pooled>, target: &Target) -> Response<Body> {
        let (mut parts, upstream_body) = resp.into_parts();
        strip_response_headers(&mut parts.headers);
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            if let Some(rewritten) = parts
                .headers
                .get(&name)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| self.relocated(v, target))
                .and_then(|v| HeaderValue::from_str(&v).ok())
            {
                parts.headers.insert(name, rewritten);
            }
        }
        let body = IdleTimeout::new(upstream_body, self.settings.idle_timeout);
        Response::from_parts(parts, BodyExt::boxed(body))
    }

    /// An absolute location upstream wrote (`Location`, `Content-Location`) made to point at
    /// the gateway, when it points at `target`'s origin.
    fn relocated(&self, location: &str, target: &Target) -> Option<String> {
        let rest = location.strip_prefix(&*target.origin)?;
        // The origin must end there: `https://up.example.evil/` is not `https://up.example`.
        (rest.is_empty() || rest.starts_with(['/', '?', '#'])).then(|| format!("{}{rest}", self.public_origin))
    }

    /// `GET /info` from the upstream of `target`.
    pub async fn info(&self, target: &Target) -> Response<Body> {
        let Some(path) = target.info_path() else {
            return body::text(StatusCode::BAD_GATEWAY, "no upstream /info\n");
        };
        let mut up = Request::new(UpstreamBody::empty());
        *up.uri_mut() = Uri::from(path);
        up.headers_mut().insert(header::HOST, target.host.clone());
        match self.send(target, up, None, None).await {
            Ok(resp) => self.respond(resp, target),
            Err(failure) => failure.response(),
        }
    }
}

/// Why an upstream attempt produced no response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// No connection could be made.
    Unreachable,
    /// The connection failed before a complete response head arrived.
    Broken,
    /// A reused connection was closed by upstream without a byte of answer (see
    /// [`pool::SendError::is_stale`]); a safe request is sent again once.
    Stale,
    /// No response head within the header timeout.
    Timeout,
}

impl Failure {
    /// The Swift-style error page the client gets.
    fn response(self) -> Response<Body> {
        let (status, page) = self.page();
        body::html(status, page)
    }

    /// The status and HTML page of [`response`](Self::response).
    fn page(self) -> (StatusCode, String) {
        let (status, what) = match self {
            Failure::Unreachable => (StatusCode::SERVICE_UNAVAILABLE, "upstream storage is unreachable"),
            Failure::Broken | Failure::Stale => (StatusCode::BAD_GATEWAY, "upstream storage failed to answer"),
            Failure::Timeout => (StatusCode::GATEWAY_TIMEOUT, "upstream storage did not answer in time"),
        };
        let reason = status.canonical_reason().unwrap_or("Error");
        (status, format!("<html><h1>{reason}</h1><p>{what}.</p></html>"))
    }
}

fn finish(result: Result<Response<pool::Pooled>, pool::SendError>) -> Result<Response<pool::Pooled>, Failure> {
    result.map_err(|e| {
        let failure = match e {
            pool::SendError::Connect(_) => Failure::Unreachable,
            _ if e.is_stale() => Failure::Stale,
            pool::SendError::Exchange { .. } => Failure::Broken,
        };
        if failure == Failure::Stale {
            tracing::debug!(cause = %e, "a parked upstream connection was dead");
        } else {
            tracing::warn!(cause = %e, "upstream request failed");
        }
        failure
    })
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
                    if seen > DRAIN_LIMIT {
                        break;
                    }
                }
            };
            let _ = tokio::time::timeout(DRAIN_TIME, drain).await;
        });
    }
    resp
}

/// True unless `Transfer-Encoding` names a coding other than `chunked` (Swift answers those
/// with 501).
fn only_chunked(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .flat_map(|v| v.as_bytes().split(|&b| b == b','))
        .all(|coding| coding.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// The least life a token must have left to start a request with; a request is not retried
/// once upstream has accepted it, and some (bulk delete, SLO) use the token for seconds.
const TOKEN_MARGIN: Duration = Duration::from_secs(2);

/// Longest time spent reading and discarding a rejected upload.
const DRAIN_TIME: Duration = Duration::from_secs(60);

/// Most bytes read and discarded from a rejected upload.
const DRAIN_LIMIT: u64 = 256 * 1024 * 1024;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stripping_removes_exactly_what_must_not_be_forwarded() {
        let mut h = HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Foo"),
            ("keep-alive", "timeout=5"),
            ("x-foo", "listed in Connection"),
            ("te", "trailers"),
            ("host", "gateway:8080"),
            ("x-auth-token", "AUTH_gateway"),
            ("x-storage-token", "AUTH_gateway"),
            ("forwarded", "for=6.6.6.6"),
            ("x-forwarded-for", "6.6.6.6"),
            ("proxy-authorization", "Basic eA=="),
            ("authorization", "Basic dTprZXk="),
            ("x-auth-user", "alice"),
            ("x-auth-key", "the gateway key"),
            ("x-storage-user", "alice"),
            ("x-storage-pass", "the gateway key"),
            ("x-object-meta-color", "blue"),
            ("content-type", "text/plain"),
            ("x-foobar", "not listed"),
        ] {
            h.append(HeaderName::from_static(name), HeaderValue::from_static(value));
        }
        let mut response = h.clone();
        strip_request_headers(&mut h);
        let mut kept: Vec<_> = h.keys().map(HeaderName::as_str).collect();
        kept.sort_unstable();
        assert_eq!(kept, ["content-type", "x-foobar", "x-object-meta-color"]);
        strip_response_headers(&mut response);
        assert!(response.contains_key("x-auth-token") && !response.contains_key("x-foo"));
        assert!(!response.contains_key("connection") && !response.contains_key("te"));
    }
}
