//! A minimal HTTP client that sends the request target exactly as written (no URL
//! normalisation), for byte-for-byte path tests and chunked uploads.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, StreamBody};
use hyper::body::Frame;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

pub type Boxed = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Bytes,
    /// The response body broke off (connection error) instead of ending.
    pub body_failed: bool,
}

impl Answer {
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }
}

pub fn full(data: impl Into<Bytes>) -> Boxed {
    Full::new(data.into()).map_err(|never| match never {}).boxed()
}

/// A body of unknown length (sent chunked) made of `chunks`.
pub fn chunked(chunks: Vec<Bytes>) -> Boxed {
    let stream = futures_util::stream::iter(chunks.into_iter().map(|c| Ok::<_, std::io::Error>(Frame::data(c))));
    BodyExt::boxed(StreamBody::new(stream))
}

pub async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Boxed) -> Answer {
    try_send(method, url, headers, body).await.expect("request sent")
}

/// Like [`send`], but a request that fails before a response arrives is an `Err`.
pub async fn try_send(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: Boxed,
) -> Result<Answer, hyper_util::client::legacy::Error> {
    // As many answer fields as Swift can send (hyper's default is 100).
    let client: Client<_, Boxed> =
        Client::builder(TokioExecutor::new()).http1_max_headers(swiftgate::body::MAX_FIELDS).build_http();
    let mut req = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = client.request(req.body(body).unwrap()).await?;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let (body, body_failed) = match resp.into_body().collect().await {
        Ok(c) => (c.to_bytes(), false),
        Err(_) => (Bytes::new(), true),
    };
    Ok(Answer { status, headers, body, body_failed })
}
