//! Large objects without disk: a fixed byte pattern that any length can be cut from, a streamed
//! body of it whose MD5 is reported when it ends, and a Swift-like upstream that keeps no
//! object bytes. Its PUT sums the body's MD5 as it streams in and keeps only the length and
//! digest; its GET answers with the pattern of that length. A 5 GiB round trip through the
//! gateway then costs no disk, and a byte lost, added or reordered anywhere changes a digest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use md5::{Digest, Md5};
use swiftgate::body::{self, Body};
use swiftgate::server::{Handler, Peer};

pub const MIB: u64 = 1 << 20;
pub const TOKEN: &str = "AUTH_tkpattern";

/// Seven distinct 1 MiB chunks, cycled; any reordering or loss changes the MD5.
pub fn chunks() -> Arc<Vec<Bytes>> {
    Arc::new(
        (0..7u8)
            .map(|k| {
                Bytes::from((0..MIB as usize).map(|i| (i as u8).wrapping_mul(31).wrapping_add(k)).collect::<Vec<u8>>())
            })
            .collect(),
    )
}

pub type Boxed = http_body_util::combinators::BoxBody<Bytes, std::io::Error>;

/// The first `len` bytes of the pattern, streamed as `Bytes` slices of the chunks; `seen` sees
/// each slice as it leaves.
fn stream(len: u64, parts: Arc<Vec<Bytes>>, mut seen: impl FnMut(&Bytes, bool) + Send + Sync + 'static) -> Boxed {
    let stream = futures_util::stream::unfold(0u64, move |sent| {
        let chunk = (sent < len).then(|| parts[((sent / MIB) % 7) as usize].slice(..(len - sent).min(MIB) as usize));
        let next = chunk.map(|chunk| {
            let sent = sent + chunk.len() as u64;
            seen(&chunk, sent == len);
            (Ok::<_, std::io::Error>(Frame::data(chunk)), sent)
        });
        std::future::ready(next)
    });
    BodyExt::boxed(StreamBody::new(stream))
}

/// A streamed body of the first `len` bytes of the pattern; its MD5 arrives on the channel when
/// it ends.
pub fn generated(len: u64, parts: Arc<Vec<Bytes>>) -> (Boxed, tokio::sync::oneshot::Receiver<String>) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let (mut md5, mut tx) = (Md5::new(), Some(tx));
    let body = stream(len, parts, move |chunk, last| {
        md5.update(chunk);
        // hyper stops polling once Content-Length bytes went out, so report with the last chunk.
        if let Some(tx) = tx.take_if(|_| last) {
            let _ = tx.send(hex::encode(md5.finalize_reset()));
        }
    });
    (body, rx)
}

/// The MD5 of the first `len` bytes of the pattern.
pub fn expected_md5(len: u64, parts: &[Bytes]) -> String {
    let mut md5 = Md5::new();
    for piece in pieces(len, parts) {
        md5.update(piece);
    }
    hex::encode(md5.finalize())
}

/// The first `len` bytes of the pattern, as slices of the chunks.
pub fn pieces(len: u64, parts: &[Bytes]) -> impl Iterator<Item = &[u8]> {
    (0..len.div_ceil(MIB)).map(move |i| &parts[(i % 7) as usize][..(len - i * MIB).min(MIB) as usize])
}

/// The upstream: v1.0 auth with one fixed token, then PUT, GET, HEAD and DELETE of objects that
/// exist only as (length, MD5).
struct Upstream {
    origin: String,
    parts: Arc<Vec<Bytes>>,
    objects: Mutex<HashMap<String, (u64, String)>>,
}

impl Upstream {
    fn object(&self, path: &str) -> Option<(u64, String)> {
        self.objects.lock().unwrap().get(path).cloned()
    }
}

fn with_object(status: StatusCode, len: u64, etag: &str, body: Body) -> Response<Body> {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    resp.headers_mut().insert(header::CONTENT_LENGTH, len.into());
    resp.headers_mut().insert(header::ETAG, etag.parse().unwrap());
    resp
}

impl Handler for Upstream {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        if path == "/auth/v1.0" {
            return super::v1_auth_answer(&self.origin, "AUTH_pattern", TOKEN);
        }
        if req.headers().get("x-auth-token").is_none_or(|t| t != TOKEN) {
            return body::text(StatusCode::UNAUTHORIZED, "Unauthorized\n");
        }
        match *req.method() {
            Method::PUT => {
                let mut incoming = req.into_body();
                let (mut md5, mut len) = (Md5::new(), 0u64);
                while let Some(frame) = incoming.frame().await {
                    match frame {
                        Ok(frame) => {
                            if let Some(data) = frame.data_ref() {
                                md5.update(data);
                                len += data.len() as u64;
                            }
                        }
                        Err(_) => return body::text(StatusCode::BAD_REQUEST, "body ended early\n"),
                    }
                }
                let etag = hex::encode(md5.finalize());
                self.objects.lock().unwrap().insert(path, (len, etag.clone()));
                with_object(StatusCode::CREATED, 0, &etag, body::empty())
            }
            Method::GET => match self.object(&path) {
                Some((len, etag)) => {
                    let data = stream(len, self.parts.clone(), |_, _| {}).map_err(|e| e.into()).boxed();
                    with_object(StatusCode::OK, len, &etag, data)
                }
                None => body::text(StatusCode::NOT_FOUND, "Not Found\n"),
            },
            Method::HEAD => match self.object(&path) {
                Some((len, etag)) => with_object(StatusCode::OK, len, &etag, body::empty()),
                None => body::status(StatusCode::NOT_FOUND),
            },
            Method::DELETE => match self.objects.lock().unwrap().remove(&path) {
                Some(_) => body::status(StatusCode::NO_CONTENT),
                None => body::text(StatusCode::NOT_FOUND, "Not Found\n"),
            },
            _ => body::text(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed\n"),
        }
    }
}

/// Starts the upstream on port 0; it stops when the handle is dropped.
pub async fn start(parts: Arc<Vec<Bytes>>) -> super::Served {
    super::serve(|origin| Upstream { origin, parts, objects: Mutex::new(HashMap::new()) }).await
}
