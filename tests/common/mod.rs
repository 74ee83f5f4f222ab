//! Shared harness for the integration tests: an in-process emulator and gateway on port 0,
//! sharing one manual clock, with state in a temp dir. Everything started is stopped on drop.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use swiftgate::clock::{Clock, ManualClock};
use swiftgate::config::{AccountConfig, Config, Mode};
use swiftgate::demo::{browser_register, single_user_config};
use swiftgate::emulator::{AppSpec, Emulator, EmulatorConfig, EmulatorHandle, UserSpec};
use swiftgate::gateway::Gateway;
use swiftgate::secret::Secret;
use swiftgate::server::{self, ServeOptions};
use swiftgate::tokens::RenewPolicy;

pub const USER: &str = "alice";
pub const KEY: &str = "alice-key";
pub const LOGIN: &str = "alice@example.com";
pub const PASSWORD: &str = "hubic-password";

/// The engine the tests run the gateway with: the fast one unless `SWIFTGATE_FAST_PATH=false`
/// (`tests/all.sh` runs the proxy suites once more that way, so that each holds for both).
pub fn fast_engine() -> bool {
    std::env::var("SWIFTGATE_FAST_PATH").map_or(true, |v| v != "false" && v != "0")
}

/// True when `program` runs (`program version_arg` succeeds); when it does not, a failure if
/// the suite requires the real tools (tests/all.sh sets SWIFTGATE_REQUIRE_CLIENTS), else a
/// visible skip.
pub fn tool_available(program: &str, version_arg: &str, package: &str) -> bool {
    let found = std::process::Command::new(program)
        .arg(version_arg)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        assert!(
            std::env::var_os("SWIFTGATE_REQUIRE_CLIENTS").is_none(),
            "`{program}` is required (tests/all.sh installs {package})"
        );
        eprintln!("SKIPPED: `{program}` is not installed; `bash tests/all.sh` installs {package}");
    }
    found
}

/// The first line a child started with a piped stdout prints (a URL), trimmed; empty if it
/// exits without one. Panics if none comes within `within`.
pub fn first_line(child: &mut std::process::Child, within: Duration) -> String {
    use std::io::BufRead;
    let stdout = child.stdout.take().expect("stdout piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    rx.recv_timeout(within).expect("the child prints a line in time").trim().to_owned()
}

/// An argon2 hash of KEY, computed once per test binary.
pub fn key_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| swiftgate::front::hash_key(KEY).expect("hash"))
}

pub mod echo;
pub mod faulty;
pub mod pattern;
pub mod raw;

pub struct RunningGateway {
    pub gateway: Arc<Gateway>,
    pub url: String,
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl RunningGateway {
    pub async fn stop(mut self) {
        self.halt().await;
    }

    /// Stops serving and waits until the open connections have finished (the drain).
    pub async fn halt(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }

    /// Requests the proxy's fast path has answered.
    pub fn fast_answers(&self) -> u64 {
        self.gateway.proxy().map_or(0, |p| p.fast_answers())
    }

    /// Of those, the answers whose body went from socket to socket by `splice(2)`.
    pub fn spliced_answers(&self) -> u64 {
        self.gateway.proxy().map_or(0, |p| p.spliced_answers())
    }
}

impl Drop for RunningGateway {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

pub struct Stack {
    pub emulator: EmulatorHandle,
    pub gw: RunningGateway,
    pub clock: Arc<ManualClock>,
    pub shared_clock: Arc<dyn Clock>,
    pub config: Config,
    pub app: AppSpec,
    pub http: reqwest::Client,
    pub state: tempfile::TempDir,
}

pub async fn start_gateway(
    config: &Config,
    clock: Arc<dyn Clock>,
    listener: tokio::net::TcpListener,
) -> RunningGateway {
    let addr = listener.local_addr().unwrap();
    let policy = RenewPolicy { backoff: Duration::from_millis(10), ..RenewPolicy::default() };
    let gateway = Gateway::new(config, clock, policy).expect("gateway builds");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, gateway.clone(), ServeOptions::default(), async {
        let _ = rx.await;
    }));
    RunningGateway { gateway, url: format!("http://{addr}"), addr, stop: Some(tx), task }
}

