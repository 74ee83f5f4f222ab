//! A faithful emulator of HubiC's API (api.hubic.com as real clients saw it) with a built-in
//! Swift store or an external Swift behind it, plus test knobs.
//!
//! The gateway never imports this module; `demo`, `emulate` and the tests wire the two
//! together. Behaviour follows the emulator checklist of `hubic-api.md`: exact JSON key orders,
//! HubiC's error codes, the scrapeable consent page, Paris-time `expires`.

mod admin;
mod api;
mod keystone;
mod oauth;
pub mod storage;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::body::{self, Body};
use crate::clock::{Clock, SystemClock};
use crate::secret::{random_alnum, random_hex, Secret};
use crate::server::{self, Handler, ServeOptions};
use storage::SwiftStore;

/// Where the Swift storage handed out by `credentials` lives.
#[derive(Clone, Debug)]
pub enum StorageConfig {
    /// The built-in store, on this server under `/v1/`, with object files in `data_dir`
    /// (a temporary directory when `None`).
    BuiltIn {
        /// Where object bytes are kept.
        data_dir: Option<PathBuf>,
        /// Largest single object (Swift's `max_file_size`).
        max_file_size: u64,
    },
    /// A real Swift reached by v1.0 auth (tempauth); its tokens are handed out.
    External {
        /// The v1.0 auth URL, e.g. `http://127.0.0.1:8080/auth/v1.0`.
        auth_url: String,
        /// `X-Auth-User`.
        user: String,
        /// `X-Auth-Key`.
        key: Secret,
    },
}

/// A registered OAuth2 application.
#[derive(Clone, Debug)]
pub struct AppSpec {
    /// `api_hubic_…`.
    pub client_id: String,
    /// 64 alphanumerics in HubiC; anything here.
    pub client_secret: Secret,
    /// The registered redirect URL ("redirection domain").
    pub redirect_uri: String,
}

/// A HubiC user.
#[derive(Clone, Debug)]
pub struct UserSpec {
    /// The e-mail used to log in.
    pub login: String,
    /// The password.
    pub password: Secret,
}

/// The emulator's settings.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// Access-token lifetime (HubiC: 21600 s).
    pub access_token_ttl: Duration,
    /// Swift-token lifetime (HubiC: about 24 h).
    pub swift_token_ttl: Duration,
    /// Authorization-code lifetime.
    pub code_ttl: Duration,
    /// Answer 509 to a consent POST that comes sooner than this after the GET.
    pub min_post_delay: Option<Duration>,
    /// Storage behind `credentials`.
    pub storage: StorageConfig,
    /// Quota reported by `usage`.
    pub quota: u64,
    /// Apps registered at start.
    pub apps: Vec<AppSpec>,
    /// Users existing at start.
    pub users: Vec<UserSpec>,
    /// The clock tokens expire by.
    pub clock: Arc<dyn Clock>,
    /// The regions Keystone's catalog lists the built-in storage in (at least one): the first
    /// at `/v1/`, each other under `/<region>/v1/`.
    pub keystone_regions: Vec<String>,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            access_token_ttl: Duration::from_secs(21600),
            swift_token_ttl: Duration::from_secs(86400),
            code_ttl: Duration::from_secs(600),
            min_post_delay: None,
            storage: StorageConfig::BuiltIn { data_dir: None, max_file_size: 5 * 1024 * 1024 * 1024 + 2 },
            quota: 10 * 1024u64.pow(4),
            apps: Vec::new(),
            users: Vec::new(),
            clock: Arc::new(SystemClock),
            keystone_regions: vec!["RegionOne".to_owned()],
        }
    }
}

impl AppSpec {
    /// A new app with HubiC-shaped random credentials.
    pub fn random(redirect_uri: &str) -> Self {
        AppSpec {
            client_id: format!("api_hubic_{}", random_alnum(32)),
            client_secret: Secret::new(random_alnum(64)),
            redirect_uri: redirect_uri.to_owned(),
        }
    }
}

struct UserRec {
    password: Secret,
    swift_account: String,
    created: SystemTime,
}

struct PendingGrant {
    client_id: String,
    redirect_uri: String,
    scope: String,
    state: Option<String>,
    shown: SystemTime,
}

