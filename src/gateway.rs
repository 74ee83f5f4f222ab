//! The gateway assembled from its configuration, and its router: the one place that maps a
//! request's path and method to a handler.
//!
//! Everything per-request that can be computed once (public URL, users, sources) is computed
//! in [`Gateway::new`].

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::body::{self, Body};
use crate::clock::Clock;
use crate::config::AccountConfig;
use crate::config::{Config, ConfigError, Mode, StoreKind};
use crate::front::{self, Issue, TokenIssuer, TokenKeys, UpstreamCheck, Users};
use crate::metrics::{Kind, Metrics};
use crate::ops::{self, Readiness};
use crate::provider::fixed::FixedAccount;
use crate::provider::hubic::{HubicAccount, HubicClient};
use crate::provider::keystone::KeystoneAccount;
use crate::provider::swift_v1::SwiftV1Account;
use crate::provider::{self, CredentialSource, ProviderError};
use crate::proxy::Proxy;
use crate::register::{outcome_page, Registrar};
use crate::secret::Secret;
use crate::server::Handler;
use crate::store::{FileStore, GrantStore, RedisStore, StoreError};
use crate::tokens::{RenewPolicy, TokenManager};
use std::net::IpAddr;
use std::time::Duration;

/// What a request's path is for. The router answers each with one handler, and the proxy's
/// fast engine takes [`Endpoint::Storage`] alone, so the two never classify a path apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    /// v1.0 auth, in any of the spellings clients use.
    Auth,
    /// `/info`: the upstream's capabilities, or the gateway's own.
    Info,
    /// `/healthz`.
    Health,
    /// `/readyz`: whether a load balancer should send requests here.
    Ready,
    /// `/metrics`: Prometheus.
    Metrics,
    /// `/usage`: an account's quota.
    Usage,
    /// HubiC registration: the form, its posts, the OAuth callback.
    Registration,
    /// `…/info` under a prefix (`/swift/info` beside `/swift/v1/AUTH_…`), where
    /// python-swiftclient asks for it; storage if no account's endpoint has that prefix.
    PrefixedInfo,
    /// Everything else: storage, answered by the proxy.
    Storage,
}

impl Endpoint {
    /// What requests for it count as in the metrics.
    pub fn kind(self) -> Kind {
        match self {
            Endpoint::Auth => Kind::Auth,
            Endpoint::Info | Endpoint::PrefixedInfo => Kind::Info,
            Endpoint::Health | Endpoint::Ready | Endpoint::Metrics => Kind::Ops,
            Endpoint::Usage => Kind::Usage,
            Endpoint::Registration => Kind::Register,
            Endpoint::Storage => Kind::Storage,
        }
    }

    /// The endpoint `path` (no query) is for.
    pub fn of(path: &str) -> Endpoint {
        if front::is_auth_path(path) {
            return Endpoint::Auth;
        }
        match path {
            "/info" => Endpoint::Info,
            "/healthz" => Endpoint::Health,
            "/readyz" => Endpoint::Ready,
            "/metrics" => Endpoint::Metrics,
            "/usage" | "/usage/" => Endpoint::Usage,
            "/" | "/register" | "/register/" | "/autoregister" | "/autoregister/" | "/callback" | "/callback/" => {
                Endpoint::Registration
            }
            _ if path.ends_with("/info") => Endpoint::PrefixedInfo,
            _ => Endpoint::Storage,
        }
    }
}

/// Largest form body accepted on the registration endpoints.
const FORM_LIMIT: usize = 16 * 1024;

/// Why the gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state directory is unusable.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The HubiC client could not be set up.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// The upstream storage client could not be set up.
    #[error(transparent)]
    Proxy(#[from] crate::proxy::ClientError),
}

/// A running gateway's shared state.
#[derive(Debug)]
pub struct Gateway {
    users: Users,
    tokens: Arc<TokenManager>,
    /// Present when there are HubiC accounts to register.
    registrar: Option<Registrar>,
    public_url: String,
    /// Present in proxy mode.
    proxy: Option<Proxy>,
    issuer: TokenIssuer,
    /// Redirect mode's check of upstream tokens.
    check: UpstreamCheck,
    metrics: Arc<Metrics>,
    /// Whether `/metrics` is served.
    serve_metrics: bool,
    /// Whether requests' lines are written to the access log (see [`Gateway::access_log`]).
    access_log: bool,
    readiness: Readiness,
}