/// Serves `gateway` on a listener of its own with `options`: its address, the sender that
/// stops it, and the task to await after.
pub async fn serve_gateway(
    gateway: Arc<Gateway>,
    options: ServeOptions,
) -> (SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(server::run(listener, gateway, options, async {
        let _ = rx.await;
    }));
    (addr, tx, task)
}

impl Stack {
    pub async fn start() -> Stack {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut EmulatorConfig)) -> Stack {
        Self::start_mode(Mode::Redirect, tweak).await
    }

    pub async fn start_mode(mode: Mode, tweak: impl FnOnce(&mut EmulatorConfig)) -> Stack {
        Self::start_custom(mode, tweak, |_| {}).await
    }

    /// A proxy-mode stack whose emulator hands out the Swift at `origin` (v1.0 auth at
    /// `<origin>/auth/v1.0`, user `u`, key `k`), registered.
    pub async fn in_front_of(origin: &str) -> Stack {
        Self::in_front_of_with(origin, |_| {}).await
    }

    /// [`Stack::in_front_of`], with the gateway's configuration changed by `tweak_config`.
    pub async fn in_front_of_with(origin: &str, tweak_config: impl FnOnce(&mut Config)) -> Stack {
        let auth_url = format!("{origin}/auth/v1.0");
        let stack = Self::start_custom(
            Mode::Proxy,
            |c| {
                c.storage =
                    swiftgate::emulator::StorageConfig::External { auth_url, user: "u".into(), key: Secret::new("k") };
            },
            tweak_config,
        )
        .await;
        stack.register().await;
        stack
    }

    pub async fn start_custom(
        mode: Mode,
        tweak: impl FnOnce(&mut EmulatorConfig),
        tweak_config: impl FnOnce(&mut Config),
    ) -> Stack {
        let clock = Arc::new(ManualClock::new(SystemTime::now()));
        let gw_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gw_addr = gw_listener.local_addr().unwrap();
        let app = AppSpec::random(&format!("http://{gw_addr}/callback"));
        let mut config = EmulatorConfig {
            apps: vec![app.clone()],
            users: vec![UserSpec { login: LOGIN.into(), password: Secret::new(PASSWORD) }],
            clock: clock.clone(),
            ..EmulatorConfig::default()
        };
        tweak(&mut config);
        // The gateway reads the emulator's clock: manual unless the test asked for real time.
        let shared_clock = config.clock.clone();
        let emu_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = Emulator::start(config, emu_listener).await.unwrap();
        let state = tempfile::tempdir().unwrap();
        let mut config = single_user_config(state.path(), gw_addr, emulator.base_url(), &app, USER, key_hash(), mode);
        config.proxy.fast_path = fast_engine();
        tweak_config(&mut config);
        let gw = start_gateway(&config, shared_clock.clone(), gw_listener).await;
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Stack { emulator, gw, clock, shared_clock, config, app, http, state }
    }

    /// A stack whose one user reaches the account `account` builds from the running emulator
    /// (a Keystone, Swift v1 or static one): no `[hubic]` table, nothing to register.
    pub async fn with_account(
        mode: Mode,
        tweak: impl FnOnce(&mut EmulatorConfig),
        account: impl FnOnce(&Emulator) -> AccountConfig,
    ) -> Stack {
        Self::start_custom(mode, tweak, |_| {})
            .await
            .rebuilt(|config, emulator| {
                let account = account(emulator);
                config.hubic = None;
                config.users[0].account = Some(account.name().to_owned());
                config.accounts = vec![account];
            })
            .await
    }

    /// This stack with its gateway's configuration changed by `change` and the gateway started
    /// again on the same address.
    pub async fn rebuilt(mut self, change: impl FnOnce(&mut Config, &Emulator)) -> Stack {
        change(&mut self.config, &self.emulator.emulator);
        self.config.validate().expect("the changed configuration is valid");
        self.restart_gateway().await;
        self
    }

    /// A proxy-mode stack whose one account, `name`, is a `swift-v1` one on the Swift at
    /// `origin` (user `u`, key `k`), on the fast engine or hyper's, and the user's storage URL
    /// and gateway token.
    pub async fn swift_v1(origin: &str, name: &str, fast_path: bool) -> (Stack, String, String) {
        let account = format!(
            "name = \"{name}\"\nprovider = \"swift-v1\"\nauth_url = \"{origin}/auth/v1.0\"\nuser = \"u\"\nkey = \"k\"\n"
        );
        let stack = Stack::with_account(Mode::Proxy, |_| {}, |_| toml::from_str::<AccountConfig>(&account).unwrap())
            .await
            .rebuilt(|config, _| config.proxy.fast_path = fast_path)
            .await;
        let resp = stack.auth(USER, KEY).await;
        assert_eq!(resp.status(), 200);
        let url = header(&resp, "x-storage-url").to_owned();
        let token = header(&resp, "x-auth-token").to_owned();
        (stack, url, token)
    }

    pub fn emu(&self) -> &Emulator {
        &self.emulator.emulator
    }

    /// Registers USER through the browser flow; panics unless it ends on the success page.
    pub async fn register(&self) {
        let (status, page) = browser_register(&self.gw.url, USER, KEY, LOGIN, PASSWORD).await.unwrap();
        assert_eq!(status, 200, "{page}");
        assert!(page.contains("Registration complete"), "{page}");
    }

    pub async fn auth(&self, user: &str, key: &str) -> reqwest::Response {
        self.http
            .get(format!("{}/auth/v1.0", self.gw.url))
            .header("X-Auth-User", user)
            .header("X-Auth-Key", key)
            .send()
            .await
            .unwrap()
    }

    /// Authenticates USER and returns the storage URL and token the client is handed.
    pub async fn storage_login(&self) -> (String, String) {
        let resp = self.auth(USER, KEY).await;
        assert_eq!(resp.status(), 200, "v1.0 auth");
        (header(&resp, "x-storage-url").to_owned(), header(&resp, "x-auth-token").to_owned())
    }

    /// Stops the gateway and starts a new one on the same address, state dir and clock.
    pub async fn restart_gateway(&mut self) {
        let addr = self.gw.addr;
        let placeholder = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let old =
            std::mem::replace(&mut self.gw, start_gateway(&self.config, self.shared_clock.clone(), placeholder).await);
        old.stop().await;
        let fresh = start_gateway(&self.config, self.shared_clock.clone(), rebind(addr).await).await;
        std::mem::replace(&mut self.gw, fresh).stop().await;
    }
}

