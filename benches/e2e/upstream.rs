//! The fast upstream: a Swift-like server in the bench's own process, which serves GETs from one
//! preallocated buffer and drains PUT bodies.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use crate::{MIB, TOKEN};

/// `remaining` bytes as slices of one preallocated buffer: no copy, no allocation per chunk.
pub(crate) struct Repeat {
    pub(crate) buf: Bytes,
    pub(crate) remaining: u64,
}

impl HttpBody for Repeat {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.buf.len() as u64) as usize;
        self.remaining -= n as u64;
        Poll::Ready(Some(Ok(Frame::data(self.buf.slice(..n)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

pub(crate) type Boxed = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

pub(crate) fn boxed<B>(b: B) -> Boxed
where
    B: HttpBody<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    b.map_err(Into::into).boxed()
}

/// Swift-like enough for the gateway: v1.0 auth, GET of `/v1/AUTH_bench/c/<bytes>` from a
/// preallocated buffer, PUT bodies drained and counted.
async fn upstream(req: Request<Incoming>, origin: Arc<String>, buf: Bytes) -> Result<Response<Boxed>, Infallible> {
    let path = req.uri().path().to_owned();
    let reply =
        |status: StatusCode| Response::builder().status(status).body(boxed(http_body_util::Empty::new())).unwrap();
    if path == "/auth/v1.0" {
        let mut r = reply(StatusCode::OK);
        let h = r.headers_mut();
        h.insert("x-storage-url", format!("{origin}/v1/AUTH_bench").parse().unwrap());
        h.insert("x-auth-token", TOKEN.parse().unwrap());
        h.insert("x-auth-token-expires", "86400".parse().unwrap());
        return Ok(r);
    }
    if path == "/info" {
        return Ok(Response::new(boxed(http_body_util::Full::new(Bytes::from_static(b"{\"swift\":{}}")))));
    }
    if req.headers().get("x-auth-token").and_then(|v| v.to_str().ok()) != Some(TOKEN) {
        return Ok(reply(StatusCode::UNAUTHORIZED));
    }
    match *req.method() {
        http::Method::GET => {
            let size: u64 = path.rsplit('/').next().and_then(|s| s.parse().ok()).unwrap_or(0);
            let mut r = Response::new(boxed(Repeat { buf, remaining: size }));
            r.headers_mut().insert("content-length", size.into());
            Ok(r)
        }
        http::Method::PUT => {
            let mut body = req.into_body();
            let mut n = 0u64;
            while let Some(Ok(frame)) = body.frame().await {
                n += frame.data_ref().map_or(0, |d| d.len() as u64);
            }
            let mut r = reply(StatusCode::CREATED);
            r.headers_mut().insert("x-bytes-received", n.into());
            Ok(r)
        }
        _ => Ok(reply(StatusCode::METHOD_NOT_ALLOWED)),
    }
}

/// Starts the upstream on a free port of 127.0.0.1, serving until the runtime ends.
pub(crate) async fn start_upstream() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let origin = Arc::new(format!("http://{addr}"));
    let buf = Bytes::from(vec![0x5au8; MIB as usize]);
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let (origin, buf) = (origin.clone(), buf.clone());
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| upstream(req, origin.clone(), buf.clone()));
                let _ = hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), svc).await;
            });
        }
    });
    addr
}