struct CodeRec {
    client_id: String,
    login: String,
    redirect_uri: String,
    scope: String,
    expires: SystemTime,
}

struct RefreshRec {
    client_id: String,
    login: String,
    scope: String,
}

struct AccessRec {
    login: String,
    scope: String,
    expires: SystemTime,
    revoked: bool,
}

struct SwiftTokenRec {
    account: String,
    expires: SystemTime,
    revoked: bool,
}

struct Fault {
    status: u16,
    remaining: u32,
    endpoint: Option<String>,
}

struct ExternalToken {
    token: String,
    url: String,
    expires: SystemTime,
}

#[derive(Default)]
struct Inner {
    apps: HashMap<String, AppSpec>,
    users: BTreeMap<String, UserRec>,
    pending: HashMap<String, PendingGrant>,
    codes: HashMap<String, CodeRec>,
    refresh: HashMap<String, RefreshRec>,
    access: HashMap<String, AccessRec>,
    swift_current: HashMap<String, String>,
    swift_tokens: HashMap<String, SwiftTokenRec>,
    external: Option<ExternalToken>,
    faults: Vec<Fault>,
    counters: BTreeMap<String, u64>,
    /// Application credential id → its user's login and its secret.
    app_creds: HashMap<String, (String, Secret)>,
    access_ttl: Duration,
    swift_ttl: Duration,
    min_post_delay: Option<Duration>,
}

/// The emulator's state and request handler.
pub struct Emulator {
    inner: Mutex<Inner>,
    config: EmulatorConfig,
    base_url: String,
    store: Option<SwiftStore>,
    http: reqwest::Client,
    /// Removed when the emulator is dropped.
    _tempdir: Option<crate::scratch::ScratchDir>,
}

impl std::fmt::Debug for Emulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emulator").field("base_url", &self.base_url).finish()
    }
}

/// A running emulator: its state, base URL and a way to stop it.
pub struct EmulatorHandle {
    /// The emulator, for assertions and knobs.
    pub emulator: Arc<Emulator>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<()>,
}

impl EmulatorHandle {
    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.emulator.base_url
    }

    /// Stops serving and waits until the server has shut down.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

impl Emulator {
    /// Starts serving on `listener` (HTTP/1.1 only, like HubiC's nginx front end).
    pub async fn start(config: EmulatorConfig, listener: TcpListener) -> std::io::Result<EmulatorHandle> {
        let addr = listener.local_addr()?;
        let emulator = Arc::new(Emulator::new(config, addr)?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let options = ServeOptions { http1_only: true, ..ServeOptions::default() };
        let task = tokio::spawn(server::run(listener, emulator.clone(), options, async {
            let _ = rx.await;
        }));
        Ok(EmulatorHandle { emulator, shutdown: Some(tx), task })
    }

    fn new(config: EmulatorConfig, addr: SocketAddr) -> std::io::Result<Emulator> {
        let base_url = format!("http://{addr}");
        let (store, tempdir) = match &config.storage {
            StorageConfig::BuiltIn { data_dir, max_file_size } => {
                let (dir, temp) = match data_dir {
                    Some(d) => {
                        std::fs::create_dir_all(d)?;
                        (d.clone(), None)
                    }
                    None => {
                        let t = crate::scratch::ScratchDir::new("swiftgate-emulator")?;
                        (t.path().to_owned(), Some(t))
                    }
                };
                (Some(SwiftStore::new(dir, *max_file_size)), temp)
            }
            StorageConfig::External { .. } => (None, None),
        };
        let http =
            reqwest::Client::builder().timeout(Duration::from_secs(30)).build().map_err(std::io::Error::other)?;
        let inner = Inner {
            access_ttl: config.access_token_ttl,
            swift_ttl: config.swift_token_ttl,
            min_post_delay: config.min_post_delay,
            ..Inner::default()
        };
        let emulator = Emulator { inner: Mutex::new(inner), config, base_url, store, http, _tempdir: tempdir };
        for app in emulator.config.apps.clone() {
            emulator.add_app(app);
        }
        for user in emulator.config.users.clone() {
            emulator.add_user(user);
        }
        Ok(emulator)
    }

    /// Short critical sections only; never held across an await.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn now(&self) -> SystemTime {
        self.config.clock.now()
    }