/// Waits, with a deadline, until no renewal of any account is under way.
pub async fn until_idle(stack: &Stack) {
    let tokens = stack.gw.gateway.tokens();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokens.accounts().any(|a| tokens.is_renewing(a)) {
        assert!(tokio::time::Instant::now() < deadline, "a renewal did not end within 30 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Binds `addr` again, polling with a deadline while the old listener closes.
async fn rebind(addr: SocketAddr) -> tokio::net::TcpListener {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        match tokio::net::TcpListener::bind(addr).await {
            Ok(l) => return l,
            Err(e) if tokio::time::Instant::now() < deadline => {
                let _ = e;
                tokio::task::yield_now().await;
            }
            Err(e) => panic!("cannot rebind {addr}: {e}"),
        }
    }
}

/// The head of an HTTP/1.1 upload to `path` of `len` bytes, with the gateway token `token`.
pub fn put_head(path: &str, token: &str, len: u64) -> String {
    format!("PUT {path} HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\nContent-Length: {len}\r\n\r\n")
}

pub fn header<'a>(resp: &'a reqwest::Response, name: &str) -> &'a str {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// A test server on 127.0.0.1 port 0, stopped when dropped.
pub struct Served {
    pub origin: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// Serves the handler `make` builds from the server's origin (`http://127.0.0.1:port`).
pub async fn serve<H: server::Handler>(make: impl FnOnce(String) -> H) -> Served {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(server::run(listener, Arc::new(make(origin.clone())), ServeOptions::default(), async {
        let _ = rx.await;
    }));
    Served { origin, stop: Some(tx) }
}

/// A test upstream's v1.0 auth answer: storage URL `<origin>/v1/<account>` and `token`.
pub fn v1_auth_answer(origin: &str, account: &str, token: &str) -> http::Response<swiftgate::body::Body> {
    let mut resp = swiftgate::body::status(http::StatusCode::OK);
    let h = resp.headers_mut();
    h.insert("x-storage-url", format!("{origin}/v1/{account}").parse().unwrap());
    h.insert("x-auth-token", token.parse().unwrap());
    h.insert("x-auth-token-expires", "86400".parse().unwrap());
    resp
}
