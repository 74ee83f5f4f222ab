//! The hand-over of an HTTP/1 connection from a handler's own serving (the proxy's fast path)
//! to hyper: the connection trait, what serving ended with, and the bytes read but not
//! answered put back in front of the stream.

use super::*;

/// A client's connection as [`Handler::serve_h1`] gets it: the plain socket or TLS over it.
pub trait Connection: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// The socket itself, when the connection is plain (no TLS): what is written to it goes to
    /// the client as it is.
    fn plain(&self) -> Option<&Counted> {
        None
    }
}

impl Connection for Counted {
    fn plain(&self) -> Option<&Counted> {
        Some(self)
    }
}

impl Connection for tokio_rustls::server::TlsStream<tokio::io::BufReader<Counted>> {}

/// How [`Handler::serve_h1`] left a connection.
pub enum Served<S> {
    /// Ended (closed, or cut).
    Done,
    /// To be served by hyper from here on.
    HandOver(Prefixed<S>),
}

/// A stream whose reads first return `prefix`: bytes read from it already and not consumed.
pub struct Prefixed<S> {
    pub(super) prefix: bytes::Bytes,
    pub(super) io: S,
}

impl<S> Prefixed<S> {
    /// `io`, with `prefix` to be read again first.
    pub fn new(prefix: bytes::Bytes, io: S) -> Self {
        Prefixed { prefix, io }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        if self.prefix.is_empty() {
            return Pin::new(&mut self.io).poll_read(cx, buf);
        }
        let n = self.prefix.len().min(buf.remaining());
        buf.put_slice(&self.prefix.split_to(n));
        std::task::Poll::Ready(Ok(()))
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> std::task::Poll<std::io::Result<usize>> {
        Pin::new(&mut self.io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}