impl Gateway {
    /// Builds the gateway: users, store, a credential source per account, token manager, and
    /// the registrar when there are HubiC accounts.
    pub fn new(config: &Config, clock: Arc<dyn Clock>, policy: RenewPolicy) -> Result<Arc<Gateway>, BuildError> {
        let users = config.resolved_users()?;
        let shared = match config.store.kind {
            StoreKind::File => None,
            StoreKind::Redis => Some(Arc::new(RedisStore::open(&config.store, &config.state_dir)?)),
        };
        let store: Arc<dyn GrantStore> = match &shared {
            Some(redis) => redis.clone(),
            None => Arc::new(FileStore::open(&config.state_dir)?),
        };
        let http = provider::auth_client(config.proxy.upstream_ca_file.as_deref())?;
        let accounts = config.resolved_accounts();
        let hubic_accounts: Vec<String> =
            accounts.iter().filter(|a| matches!(a, AccountConfig::Hubic(_))).map(|a| a.name().to_owned()).collect();
        let hubic = match (&config.hubic, hubic_accounts.is_empty()) {
            (Some(hubic), false) => Some(Arc::new(HubicClient::new(
                &hubic.api_base,
                &hubic.client_id,
                config.client_secret()?,
                clock.clone(),
            )?)),
            _ => None,
        };
        let mut sources = Vec::with_capacity(accounts.len());
        for account in &accounts {
            if let Some(url) = account.plain_http_auth() {
                tracing::warn!(account = %account.name(), auth_url = %url, "the account's secret goes to its auth service unencrypted (http://)");
            }
            let source: Arc<dyn CredentialSource> = match (account, &hubic) {
                (AccountConfig::Keystone(k), _) => Arc::new(KeystoneAccount::new(k, http.clone(), clock.clone())),
                (AccountConfig::SwiftV1(a), _) => Arc::new(SwiftV1Account::new(a, http.clone(), clock.clone())),
                (AccountConfig::Static(a), _) => Arc::new(FixedAccount::new(a, http.clone(), clock.clone())),
                (AccountConfig::Hubic(a), Some(client)) => {
                    Arc::new(HubicAccount::new(client.clone(), store.clone(), &a.name))
                }
                (AccountConfig::Hubic(_), None) => {
                    return Err(ConfigError::Invalid { key: "hubic".into(), message: "missing".into() }.into())
                }
            };
            sources.push((account.name().to_owned(), source));
        }
        let tokens = TokenManager::new(sources, clock, policy);
        let tokens = Arc::new(match &shared {
            Some(redis) => tokens.share_through(redis.clone()),
            None => tokens,
        });
        let public_url = config.public_url();
        let check = UpstreamCheck::new(http);
        let registrar = match (hubic, &config.hubic) {
            (Some(client), Some(settings)) => Some(Registrar::new(
                client,
                store,
                tokens.clone(),
                &public_url,
                &settings.scope,
                hubic_accounts,
                shared,
            )),
            _ => None,
        };
        let proxy = match config.mode {
            Mode::Proxy => Some(Proxy::new(config.proxy.settings(), &public_url, config.worker_count())?),
            Mode::Redirect => None,
        };
        let keys = match &config.proxy.token_key_file {
            Some(path) => TokenKeys::read(path)
                .map_err(|message| ConfigError::Invalid { key: "proxy.token_key_file".into(), message })?,
            None => TokenKeys::random(),
        };
        let names = users.iter().map(|u| u.name.clone()).collect();
        let issuer = TokenIssuer::new(Duration::from_secs(config.proxy.token_ttl), keys, names);
        Ok(Arc::new(Gateway {
            users: Users::new(&users),
            tokens,
            registrar,
            public_url,
            proxy,
            issuer,
            check,
            metrics: Arc::new(Metrics::default()),
            serve_metrics: config.metrics,
            // A line only if it would be written (`SWIFTGATE_LOG` may filter it out).
            access_log: config.access_log && tracing::enabled!(target: "swiftgate::access", tracing::Level::INFO),
            readiness: Readiness::default(),
        }))
    }

    /// The gateway's metrics.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// Whether the access log is written: configured so, and not filtered out.
    pub fn access_log(&self) -> bool {
        self.access_log
    }

    /// Where the gateway is in its life, for `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The store's line of `/readyz`: which store, and whether it answers. A shared store that
    /// does not answer leaves the instance ready: it serves with what it holds.
    pub fn store_line(&self) -> String {
        let Some(shared) = self.tokens.shared() else { return "store file: this instance's own".into() };
        let (up, since) = shared.health();
        let mut line = match (up, since) {
            (true, _) => format!("store {}: reachable", shared.place()),
            (false, since) => format!(
                "store {}: unreachable for {} s; serving with the credentials held here, renewing alone",
                shared.place(),
                since.and_then(|t| t.elapsed().ok()).unwrap_or_default().as_secs()
            ),
        };
        let spooled = shared.unwritten();
        if !spooled.is_empty() {
            line.push_str(&format!("; grants of {} spooled here until it answers", spooled.join(", ")));
        }
        line
    }

