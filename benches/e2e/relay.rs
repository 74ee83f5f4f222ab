//! The floor: a keep-alive HTTP/1 relay that does the least work a proxy can do. It reads a
//! message head only far enough to find where the message ends (`Content-Length`), forwards the
//! bytes as they came, and reuses one upstream connection per client connection. No header is
//! parsed into a map, added or removed, no token is checked, and every message goes out in as
//! few `write` calls as it came in `read` calls.
//!
//! It runs as its own process, with one single-threaded event loop per CPU as the gateway has,
//! so its CPU time per request and per GiB is what any proxy must pay on this machine for the
//! system calls, the copies and the wakeups alone. Only what the bench sends is understood;
//! anything else (chunked bodies, 1xx answers, read-until-close) ends the connection.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Bytes read at once; a head must fit.
const BUF: usize = 256 * 1024;
const MAX_HEADERS: usize = 64;

/// Serves on `127.0.0.1:port`, relaying to `upstream`, until the process is killed.
pub fn serve(port: u16, upstream: SocketAddr) {
    let listener = std::net::TcpListener::bind(("127.0.0.1", port)).expect("relay: bind");
    listener.set_nonblocking(true).expect("relay: non-blocking listener");
    let workers = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads: Vec<_> = (0..workers)
        .map(|_| {
            let listener = listener.try_clone().expect("relay: listener clone");
            std::thread::spawn(move || {
                let runtime =
                    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("relay: runtime");
                runtime.block_on(accept(listener, upstream));
            })
        })
        .collect();
    for thread in threads {
        let _ = thread.join();
    }
}

async fn accept(listener: std::net::TcpListener, upstream: SocketAddr) {
    let listener = TcpListener::from_std(listener).expect("relay: listener");
    // An accept error (out of descriptors) ends this loop rather than spinning on it; the
    // bench's requests then fail loudly.
    while let Ok((client, _)) = listener.accept().await {
        let _ = client.set_nodelay(true);
        tokio::spawn(async move {
            let _ = relay(client, upstream).await;
        });
    }
}

/// Relays requests and answers between `client` and one connection to `upstream`.
async fn relay(mut client: TcpStream, upstream: SocketAddr) -> io::Result<()> {
    let mut up = TcpStream::connect(upstream).await?;
    up.set_nodelay(true)?;
    let (mut to_up, mut to_client) = (Buffer::new(), Buffer::new());
    loop {
        let Some((head, body, head_request)) = to_up.fill_until(&mut client, request_end).await? else {
            return Ok(());
        };
        to_up.forward(&mut client, &mut up, head as u64 + body).await?;
        let end = |buf: &[u8]| response_end(buf, head_request);
        let Some((head, body)) = to_client.fill_until(&mut up, end).await? else {
            return Err(io::ErrorKind::UnexpectedEof.into());
        };
        to_client.forward(&mut up, &mut client, head as u64 + body).await?;
    }
}

/// Bytes read from one side and not yet written to the other.
struct Buffer {
    buf: Vec<u8>,
    filled: usize,
}

impl Buffer {
    fn new() -> Buffer {
        Buffer { buf: vec![0; BUF], filled: 0 }
    }

    /// Reads from `from` until `end` finds a whole head in the buffer; `None` at a clean EOF
    /// before any byte of a head.
    async fn fill_until<T>(
        &mut self,
        from: &mut (impl AsyncRead + Unpin),
        end: impl Fn(&[u8]) -> io::Result<Option<T>>,
    ) -> io::Result<Option<T>> {
        loop {
            if let Some(found) = end(&self.buf[..self.filled])? {
                return Ok(Some(found));
            }
            if self.filled == self.buf.len() {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "head larger than the buffer"));
            }
            match from.read(&mut self.buf[self.filled..]).await? {
                0 if self.filled == 0 => return Ok(None),
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.filled += n,
            }
        }
    }

    /// Writes the next `total` bytes of `from` to `to`, starting with those already buffered;
    /// bytes beyond them (a pipelined next message) stay buffered.
    async fn forward(
        &mut self,
        from: &mut (impl AsyncRead + Unpin),
        to: &mut (impl AsyncWrite + Unpin),
        total: u64,
    ) -> io::Result<()> {
        let mut left = total;
        loop {
            let take = (self.filled as u64).min(left) as usize;
            if take > 0 {
                to.write_all(&self.buf[..take]).await?;
                self.buf.copy_within(take..self.filled, 0);
                self.filled -= take;
                left -= take as u64;
            }
            if left == 0 {
                return Ok(());
            }
            match from.read(&mut self.buf[..]).await? {
                0 => return Err(io::ErrorKind::UnexpectedEof.into()),
                n => self.filled = n,
            }
        }
    }
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_owned())
}

/// The body length a head declares: `Content-Length`, or 0 without one; chunked coding is
/// beyond the relay.
fn body_length(headers: &[httparse::Header<'_>]) -> io::Result<u64> {
    let mut length = 0;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(invalid("chunked coding is not relayed"));
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            length = std::str::from_utf8(h.value)
                .ok()
                .and_then(|v| v.trim().parse().ok())
                .ok_or_else(|| invalid("bad Content-Length"))?;
        }
    }
    Ok(length)
}

/// (head length, body length, is a HEAD request) once `buf` holds a whole request head.
fn request_end(buf: &[u8]) -> io::Result<Option<(usize, u64, bool)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(buf).map_err(|_| invalid("bad request head"))? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => Ok(Some((n, body_length(req.headers)?, req.method == Some("HEAD")))),
    }
}

/// (head length, body length) once `buf` holds a whole response head.
fn response_end(buf: &[u8], head_request: bool) -> io::Result<Option<(usize, u64)>> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    match resp.parse(buf).map_err(|_| invalid("bad response head"))? {
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(n) => {
            let status = resp.code.unwrap_or(0);
            if status < 200 {
                return Err(invalid("interim answers are not relayed"));
            }
            let bodiless = head_request || status == 204 || status == 304;
            Ok(Some((n, if bodiless { 0 } else { body_length(resp.headers)? })))
        }
    }
}