    /// `http://127.0.0.1:<port>`.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// Registers an application.
    pub fn add_app(&self, app: AppSpec) {
        self.lock().apps.insert(app.client_id.clone(), app);
    }

    /// Creates a user (or replaces its password); returns its Swift account name.
    pub fn add_user(&self, user: UserSpec) -> String {
        let now = self.now();
        let mut inner = self.lock();
        let account = match inner.users.get_mut(&user.login) {
            Some(existing) => {
                existing.password = user.password;
                existing.swift_account.clone()
            }
            None => {
                let account = format!("AUTH_{}", random_hex(16));
                inner.users.insert(
                    user.login,
                    UserRec { password: user.password, swift_account: account.clone(), created: now },
                );
                account
            }
        };
        drop(inner);
        if let Some(store) = &self.store {
            store.create_account(&account);
        }
        account
    }

    /// How many times each endpoint was called.
    pub fn counters(&self) -> BTreeMap<String, u64> {
        self.lock().counters.clone()
    }

    /// One endpoint's call count.
    pub fn count(&self, endpoint: &str) -> u64 {
        self.lock().counters.get(endpoint).copied().unwrap_or(0)
    }

    /// Sets all counters back to zero.
    pub fn reset_counters(&self) {
        self.lock().counters.clear();
    }

    /// Changes token lifetimes for tokens issued from now on.
    pub fn set_ttls(&self, access: Option<Duration>, swift: Option<Duration>) {
        let mut inner = self.lock();
        if let Some(a) = access {
            inner.access_ttl = a;
        }
        if let Some(s) = swift {
            inner.swift_ttl = s;
        }
    }

    /// Revokes every access token, Swift token and/or refresh token issued so far.
    pub fn revoke(&self, access: bool, swift: bool, refresh: bool) {
        let mut inner = self.lock();
        if access {
            inner.access.values_mut().for_each(|a| a.revoked = true);
        }
        if swift {
            inner.swift_tokens.values_mut().for_each(|t| t.revoked = true);
            inner.swift_current.clear();
            inner.external = None;
        }
        if refresh {
            inner.refresh.clear();
        }
    }

    /// Answers the next `count` calls to `endpoint` (any endpoint when `None`) with `status`.
    pub fn fail_next(&self, status: u16, count: u32, endpoint: Option<&str>) {
        self.lock().faults.push(Fault { status, remaining: count, endpoint: endpoint.map(str::to_owned) });
    }

    /// Forgets every fault still pending from [`fail_next`](Self::fail_next).
    pub fn clear_faults(&self) {
        self.lock().faults.clear();
    }

    /// The Swift account of `login`.
    pub fn swift_account(&self, login: &str) -> Option<String> {
        self.lock().users.get(login).map(|u| u.swift_account.clone())
    }

    fn count_call(&self, endpoint: &str) -> Option<Response<Body>> {
        let mut inner = self.lock();
        *inner.counters.entry(endpoint.to_owned()).or_default() += 1;
        let class = endpoint.split('_').next().unwrap_or(endpoint);
        let fault = inner
            .faults
            .iter_mut()
            .find(|f| f.remaining > 0 && f.endpoint.as_deref().is_none_or(|e| e == endpoint || e == class))?;
        fault.remaining -= 1;
        let status = fault.status;
        inner.faults.retain(|f| f.remaining > 0);
        drop(inner);
        Some(fault_response(status, class))
    }

