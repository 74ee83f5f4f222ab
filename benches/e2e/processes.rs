//! The proxies' processes: the gateway, the floor relay and nginx, each started in front of the
//! fast upstream and stopped when dropped; and pinning them with the bench to one CPU.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

/// The process `pid` and its child processes (nginx's worker).
pub(crate) fn family(pid: u32) -> Vec<String> {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    std::iter::once(pid.to_string()).chain(children.split_whitespace().map(str::to_owned)).collect()
}

/// Puts the bench (load generator and upstream) and every proxy process on one CPU, and back.
/// At c=1 a request is a strict relay (client, proxy, upstream, proxy, client), so one CPU costs
/// no parallelism; it takes out the hypervisor's cost of waking an idle vCPU at every hop,
/// which on this VM (no halt polling) is most of the unpinned c=1 figure. Needs `taskset`.
pub(crate) struct Pinning {
    pids: Vec<String>,
    all: String,
}

impl Pinning {
    pub(crate) fn new(proxies: &[u32]) -> Option<Pinning> {
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
    pub(crate) async fn one_cpu<T>(&self, work: impl std::future::Future<Output = T>) -> T {
        assert!(self.set("0"), "taskset could not pin the bench to CPU 0");
        let out = work.await;
        assert!(self.set(&self.all), "taskset could not restore CPUs {}", self.all);
        out
    }
}

// ------------------------------------------------------------------ the gateway process

pub(crate) struct Gateway {
    pub(crate) child: Child,
    pub(crate) url: String,
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
    pub(crate) fn status_kib(&self, field: &str) -> u64 {
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
pub(crate) async fn start_gateway(
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
pub(crate) struct Other {
    pub(crate) child: Child,
    pub(crate) port: u16,
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

/// The floor ([`crate::relay`]): this bench executable again, as a bare relay process; under
/// callgrind, writing to `callgrind`, when given.
pub(crate) fn start_relay(upstream: SocketAddr, callgrind: Option<&Path>) -> Option<Other> {
    let port = free_port()?;
    let exe = std::env::current_exe().ok()?;
    let child = command(&exe, callgrind).arg("--relay").arg(port.to_string()).arg(upstream.to_string()).spawn().ok()?;
    listening(Other { child, port, _dir: None })
}

/// The peer to beat: a tuned nginx reverse proxy (buffering off, 1 MiB buffers, upstream
/// keepalive), started when SWIFTGATE_BENCH_NGINX is set (benches/nginx.sh).
pub(crate) fn start_nginx(upstream: SocketAddr) -> Option<Other> {
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