    /// The token manager (the proxy and tests ask it for credentials).
    pub fn tokens(&self) -> &Arc<TokenManager> {
        &self.tokens
    }

    /// The registrar, when there are HubiC accounts.
    pub fn registrar(&self) -> Option<&Registrar> {
        self.registrar.as_ref()
    }

    /// The streaming proxy, in proxy mode.
    pub fn proxy(&self) -> Option<&Proxy> {
        self.proxy.as_ref()
    }

    /// The gateway's users.
    pub fn users(&self) -> &Users {
        &self.users
    }

    /// Reads a registration form and checks its `user` and `key`: the form and the user's
    /// account, or the page to answer with.
    async fn verified_form(
        &self,
        registrar: &Registrar,
        req: Request<Incoming>,
        from: std::net::IpAddr,
    ) -> Result<(Vec<(String, String)>, String), Response<Body>> {
        if cross_site(&req, &self.public_url) {
            // Another site's page posting a user's key to bind the visitor's HubiC account to
            // that user: the browser's consent would then land in someone else's storage.
            return Err(crate::proxy::drain_then(
                Some(req.into_body()),
                body::text(StatusCode::FORBIDDEN, "a registration form posted from another site is refused\n"),
            ));
        }
        let form = match body::read_limited(req.into_body(), FORM_LIMIT).await {
            Ok(b) => body::form_pairs(&b),
            Err(e) => return Err(body::text(e.status(), "registration form could not be read\n")),
        };
        let field = |k| body::form_get(&form, k).unwrap_or("");
        match self.users.verify(field("user"), field("key"), from).await {
            Ok(account) if registrar.registers(&account) => Ok((form, account)),
            Ok(account) => Err(body::text(
                StatusCode::BAD_REQUEST,
                format!("account {account} is not a HubiC account: it needs no registration\n"),
            )),
            Err(front::Refused::Busy) => Err(front::busy()),
            Err(front::Refused::Wrong) => {
                let mut resp = registrar.form_page(Some("Unknown user or wrong key."));
                *resp.status_mut() = StatusCode::UNAUTHORIZED;
                Err(resp)
            }
        }
    }

    async fn register_post(&self, registrar: &Registrar, req: Request<Incoming>, from: IpAddr) -> Response<Body> {
        let account = match self.verified_form(registrar, req, from).await {
            Ok((_, account)) => account,
            Err(resp) => return resp,
        };
        let (_, url, cookie) = match registrar.begin_in_browser(&account).await {
            Ok(begun) => begun,
            Err(e) => return crate::register::outcome_page(&Err(e)),
        };
        let mut resp = body::redirect(&url);
        let secure = if self.public_url.starts_with("https://") { "; Secure" } else { "" };
        // The path the browser comes back to: under public_url's own path, if it has one.
        let prefix = self.public_url.parse::<http::Uri>().map(|u| u.path().trim_end_matches('/').to_owned());
        let value = format!(
            "{}={cookie}; Path={}/callback; Max-Age={}; HttpOnly; SameSite=Lax{secure}",
            crate::register::BROWSER_COOKIE,
            prefix.unwrap_or_default(),
            crate::register::STATE_TTL.as_secs()
        );
        if let Ok(v) = http::HeaderValue::from_str(&value) {
            resp.headers_mut().insert(http::header::SET_COOKIE, v);
        }
        resp
    }

    async fn autoregister_post(&self, registrar: &Registrar, req: Request<Incoming>, from: IpAddr) -> Response<Body> {
        let (form, account) = match self.verified_form(registrar, req, from).await {
            Ok(v) => v,
            Err(resp) => return resp,
        };
        let field = |k| body::form_get(&form, k).unwrap_or("");
        let result =
            registrar.autoregister(&account, field("login"), &Secret::new(field("password"))).await.map(|()| account);
        outcome_page(&result)
    }

    /// The registration endpoints, when there are HubiC accounts to register.
    async fn registration(&self, req: Request<Incoming>, from: IpAddr) -> Response<Body> {
        let Some(registrar) = &self.registrar else {
            return crate::proxy::drain_then(
                Some(req.into_body()),
                body::text(StatusCode::NOT_FOUND, "no HubiC account here: nothing to register\n"),
            );
        };
        match (req.method(), req.uri().path().trim_end_matches('/')) {
            (&Method::GET, "/register" | "") => registrar.form_page(None),
            (&Method::POST, "/register") => self.register_post(registrar, req, from).await,
            (&Method::POST, "/autoregister") => self.autoregister_post(registrar, req, from).await,
            (&Method::GET, "/callback") => {
                let query = req.uri().query().unwrap_or("").to_owned();
                let cookie = registration_cookie(req.headers());
                outcome_page(&registrar.complete(&query, cookie.as_deref()).await)
            }
            _ => body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
        }
    }

