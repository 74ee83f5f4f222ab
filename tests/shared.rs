//! Several gateways, one state: three `swiftgate serve` processes sharing a real `redis-server`
//! (Debian's, or the one `SWIFTGATE_REDIS_SERVER` names, such as `valkey-server`) behind a real
//! nginx doing round-robin, in front of the emulator's HubiC and Keystone with 5-second Swift
//! tokens. Clients run across many expiries while one instance is killed and restarted and
//! Redis is killed and restarted; the emulator counts the upstream's token requests.

mod common;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swiftgate::clock::SystemClock;
use swiftgate::emulator::{AppSpec, Emulator, EmulatorConfig, EmulatorHandle, UserSpec};
use swiftgate::secret::Secret;

const BIN: &str = env!("CARGO_BIN_EXE_swiftgate");
const DEADLINE: Duration = Duration::from_secs(60);
const SWIFT_TTL: Duration = Duration::from_secs(5);
const NGINX: &str = "/usr/sbin/nginx";

fn redis_server() -> String {
    std::env::var("SWIFTGATE_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into())
}

/// A port free now, below the kernel's ephemeral range: an instance or Redis that dies comes
/// back on the same port, which the test's own outgoing connections must not take meanwhile.
fn free_port() -> u16 {
    let range = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").unwrap_or_default();
    let low: u16 = range.split_whitespace().next().and_then(|p| p.parse().ok()).unwrap_or(32768);
    let (from, to) = (10_000u16, low.max(10_001));
    let start = from + rand::random::<u16>() % (to - from);
    (0..to - from)
        .map(|i| from + (start - from + i) % (to - from))
        .find(|port| std::net::TcpListener::bind(("127.0.0.1", *port)).is_ok())
        .expect("a free port below the ephemeral range")
}

/// Polls `check` until it holds or the deadline passes.
fn wait_until(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + DEADLINE;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` on a free port with its own directory, persisting every write (AOF,
/// fsync always) as the README asks of a store that keeps grants.
struct Redis {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl Redis {
    fn start() -> Redis {
        let mut redis = Redis { child: None, port: 0, dir: tempfile::tempdir().unwrap() };
        // A port picked free may be taken before redis binds it: try another.
        for _ in 0..5 {
            redis.port = free_port();
            if redis.spawn() {
                return redis;
            }
        }
        panic!("redis-server did not start; its log:\n{}", redis.log());
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Starts the server on its port and directory; true once it answers PING.
    fn spawn(&mut self) -> bool {
        let child = Command::new(redis_server())
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1", "--dir"])
            .arg(self.dir.path())
            .args(["--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"])
            .args(["--logfile", "redis.log", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + DEADLINE;
        while Instant::now() < deadline {
            if self.child.as_mut().unwrap().try_wait().unwrap().is_some() {
                self.child = None;
                return false;
            }
            if self.pong() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    fn pong(&self) -> bool {
        let Ok(mut conn) = std::net::TcpStream::connect(("127.0.0.1", self.port)) else { return false };
        let _ = conn.set_read_timeout(Some(Duration::from_secs(1)));
        let mut buf = [0u8; 7];
        conn.write_all(b"PING\r\n").is_ok() && conn.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
    }

    /// Kills the server as a crash would (SIGKILL).
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn restart(&mut self) {
        assert!(self.spawn(), "redis-server restarted; its log:\n{}", self.log());
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }

    /// `HGET key field` through the redis crate, as another client of the store would.
    async fn hget(&self, key: &str, field: &str) -> Option<Vec<u8>> {
        let client = redis::Client::open(self.url()).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        redis::cmd("HGET").arg(key).arg(field).query_async(&mut conn).await.unwrap()
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One `swiftgate serve` process on a fixed port, so that it can come back where nginx expects
/// it; its stderr in a file, SIGKILL on drop.
struct Instance {
    name: &'static str,
    child: Option<Child>,
    config: PathBuf,
    port: u16,
    log: PathBuf,
}

impl Instance {
    fn start(name: &'static str, dir: &Path, config_text: &str) -> Instance {
        let config = dir.join(format!("{name}.toml"));
        std::fs::write(&config, config_text).unwrap();
        let port = free_port();
        let mut instance = Instance { name, child: None, config, port, log: dir.join(format!("{name}.log")) };
        instance.spawn();
        instance
    }

    /// Starts the process on the instance's port; returns once it prints its (public) URL.
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&self.config)
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .unwrap();
        let url = common::first_line(&mut child, DEADLINE);
        assert!(!url.is_empty(), "{} exited: {}", self.name, self.log_text());
        self.child = Some(child);
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            eprintln!("--- {} log:\n{}", self.name, self.log_text());
        }
    }
}

/// nginx doing round-robin over the instances, as the README's snippet configures it.
struct Nginx {
    child: Child,
    port: u16,
}

impl Nginx {
    fn start(dir: &Path, port: u16, backends: &[u16]) -> Nginx {
        let servers: String =
            backends.iter().map(|p| format!("    server 127.0.0.1:{p} max_fails=1 fail_timeout=2s;\n")).collect();
        let conf = format!(
            "daemon off;\nworker_processes 1;\npid {dir}/nginx.pid;\nerror_log {dir}/nginx-error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {dir}/body;\n  proxy_temp_path {dir}/proxy;\n\
             fastcgi_temp_path {dir}/fcgi;\n  uwsgi_temp_path {dir}/uwsgi;\n  scgi_temp_path {dir}/scgi;\n\
             upstream swiftgate {{\n{servers}    keepalive 32;\n  }}\n\
             server {{\n    listen 127.0.0.1:{port};\n    client_max_body_size 0;\n\
             location / {{\n      proxy_pass http://swiftgate;\n      proxy_http_version 1.1;\n\
             proxy_set_header Connection \"\";\n      proxy_set_header Host $http_host;\n\
             proxy_set_header X-Forwarded-For $remote_addr;\n      proxy_buffering off;\n      proxy_request_buffering off;\n\
             proxy_next_upstream error timeout http_502 http_503 non_idempotent;\n      proxy_next_upstream_tries 3;\n    }}\n  }}\n}}\n",
            dir = dir.display(),
        );
        let path = dir.join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let mut child = Command::new(NGINX)
            .arg("-c")
            .arg(&path)
            .arg("-p")
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until("nginx to listen", || {
            assert!(
                child.try_wait().unwrap().is_none(),
                "nginx exited: {}",
                std::fs::read_to_string(dir.join("nginx-error.log")).unwrap_or_default()
            );
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Nginx { child, port }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn tools_present() -> bool {
    common::tool_available(&redis_server(), "--version", "redis-server")
        && common::tool_available(NGINX, "-v", "nginx-light")
}

/// The emulator with a real clock and short Swift tokens; HubiC's app calls back to `public`.
async fn emulator(public: &str) -> (swiftgate::emulator::EmulatorHandle, AppSpec) {
    let app = AppSpec::random(&format!("{public}/callback"));
    let config = EmulatorConfig {
        apps: vec![app.clone()],
        users: vec![UserSpec { login: common::LOGIN.into(), password: Secret::new(common::PASSWORD) }],
        clock: Arc::new(SystemClock),
        swift_token_ttl: SWIFT_TTL,
        ..EmulatorConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    (Emulator::start(config, listener).await.unwrap(), app)
}

/// The configuration every instance shares: HubiC account `alice` for user alice, the
/// emulator's Keystone account `ks` for user bob, one token key file and one Redis.
fn shared_config(dir: &Path, public: &str, redis: &str, emu: &EmulatorHandle, app: &AppSpec, state: &Path) -> String {
    let key_file = dir.join("token.key");
    if !key_file.exists() {
        std::fs::write(&key_file, format!("{}\n", swiftgate::secret::random_hex(32))).unwrap();
    }
    let (project, _) = emu.emulator.keystone_project(common::LOGIN).unwrap();
    format!(
        "listen = \"127.0.0.1:0\"\npublic_url = \"{public}\"\nstate_dir = \"{state}\"\ndrain_timeout = 1\n\
         [proxy]\ntoken_key_file = \"{key}\"\n\
         [store]\nkind = \"redis\"\nurl = \"{redis}\"\nkey_prefix = \"test:\"\n\
         [hubic]\napi_base = \"{base}\"\nclient_id = \"{id}\"\nclient_secret = \"{secret}\"\n\
         [[account]]\nname = \"alice\"\nprovider = \"hubic\"\n\
         [[account]]\nname = \"ks\"\nprovider = \"keystone\"\nauth_url = \"{base}/v3\"\nusername = \"{login}\"\npassword = \"{password}\"\nproject = \"{project}\"\n\
         [[user]]\nname = \"alice\"\nkey_hash = \"{hash}\"\naccount = \"alice\"\n\
         [[user]]\nname = \"bob\"\nkey_hash = \"{hash}\"\naccount = \"ks\"\n",
        state = state.display(),
        key = key_file.display(),
        base = emu.base_url(),
        id = app.client_id,
        secret = app.client_secret.expose(),
        login = common::LOGIN,
        password = common::PASSWORD,
        hash = common::key_hash(),
    )
}

/// Instances named `names`, each with its own state directory under `dir`, sharing `redis`.
fn start_instances(
    names: [&'static str; 3],
    dir: &Path,
    public: &str,
    redis: &Redis,
    emu: &EmulatorHandle,
    app: &AppSpec,
) -> Vec<Instance> {
    names
        .into_iter()
        .map(|name| {
            let state = dir.join(format!("state-{name}"));
            std::fs::create_dir_all(&state).unwrap();
            let config = shared_config(dir, public, &redis.url(), emu, app, &state);
            Instance::start(name, dir, &config)
        })
        .collect()
}

/// The status of a HEAD of `path` with `token` on each of `urls` in turn (0: no answer).
async fn heads(http: &reqwest::Client, urls: &[String], path: &str, token: &str) -> Vec<u16> {
    let mut statuses = Vec::new();
    for url in urls {
        let resp = http.head(format!("{url}{path}")).header("x-auth-token", token).send().await;
        statuses.push(resp.map(|r| r.status().as_u16()).unwrap_or(0));
    }
    statuses
}

/// The upstream's token requests so far: HubiC's `/account/credentials` and Keystone's
/// password authentications.
fn renewals(emu: &EmulatorHandle) -> (u64, u64) {
    (emu.emulator.count("credentials"), emu.emulator.count("keystone_password"))
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// v1.0 auth as `user` at `base`: storage URL and token.
async fn login(http: &reqwest::Client, base: &str, user: &str) -> Result<(String, String), String> {
    let resp = http
        .get(format!("{base}/auth/v1.0"))
        .header("x-auth-user", user)
        .header("x-auth-key", common::KEY)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if resp.status() != 200 {
        return Err(format!("auth answered {}", resp.status()));
    }
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    Ok((header("x-storage-url"), header("x-auth-token")))
}

/// A browser registration started on `begin` whose HubiC callback lands on `finish`.
async fn register_across(http: &reqwest::Client, begin: &str, finish: &str, public: &str, emu: &str) -> (u16, String) {
    let resp = http
        .post(format!("{begin}/register"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("user=alice&key={}", common::KEY))
        .send()
        .await
        .unwrap();
    if resp.status() != 302 {
        let status = resp.status().as_u16();
        return (status, resp.text().await.unwrap());
    }
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    let cookie = header("set-cookie").split(';').next().unwrap().to_owned();
    let page = http.get(header("location")).send().await.unwrap().text().await.unwrap();
    let oauth = swiftgate::register::scrape_oauth_id(&page).expect("the consent page");
    let consent = http
        .post(format!("{emu}/oauth/auth/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!("oauth={oauth}&action=accepted&login=alice%40example.com&user_pwd={}", common::PASSWORD))
        .send()
        .await
        .unwrap();
    let callback = consent.headers()["location"].to_str().unwrap().replacen(public, finish, 1);
    let resp = http.get(callback).header("cookie", cookie).send().await.unwrap();
    (resp.status().as_u16(), resp.text().await.unwrap())
}

/// What the clients saw: requests made, and each failure with when it happened.
#[derive(Default)]
struct Tally {
    requests: AtomicU64,
    failures: Mutex<Vec<(Instant, String)>>,
}

impl Tally {
    fn fail(&self, what: String) {
        self.failures.lock().unwrap().push((Instant::now(), what));
    }
}

/// A client looping PUT, GET (checked) and HEAD through nginx as `user` until `stop`;
/// it authenticates again only on a 401, as Swift clients do.
async fn client(base: String, user: &'static str, n: usize, stop: Arc<AtomicBool>, tally: Arc<Tally>) {
    let http = http();
    let (mut url, mut token) = login(&http, &base, user).await.expect("first login");
    let container = format!("{url}/load{n}");
    let _ = http.put(&container).header("x-auth-token", &token).send().await;
    let body: Vec<u8> = (0..16 * 1024).map(|i| (i * 7 + n) as u8).collect();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let object = format!("{url}/load{n}/o{}", i % 8);
        let steps = [
            http.put(&object).header("x-auth-token", &token).body(body.clone()),
            http.get(&object).header("x-auth-token", &token),
            http.head(format!("{url}/load{n}")).header("x-auth-token", &token),
        ];
        for (step, request) in steps.into_iter().enumerate() {
            tally.requests.fetch_add(1, Ordering::Relaxed);
            match request.send().await {
                Ok(resp) if resp.status() == 401 => {
                    tally.fail(format!("{user} step {step}: 401"));
                    if let Ok(again) = login(&http, &base, user).await {
                        (url, token) = again;
                    }
                    break;
                }
                Ok(resp) if resp.status().is_success() => {
                    if step == 1 {
                        match resp.bytes().await {
                            Ok(got) if got[..] == body[..] => {}
                            Ok(got) => tally.fail(format!("{user} GET: {} bytes, not the object", got.len())),
                            Err(e) => tally.fail(format!("{user} GET body: {e}")),
                        }
                    }
                }
                Ok(resp) => {
                    let status = resp.status();
                    tally.fail(format!("{user} step {step}: {status} {}", resp.text().await.unwrap_or_default()));
                }
                Err(e) => tally.fail(format!("{user} step {step}: {e}")),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_behind_nginx_share_tokens_registrations_and_renewals() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let mut redis = Redis::start();
    let nginx_port = free_port();
    let public = format!("http://127.0.0.1:{nginx_port}");
    let (emu, app) = emulator(&public).await;
    let emu_url = emu.base_url().to_owned();
    let mut instances = start_instances(["a", "b", "c"], dir.path(), &public, &redis, &emu, &app);
    let ports: Vec<u16> = instances.iter().map(|i| i.port).collect();
    let nginx = Nginx::start(dir.path(), nginx_port, &ports);
    let http = http();
    let (a, b, c) = (instances[0].url(), instances[1].url(), instances[2].url());

    // A registration begun on A completes through HubiC's callback on B; C then serves it.
    let (status, page) = register_across(&http, &a, &b, &public, &emu_url).await;
    assert_eq!(status, 200, "{page}");
    let grant = redis.hget("test:grant:alice", "record").await.expect("the grant is in Redis");

    // A token A issued works on B and C, for both accounts. A and C take up the registration
    // B completed within a second (their watch of the store), each on its own tick.
    for user in ["alice", "bob"] {
        let deadline = Instant::now() + Duration::from_secs(5);
        let (storage, token) = loop {
            match login(&http, &a, user).await {
                Ok(answer) => break answer,
                Err(e) => assert!(Instant::now() < deadline, "{user} on A: {e}"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let path = storage.strip_prefix(&public).expect("storage URLs lead to nginx");
        for other in [&b, &c] {
            loop {
                let resp = http.get(format!("{other}{path}")).header("x-auth-token", &token).send().await.unwrap();
                if resp.status().is_success() {
                    break;
                }
                assert!(Instant::now() < deadline, "{user}'s token from A on {other}: {}", resp.status());
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    // Clients through nginx across many Swift token expiries, while C dies and comes back,
    // then Redis does.
    emu.emulator.reset_counters();
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let started = Instant::now();
    let clients: Vec<_> = (0..6)
        .map(|n| {
            let user = if n % 2 == 0 { "alice" } else { "bob" };
            tokio::spawn(client(nginx.url(), user, n, stop.clone(), tally.clone()))
        })
        .collect();
    let at = |secs: u64| tokio::time::sleep_until((started + Duration::from_secs(secs)).into());
    at(7).await;
    let killed = Instant::now();
    instances[2].kill();
    at(11).await;
    let logged_before_restart = instances[2].log_text().len();
    instances[2].spawn();
    at(17).await;
    let before_outage = renewals(&emu);
    redis.kill();
    // While Redis is away: a registration gets a clear 503, readiness says why and stays 200.
    let (status, page) = register_across(&http, &a, &b, &public, &emu_url).await;
    assert_eq!(status, 503, "{page}");
    assert!(page.contains("shared store cannot be reached"), "{page}");
    let ready = http.get(format!("{a}/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let text = ready.text().await.unwrap();
    assert!(text.contains(&format!("store {}: unreachable", redis.url())), "{text}");
    at(23).await;
    redis.restart();
    let after_outage = renewals(&emu);
    at(33).await;
    stop.store(true, Ordering::Relaxed);
    for client in clients {
        client.await.unwrap();
    }
    let elapsed = started.elapsed();

    // The upstream's token requests: about one per expiry while Redis is there, not one per
    // instance and expiry (reported, not bounded, while it is not: each instance renews alone).
    let lifetimes = |secs: f64| secs / SWIFT_TTL.as_secs_f64();
    let expiries = lifetimes(elapsed.as_secs_f64());
    let end = renewals(&emu);
    let counters = emu.emulator.counters();
    let failures = std::mem::take(&mut *tally.failures.lock().unwrap());
    let held = failures.iter().filter(|(t, _)| t.duration_since(killed) < Duration::from_secs(2)).count();
    let requests = tally.requests.load(Ordering::Relaxed);
    let windows = [
        ("before Redis died (C killed and restarted)", 0.0, 17.0, before_outage, true),
        (
            "while Redis was away",
            17.0,
            23.0,
            (after_outage.0 - before_outage.0, after_outage.1 - before_outage.1),
            false,
        ),
        ("after Redis came back", 23.0, elapsed.as_secs_f64(), (end.0 - after_outage.0, end.1 - after_outage.1), true),
    ];
    eprintln!(
        "{requests} requests in {:.1} s ({expiries:.1} token lifetimes), 3 instances; client errors: {} ({held} within 2 s of the kill)",
        elapsed.as_secs_f64(),
        failures.len()
    );
    for (what, from, to, (hubic, keystone), _) in windows {
        eprintln!(
            "  upstream token requests {what}, {from:.0}-{to:.0} s ({:.1} lifetimes): HubiC {hubic}, Keystone {keystone}",
            lifetimes(to - from)
        );
    }
    eprintln!("  emulator counters: {counters:?}");
    for (t, what) in failures.iter() {
        eprintln!("  +{:.1} s: {what}", t.duration_since(started).as_secs_f64());
    }
    assert!(requests > 300, "the clients ran: {requests}");
    assert_eq!(failures.len() - held, 0, "client errors outside the killed instance's connections");
    // With the store up, about one renewal per lifetime per account (two more for the
    // window's edges and HubiC's last-moment token), where three instances renewing each on
    // their own would make three per lifetime.
    for (what, from, to, (hubic, keystone), shared) in windows {
        let bound = lifetimes(to - from).ceil() as u64 + 2;
        for (account, count) in [("HubiC", hubic), ("Keystone", keystone)] {
            if shared {
                assert!(count <= bound, "{account} {what}: {count} renewals, more than {bound}");
            }
        }
    }
    assert!(end.0 >= expiries.floor() as u64 - 1 && end.1 >= expiries.floor() as u64 - 1, "renewals happened");
    let restarted = instances[2].log_text()[logged_before_restart..].to_owned();
    assert!(restarted.contains("upstream credentials taken from another instance"), "C started warm: {restarted}");

    // No grant lost: the registration survived Redis' restart, and every instance renews with it.
    assert_eq!(redis.hget("test:grant:alice", "record").await.as_deref(), Some(&grant[..]));
    tokio::time::sleep(SWIFT_TTL).await;
    for instance in &instances {
        let (storage, token) = login(&http, &instance.url(), "alice").await.unwrap();
        let path = storage.strip_prefix(&public).unwrap();
        let resp = http.get(format!("{}{path}", instance.url())).header("x-auth-token", &token).send().await.unwrap();
        assert!(resp.status().is_success(), "{} after the run: {}", instance.name, resp.status());
    }
    let alone = instances.iter().filter(|i| i.log_text().contains("renewing on this instance alone")).count();
    assert!(alone > 0, "the instances renewed alone while Redis was away, and said so");
    drop(nginx);
}

/// A renewal that fails is shared like one that succeeds. Three instances that all need the
/// account's credentials while its Keystone answers 503 ask it about as often as one instance
/// would (each failure is held for the others), and all recover with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_failed_renewal_is_shared_not_repeated_by_each_instance() {
    if !tools_present() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let redis = Redis::start();
    // Clients reach the instances directly; the public URL only names them in storage URLs.
    let public = "http://gateway.invalid".to_owned();
    let (emu, app) = emulator(&public).await;
    let instances = start_instances(["fa", "fb", "fc"], dir.path(), &public, &redis, &emu, &app);
    let http = http();
    let (storage, token) = login(&http, &instances[0].url(), "bob").await.expect("bob logs in");
    let path = storage.strip_prefix(&public).expect("storage URLs name the public URL").to_owned();
    let urls: Vec<String> = instances.iter().map(Instance::url).collect();
    let statuses = || heads(&http, &urls, &path, &token);
    let served = |got: &[u16]| got.iter().all(|s| (200..300).contains(s));
    let first = statuses().await;
    assert!(served(&first), "bob's token from the first instance serves on all three: {first:?}");

    // Keystone goes down, and upstream refuses the Swift tokens the instances hold: every
    // instance needs a renewal at once, and keeps needing one.
    emu.emulator.fail_next(503, 100_000, Some("keystone_password"));
    let before = renewals(&emu).1;
    emu.emulator.revoke(false, true, false);
    let policy = swiftgate::tokens::RenewPolicy::default();
    let window = Duration::from_secs(6);
    let started = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut answered = 0u64;
    while started.elapsed() < window {
        ticker.tick().await;
        let got = statuses().await;
        assert!(got.iter().all(|s| (400..600).contains(s)), "nothing is served while Keystone is down: {got:?}");
        answered += got.len() as u64;
    }
    let asked = renewals(&emu).1 - before;
    // One instance alone asks at most `attempts` times per hold, plus the window's ragged end;
    // three renewing alone would ask about three times that.
    let holds = window.as_millis().div_ceil(policy.failure_hold.as_millis()) as u64;
    let alone = u64::from(policy.attempts) * (holds + 1);
    eprintln!("Keystone down for {window:?}: {answered} requests on 3 instances, {asked} token requests (one instance alone: at most {alone})");
    assert!(asked >= 1, "the provider was asked");
    assert!(asked <= alone, "{asked} token requests in {window:?}: more than one instance alone would make ({alone})");
    let answered_shared = instances.iter().filter(|i| i.log_text().contains("its failure is answered")).count();
    assert!(answered_shared > 0, "an instance answered another's failure");

    // Keystone is back: every instance serves again within a hold, and they renew once.
    emu.emulator.clear_faults();
    let back = renewals(&emu).1;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let got = statuses().await;
        if served(&got) {
            break;
        }
        assert!(Instant::now() < deadline, "the instances serve again once Keystone is back: {got:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let recovered = renewals(&emu).1 - back;
    assert!(recovered <= 2, "{recovered} token requests to recover: one renewal serves every instance");
}

#[tokio::test]
async fn a_grant_written_while_redis_is_down_is_spooled_then_written() {
    if !tools_present() {
        return;
    }
    use swiftgate::store::{FileStore, Grant, GrantStore, RedisStore};
    let mut redis = Redis::start();
    let state = tempfile::tempdir().unwrap();
    let config = swiftgate::config::StoreConfig {
        kind: swiftgate::config::StoreKind::Redis,
        url: Some(Secret::new(redis.url())),
        key_prefix: "spool:".into(),
        ..swiftgate::config::StoreConfig::default()
    };
    let grant = |token: &str, at: u64| Grant {
        refresh_token: Secret::new(token),
        scope: "credentials.r".into(),
        registered_at: at,
    };
    let store = RedisStore::open(&config, state.path()).unwrap();
    store.save("alice", &grant("first", 10)).await.unwrap();
    // An older grant does not overwrite a newer one.
    assert!(matches!(store.save("alice", &grant("older", 5)).await, Err(swiftgate::store::StoreError::Superseded)));
    redis.kill();
    store.save("alice", &grant("rotated", 20)).await.unwrap();
    assert_eq!(store.load("alice").await.unwrap(), Some(grant("rotated", 20)), "served from the spool meanwhile");
    assert_eq!(store.unwritten(), vec!["alice".to_owned()]);
    // The spool is a file: a restart of the instance keeps it.
    drop(store);
    let store = RedisStore::open(&config, state.path()).unwrap();
    assert_eq!(store.unwritten(), vec!["alice".to_owned()]);
    redis.restart();
    let deadline = Instant::now() + DEADLINE;
    while store.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store answers again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.flush().await;
    assert!(store.unwritten().is_empty());
    assert!(FileStore::open(&state.path().join("redis-spool")).unwrap().accounts().unwrap().is_empty());
    let other = RedisStore::open(&config, tempfile::tempdir().unwrap().path()).unwrap();
    assert_eq!(other.load("alice").await.unwrap(), Some(grant("rotated", 20)), "another instance reads it");
}

#[tokio::test]
async fn store_copy_moves_file_grants_to_redis_and_back() {
    if !tools_present() {
        return;
    }
    use swiftgate::store::{FileStore, Grant, GrantStore, RedisStore};
    let redis = Redis::start();
    let dir = tempfile::tempdir().unwrap();
    let files = FileStore::open(dir.path()).unwrap();
    let grant =
        |token: &str| Grant { refresh_token: Secret::new(token), scope: "credentials.r".into(), registered_at: 7 };
    files.save("alice", &grant("r-alice")).await.unwrap();
    files.save("carol", &grant("r-carol")).await.unwrap();
    let config = dir.path().join("swiftgate.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{}\"\n[store]\nkind = \"redis\"\nurl = \"{}\"\n\
             [hubic]\napi_base = \"http://127.0.0.1:9\"\nclient_id = \"api_hubic_x\"\nclient_secret = \"s\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{}\"\n",
            dir.path().display(),
            redis.url(),
            common::key_hash()
        ),
    )
    .unwrap();
    let copy = |from: &str, to: &str| {
        let out = Command::new(BIN)
            .args(["store-copy", "--config"])
            .arg(&config)
            .args(["--from", from, "--to", to])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(!text.contains("r-alice"), "no refresh token printed: {text}");
        text
    };
    assert!(copy("file", "redis").contains("2 copied, 0 kept"));
    let store_config = swiftgate::config::Config::load(&config, |_| None).unwrap().store;
    let shared = RedisStore::open(&store_config, tempfile::tempdir().unwrap().path()).unwrap();
    assert_eq!(shared.load("carol").await.unwrap(), Some(grant("r-carol")));
    // Back to files, into an empty state directory: the same grants.
    std::fs::remove_dir_all(dir.path().join("accounts")).unwrap();
    assert!(copy("redis", "file").contains("2 copied, 0 kept"));
    assert_eq!(FileStore::open(dir.path()).unwrap().load("alice").await.unwrap(), Some(grant("r-alice")));
}
