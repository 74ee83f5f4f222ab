//! The server's unit tests.

use super::*;
use http_body_util::BodyExt;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers with the index of the worker thread that served the request.
struct WhichWorker;

impl Handler for WhichWorker {
    async fn handle(&self, _req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
        let text = format!("{}", worker_index());
        Response::new(http_body_util::Full::new(bytes::Bytes::from(text)).map_err(|e| match e {}).boxed())
    }
}

/// Answers `/quick` at once, `/big` at once with 16 MiB (more than the socket buffers
/// hold, so hyper still holds a tail when the body has ended), `/late` after five idle
/// periods, and `/slow` at once with a body whose one chunk comes five idle periods later:
/// work in progress that outlasts the idle close.
/// `/endless` answers with a body that never ends and notifies the third field when it is
/// dropped.
struct Slow(Duration, bytes::Bytes, Arc<tokio::sync::Notify>);

/// A response body that never ends, notifying when dropped.
struct Endless(bytes::Bytes, Arc<tokio::sync::Notify>);

impl Drop for Endless {
    fn drop(&mut self) {
        self.1.notify_one();
    }
}

impl http_body::Body for Endless {
    type Data = bytes::Bytes;
    type Error = crate::body::BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<bytes::Bytes>, Self::Error>>> {
        std::task::Poll::Ready(Some(Ok(http_body::Frame::data(self.0.clone()))))
    }
}

const BIG: usize = 16 << 20;

impl Handler for Slow {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<Peer>) -> Response<Body> {
        let late = 5 * self.0;
        match req.uri().path() {
            "/quick" => return crate::body::text(http::StatusCode::OK, "quick"),
            "/big" => return crate::body::text(http::StatusCode::OK, self.1.clone()),
            "/endless" => return Response::new(Endless(self.1.slice(..64 * 1024), self.2.clone()).boxed()),
            "/late" => {
                tokio::time::sleep(late).await;
                return crate::body::text(http::StatusCode::OK, "late");
            }
            _ => {}
        }
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<http_body::Frame<bytes::Bytes>, crate::body::BoxError>>(1);
        tokio::spawn(async move {
            tokio::time::sleep(late).await;
            let _ = tx.send(Ok(http_body::Frame::data(bytes::Bytes::from_static(b"slow")))).await;
        });
        let stream = futures_util::stream::unfold(rx, |mut rx| async { rx.recv().await.map(|f| (f, rx)) });
        Response::new(http_body_util::StreamBody::new(stream).boxed())
    }
}

/// A server answering with [`Slow`], closing idle connections after `period`.
struct SlowServer {
    addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
    /// Notified when an `/endless` body is dropped.
    dropped: Arc<tokio::sync::Notify>,
}

impl SlowServer {
    async fn start(period: Duration) -> SlowServer {
        Self::start_with(period, ServeOptions::default().stall_cut).await
    }

    /// With `stall` as [`ServeOptions::stall_cut`].
    async fn start_with(period: Duration, stall: Duration) -> SlowServer {
        Self::start_options(ServeOptions { idle_close: period, stall_cut: stall, ..ServeOptions::default() }).await
    }

    /// With `options`.
    async fn start_options(options: ServeOptions) -> SlowServer {
        let period = options.idle_close;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        // Made before anything is timed: 16 MiB take a while to fill in a debug build.
        let big = bytes::Bytes::from(vec![b'b'; BIG]);
        let dropped = Arc::new(tokio::sync::Notify::new());
        let server = tokio::spawn(run(listener, Arc::new(Slow(period, big, dropped.clone())), options, async {
            let _ = stopped.await;
        }));
        SlowServer { addr, stop, server, dropped }
    }

    async fn connect(&self) -> tokio::net::TcpStream {
        tokio::net::TcpStream::connect(self.addr).await.unwrap()
    }

    /// Stops the server and waits until it has drained.
    async fn stop(self) {
        self.stop.send(()).unwrap();
        self.server.await.unwrap();
    }
}