    /// The router: path and method to handler, nothing else decides.
    pub async fn route(&self, req: Request<Incoming>, peer: Arc<crate::server::Peer>) -> Response<Body> {
        let path = req.uri().path();
        let from = peer.addr.ip();
        let endpoint = Endpoint::of(path);
        if self.readiness.draining() && endpoint.kind() != Kind::Ops {
            return crate::proxy::drain_then(Some(req.into_body()), ops::draining());
        }
        if let Some(answer) = self.head_only(req.method(), path, req.headers(), from) {
            return answer.await;
        }
        match (endpoint, req.method()) {
            (Endpoint::Health, &Method::GET | &Method::HEAD) => ops::healthz(),
            (Endpoint::Ready, &Method::GET | &Method::HEAD) => {
                ops::readyz(&self.readiness, &self.store_line(), &self.tokens.figures())
            }
            (Endpoint::Metrics, &Method::GET | &Method::HEAD) if self.serve_metrics => {
                ops::metrics(req.headers(), &self.metrics, self.tokens.figures())
            }
            (Endpoint::Metrics, _) if !self.serve_metrics => body::text(StatusCode::NOT_FOUND, "not found\n"),
            (Endpoint::Usage, &Method::GET) => {
                ops::usage(req.headers(), &self.users, &self.tokens, &self.public_url, from).await
            }
            (Endpoint::Registration, _) => self.registration(req, from).await,
            (
                Endpoint::Auth
                | Endpoint::Info
                | Endpoint::Health
                | Endpoint::Ready
                | Endpoint::Metrics
                | Endpoint::Usage,
                _,
            ) => body::text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n"),
            (endpoint @ (Endpoint::PrefixedInfo | Endpoint::Storage), method) => match &self.proxy {
                Some(proxy) => {
                    if endpoint == Endpoint::PrefixedInfo && matches!(*method, Method::GET | Method::HEAD) {
                        if let Some(cached) = self.tokens.cached_for_info(path) {
                            return proxy.info(&cached.target).await;
                        }
                    }
                    self.storage(proxy, req, peer).await
                }
                None => body::text(StatusCode::NOT_FOUND, "not found\n"),
            },
        }
    }

    /// The answer to a request for one of the gateway's own endpoints that reads nothing but
    /// the request's head: v1.0 auth, and `GET` or `HEAD` of `/info`; `None` for any other
    /// request. The router takes these answers from here, and so does the proxy's fast path,
    /// which answers them on a connection it keeps (clients authenticate on the connection
    /// they then use for storage).
    pub fn head_only<'a>(
        &'a self,
        method: &'a Method,
        path: &str,
        headers: &'a http::HeaderMap,
        from: IpAddr,
    ) -> Option<impl std::future::Future<Output = Response<Body>> + Send + 'a> {
        let endpoint = Endpoint::of(path);
        let auth = endpoint == Endpoint::Auth;
        let info = endpoint == Endpoint::Info && matches!(*method, Method::GET | Method::HEAD);
        if !(auth || info) {
            return None;
        }
        Some(async move {
            if !auth {
                return self.info().await;
            }
            let issue = match self.proxy {
                Some(_) => Issue::Gateway(&self.issuer),
                None => Issue::Upstream(&self.check),
            };
            front::v1_auth(method, headers, &self.users, &self.tokens, &self.public_url, issue, from).await
        })
    }

    /// `/info`: the upstream's in proxy mode (so clients see its real capabilities) once some
    /// account's credentials are known, else what the gateway knows.
    async fn info(&self) -> Response<Body> {
        if let Some(proxy) = &self.proxy {
            if let Some(cached) = self.tokens.any_cached() {
                return proxy.info(&cached.target).await;
            }
        }
        ops::info()
    }

    /// A storage request in proxy mode: the gateway token names the user (and so the account);
    /// a request without one goes upstream anonymously (tempurl, public containers).
    async fn storage(&self, proxy: &Proxy, req: Request<Incoming>, peer: Arc<crate::server::Peer>) -> Response<Body> {
        let Some(token) = crate::proxy::policy::client_token(req.headers()) else {
            let anonymous = self.tokens.cached_for_path(req.uri().path());
            return proxy.forward(req, &peer, &self.tokens, None, anonymous).await;
        };
        match token.to_str().ok().and_then(|t| crate::proxy::Authority::holder_of(self, t)) {
            Some((user, account)) => {
                let mut resp = proxy.forward(req, &peer, &self.tokens, Some(account), None).await;
                if self.access_log {
                    if let Some(acting) = self.users.acting(user) {
                        resp.extensions_mut().insert(acting);
                    }
                }
                resp
            }
            None => {
                let refused = front::unauthorized(req.uri().path());
                crate::proxy::drain_then(Some(req.into_body()), refused)
            }
        }
    }
}

