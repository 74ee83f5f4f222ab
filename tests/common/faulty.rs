//! A deliberately broken Swift upstream on raw TCP: it answers v1.0 auth, then breaks
//! connections mid-body: a GET gets a partial body and a reset, a PUT is reset after part of
//! its body was read. A GET under `/v1/AUTH_faulty/kept/` gets `ok` and one under `chunked/`
//! gets `hello` in chunked coding, and the connection goes on; one under `once/` gets `ok` if
//! it is the connection's first, else the connection closes unanswered; one under `silent/`
//! (whatever its method) is never answered; one under `stall/` gets 1 MB of a 10 MB body, then
//! nothing. A HEAD under `extra/` gets a stray second answer in the same write; one under
//! `late/` gets it when the test asks (`late`). A PUT under `late100/` is never asked for its
//! body (no `100 Continue` before it), and once it is all in gets a late `100` and then `201`
//! with the bytes it got in `X-Received`. A `GET` or `HEAD` under `cased/` gets `ok` with field
//! names in mixed case (`X-Object-Meta-Color`). For the proxy's fault tests.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

pub struct Faulty {
    pub origin: String,
    /// Connections that carried a storage request (not auth).
    pub storage_connections: Arc<AtomicUsize>,
    /// `late/`: notified by the test to send the stray answer, and by the upstream once sent.
    pub late: Arc<(tokio::sync::Notify, tokio::sync::Notify)>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Faulty {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn read_head(stream: &mut TcpStream) -> Option<(String, Vec<u8>)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            return Some((head, buf[end + 4..].to_vec()));
        }
    }
}

/// A small keep-alive answer.
const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// A keep-alive answer whose field names are in mixed case, as Swift writes them.
const CASED: &[u8] = b"HTTP/1.1 200 OK\r\nX-Object-Meta-Color: blue\r\nContent-Length: 2\r\nX-Trans-Id: tx1\r\n\r\nok";

/// A chunked keep-alive answer.
const CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";

async fn serve(
    mut stream: TcpStream,
    origin: String,
    storage_connections: Arc<AtomicUsize>,
    late: Arc<(tokio::sync::Notify, tokio::sync::Notify)>,
) {
    let Some((head, mut body)) = read_head(&mut stream).await else { return };
    let mut request_line = head.lines().next().unwrap_or("").to_owned();
    if request_line.starts_with("GET /auth/v1.0") {
        let resp = format!(
            "HTTP/1.1 200 OK\r\nX-Storage-Url: {origin}/v1/AUTH_faulty\r\nX-Auth-Token: AUTH_tkfaulty\r\nX-Auth-Token-Expires: 86400\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        );
        let _ = stream.write_all(resp.as_bytes()).await;
        return;
    }
    storage_connections.fetch_add(1, Ordering::SeqCst);
    // Each request of the connection by its path; the connection goes on after `kept` and
    // `chunked` answers.
    for index in 0.. {
        let answer = if request_line.starts_with("GET /v1/AUTH_faulty/kept/") {
            OK
        } else if request_line.starts_with("GET /v1/AUTH_faulty/cased/") {
            CASED
        } else if request_line.starts_with("HEAD /v1/AUTH_faulty/cased/") {
            &CASED[..CASED.len() - 2]
        } else if request_line.starts_with("GET /v1/AUTH_faulty/chunked/") {
            CHUNKED
        } else if request_line.starts_with("GET /v1/AUTH_faulty/once/") && index == 0 {
            OK
        } else if request_line.starts_with("GET /v1/AUTH_faulty/once/") {
            // A later request on the connection is left unanswered: the connection just closes.
            return;
        } else if request_line.starts_with("HEAD /v1/AUTH_faulty/extra/") {
            // A HEAD answered with a body: a whole stray answer, in the same write.
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray"
        } else if request_line.starts_with("HEAD /v1/AUTH_faulty/late/") {
            // The same stray answer, sent apart once the test asks for it.
            if stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").await.is_err() {
                return;
            }
            late.0.notified().await;
            let stray = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nstray").await;
            late.1.notify_one();
            if stray.is_err() {
                return;
            }
            let Some((next, _)) = read_head(&mut stream).await else { return };
            request_line = next.lines().next().unwrap_or("").to_owned();
            continue;
        } else if request_line.starts_with("GET /v1/AUTH_faulty/stall/") {
            // Promises 10 MB, sends 1 MB, then nothing until the other side closes.
            let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\n\r\n").await;
            let _ = stream.write_all(&vec![b's'; 1_000_000]).await;
            while matches!(stream.read(&mut [0u8; 1024]).await, Ok(n) if n > 0) {}
            return;
        } else if request_line.starts_with("PUT /v1/AUTH_faulty/late100/") {
            let length = head.lines().find_map(|l| {
                let (name, value) = l.split_once(':')?;
                name.eq_ignore_ascii_case("content-length").then(|| value.trim().parse::<usize>().ok())?
            });
            let (mut got, mut chunk) = (body.len(), vec![0u8; 65536]);
            while got < length.unwrap_or(0) {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got += n,
                }
            }
            let answer = format!(
                "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 201 Created\r\nX-Received: {got}\r\nContent-Length: 0\r\n\r\n"
            );
            let _ = stream.write_all(answer.as_bytes()).await;
            while matches!(stream.read(&mut [0u8; 1024]).await, Ok(n) if n > 0) {}
            return;
        } else if request_line.contains(" /v1/AUTH_faulty/silent/") {
            // Never answers; the connection ends when the other side closes it.
            while matches!(stream.read(&mut [0u8; 1024]).await, Ok(n) if n > 0) {}
            return;
        } else {
            break;
        };
        if stream.write_all(answer).await.is_err() {
            return;
        }
        let Some((next, _)) = read_head(&mut stream).await else { return };
        request_line = next.lines().next().unwrap_or("").to_owned();
    }
    if request_line.starts_with("GET ") {
        // Promise 10 MB, deliver 1 MB, then reset.
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 10000000\r\nEtag: x\r\n\r\n").await;
        let _ = stream.write_all(&vec![b'g'; 1_000_000]).await;
        let _ = stream.set_zero_linger();
        return;
    }
    if request_line.starts_with("PUT ") {
        // Read about 1 MB of the body, then reset without answering.
        let mut chunk = vec![0u8; 65536];
        while body.len() < 1_000_000 {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => body.extend_from_slice(&chunk[..n]),
            }
        }
        let _ = stream.set_zero_linger();
    }
}

pub async fn start() -> Faulty {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr: SocketAddr = listener.local_addr().unwrap();
    let origin = format!("http://{addr}");
    let o = origin.clone();
    let storage_connections = Arc::new(AtomicUsize::new(0));
    let late = Arc::new((tokio::sync::Notify::new(), tokio::sync::Notify::new()));
    let (counter, l) = (storage_connections.clone(), late.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(serve(stream, o.clone(), counter.clone(), l.clone()));
        }
    });
    Faulty { origin, storage_connections, late, task }
}
