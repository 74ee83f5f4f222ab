//! What the server counts and logs of each request: the metrics' request, byte and connection
//! counts ([`crate::metrics`]), and the access log's one line per request.
//!
//! A request's record begins with it ([`Peer::begin_request`]) and is told its answer's status
//! once the handler has answered ([`InProgress::answered`]), which is when the duration the
//! metrics keep ends. Its access-log line is written when the record is dropped: when the
//! answer's body has ended, or the connection has.

use std::time::Instant;

use super::*;
use crate::metrics::{Kind, Metrics};

/// One server's metrics and whether it writes the access log.
#[derive(Debug)]
pub struct Observer {
    /// Where requests, bytes and connections are counted.
    pub metrics: Arc<Metrics>,
    /// One line per request, on the `swiftgate::access` target.
    pub access_log: bool,
}

/// Whom a request acted for: a gateway user and the account it reaches. A handler puts it in
/// its answer's extensions (which never go on the wire) for the access log.
#[derive(Debug, Clone)]
pub struct Acting {
    /// The gateway user's name.
    pub user: Arc<str>,
    /// The account it reaches.
    pub account: Arc<str>,
}

/// Which engine answered a request, for the access log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    /// The proxy's fast engine (`proxy::fast`).
    Fast,
    /// hyper's server and the handler.
    Hyper,
}

impl Engine {
    fn label(self) -> &'static str {
        match self {
            Engine::Fast => "fast",
            Engine::Hyper => "hyper",
        }
    }
}

/// A request's record, kept by its [`InProgress`].
pub(crate) struct Record {
    kind: Kind,
    started: Instant,
    /// Present when the access log is written.
    access: Option<Box<Access>>,
}

/// What the access log needs beyond the metrics.
struct Access {
    method: http::Method,
    /// The request target as the client sent it.
    target: String,
    status: u16,
    engine: Engine,
    acting: Option<Acting>,
    trans_id: Option<http::HeaderValue>,
    /// The answer's body bytes handed to the connection.
    body_out: u64,
}

impl Peer {
    /// Counts a request of `kind` as begun, as [`begin`](Self::begin) does, and records it for
    /// the metrics and the access log if the server keeps them. `target` is asked for only if
    /// the access log is written.
    pub(crate) fn begin_request(
        self: &Arc<Self>,
        kind: Kind,
        method: &http::Method,
        target: impl FnOnce() -> String,
    ) -> InProgress {
        let mut request = self.begin();
        if let Some(observer) = &self.observer {
            let access = observer.access_log.then(|| {
                Box::new(Access {
                    method: method.clone(),
                    target: target(),
                    status: 0,
                    engine: Engine::Hyper,
                    acting: None,
                    trans_id: None,
                    body_out: 0,
                })
            });
            request.record = Some(Record { kind, started: Instant::now(), access });
        }
        request
    }

    /// Bytes read from the client since the last call: what a request's line in the access log
    /// is charged with. On HTTP/1, where one request follows another, that is its head and body,
    /// including what the server read ahead before the request began; on h2, where streams
    /// overlap, it is what the connection read since the last stream ended.
    fn read_since_logged(&self) -> u64 {
        let now = self.bytes_in.load(Ordering::Relaxed);
        now.saturating_sub(self.logged_in.swap(now, Ordering::Relaxed))
    }
}

impl InProgress {
    /// The handler has answered with `status`: counts the request in the metrics, keeps what
    /// the access log says of the answer (`trans_id`, upstream's `X-Trans-Id` value; `acting`,
    /// if it says, in place of [`acting`](Self::acting)'s), and marks the answer as being sent
    /// ([`responding`](Self::responding)).
    pub(crate) fn answered(
        mut self,
        status: u16,
        engine: Engine,
        trans_id: Option<&[u8]>,
        acting: impl FnOnce() -> Option<Acting>,
    ) -> Self {
        if let (Some(record), Some(observer)) = (&mut self.record, &self.peer.observer) {
            observer.metrics.request(record.kind, status, record.started.elapsed());
            if let Some(access) = &mut record.access {
                access.status = status;
                access.engine = engine;
                access.trans_id = trans_id.and_then(|v| http::HeaderValue::from_bytes(v).ok());
                if let Some(acting) = acting() {
                    access.acting = Some(acting);
                }
            }
        }
        self.responding()
    }