/// The registration cookie's value from a request's `Cookie` headers.
fn registration_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == crate::register::BROWSER_COOKIE)
        .map(|(_, value)| value.to_owned())
}

impl Handler for Gateway {
    fn kind(&self, path: &str) -> Kind {
        Endpoint::of(path).kind()
    }

    async fn handle(&self, req: Request<Incoming>, peer: Arc<crate::server::Peer>) -> Response<Body> {
        self.route(req, peer).await
    }

    async fn serve_h1<S>(
        &self,
        io: S,
        peer: &Arc<crate::server::Peer>,
        signals: &mut crate::server::Signals,
    ) -> crate::server::Served<S>
    where
        S: crate::server::Connection,
    {
        match &self.proxy {
            // While draining, every request goes to `route`, which answers it as a draining
            // gateway does.
            Some(proxy) if !self.readiness.draining() => proxy.serve_h1(self, io, peer, signals).await,
            _ => crate::server::Served::HandOver(crate::server::Prefixed::new(bytes::Bytes::new(), io)),
        }
    }
}

/// What the proxy's fast path asks the router and the token issuer (see
/// [`crate::proxy::Authority`]).
impl crate::proxy::Authority for Gateway {
    fn is_storage(&self, path: &str) -> bool {
        Endpoint::of(path) == Endpoint::Storage
    }

    fn holder_of(&self, token: &str) -> Option<(usize, &str)> {
        let user = self.issuer.verify(token, self.tokens.clock().now())?;
        Some((user, self.users.account_at(user)?))
    }

    fn acting(&self, user: usize) -> Option<crate::server::Acting> {
        self.users.acting(user)
    }

    fn kind(&self, path: &str) -> Kind {
        Endpoint::of(path).kind()
    }

    fn tokens(&self) -> &TokenManager {
        &self.tokens
    }

    fn head_only<'a>(
        &'a self,
        method: &'a Method,
        path: &str,
        headers: &'a http::HeaderMap,
        from: IpAddr,
    ) -> Option<impl std::future::Future<Output = Response<Body>> + Send + 'a> {
        Gateway::head_only(self, method, path, headers, from)
    }
}

/// True for a form a browser posted from another site. A browser that sends `Sec-Fetch-Site`
/// is taken at its word (`same-origin` passes, even with `Origin: null` under a no-referrer
/// policy). Otherwise `Origin` must be `public_url`'s origin, or name the host the form was
/// sent to (`Host`, which a reverse proxy may rewrite, hence `public_url` first). A client that
/// sends neither header is not a browser another site could make post.
fn cross_site(req: &Request<Incoming>, public_url: &str) -> bool {
    let headers = req.headers();
    if let Some(site) = headers.get("sec-fetch-site") {
        return site != "same-origin";
    }
    let Some(origin) = headers.get(http::header::ORIGIN).and_then(|o| o.to_str().ok()) else { return false };
    // `null`, or anything that is not an origin, is no page of ours.
    let Some(from) = origin.parse::<http::Uri>().ok() else { return true };
    let Some(from_origin) = origin_of(&from) else { return true };
    if public_url.parse::<http::Uri>().ok().and_then(|public| origin_of(&public)).is_some_and(|p| p == from_origin) {
        return false;
    }
    let sent_to =
        headers.get(http::header::HOST).and_then(|h| h.to_str().ok()).or(req.uri().authority().map(|a| a.as_str()));
    !matches!((from.authority(), sent_to), (Some(from), Some(to)) if from.as_str().eq_ignore_ascii_case(to))
}

/// `uri`'s origin: scheme, lower-case host and port (the scheme's default when not written).
fn origin_of(uri: &http::Uri) -> Option<(String, String, u16)> {
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let port = uri.port_u16().or(match scheme.as_str() {
        "https" => Some(443),
        "http" => Some(80),
        _ => None,
    })?;
    Some((scheme, uri.host()?.to_ascii_lowercase(), port))
}