/// Reads until the server closes the connection (or `deadline` passes, which fails),
/// writing one byte of a never-ending header line before each read when `trickle` is set.
async fn closed_within(s: &mut tokio::net::TcpStream, deadline: Duration, trickle: bool) -> Vec<u8> {
    let until = tokio::time::Instant::now() + deadline;
    let mut seen = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        assert!(tokio::time::Instant::now() < until, "the connection was not closed in {deadline:?}");
        if trickle && s.write_all(b"a").await.is_err() {
            return seen;
        }
        match tokio::time::timeout(Duration::from_millis(20), s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return seen,
            Ok(Ok(n)) => seen.extend_from_slice(&buf[..n]),
            Err(_) => {}
        }
    }
}

/// A connection that sends nothing or trickles a request head byte by byte is closed
/// without an answer, and one that stays open after its response is closed too.
#[tokio::test]
async fn a_connection_that_begins_no_request_is_closed() {
    let period = Duration::from_millis(100);
    let server = SlowServer::start(period).await;
    let mut silent = server.connect().await;
    assert!(closed_within(&mut silent, 20 * period, false).await.is_empty());
    let mut trickling = server.connect().await;
    trickling.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\nx-slow: ").await.unwrap();
    assert!(closed_within(&mut trickling, 20 * period, true).await.is_empty());
    let mut kept = server.connect().await;
    kept.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(closed_within(&mut kept, 20 * period, false).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("4\r\nslow\r\n0\r\n\r\n"), "{answer}");
    server.stop().await;
}