    /// Records whom the request acts for, asking `acting` only if the access log is written.
    pub(crate) fn acting(&mut self, acting: impl FnOnce() -> Option<Acting>) {
        if let Some(Record { access: Some(access), .. }) = &mut self.record {
            access.acting = acting();
        }
    }

    /// Counts `n` bytes of the answer's body as handed to the connection.
    pub(crate) fn sent(&mut self, n: u64) {
        if let Some(Record { access: Some(access), .. }) = &mut self.record {
            access.body_out += n;
        }
    }

    /// Writes the access-log line, if the request has one to write.
    pub(super) fn log(&mut self) {
        let Some(Record { started, access: Some(access), .. }) = self.record.take() else { return };
        if access.status == 0 {
            // Never answered here: declined to the other engine, which logs it, or cut off.
            return;
        }
        let bytes_in = self.peer.read_since_logged();
        let (user, account) = match &access.acting {
            Some(a) => (&*a.user, &*a.account),
            None => ("", ""),
        };
        let trans_id = access.trans_id.as_ref().and_then(|v| v.to_str().ok()).unwrap_or("");
        tracing::info!(
            target: "swiftgate::access",
            method = %access.method,
            path = %redacted(&access.target),
            status = access.status,
            bytes_in,
            bytes_out = access.body_out,
            duration_ms = started.elapsed().as_secs_f64() * 1000.0,
            user = %user,
            account = %account,
            trans_id = %trans_id,
            engine = %access.engine.label(),
            peer = %self.peer.addr.ip(),
            "request"
        );
    }
}

/// Query parameters whose values the access log leaves out: temporary URLs' signatures and
/// expiries, and the OAuth callback's code and state.
const SECRET_PARAMETERS: [&str; 4] = ["temp_url_sig", "temp_url_expires", "code", "state"];

/// `target` with the values of [`SECRET_PARAMETERS`] and of any parameter whose name says it
/// holds a secret (`…token`, `…key`, `…sig`, `…signature`, `…password`, `…secret`) left out.
pub fn redacted(target: &str) -> std::borrow::Cow<'_, str> {
    let Some((path, query)) = target.split_once('?') else { return target.into() };
    let secret = |name: &str| {
        // `temp%5Furl%5Fsig` is `temp_url_sig` to Swift.
        let name = percent_encoding::percent_decode_str(name).decode_utf8_lossy().to_ascii_lowercase();
        SECRET_PARAMETERS.contains(&name.as_str())
            || ["token", "key", "sig", "signature", "password", "secret"].iter().any(|s| name.ends_with(s))
    };
    if !query.split('&').any(|pair| secret(pair.split_once('=').map_or(pair, |(n, _)| n))) {
        return target.into();
    }
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _)) if secret(name) => format!("{name}=-"),
            _ => pair.to_owned(),
        })
        .collect();
    format!("{path}?{}", query.join("&")).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_in_the_query_are_left_out() {
        for (target, logged) in [
            ("/v1/AUTH_a/c/o", "/v1/AUTH_a/c/o"),
            ("/v1/AUTH_a/c/o?format=json&limit=2", "/v1/AUTH_a/c/o?format=json&limit=2"),
            (
                "/v1/AUTH_a/c/o?temp_url_sig=abc123&temp_url_expires=99&inline",
                "/v1/AUTH_a/c/o?temp_url_sig=-&temp_url_expires=-&inline",
            ),
            ("/callback?code=XYZ&state=S1", "/callback?code=-&state=-"),
            ("/x?X-Auth-Token=AUTH_tk&multipart-manifest=get", "/x?X-Auth-Token=-&multipart-manifest=get"),
            ("/x?api_key=k", "/x?api_key=-"),
            ("/v1/a/c/o?temp%5Furl%5Fsig=abc", "/v1/a/c/o?temp%5Furl%5Fsig=-"),
        ] {
            assert_eq!(redacted(target), logged);
        }
    }
}
