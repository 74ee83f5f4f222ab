//! End-to-end benchmark: the same load, round by round, straight to a fast Swift-like upstream
//! and through `swiftgate serve` (release build, its own process), plain HTTP and TLS.
//!
//! `cargo bench --bench e2e` (full), `cargo bench --bench e2e -- --quick` (smoke, < 2 min).
//! Prints a table with per-round ratios (median, min-max) and writes target/bench/results.json.
//! Under `cargo test` it runs one tiny round as a check that the harness works.
//! `--instructions [--annotate]` (`benches/instructions.sh`) counts the gateway's user-space
//! instructions per request under callgrind instead.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;

#[path = "e2e/relay.rs"]
mod relay;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TOKEN: &str = "AUTH_tkbench";

// ------------------------------------------------------------------ the fast upstream

/// `remaining` bytes as slices of one preallocated buffer: no copy, no allocation per chunk.
struct Repeat {
    buf: Bytes,
    remaining: u64,
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

type Boxed = http_body_util::combinators::BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

fn boxed<B>(b: B) -> Boxed
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

async fn start_upstream() -> SocketAddr {
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

// ------------------------------------------------------------------ the gateway process

/// The process `pid` and its child processes (nginx's worker).
fn family(pid: u32) -> Vec<String> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid.to_string()).chain(children.split_whitespace().map(str::to_owned)).collect()
}

/// CPU seconds (user and system, to the nanosecond, from each thread's schedstat) used so far
/// by `pid` and its child processes. Only live threads count: the proxies' threads (event loops,
/// nginx's processes) live for the whole run. `/proc/<pid>/stat` would count in 10 ms ticks,
/// a tenth of a c=64 run's whole CPU time.
fn cpu_seconds(pid: u32) -> f64 {
    let threads = |pid: &String| -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum::<f64>()
            / 1e9
    };
    family(pid).iter().map(threads).sum()
}

/// Busy CPU seconds of the whole machine so far (every CPU's time outside idle and I/O wait, in
/// `/proc/stat`'s 10 ms ticks): the load generator's, upstream's, the kernel's and the proxy's.
/// A proxy can lower its own figure by moving work onto the processes at either end (a body
/// passed by `splice(2)` on loopback makes both ends copy it more slowly); this one shows it.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy / 100.0
}

/// CPUs the machine has (`/proc/stat`'s `cpuN` lines), whatever this process's affinity.
fn machine_cpus() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let n = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    n.max(1) as f64
}

/// CPU seconds spent, per path, and what was done for them (GiB moved, requests served): the
/// proxy's own (none for the direct path), and the whole machine's, over `wall` seconds.
#[derive(Default)]
struct Spent {
    own: f64,
    machine: f64,
    amount: f64,
    wall: f64,
}

impl Spent {
    fn add(&mut self, other: &Spent) {
        self.own += other.own;
        self.machine += other.machine;
        self.amount += other.amount;
        self.wall += other.wall;
    }

    /// `seconds` per unit of what was done.
    fn per_amount(&self, seconds: f64) -> f64 {
        seconds / self.amount.max(1e-9)
    }
}

type CpuLedger = BTreeMap<&'static str, Spent>;

/// Runs `work` on `p` and charges to `ledger`, for `amount`, the CPU time the machine spent
/// meanwhile and, when `p` is a proxy, its own.
async fn metered<T>(ledger: &mut CpuLedger, p: &Path_, amount: f64, work: impl std::future::Future<Output = T>) -> T {
    let (own, machine, t) = (p.pid.map(cpu_seconds), machine_busy_seconds(), Instant::now());
    let out = work.await;
    let e = ledger.entry(p.name).or_default();
    e.machine += machine_busy_seconds() - machine;
    e.wall += t.elapsed().as_secs_f64();
    e.amount += amount;
    if let (Some(pid), Some(own)) = (p.pid, own) {
        e.own += cpu_seconds(pid) - own;
    }
    out
}

/// Puts the bench (load generator and upstream) and every proxy process on one CPU, and back.
/// At c=1 a request is a strict relay (client, proxy, upstream, proxy, client), so one CPU costs
/// no parallelism; it takes out the hypervisor's cost of waking an idle vCPU at every hop,
/// which on this VM (no halt polling) is most of the unpinned c=1 figure. Needs `taskset`.
struct Pinning {
    pids: Vec<String>,
    all: String,
}

impl Pinning {
    fn new(proxies: &[u32]) -> Option<Pinning> {
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let all = status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?.trim().to_owned();
        let mut pids = vec![std::process::id().to_string()];
        pids.extend(proxies.iter().flat_map(|&p| family(p)));
        let pinning = Pinning { pids, all };
        // Setting what is already allowed checks that taskset works.
        pinning.set(&pinning.all).then_some(pinning)
    }

