//! The one response body type every server in the crate produces, and small constructors for
//! the fixed (non-streaming) replies: plain text, HTML, JSON, empty.
//!
//! Streaming bodies (object data) are built where they are streamed and boxed into [`Body`];
//! nothing here buffers a request body.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Empty, Full};

/// The most an HTTP/1 connection reads from its socket at once, client and upstream side
/// alike: a body's chunks are at most this big. hyper's default ceiling is 408 KiB; 1 MiB is what
/// the tuned nginx of the benches reads at once. Alternated eight times each (`--quick --only
/// bulk`), plain CPU per GiB averaged 0.339 with it on both sides, 0.349 on the upstream side
/// only and 0.369 at the default; in a sweep of the limit (one run per size, eight times over),
/// 256 KiB gave 0.429, 408 KiB 0.359, 1 MiB 0.319, 2 MiB 0.328 and 4 MiB 0.401.
///
/// Only a connection moving a large body grows its buffer this far, and a parked upstream
/// connection keeps it until it is reused or dropped. hyper would also take this as the limit
/// on a request head; the server sets its own, [`MAX_HEAD`].
pub const MAX_READ: usize = 1 << 20;

/// The most header fields a head may carry, in either direction and on either engine. Swift
/// reads up to 1.6 × `MAX_HEADER_COUNT` (126) fields, about 201, and answers up to 90 metadata
/// items plus a dozen of its own fields; hyper's default of 100 turned such answers into 502s.
/// A field costs a 32-byte slot in a parse, and a head's bytes stay bounded by
/// [`MAX_HEAD`].
pub const MAX_FIELDS: usize = 256;

/// The largest request head an HTTP/1 client may send (431 beyond). Swift itself refuses a
/// header line over 8 KiB and object metadata over 4 KiB in all; hyper's default would be its
/// read limit, 408 KiB, and the read limit here is 1 MiB ([`MAX_READ`]). A head comes before
/// any authentication, so this is what a connection holds for a client that never finishes
/// one, and `max_head_memory` bounds what all of them hold together. (h2 heads are bounded by
/// hyper's 16 KiB header list size.)
pub const MAX_HEAD: usize = 64 * 1024;

/// Error type carried by streaming bodies.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The response body of every handler: a boxed stream of `Bytes` frames.
pub type Body = BoxBody<Bytes, BoxError>;

/// A body with no bytes.
pub fn empty() -> Body {
    Empty::<Bytes>::new().map_err(|never| match never {}).boxed()
}

/// A body holding `bytes`, sent as one frame.
pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into()).map_err(|never| match never {}).boxed()
}

/// A response with `status`, the given content type and a fixed body.
pub fn with_type(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// A `text/plain` response, the shape Swift uses for its error bodies.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, "text/plain; charset=utf-8", body)
}

/// A `text/html` response.
pub fn html(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, "text/html; charset=utf-8", body)
}

/// An `application/json` response from an already serialised document.
pub fn json(status: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    with_type(status, "application/json", body)
}

/// A response with `status` and no body.
pub fn status(status: StatusCode) -> Response<Body> {
    let mut resp = Response::new(empty());
    *resp.status_mut() = status;
    resp
}

/// A `302 Found` to `location`; an unusable location becomes a 500 rather than a panic.
pub fn redirect(location: &str) -> Response<Body> {
    match HeaderValue::from_str(location) {
        Ok(value) => {
            let mut resp = html(StatusCode::FOUND, "<html><body>Redirecting</body></html>");
            resp.headers_mut().insert(header::LOCATION, value);
            resp
        }
        Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "invalid redirect location\n"),
    }
}

/// Escapes `s` for use in HTML text and attribute values.
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// How long a small control-plane body may take to arrive whole. The server cuts a request
/// only when nothing moves (`ServeOptions::stall_cut`), so without this a client could
/// trickle a form a byte at a time and hold its connection, unauthenticated, for ever; like
/// nginx's `client_body_timeout`, but for the whole body, which is at most a few KiB.
pub const SMALL_BODY_TIME: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a whole request body up to `limit` bytes within [`SMALL_BODY_TIME`]; for small
/// control-plane bodies only (forms, JSON), never for object data.
pub async fn read_limited<B>(body: B, limit: usize) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    read_limited_within(body, limit, SMALL_BODY_TIME).await
}

async fn read_limited_within<B>(body: B, limit: usize, time: std::time::Duration) -> Result<Bytes, ReadError>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    let limited = http_body_util::Limited::new(body, limit);
    let Ok(collected) = tokio::time::timeout(time, limited.collect()).await else {
        return Err(ReadError::TimedOut);
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) => {
            if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                Err(ReadError::TooLarge)
            } else {
                Err(ReadError::Io)
            }
        }
    }
}

/// Why a small body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The body is larger than the limit the caller set.
    #[error("request body too large")]
    TooLarge,
    /// The connection failed while the body was read.
    #[error("request body could not be read")]
    Io,
    /// The body did not arrive whole in time.
    #[error("request body took too long")]
    TimedOut,
}

impl ReadError {
    /// The status a handler answers with for this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ReadError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ReadError::Io => StatusCode::BAD_REQUEST,
            ReadError::TimedOut => StatusCode::REQUEST_TIMEOUT,
        }
    }
}

/// The `user:password` pair of an `Authorization: Basic …` header; `None` when absent or not
/// decodable (a client may send a broken Basic header beside valid credentials elsewhere).
pub fn basic_credentials(headers: &http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Parses an `application/x-www-form-urlencoded` document (or query string) into pairs.
pub fn form_pairs(input: &[u8]) -> Vec<(String, String)> {
    form_urlencoded::parse(input).into_owned().collect()
}

/// The first value of `key` in `pairs`.
pub fn form_get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(escape_html("<a href=\"x\">&'"), "&lt;a href=&quot;x&quot;&gt;&amp;&#39;");
    }

    #[test]
    fn form_parsing_decodes_plus_and_percent() {
        let pairs = form_pairs(b"a=1+2&b=%2Fx&a=3");
        assert_eq!(form_get(&pairs, "a"), Some("1 2"));
        assert_eq!(form_get(&pairs, "b"), Some("/x"));
        assert_eq!(form_get(&pairs, "c"), None);
    }

    #[tokio::test]
    async fn read_limited_rejects_oversized_bodies() {
        let body = Full::new(Bytes::from_static(b"0123456789"));
        assert!(matches!(read_limited(body, 4).await, Err(ReadError::TooLarge)));
        let body = Full::new(Bytes::from_static(b"0123"));
        assert_eq!(read_limited(body, 4).await.unwrap(), Bytes::from_static(b"0123"));
    }

    /// A body that stops coming is given up with 408 once its time is over.
    #[tokio::test]
    async fn read_limited_gives_up_on_a_body_that_stops_coming() {
        use futures_util::StreamExt;
        let first = Ok::<_, BoxError>(http_body::Frame::data(Bytes::from_static(b"user=a")));
        let body =
            http_body_util::StreamBody::new(futures_util::stream::iter([first]).chain(futures_util::stream::pending()));
        let read = read_limited_within(body, 1024, std::time::Duration::from_millis(50));
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), read).await.expect("no answer in 10 s");
        assert_eq!(err.unwrap_err().status(), StatusCode::REQUEST_TIMEOUT);
    }
}