    async fn dispatch(&self, req: Request<Incoming>) -> Response<Body> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let trimmed = if path.len() > 1 { path.trim_end_matches('/') } else { path.as_str() };
        if let Some(rest) = path.strip_prefix("/v1/").or_else(|| self.region_path(&path)?.strip_prefix("/v1/")) {
            let rest = rest.to_owned();
            return self.storage(req, &rest).await;
        }
        if let Some(rest) = path.strip_prefix("/_admin/") {
            return admin::handle(self, req, rest.trim_end_matches('/')).await;
        }
        match (&method, trimmed) {
            (&Method::GET, "/oauth") if !path.ends_with('/') => {
                let mut resp = body::html(StatusCode::MOVED_PERMANENTLY, "<html><head><title>301 Moved Permanently</title></head><body><h1>301 Moved Permanently</h1></body></html>");
                if let Ok(v) = HeaderValue::from_str(&format!("{}/oauth/", self.base_url)) {
                    resp.headers_mut().insert(header::LOCATION, v);
                }
                resp
            }
            (&Method::GET, "/oauth/auth") => oauth::authorize_page(self, req.uri().query().unwrap_or("")),
            (&Method::POST, "/oauth/auth") => oauth::authorize_post(self, req).await,
            (&Method::POST, "/oauth/token") => oauth::token(self, req).await,
            (&Method::GET, "/1.0/account/credentials") => api::credentials(self, &req).await,
            (&Method::GET, "/1.0/account/usage") => api::usage(self, &req),
            (&Method::GET, "/1.0/account") => api::account(self, &req),
            (&Method::POST, "/v3/auth/tokens") => keystone::tokens(self, req).await,
            (&Method::GET, "/auth/v1.0") => keystone::v1_auth(self, &req),
            (&Method::GET, "/info") => match &self.store {
                Some(store) => body::json(StatusCode::OK, store.info_json()),
                None => body::text(StatusCode::NOT_FOUND, "no built-in storage\n"),
            },
            _ => body::html(StatusCode::NOT_FOUND, "<html><body><h1>404 Not Found</h1></body></html>"),
        }
    }

    async fn storage(&self, req: Request<Incoming>, rest: &str) -> Response<Body> {
        let Some(store) = &self.store else {
            return body::text(StatusCode::NOT_FOUND, "no built-in storage\n");
        };
        if let Some(fault) = self.count_call("storage") {
            return fault;
        }
        let (account, tail) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let token = req
            .headers()
            .get("x-auth-token")
            .or_else(|| req.headers().get("x-storage-token"))
            .and_then(|v| v.to_str().ok());
        let now = self.now();
        let valid = token.is_some_and(|t| {
            self.lock()
                .swift_tokens
                .get(t)
                .is_some_and(|rec| !rec.revoked && rec.expires > now && rec.account == account)
        });
        if !valid {
            let mut resp = body::html(
                StatusCode::UNAUTHORIZED,
                "<html><h1>Unauthorized</h1><p>This server could not verify that you are authorized to access the document you requested.</p></html>",
            );
            if let Ok(v) = HeaderValue::from_str(&format!("Swift realm=\"{account}\"")) {
                resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
            }
            return resp;
        }
        let query = req.uri().query().map(str::to_owned);
        let account = account.to_owned();
        let tail = tail.to_owned();
        store.handle(req, &account, &tail, query.as_deref()).await
    }
}

fn fault_response(status: u16, class: &str) -> Response<Body> {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    match (status, class) {
        (509, _) => body::html(code, "<html><body><h1>509 Bandwidth Limit Exceeded</h1></body></html>"),
        (_, "token") if code.is_server_error() => {
            body::json(code, r#"{"error_description":"please retry","error":"server_error"}"#)
        }
        (_, "keystone") => {
            let doc = serde_json::json!({ "error": { "code": status, "message": "injected failure",
                "title": code.canonical_reason().unwrap_or("Error") } });
            let mut resp = body::json(code, doc.to_string());
            if status == 429 {
                // OVH's limiter asks for a pause; one second keeps the tests short.
                resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            resp
        }
        _ => body::html(code, format!("<html><body><h1>{code}</h1></body></html>")),
    }
}

impl Handler for Emulator {
    async fn handle(&self, req: Request<Incoming>, _peer: Arc<crate::server::Peer>) -> Response<Body> {
        let mut resp = self.dispatch(req).await;
        // HubiC's nginx front end; some clients logged it.
        resp.headers_mut().insert(header::SERVER, HeaderValue::from_static("nginx/1.4.7"));
        // The Date is the emulator's own clock, so clients that measure token lifetimes against
        // the server's Date (as the gateway does) see a consistent world under a test clock.
        if let Ok(date) = HeaderValue::from_str(&httpdate::fmt_http_date(self.now())) {
            resp.headers_mut().insert(header::DATE, date);
        }
        resp
    }
}