    fn set(&self, cpus: &str) -> bool {
        self.pids.iter().all(|pid| {
            Command::new("taskset")
                .args(["-a", "-p", "-c", cpus, pid])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
    }

    /// Runs `work` with everything on CPU 0; a row labelled "one CPU" is never measured
    /// unpinned.
    async fn one_cpu<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        assert!(self.set("0"), "taskset could not pin the bench to CPU 0");
        let out = work.await;
        assert!(self.set(&self.all), "taskset could not restore CPUs {}", self.all);
        out
    }
}

struct Gateway {
    child: Child,
    url: String,
    /// Its configuration and state; removed after the process stops, on a panic too.
    _dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn status_kib(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with(field))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

/// Starts `swiftgate serve` from the release build; under callgrind, writing its counts to
/// `callgrind`, when that is given (`--instructions`).
async fn start_gateway(
    emulator: &swiftgate::emulator::EmulatorHandle,
    tls: bool,
    tag: &str,
    callgrind: Option<&Path>,
) -> Gateway {
    let scratch = tempfile::Builder::new().prefix(&format!("swiftgate-bench-{tag}-")).tempdir().unwrap();
    let dir = scratch.path();
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let tls_block = if tls {
        format!("[tls]\ncert = \"{0}/server.crt\"\nkey = \"{0}/server.key\"\n", certs.display())
    } else {
        String::new()
    };
    let host = if tls { "localhost" } else { "127.0.0.1" };
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let scheme = if tls { "https" } else { "http" };
    // The emulator checks the redirect URI by origin, so the app names this gateway's.
    let app = swiftgate::emulator::AppSpec::random(&format!("{scheme}://{host}:{port}/callback"));
    emulator.emulator.add_app(app.clone());
    let emulator = emulator.base_url();
    let hash = swiftgate::front::hash_key("bench-key").unwrap();
    std::fs::write(
        dir.join("c.toml"),
        format!(
            "listen = \"127.0.0.1:{port}\"\npublic_url = \"{scheme}://{host}:{port}\"\nstate_dir = \"state\"\n{tls_block}\
             [hubic]\napi_base = \"{emulator}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n\
             [[user]]\nname = \"bench\"\nkey_hash = \"{hash}\"\n",
            app.client_id,
            app.client_secret.expose()
        ),
    )
    .unwrap();
    let bin = env!("CARGO_BIN_EXE_swiftgate");
    let mut reg = Command::new(bin)
        .args(["register", "--user", "bench", "--login", "bench@example.com", "--config"])
        .arg(dir.join("c.toml"))
        .env("SWIFTGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    reg.stdin.take().unwrap().write_all(b"bench-pw\n").unwrap();
    assert!(reg.wait().unwrap().success(), "registration failed");
    let mut child = command(bin, callgrind)
        .args(["serve", "--config"])
        .arg(dir.join("c.toml"))
        .env("SWIFTGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut gateway = Gateway { child, url: String::new(), _dir: scratch };
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).unwrap();
    gateway.url = line.trim().to_owned();
    gateway
}

// ------------------------------------------------------------------ other proxies: the floor relay and nginx

/// A proxy other than the gateway, run as its own process in front of the same upstream.
struct Other {
    child: Child,
    port: u16,
    /// Its scratch directory, removed once the process has stopped.
    _dir: Option<tempfile::TempDir>,
}

impl Drop for Other {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: nginx's master then stops its worker, which would otherwise
        // outlive it (holding the bench's stdout open).
        let stopped = Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status();
        if !stopped.is_ok_and(|s| s.success()) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// A free port on 127.0.0.1 for a child process to listen on.
fn free_port() -> Option<u16> {
    Some(std::net::TcpListener::bind("127.0.0.1:0").ok()?.local_addr().ok()?.port())
}

/// Waits (polling, with a deadline) until `other` accepts connections on its port; `None`, and
/// the process stopped, if it exits or the deadline passes first.
fn listening(mut other: Other) -> Option<Other> {
    let deadline = Instant::now() + std::time::Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", other.port)).is_err() {
        if Instant::now() > deadline || other.child.try_wait().ok().flatten().is_some() {
            return None;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    Some(other)
}

/// A command running `program`; under callgrind, writing its counts to `callgrind`, when given.
fn command(program: impl AsRef<std::ffi::OsStr>, callgrind: Option<&Path>) -> Command {
    match callgrind {
        Some(out) => {
            let mut c = Command::new("valgrind");
            c.args(["-q", "--tool=callgrind"]).arg(format!("--callgrind-out-file={}", out.display())).arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// The floor ([`relay`]): this bench executable again, as a bare relay process; under
/// callgrind, writing to `callgrind`, when given.
fn start_relay(upstream: SocketAddr, callgrind: Option<&Path>) -> Option<Other> {
    let port = free_port()?;
    let exe = std::env::current_exe().ok()?;
    let child = command(&exe, callgrind).arg("--relay").arg(port.to_string()).arg(upstream.to_string()).spawn().ok()?;
    listening(Other { child, port, _dir: None })
}

/// The peer to beat: a tuned nginx reverse proxy (buffering off, 1 MiB buffers, upstream
/// keepalive), started when SWIFTGATE_BENCH_NGINX is set (benches/nginx.sh).
fn start_nginx(upstream: SocketAddr) -> Option<Other> {
    std::env::var_os("SWIFTGATE_BENCH_NGINX")?;
    let binary = ["/usr/sbin/nginx", "/usr/bin/nginx"].into_iter().find(|p| Path::new(p).exists())?;
    // A TempDir, so a start that fails half-way leaves nothing behind either.
    let scratch = tempfile::Builder::new().prefix("swiftgate-bench-nginx-").tempdir().ok()?;
    let dir = scratch.path();
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 1024; }}\n\
         http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy;\n\
           fastcgi_temp_path {d}/fcgi; uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
           upstream up {{ server {upstream}; keepalive 64; }}\n\
           server {{ listen 127.0.0.1:{port}; client_max_body_size 0;\n\
             proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
             proxy_buffering off; proxy_request_buffering off;\n\
             proxy_buffer_size 1m; proxy_buffers 4 1m; client_body_buffer_size 1m;\n\
             location / {{ proxy_pass http://up; }} }} }}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).ok()?;
    let child = Command::new(binary).arg("-c").arg(dir.join("nginx.conf")).arg("-p").arg(dir).spawn().ok()?;
    listening(Other { child, port, _dir: Some(scratch) })
}

// ------------------------------------------------------------------ the load generator

type HttpClient = Client<HttpConnector, Boxed>;
type TlsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Boxed>;

#[derive(Clone)]
enum Load {
    Plain(HttpClient),
    Tls(TlsClient),
}

impl Load {
    async fn send(&self, req: Request<Boxed>) -> Response<Incoming> {
        match self {
            Load::Plain(c) => c.request(req).await.expect("request"),
            Load::Tls(c) => c.request(req).await.expect("request"),
        }
    }
}

fn clients() -> (Load, Load) {
    // No Nagle on the load generator either: a body's last partial segment would otherwise
    // wait for the gateway's delayed ACK (40 ms).
    let mut http = HttpConnector::new();
    http.set_nodelay(true);
    let plain = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(128).build(http.clone());
    let ca = std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev/ca.crt")).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut ca.as_slice()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth();
    http.enforce_http(false);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config)
        .https_only()
        .enable_http1()
        .wrap_connector(http);
    let tls = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(128).build(https);
    (Load::Plain(plain), Load::Tls(tls))
}

/// One way to reach storage: a name, its client, its storage URL and token.
#[derive(Clone)]
struct Path_ {
    name: &'static str,
    load: Load,
    url: String,
    token: String,
    /// The proxy's process, whose CPU time is counted; `None` for the direct path.
    pid: Option<u32>,
}

fn empty() -> Boxed {
    boxed(http_body_util::Empty::new())
}

async fn get_bytes(p: &Path_, size: u64) -> u64 {
    let req = Request::get(format!("{}/c/{size}", p.url)).header("x-auth-token", &p.token).body(empty()).unwrap();
    let resp = p.load.send(req).await;
    assert_eq!(resp.status(), 200, "{} GET", p.name);
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(frame) = body.frame().await {
        n += frame.expect("body").data_ref().map_or(0, |d| d.len() as u64);
    }
    assert_eq!(n, size, "{} GET length", p.name);
    n
}

async fn put_bytes(p: &Path_, size: u64, buf: &Bytes) {
    let req = Request::put(format!("{}/c/{size}", p.url))
        .header("x-auth-token", &p.token)
        .header("content-length", size)
        .body(boxed(Repeat { buf: buf.clone(), remaining: size }))
        .unwrap();
    let resp = p.load.send(req).await;
    assert_eq!(resp.status(), 201, "{} PUT", p.name);
}

/// Objects of `size` moved one after another for one throughput cell: enough for
/// `cell_bytes` (64 MiB in the benches). One 1 MiB transfer takes under a millisecond, shorter
/// than this VM's scheduling hiccups, so a cell of one such transfer swung from 0.05 to 0.66 of
/// direct within five rounds.
fn batch(size: u64, cell_bytes: u64) -> u64 {
    (cell_bytes / size).max(1)
}

/// MB/s of `count` transfers of `size` in a row (on one kept-alive connection, as a client
/// uploading many segments uses it).
async fn throughput(p: &Path_, op: &str, size: u64, count: u64, buf: &Bytes) -> f64 {
    let t = Instant::now();
    for _ in 0..count {
        if op == "GET" {
            get_bytes(p, size).await;
        } else {
            put_bytes(p, size, buf).await;
        }
    }
    (size * count) as f64 / 1e6 / t.elapsed().as_secs_f64()
}

/// (requests/s, p50 µs, p99 µs) for `total` 4 KiB GETs at `concurrency`.
async fn small_gets(p: &Path_, concurrency: usize, total: usize) -> (f64, f64, f64) {
    let start = Instant::now();
    let per = total / concurrency;
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let p = p.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(per);
            for _ in 0..per {
                let t = Instant::now();
                get_bytes(&p, 4 * KIB).await;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            lat
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| all[((all.len() as f64 * q) as usize).min(all.len() - 1)];
    (all.len() as f64 / secs, pct(0.50), pct(0.99))
}

/// `small_gets` at c=1 for `total` requests, after `total / 4` that are not counted. A c=1 run
/// starts with its threads where the run before left them, and on this VM that can be the fast
/// placement for the first thousand requests or so, before the scheduler spreads the threads
/// over both vCPUs: runs of 1 024 requests from a cold start measured that transient (the relay
/// added 23-27 µs in them, 150-180 µs in runs of 4 096 and more). A `--quick` run (256 + 1 024)
/// can still catch it.
async fn c1_gets(p: &Path_, total: usize) -> (f64, f64, f64) {
    small_gets(p, 1, total / 4).await;
    small_gets(p, 1, total).await
}

async fn auths(load: &Load, url: &str, user: &str, key: &str, concurrency: usize, total: usize) -> f64 {
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..concurrency {
        let (load, url, user, key) = (load.clone(), url.to_owned(), user.to_owned(), key.to_owned());
        tasks.push(tokio::spawn(async move {
            for _ in 0..total / concurrency {
                let req =
                    Request::get(&url).header("x-auth-user", &user).header("x-auth-key", &key).body(empty()).unwrap();
                let resp = load.send(req).await;
                assert_eq!(resp.status(), 200);
                let _ = resp.into_body().collect().await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    total as f64 / start.elapsed().as_secs_f64()
}

async fn login(load: &Load, base: &str) -> (String, String) {
    let req = Request::get(format!("{base}/auth/v1.0"))
        .header("x-auth-user", "bench")
        .header("x-auth-key", "bench-key")
        .body(empty())
        .unwrap();
    let resp = load.send(req).await;
    assert_eq!(resp.status(), 200, "gateway auth");
    let h = |n: &str| resp.headers()[n].to_str().unwrap().to_owned();
    (h("x-storage-url"), h("x-auth-token"))
}

// ------------------------------------------------------------------ statistics and output

/// A proxy's name in ratio columns and JSON keys (`ratio_gateway`, `ratio_tls`, ...).
fn short(name: &str) -> &str {
    match name {
        "gateway+TLS" => "tls",
        other => other,
    }
}

/// `median (min-max)` of `v` with `digits` decimals.
fn summary(v: &[f64], digits: usize) -> String {
    let (lo, hi) = span(v);
    format!("{:.digits$} ({lo:.digits$}-{hi:.digits$})", median(v))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn span(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

struct Settings {
    rounds: usize,
    sizes: Vec<u64>,
    /// Bytes a throughput cell moves at least (see `batch`); 0: one object per cell.
    cell_bytes: u64,
    small_total: usize,
    auth_total: usize,
    rss_transfer: u64,
}

fn human(size: u64) -> String {
    if size >= GIB {
        format!("{} GiB", size / GIB)
    } else if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

// ------------------------------------------------------------------ instructions per request

/// Requests counted per concurrency in `--instructions`.
const COUNTED: usize = 2048;

/// `--instructions` (`benches/instructions.sh`): the plain gateway under callgrind, and the
/// user-space instructions it executes per 4 KiB GET at c=1 and c=64, counted exactly. The
/// timed rows drift with the VM's day by more than a small change to the request path moves
/// them; an instruction count barely moves, so it is how such a change is judged. Kernel time
/// is not in it (callgrind sees user space only), the gateway runs some fifty times slower, and
/// SHA-256 (the token check) runs in software: valgrind does not offer the CPU's SHA
/// extensions, so some 7 000 of the count are instructions the CPU runs as a few hundred.
async fn instructions(emulator: &swiftgate::emulator::EmulatorHandle, upstream: SocketAddr, annotate: bool) {
    let scratch = tempfile::Builder::new().prefix("swiftgate-bench-callgrind-").tempdir().unwrap();
    let (plain, _) = clients();
    let mut rows = serde_json::Map::new();
    {
        let out = scratch.path().join("gateway.out");
        let gateway = start_gateway(emulator, false, "plain", Some(&out)).await;
        let (url, token) = login(&plain, &gateway.url).await;
        let p = Path_ { name: "gateway", load: plain.clone(), url, token, pid: Some(gateway.child.id()) };
        rows.insert("gateway".into(), count_instructions(&p, &out, annotate).await);
    }
    // The floor under the same count: what a proxy that only relays bytes executes per request.
    let out = scratch.path().join("relay.out");
    let relay = start_relay(upstream, Some(&out)).expect("the floor relay did not start under callgrind");
    let p = Path_ {
        name: "relay",
        load: plain,
        url: format!("http://127.0.0.1:{}/v1/AUTH_bench", relay.port),
        token: TOKEN.into(),
        pid: Some(relay.child.id()),
    };
    rows.insert("relay".into(), count_instructions(&p, &out, false).await);
    let doc = json!({ "instructions_per_4k_get": rows, "commit": commit() });
    write_json("instructions.json", &doc);
}

/// User-space instructions per 4 KiB GET at c=1 and c=64 of `p`'s proxy, running under
/// callgrind with its output going to `out`.
async fn count_instructions(p: &Path_, out: &Path, annotate: bool) -> serde_json::Value {
    let pid = p.pid.expect("a proxy process").to_string();
    let control = |what: &str| {
        let ok = Command::new("callgrind_control")
            .args([what, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "callgrind_control {what} {pid} failed");
    };
    // Warm: the pools hold their connections and every lazy initialisation has run. At c=64,
    // so that no connection opens while counting (warmed at c=16, the c=64 count included 48
    // client and 48 upstream connections opened: 1 270 instructions per request).
    small_gets(p, 64, 512).await;
    let mut rows = serde_json::Map::new();
    // callgrind numbers its dumps from 1: c=1's is the first, c=64's the second.
    for (dump, c) in [(1, 1usize), (2, 64)] {
        control("--zero");
        small_gets(p, c, COUNTED).await;
        control("--dump");
        let (dump, total) = dump_written(out, dump).await;
        let per = total as f64 / COUNTED as f64;
        println!("{}, 4 KiB GET c={c}: {per:.0} instructions per request ({total} for {COUNTED})", p.name);
        rows.insert(format!("c={c}"), json!(per));
        if annotate && c == 64 {
            print_costliest(&dump);
        }
    }
    serde_json::Value::Object(rows)
}

/// Dump `number` that callgrind writes after `callgrind_control --dump` (`callgrind.out.1` for
/// the first), once complete, and its instruction count (the `totals:` line).
/// `callgrind_control` returns before the file is written, so this polls with a deadline.
async fn dump_written(out: &Path, number: u32) -> (PathBuf, u64) {
    let dump = PathBuf::from(format!("{}.{number}", out.display()));
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&dump).unwrap_or_default();
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        if let Some(total) = total {
            return (dump, total);
        }
        assert!(Instant::now() < deadline, "callgrind wrote no complete {}", dump.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The 40 functions of `dump` with the highest self cost, per request.
fn print_costliest(dump: &Path) {
    let Ok(out) = Command::new("callgrind_annotate").args(["--auto=no", "--threshold=100"]).arg(dump).output() else {
        println!("callgrind_annotate did not run");
        return;
    };
    println!("instructions per request (self cost), c=64:");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text.lines().filter_map(|l| {
        let (count, rest) = l.trim_start().split_once(' ')?;
        let count: u64 = count.replace(',', "").parse().ok()?;
        let what = rest.trim_start().split_once(")  ").map_or(rest, |(_, w)| w);
        // Paths of the registry and the toolchain say nothing the function's name does not.
        let what = what.rsplit_once(".rs:").map_or(what, |(_, f)| f);
        Some((count, what.to_owned()))
    });
    // The totals, and the entry points a thread's whole run is charged to (callgrind_annotate
    // counts the inlined frames there as the caller's own), say nothing: skip them.
    let entry = [
        "PROGRAM TOTALS",
        "(below main)",
        "???:main",
        "swiftgate::main",
        "lang_start",
        "__rust_begin_short_backtrace",
        "libc_start",
        "???:0x",
        "clone.S:clone",
        "pthread_create.c:start_thread",
        "Thread>::new::thread_start",
        "FnOnce::call_once{{vtable.shim}}",
        "Runtime::block_on",
        "CoreGuard::block_on",
        "runtime::enter_runtime",
    ];
    for (count, what) in rows.filter(|(_, w)| !entry.iter().any(|e| w.contains(e))).take(40) {
        println!("{:>8.0}  {what}", count as f64 / COUNTED as f64);
    }
}

/// The commit measured, for comparisons across commits.
fn commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `doc` to `target/bench/<name>`.
fn write_json(name: &str, doc: &serde_json::Value) {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), serde_json::to_string_pretty(doc).unwrap()).unwrap();
    println!("wrote {}", out.join(name).display());
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The bench starts itself again as the floor relay (see `start_relay`).
    if let [_, flag, port, upstream, ..] = args.as_slice() {
        if flag == "--relay" {
            relay::serve(port.parse().expect("relay port"), upstream.parse().expect("relay upstream"));
            return;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bench(args));
}

async fn bench(args: Vec<String>) {
    let bench = args.iter().any(|a| a == "--bench");
    let quick = args.iter().any(|a| a == "--quick");
    // `--only bulk,small,auth,rss` runs just those sections (for profiling one of them).
    let only: Option<Vec<String>> = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.split(',').map(str::to_owned).collect());
    let wanted = |section: &str| only.as_ref().is_none_or(|o| o.iter().any(|s| s == section));
    let settings = match (bench, quick) {
        (true, false) => Settings {
            rounds: 5,
            sizes: vec![MIB, 64 * MIB, GIB],
            cell_bytes: 64 * MIB,
            small_total: 4096,
            auth_total: 4000,
            rss_transfer: 4 * GIB,
        },
        (true, true) => Settings {
            rounds: 5,
            sizes: vec![MIB, 64 * MIB],
            cell_bytes: 64 * MIB,
            small_total: 1024,
            auth_total: 1000,
            rss_transfer: 512 * MIB,
        },
        // `cargo test`: one tiny round proves the harness and the gateway process work.
        (false, _) => Settings {
            rounds: 1,
            sizes: vec![MIB],
            cell_bytes: 0,
            small_total: 64,
            auth_total: 64,
            rss_transfer: 16 * MIB,
        },
    };
    let up = start_upstream().await;
    let emulator = swiftgate::emulator::Emulator::start(
        swiftgate::emulator::EmulatorConfig {
            storage: swiftgate::emulator::StorageConfig::External {
                auth_url: format!("http://{up}/auth/v1.0"),
                user: "bench".into(),
                key: swiftgate::secret::Secret::new("bench"),
            },
            users: vec![swiftgate::emulator::UserSpec {
                login: "bench@example.com".into(),
                password: swiftgate::secret::Secret::new("bench-pw"),
            }],
            ..Default::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    if args.iter().any(|a| a == "--instructions") {
        instructions(&emulator, up, args.iter().any(|a| a == "--annotate")).await;
        emulator.stop().await;
        return;
    }
    let gateways =
        [start_gateway(&emulator, false, "plain", None).await, start_gateway(&emulator, true, "tls", None).await];
    let (plain, tls) = clients();
    let (gw_url, gw_token) = login(&plain, &gateways[0].url).await;
    let (gwt_url, gwt_token) = login(&tls, &gateways[1].url).await;
    let relay = start_relay(up, None).expect("the floor relay did not start");
    let nginx = start_nginx(up);
    let mut paths = vec![
        Path_ {
            name: "direct",
            load: plain.clone(),
            url: format!("http://{up}/v1/AUTH_bench"),
            token: TOKEN.into(),
            pid: None,
        },
        Path_ { name: "gateway", load: plain.clone(), url: gw_url, token: gw_token, pid: Some(gateways[0].child.id()) },
        Path_ {
            name: "gateway+TLS",
            load: tls.clone(),
            url: gwt_url,
            token: gwt_token,
            pid: Some(gateways[1].child.id()),
        },
    ];
    for (name, other) in [("relay", Some(&relay)), ("nginx", nginx.as_ref())] {
        if let Some(o) = other {
            paths.push(Path_ {
                name,
                load: plain.clone(),
                url: format!("http://127.0.0.1:{}/v1/AUTH_bench", o.port),
                token: TOKEN.into(),
                pid: Some(o.child.id()),
            });
        }
    }
    let idle_rss = gateways[0].status_kib("VmRSS:");
    let buf = Bytes::from(vec![0xa5u8; MIB as usize]);
    // Peak RSS while a large object streams through (GET then PUT), first, so the peak is
    // the transfer's; the RSS left after every other run is reported beside it.
    if wanted("rss") {
        get_bytes(&paths[1], settings.rss_transfer).await;
        put_bytes(&paths[1], settings.rss_transfer, &buf).await;
    }
    let peak_rss = gateways[0].status_kib("VmHWM:");
    let mut results: BTreeMap<String, BTreeMap<&str, Vec<f64>>> = BTreeMap::new();
    let mut record =
        |key: String, path: &'static str, v: f64| results.entry(key).or_default().entry(path).or_default().push(v);
    // Bulk CPU is kept per operation (GET, PUT), and summed for the figures of both.
    let (mut cpu_ops, mut cpu_c64) = (BTreeMap::<&str, CpuLedger>::new(), CpuLedger::new());
    for round in (0..settings.rounds).filter(|_| wanted("bulk")) {
        for &size in &settings.sizes {
            for op in ["GET", "PUT"] {
                // Rotate the order each round so no path always goes first.
                for i in 0..paths.len() {
                    let p = &paths[(i + round) % paths.len()];
                    let count = batch(size, settings.cell_bytes);
                    let gib = (size * count) as f64 / GIB as f64;
                    let ledger = cpu_ops.entry(op).or_default();
                    let mbps = metered(ledger, p, gib, throughput(p, op, size, count, &buf)).await;
                    record(format!("{op} {} MB/s", human(size)), p.name, mbps);
                }
            }
        }
    }
    let pinning = Pinning::new(&paths.iter().filter_map(|p| p.pid).collect::<Vec<_>>());
    if pinning.is_none() {
        println!("taskset did not work: no one-CPU c=1 rows");
    }
    for round in (0..settings.rounds).filter(|_| wanted("small")) {
        for c in [1usize, 16, 64] {
            for i in 0..paths.len() {
                let p = &paths[(i + round) % paths.len()];
                let total = settings.small_total;
                let (rps, p50, p99) = match c {
                    1 => c1_gets(p, total).await,
                    64 => metered(&mut cpu_c64, p, total as f64, small_gets(p, c, total)).await,
                    _ => small_gets(p, c, total).await,
                };
                record(format!("4 KiB GET c={c} req/s"), p.name, rps);
                record(format!("4 KiB GET c={c} p50 µs"), p.name, p50);
                record(format!("4 KiB GET c={c} p99 µs"), p.name, p99);
            }
        }
    }
    // After every unpinned round: threads that shared a CPU tend to stay together afterwards.
    for round in (0..settings.rounds).filter(|_| wanted("small")) {
        let Some(pinning) = &pinning else { break };
        for i in 0..paths.len() {
            let p = &paths[(i + round) % paths.len()];
            let (_, p50, p99) = pinning.one_cpu(c1_gets(p, settings.small_total)).await;
            record("4 KiB GET c=1 one CPU p50 µs".into(), p.name, p50);
            record("4 KiB GET c=1 one CPU p99 µs".into(), p.name, p99);
        }
    }
    for _ in (0..settings.rounds).filter(|_| wanted("auth")) {
        let direct_auth =
            auths(&plain, &format!("http://{up}/auth/v1.0"), "bench", "bench", 16, settings.auth_total).await;
        let gw_auth =
            auths(&plain, &format!("{}/auth/v1.0", gateways[0].url), "bench", "bench-key", 16, settings.auth_total)
                .await;
        record("v1.0 auth req/s (warm)".into(), "direct", direct_auth);
        record("v1.0 auth req/s (warm)".into(), "gateway", gw_auth);
    }

    // ---- table
    println!(
        "\nswiftgate e2e ({} rounds{}); MB/s and req/s: higher is better; µs: lower is better",
        settings.rounds,
        if quick { ", quick" } else { "" }
    );
    let proxies: Vec<&'static str> = paths.iter().filter(|p| p.pid.is_some()).map(|p| p.name).collect();
    let mut header = format!("{:30} {:>22}", "metric", "direct");
    for name in &proxies {
        header += &format!(" {name:>22}");
    }
    for name in &proxies {
        header += &format!(" {:>16}", format!("{}/direct", short(name)));
    }
    println!("{header}");
    let mut json_rows = serde_json::Map::new();
    for (key, by_path) in &results {
        let cell = |name: &str| by_path.get(name).map_or("-".to_owned(), |v| summary(v, 1));
        // Ratios are taken within each round, then summarised.
        let ratio = |name: &str| -> Option<Vec<f64>> {
            let (a, d) = (by_path.get(name)?, by_path.get("direct")?);
            let per_round = a.len() / settings.rounds.max(1);
            let rounds: Vec<f64> = (0..settings.rounds)
                .map(|r| {
                    let sa: f64 = a[r * per_round..(r + 1) * per_round].iter().sum();
                    let sd: f64 = d[r * per_round..(r + 1) * per_round].iter().sum();
                    sa / sd
                })
                .collect();
            Some(rounds)
        };
        let mut line = format!("{key:30} {:>22}", cell("direct"));
        let mut row = serde_json::Map::new();
        row.insert("samples".into(), json!(by_path));
        for name in &proxies {
            line += &format!(" {:>22}", cell(name));
        }
        for name in &proxies {
            let r = ratio(name);
            line += &format!(" {:>16}", r.as_ref().map_or("-".to_owned(), |v| summary(v, 2)));
            row.insert(format!("ratio_{}", short(name)), json!(r.as_ref().map(|v| median(v))));
        }
        println!("{line}");
        json_rows.insert(key.clone(), row.into());
    }
    // What each proxy adds to the c=1 median, taken within each round.
    println!();
    let mut added = serde_json::Map::new();
    for (label, key) in [("unpinned", "4 KiB GET c=1 p50 µs"), ("one CPU", "4 KiB GET c=1 one CPU p50 µs")] {
        let Some(by_path) = results.get(key) else { continue };
        let Some(direct) = by_path.get("direct") else { continue };
        let mut cells = Vec::new();
        let mut row = serde_json::Map::new();
        for name in &proxies {
            if let Some(v) = by_path.get(*name) {
                let per_round: Vec<f64> = v.iter().zip(direct).map(|(a, d)| a - d).collect();
                let (lo, hi) = span(&per_round);
                cells.push(format!("{name} {:.1} ({lo:.1} to {hi:.1})", median(&per_round)));
                row.insert((*name).into(), json!(median(&per_round)));
            }
        }
        println!("added p50 at c=1, {label}, µs: {}", cells.join(", "));
        added.insert(label.into(), row.into());
    }
    // A figure per path, from the paths whose work took at least `min_wall` seconds.
    let figures = |ledger: &CpuLedger, min_wall: f64, of: &dyn Fn(&Spent) -> f64| -> BTreeMap<&str, f64> {
        ledger.iter().filter(|(_, s)| s.wall >= min_wall).map(|(k, s)| (*k, of(s))).collect()
    };
    let mut cpu_bulk = CpuLedger::new();
    for (name, spent) in cpu_ops.values().flatten() {
        cpu_bulk.entry(name).or_default().add(spent);
    }
    let per_gib = figures(&cpu_bulk, 0.0, &|s| s.per_amount(s.own));
    let per_req = figures(&cpu_c64, 0.0, &|s| s.per_amount(s.own) * 1e6);
    // `/proc/stat` counts 10 ms ticks: over less than a fifth of a second of transfers (the
    // `cargo test` run), the machine's figures would be noise, so they are left out.
    const MACHINE_MIN_WALL: f64 = 0.2;
    let machine_per_gib_of = |ledger: &CpuLedger| figures(ledger, MACHINE_MIN_WALL, &|s| s.per_amount(s.machine));
    let machine_per_gib = machine_per_gib_of(&cpu_bulk);
    let machine_per_gib_op: BTreeMap<&str, BTreeMap<&str, f64>> =
        cpu_ops.iter().map(|(op, ledger)| (*op, machine_per_gib_of(ledger))).collect();
    // The share of the machine's CPU time that was busy while each path moved its bulk: near
    // 100 %, throughput is bound by the machine's CPU, and a path's ratio to direct follows
    // the ratio of their whole-machine CPU per GiB.
    let cpus = machine_cpus();
    let busy_share = figures(&cpu_bulk, MACHINE_MIN_WALL, &|s| 100.0 * s.machine / (s.wall * cpus));
    for name in &proxies {
        let (gib, req) = (per_gib.get(name), per_req.get(name));
        if gib.is_some() || req.is_some() {
            println!(
                "{name} CPU: {} CPU-s/GiB (bulk transfers), {} µs per 4 KiB GET at c=64",
                gib.map_or("-".into(), |v| format!("{v:.3}")),
                req.map_or("-".into(), |v| format!("{v:.1}"))
            );
        }
    }
    if !machine_per_gib.is_empty() {
        let cells = |of: &BTreeMap<&str, f64>, show: fn(f64) -> String| -> String {
            let cells: Vec<String> = std::iter::once(&"direct")
                .chain(&proxies)
                .filter_map(|name| of.get(name).map(|v| format!("{name} {}", show(*v))))
                .collect();
            cells.join(", ")
        };
        println!(
            "whole machine CPU-s/GiB (bulk; load generator, upstream and kernel included): {}",
            cells(&machine_per_gib, |v| format!("{v:.2}"))
        );
        for (op, of) in &machine_per_gib_op {
            println!("  {op} only: {}", cells(of, |v| format!("{v:.2}")));
        }
        let share = cells(&busy_share, |v| format!("{v:.0}%"));
        println!("whole machine busy during the bulk transfers ({cpus} CPUs): {share}");
    }
    let final_rss = gateways[0].status_kib("VmRSS:");
    println!(
        "gateway RSS: {:.1} MiB idle, {:.1} MiB peak during a {} GET + PUT, {:.1} MiB after every run",
        idle_rss as f64 / 1024.0,
        peak_rss as f64 / 1024.0,
        human(settings.rss_transfer),
        final_rss as f64 / 1024.0
    );
    let doc = json!({
        "quick": quick,
        "rounds": settings.rounds,
        "metrics": json_rows,
        "cpu_s_per_gib": per_gib,
        "machine_cpu_s_per_gib": machine_per_gib,
        "machine_cpu_s_per_gib_by_op": machine_per_gib_op,
        "machine_busy_percent": busy_share,
        "cpu_us_per_4k_get_c64": per_req,
        "added_p50_c1_us": added,
        "gateway_rss_kib": { "idle": idle_rss, "peak": peak_rss, "after_all": final_rss, "transfer_bytes": settings.rss_transfer },
        "commit": commit(),
    });
    if !bench {
        // Under `cargo test` this was a check of the harness, not a measurement.
        drop(gateways);
        drop(nginx);
        drop(relay);
        emulator.stop().await;
        return;
    }
    write_json("results.json", &doc);
    drop(gateways);
    emulator.stop().await;
}