/// A client that stops reading a response that has not ended is cut once nothing has
/// moved for the stall time, and the response body is dropped (in the gateway, with it the
/// upstream connection). A response whose body waits for less than that, with nothing
/// moving, is sent whole; so is one whose handler takes longer than the stall time to
/// answer (its own timeouts govern it).
#[tokio::test]
async fn a_response_that_moves_no_byte_is_cut() {
    let period = Duration::from_millis(200);
    let stall = 10 * period;
    let server = SlowServer::start_with(period, stall).await;
    let mut stuck = server.connect().await;
    let asked = tokio::time::Instant::now();
    stuck.write_all(b"GET /endless HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let cut = tokio::time::timeout(Duration::from_secs(20), server.dropped.notified()).await;
    cut.expect("a response nobody reads was not cut in 20 s");
    assert!(asked.elapsed() >= stall, "cut after {:?}, before the stall time", asked.elapsed());
    // What the socket buffers held, then the end.
    assert!(!closed_within(&mut stuck, Duration::from_secs(10), false).await.is_empty());
    let mut waiting = server.connect().await;
    waiting.write_all(b"GET /slow HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(closed_within(&mut waiting, 20 * period, false).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("4\r\nslow\r\n0\r\n\r\n"), "{answer}");
    server.stop().await;
    let server = SlowServer::start_with(period, 2 * period).await;
    let mut late = server.connect().await;
    late.write_all(b"GET /late HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    let answer = String::from_utf8(closed_within(&mut late, 20 * period, false).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("late"), "{answer}");
    server.stop().await;
}

/// The first 12 bytes of the answer on `r` ("HTTP/1.1 200"), within 10 s.
async fn status_of(r: &mut (impl tokio::io::AsyncRead + Unpin)) -> String {
    let mut line = [0u8; 12];
    let read = tokio::time::timeout(Duration::from_secs(10), r.read_exact(&mut line)).await;
    read.expect("no answer in 10 s").unwrap();
    String::from_utf8_lossy(&line).into_owned()
}

/// A request head just under `MAX_HEAD` is served; one just over it, or far over the read
/// limit, is refused with 431.
#[tokio::test]
async fn a_request_head_beyond_max_head_gets_431() {
    let server = SlowServer::start(Duration::from_secs(1)).await;
    let under = MAX_HEAD - 1024;
    for (field, status) in [(under, "200"), (MAX_HEAD, "431"), (4 * crate::body::MAX_READ, "431")] {
        let mut head = b"GET /quick HTTP/1.1\r\nhost: x\r\nx-big: ".to_vec();
        head.resize(head.len() + field, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let (mut read, mut write) = server.connect().await.into_split();
        // The server may answer and close before it has all of a refused head.
        let writer = tokio::spawn(async move { write.write_all(&head).await.map(|_| write) });
        assert_eq!(status_of(&mut read).await, format!("HTTP/1.1 {status}"), "{field} bytes");
        let taken = tokio::time::timeout(Duration::from_secs(10), writer).await;
        drop(taken.expect("the head was not taken in 10 s"));
    }
    server.stop().await;
}

/// A connection on which nothing has been sent does not hold the server's drain (10 s):
/// hyper's graceful close ends an HTTP/1 connection that has seen no bytes at once, as
/// hyper-util's auto builder did while it waited for the first bytes.
#[tokio::test]
async fn an_unused_connection_does_not_hold_the_drain() {
    let server = SlowServer::start(Duration::from_secs(60)).await;
    let mut unused = server.connect().await;
    let mut used = server.connect().await;
    used.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut used).await, "HTTP/1.1 200");
    let deadline = Duration::from_secs(5);
    tokio::time::timeout(deadline, server.stop()).await.expect("the drain waited for an unused connection");
    assert!(closed_within(&mut unused, deadline, false).await.is_empty());
    // The rest of its answer, then the close.
    assert!(closed_within(&mut used, deadline, false).await.ends_with(b"quick"));
}

/// A connection that begins a request every quarter period stays open past the longest an
/// idle one is kept (two periods).
#[tokio::test]
async fn a_connection_in_use_stays_open() {
    let period = Duration::from_secs(1);
    let server = SlowServer::start(period).await;
    let mut s = server.connect().await;
    let until = tokio::time::Instant::now() + period * 5 / 2;
    let mut buf = vec![0u8; 4096];
    while tokio::time::Instant::now() < until {
        s.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
        let n = tokio::time::timeout(period, s.read(&mut buf)).await.unwrap().unwrap();
        let answer = String::from_utf8_lossy(&buf[..n]);
        assert!(answer.starts_with("HTTP/1.1 200") && answer.ends_with("quick"), "{answer}");
        // The client's pace, not synchronisation: a request every quarter period.
        tokio::time::sleep(period / 4).await;
    }
    server.stop().await;
}

/// A client that reads its response slowly gets all of it: hyper drops the response body
/// while its tail still waits in hyper's write buffer, and an idle close then lets hyper
/// finish sending, for as long as the client keeps taking some of it, before it closes.
/// (A client that takes nothing for a whole period after that is cut, like nginx's
/// `send_timeout`.)
#[tokio::test]
async fn a_slow_reader_gets_its_whole_response() {
    let period = Duration::from_millis(200);
    let server = SlowServer::start(period).await;
    let mut s = server.connect().await;
    s.write_all(b"GET /big HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    // The client's pace, not synchronisation: it reads nothing for one and a half periods
    // (the idle close is asked for one to two periods after the body ended, and its tail is
    // still in hyper's buffer then), then reads on, well within the period the cut allows.
    tokio::time::sleep(period * 3 / 2).await;
    let answer = closed_within(&mut s, Duration::from_secs(30), false).await;
    let body = answer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| answer.len() - i - 4);
    assert_eq!(body, Some(BIG), "{:?}", String::from_utf8_lossy(&answer[..answer.len().min(200)]));
    server.stop().await;
}

/// A request whose answer, or whose response body, takes several idle periods keeps its
/// connection: only a connection with nothing in progress is idle.
#[tokio::test]
async fn a_request_in_progress_keeps_its_connection() {
    let period = Duration::from_millis(50);
    let server = SlowServer::start(period).await;
    for (path, body) in [("/late", "late"), ("/slow", "slow")] {
        let mut s = server.connect().await;
        s.write_all(format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").as_bytes()).await.unwrap();
        let mut out = String::new();
        tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out)).await.unwrap().unwrap();
        assert!(out.starts_with("HTTP/1.1 200") && out.contains(body), "{path}: {out}");
    }
    server.stop().await;
}

/// A signal that lands between `shutdown_signal()` and the first poll of its future is
/// caught, not fatal: a process announces readiness in that window. Were the handlers
/// installed lazily, this SIGTERM would end the test binary.
#[cfg(unix)]
#[tokio::test]
async fn shutdown_signal_catches_a_signal_sent_before_the_first_poll() {
    let stop = shutdown_signal().unwrap();
    let pid = std::process::id().to_string();
    assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    tokio::time::timeout(std::time::Duration::from_secs(10), stop).await.expect("SIGTERM resolves the future");
}

#[tokio::test]
async fn workers_serve_from_one_listener_and_all_stop() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run_workers(listener, Arc::new(WhichWorker), ServeOptions::default(), 3, async {
        let _ = stop_rx.await;
    }));
    let mut seen = std::collections::BTreeSet::new();
    let mut clients = Vec::new();
    for _ in 0..24 {
        clients.push(tokio::spawn(async move {
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n").await.unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            assert!(out.starts_with("HTTP/1.1 200"), "{out}");
            out.rsplit("\r\n\r\n").next().unwrap().parse::<usize>().unwrap()
        }));
    }
    for c in clients {
        seen.insert(c.await.unwrap());
    }
    assert!(seen.iter().all(|&w| w < 3), "{seen:?}");
    stop_tx.send(()).unwrap();
    tokio::time::timeout(Duration::from_secs(15), server).await.expect("workers did not stop").unwrap().unwrap();
    // Every worker closed its copy of the listening socket.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A connection from `127.0.0.<last>` to `server`.
async fn connect_from(server: &SlowServer, last: u8) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind(SocketAddr::from(([127, 0, 0, last], 0))).unwrap();
    socket.connect(server.addr).await.unwrap()
}

/// True once `stream` is closed by the server (within 10 s).
async fn closed(stream: &mut tokio::net::TcpStream) -> bool {
    let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut [0u8; 64])).await;
    matches!(read, Ok(Ok(0)) | Ok(Err(_)))
}

/// Past `connections_per_address`, an address's next connection is closed at once while
/// another address is served; past `head_memory`, the connection whose unfinished head does
/// not fit is closed, and a whole request on another connection is still served.
#[tokio::test]
async fn connections_per_address_and_unfinished_heads_are_bounded() {
    let options = ServeOptions {
        idle_close: Duration::from_secs(60),
        connections_per_address: 2,
        head_memory: 100_000,
        ..ServeOptions::default()
    };
    let server = SlowServer::start_options(options).await;
    let (mut first, mut second) = (connect_from(&server, 2).await, connect_from(&server, 2).await);
    let mut third = connect_from(&server, 2).await;
    assert!(closed(&mut third).await, "a third connection from one address");
    let mut other = connect_from(&server, 3).await;
    other.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut other).await, "HTTP/1.1 200");
    // 60 000 bytes of an unfinished head on each: the second does not fit in 100 000.
    let mut unfinished = b"GET /quick HTTP/1.1\r\nhost: x\r\nx-long: ".to_vec();
    unfinished.resize(60_000, b'a');
    let _ = first.write_all(&unfinished).await;
    let _ = second.write_all(&unfinished).await;
    // Whichever the server read last is the one closed.
    let (mut one, mut two) = ([0u8; 64], [0u8; 64]);
    let first_closed = tokio::select! {
        read = first.read(&mut one) => { assert!(matches!(read, Ok(0) | Err(_)), "{read:?}"); true }
        read = second.read(&mut two) => { assert!(matches!(read, Ok(0) | Err(_)), "{read:?}"); false }
        () = tokio::time::sleep(Duration::from_secs(10)) => panic!("neither unfinished head was closed"),
    };
    let mut fresh = connect_from(&server, 4).await;
    fresh.write_all(b"GET /quick HTTP/1.1\r\nhost: x\r\n\r\n").await.unwrap();
    assert_eq!(status_of(&mut fresh).await, "HTTP/1.1 200", "a whole request still fits");
    let survivor = if first_closed { &mut second } else { &mut first };
    survivor.write_all(b"\r\n\r\n").await.unwrap();
    assert_eq!(status_of(survivor).await, "HTTP/1.1 200", "the head that fit is served");
    drop((first, second, other, fresh));
    server.stop().await;
}
