//! The gateway's configuration: the TOML shape, environment overrides, secrets read from files,
//! and a validation that names the offending key.
//!
//! Precedence is flags > environment > file; `main` applies flags after [`Config::load`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{Secret, SecretSource};

mod accounts;
mod validate;

use validate::{check_hash, check_url, is_loopback_url, one_of};

pub use accounts::{AccountConfig, HubicAccountConfig, KeystoneConfig, StaticConfig, SwiftV1Config};

/// How v1.0 auth answers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Storage URL on the gateway, gateway-issued tokens, all storage traffic streamed through.
    #[default]
    Proxy,
    /// Hand out the upstream storage URL and upstream token (hubic2swiftgate's behaviour).
    Redirect,
}

/// How log lines are written (stderr).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// `time level target: message key=value…`, values quoted where needed.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, ConfigError> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(invalid("log_format", "must be `text` or `json`")),
        }
    }
}

/// Tunables of the streaming path.
#[derive(Clone, Debug)]
pub struct ProxySettings {
    /// Largest body kept while streaming so it can be re-sent after a 401.
    pub replay_buffer: u64,
    /// How long to wait for upstream's `100 Continue` before sending the body anyway.
    pub expect_timeout: Duration,
    /// How long to wait for upstream's response headers.
    pub header_timeout: Duration,
    /// How long a body may go without a chunk, in either direction.
    pub idle_timeout: Duration,
    /// Extra PEM CA certificates trusted for HTTPS upstreams, beside the system roots.
    pub extra_ca: Option<std::path::PathBuf>,
    /// Whether the fast engine takes the storage requests it can (else hyper serves all).
    pub fast_path: bool,
}

impl ProxySettings {
    /// How long a connection sending a response may stay without a byte read or written
    /// before the server cuts it (`ServeOptions::stall_cut`): 30 s longer than the idle
    /// timeout, so that a body upstream stops sending is ended by that timeout first.
    pub fn stall_cut(&self) -> Duration {
        self.idle_timeout + Duration::from_secs(30)
    }
}

impl Default for ProxySettings {
    fn default() -> Self {
        ProxySettings {
            replay_buffer: 4 * 1024 * 1024,
            expect_timeout: Duration::from_secs(5),
            header_timeout: Duration::from_secs(120),
            idle_timeout: Duration::from_secs(300),
            extra_ca: None,
            fast_path: true,
        }
    }
}

/// Proxy-mode settings.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Lifetime of gateway-issued tokens, in seconds.
    pub token_ttl: u64,
    /// Largest request body kept for a replay after an upstream 401, in bytes.
    pub replay_buffer: u64,
    /// Seconds to wait for upstream's `100 Continue` before sending a large body anyway.
    pub expect_timeout: u64,
    /// Seconds to wait for upstream response headers.
    pub header_timeout: u64,
    /// Seconds a body may stall, in either direction.
    pub idle_timeout: u64,
    /// Extra CA certificates (PEM) for HTTPS upstreams, beside the system roots.
    pub upstream_ca_file: Option<PathBuf>,
    /// Whether the fast engine (`src/proxy/fast.rs`) takes the storage requests it can; with
    /// `false`, hyper's engine serves every request (also `SWIFTGATE_FAST_PATH`).
    pub fast_path: bool,
    /// The keys that seal gateway tokens, shared by every instance that must accept another's
    /// tokens: the first line seals, and a second is also accepted (for a rotation). Without it
    /// each process draws a key of its own.
    pub token_key_file: Option<PathBuf>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        let d = ProxySettings::default();
        ProxyConfig {
            token_ttl: 86400,
            replay_buffer: d.replay_buffer,
            expect_timeout: d.expect_timeout.as_secs(),
            header_timeout: d.header_timeout.as_secs(),
            idle_timeout: d.idle_timeout.as_secs(),
            upstream_ca_file: None,
            fast_path: d.fast_path,
            token_key_file: None,
        }
    }
}

impl ProxyConfig {
    /// The streaming path's settings.
    pub fn settings(&self) -> ProxySettings {
        ProxySettings {
            replay_buffer: self.replay_buffer,
            expect_timeout: std::time::Duration::from_secs(self.expect_timeout),
            header_timeout: std::time::Duration::from_secs(self.header_timeout),
            idle_timeout: std::time::Duration::from_secs(self.idle_timeout),
            extra_ca: self.upstream_ca_file.clone(),
            fast_path: self.fast_path,
        }
    }
}

/// The whole configuration file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Address to listen on.
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// The URL clients and HubiC reach the gateway at (redirect_uri and storage URLs are built
    /// from it); defaults to `http(s)://<listen>`.
    #[serde(default)]
    pub public_url: Option<String>,
    /// Directory for persistent state (refresh tokens).
    pub state_dir: PathBuf,
    /// `proxy` (default) or `redirect`.
    #[serde(default)]
    pub mode: Mode,
    /// Worker threads, each serving its own connections on its own event loop; defaults to
    /// the number of CPUs the process may use.
    #[serde(default)]
    pub workers: Option<usize>,
    /// Connections one client address may hold open at once.
    #[serde(default = "default_connections_per_address")]
    pub max_connections_per_address: usize,
    /// Bytes all connections together may hold before their first request begins (request
    /// heads not yet read whole, before any authentication).
    #[serde(default = "default_head_memory")]
    pub max_head_memory: usize,
    /// `text` (default) or `json` (also `SWIFTGATE_LOG_FORMAT`).
    #[serde(default)]
    pub log_format: LogFormat,
    /// One log line per request, on the `swiftgate::access` target (also
    /// `SWIFTGATE_ACCESS_LOG`).
    #[serde(default = "yes")]
    pub access_log: bool,
    /// Serve Prometheus metrics at `/metrics` on the listener.
    #[serde(default = "yes")]
    pub metrics: bool,
    /// Seconds a SIGTERM lets transfers in flight finish before the process stops.
    #[serde(default = "default_drain_timeout")]
    pub drain_timeout: u64,
    /// Proxy-mode settings.
    #[serde(default)]
    pub proxy: ProxyConfig,
    /// Where grants and the state instances share are kept.
    #[serde(default)]
    pub store: StoreConfig,
    /// TLS certificate and key; plain HTTP when absent.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// The HubiC application; needed only when a HubiC account exists.
    #[serde(default)]
    pub hubic: Option<HubicConfig>,
    /// Declared upstream accounts. Without any, every user's account is a HubiC one.
    #[serde(default, rename = "account")]
    pub accounts: Vec<AccountConfig>,
    /// Gateway users.
    #[serde(default, rename = "user")]
    pub users: Vec<UserConfig>,
}

/// Which store keeps grants.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// One file per account under `state_dir`, for one instance.
    #[default]
    File,
    /// Redis or Valkey, shared by several instances.
    Redis,
}

/// The `[store]` table.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `file` (the default) or `redis`.
    #[serde(default)]
    pub kind: StoreKind,
    /// For `redis`: `redis://host:port/db`, `rediss://…` (TLS) or `unix:///path`. Kept as a
    /// secret, since it may carry a password.
    #[serde(default)]
    pub url: Option<Secret>,
    /// A file holding the Redis password (instead of one in the URL).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// CA certificates (PEM) for a `rediss://` server, trusted instead of the system roots.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Prefix of every key the gateway writes, so several deployments can share a database.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::File,
            url: None,
            password_file: None,
            ca_file: None,
            key_prefix: default_key_prefix(),
        }
    }
}

fn default_key_prefix() -> String {
    "swiftgate:".into()
}

/// TLS files (PEM).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// Private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// The HubiC OAuth2 application the gateway is registered as.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubicConfig {
    /// API base URL.
    #[serde(default = "default_api_base")]
    pub api_base: String,
    /// The application's client_id.
    pub client_id: String,
    /// The application's client_secret (or use `client_secret_file`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    /// A file holding the client_secret.
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    /// Scope requested at registration.
    #[serde(default = "default_scope")]
    pub scope: String,
}

impl HubicConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        check_url("hubic.api_base", &self.api_base)?;
        if !self.api_base.starts_with("https://") && !is_loopback_url(&self.api_base) {
            return Err(invalid(
                "hubic.api_base",
                "must be https:// (http:// only for a loopback host): the client secret and refresh tokens go there",
            ));
        }
        if self.client_id.trim().is_empty() {
            return Err(invalid("hubic.client_id", "must not be empty"));
        }
        one_of("hubic.client_secret", &self.client_secret, &self.client_secret_file)?;
        if self.scope.split(',').all(|s| s.trim() != "credentials.r") {
            return Err(invalid("hubic.scope", "must include credentials.r (needed to obtain Swift credentials)"));
        }
        Ok(())
    }
}

/// One gateway user: the v1.0 credentials a Swift client presents, bound to one account.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// The `X-Auth-User` value.
    pub name: String,
    /// Argon2 PHC hash of the key (`swiftgate hash-key`), or use `key_hash_file`.
    #[serde(default)]
    pub key_hash: Option<String>,
    /// A file holding the hash.
    #[serde(default)]
    pub key_hash_file: Option<PathBuf>,
    /// The account this user reaches: a declared `[[account]]`'s name or, with none declared,
    /// a HubiC account's; defaults to the user name with unsafe characters replaced by `_`.
    #[serde(default)]
    pub account: Option<String>,
}

impl UserConfig {
    /// The account this user reaches: `account`, or one derived from the name.
    pub fn account_name(&self) -> String {
        self.account.clone().unwrap_or_else(|| account_from_name(&self.name))
    }
}

/// Connections one client address may hold open, by default.
pub const CONNECTIONS_PER_ADDRESS: usize = 256;
/// Bytes all connections together may hold before their first request begins, by default.
pub const HEAD_MEMORY: usize = 64 * 1024 * 1024;

fn default_connections_per_address() -> usize {
    CONNECTIONS_PER_ADDRESS
}

fn default_head_memory() -> usize {
    HEAD_MEMORY
}

fn yes() -> bool {
    true
}

/// [`Config::drain_timeout`]'s default, in seconds.
pub const DRAIN_TIMEOUT: u64 = 30;
/// [`Config::drain_timeout`]'s largest value, in seconds: a day.
pub const MAX_DRAIN_TIMEOUT: u64 = 86_400;

fn default_drain_timeout() -> u64 {
    DRAIN_TIMEOUT
}

/// Most worker threads `workers` may ask for.
const MAX_WORKERS: usize = 256;

/// Longest gateway token life `proxy.token_ttl` may ask for (366 days), far from where adding
/// it to the clock could overflow.
const MAX_TOKEN_TTL: u64 = 366 * 24 * 3600;

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}

fn default_api_base() -> String {
    "https://api.hubic.com".to_owned()
}

/// The scope asked of HubiC unless configured otherwise.
pub fn default_scope() -> String {
    "credentials.r,usage.r,account.r".to_owned()
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The TOML does not parse or does not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The file.
        path: String,
        /// The parser's message (it names the key and line).
        message: String,
    },
    /// A value is present but wrong.
    #[error("invalid `{key}`: {message}")]
    Invalid {
        /// The dotted key, e.g. `user[1].key_hash`.
        key: String,
        /// What is wrong.
        message: String,
    },
}

fn invalid(key: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key: key.into(), message: message.into() }
}

/// A user with every optional field resolved.
#[derive(Clone, Debug)]
pub struct ResolvedUser {
    /// The `X-Auth-User` value.
    pub name: String,
    /// The argon2 PHC hash.
    pub key_hash: String,
    /// The account name (safe as a file name).
    pub account: String,
}

impl Config {
    /// Worker threads to serve on: `workers`, or one per CPU the process may use.
    pub fn worker_count(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get().min(MAX_WORKERS)))
    }

    /// Reads `path`, applies `SWIFTGATE_*` environment overrides from `env`, and validates.
    pub fn load(path: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
        let mut config = Config::parse(&text, &path.display().to_string())?;
        config.apply_env(env)?;
        // Relative paths in the file are relative to the file, not to the working directory.
        if let Some(dir) = path.parent() {
            config.rebase(dir);
        }
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text without environment or validation.
    pub fn parse(text: &str, origin: &str) -> Result<Config, ConfigError> {
        toml::from_str(text)
            .map_err(|e| ConfigError::Parse { path: origin.to_owned(), message: parse_message(text, &e) })
    }

    fn apply_env(&mut self, env: impl Fn(&str) -> Option<String>) -> Result<(), ConfigError> {
        if let Some(v) = env("SWIFTGATE_LISTEN") {
            self.listen = v.parse().map_err(|_| invalid("SWIFTGATE_LISTEN", "not an address like 127.0.0.1:8080"))?;
        }
        if let Some(v) = env("SWIFTGATE_PUBLIC_URL") {
            self.public_url = Some(v);
        }
        if let Some(v) = env("SWIFTGATE_MODE") {
            self.mode = match v.as_str() {
                "proxy" => Mode::Proxy,
                "redirect" => Mode::Redirect,
                _ => return Err(invalid("SWIFTGATE_MODE", "must be `proxy` or `redirect`")),
            };
        }
        if let Some(v) = env("SWIFTGATE_WORKERS") {
            self.workers = Some(v.parse().map_err(|_| invalid("SWIFTGATE_WORKERS", "not a whole number of threads"))?);
        }
        if let Some(v) = env("SWIFTGATE_FAST_PATH") {
            self.proxy.fast_path = match v.as_str() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(invalid("SWIFTGATE_FAST_PATH", "must be true or false")),
            };
        }
        if let Some(v) = env("SWIFTGATE_LOG_FORMAT") {
            self.log_format = v.parse().map_err(|_| invalid("SWIFTGATE_LOG_FORMAT", "must be `text` or `json`"))?;
        }
        if let Some(v) = env("SWIFTGATE_ACCESS_LOG") {
            self.access_log = match v.as_str() {
                "true" => true,
                "false" => false,
                _ => return Err(invalid("SWIFTGATE_ACCESS_LOG", "must be true or false")),
            };
        }
        if let Some(v) = env("SWIFTGATE_STORE_URL") {
            self.store.kind = StoreKind::Redis;
            self.store.url = Some(Secret::new(v));
        }
        if let Some(v) = env("SWIFTGATE_STATE_DIR") {
            self.state_dir = PathBuf::from(v);
        }
        let hubic_env = [
            "SWIFTGATE_HUBIC_API_BASE",
            "SWIFTGATE_HUBIC_CLIENT_ID",
            "SWIFTGATE_HUBIC_CLIENT_SECRET",
            "SWIFTGATE_HUBIC_CLIENT_SECRET_FILE",
        ];
        let Some(hubic) = &mut self.hubic else {
            return match hubic_env.into_iter().find(|k| env(k).is_some()) {
                Some(k) => Err(invalid(k, "the file has no [hubic] table to override")),
                None => Ok(()),
            };
        };
        if let Some(v) = env("SWIFTGATE_HUBIC_API_BASE") {
            hubic.api_base = v;
        }
        if let Some(v) = env("SWIFTGATE_HUBIC_CLIENT_ID") {
            hubic.client_id = v;
        }
        if let Some(v) = env("SWIFTGATE_HUBIC_CLIENT_SECRET") {
            hubic.client_secret = Some(Secret::new(v));
            hubic.client_secret_file = None;
        }
        if let Some(v) = env("SWIFTGATE_HUBIC_CLIENT_SECRET_FILE") {
            hubic.client_secret_file = Some(PathBuf::from(v));
            hubic.client_secret = None;
        }
        Ok(())
    }

    fn rebase(&mut self, dir: &Path) {
        let fix = |p: &mut PathBuf| {
            if p.is_relative() && !dir.as_os_str().is_empty() {
                *p = dir.join(&*p);
            }
        };
        fix(&mut self.state_dir);
        if let Some(tls) = &mut self.tls {
            fix(&mut tls.cert);
            fix(&mut tls.key);
        }
        if let Some(f) = self.hubic.as_mut().and_then(|h| h.client_secret_file.as_mut()) {
            fix(f);
        }
        for account in &mut self.accounts {
            let files = match account {
                AccountConfig::Keystone(k) => [k.password_file.as_mut(), k.application_credential_secret_file.as_mut()],
                AccountConfig::SwiftV1(a) => [a.key_file.as_mut(), None],
                AccountConfig::Static(a) => [a.token_file.as_mut(), None],
                AccountConfig::Hubic(_) => [None, None],
            };
            files.into_iter().flatten().for_each(fix);
        }
        let files = [
            self.proxy.upstream_ca_file.as_mut(),
            self.proxy.token_key_file.as_mut(),
            self.store.password_file.as_mut(),
            self.store.ca_file.as_mut(),
        ];
        files.into_iter().flatten().for_each(fix);
        for user in &mut self.users {
            if let Some(f) = &mut user.key_hash_file {
                fix(f);
            }
        }
    }

    /// Every account the gateway keeps credentials for: the declared ones or, with none
    /// declared, one HubiC account per account the users name.
    pub fn resolved_accounts(&self) -> Vec<AccountConfig> {
        if !self.accounts.is_empty() {
            return self.accounts.clone();
        }
        let mut names: Vec<String> = self.users.iter().map(UserConfig::account_name).collect();
        names.sort_unstable();
        names.dedup();
        names.into_iter().map(|name| AccountConfig::Hubic(HubicAccountConfig { name })).collect()
    }

    /// The public base URL without a trailing slash.
    pub fn public_url(&self) -> String {
        match &self.public_url {
            Some(url) => url.trim_end_matches('/').to_owned(),
            None => {
                let scheme = if self.tls.is_some() { "https" } else { "http" };
                format!("{scheme}://{}", self.listen)
            }
        }
    }

    /// The HubiC client secret, read from its file if configured that way.
    pub fn client_secret(&self) -> Result<Secret, ConfigError> {
        let hubic = self.hubic.as_ref().ok_or_else(|| invalid("hubic", "missing"))?;
        SecretSource::of(&hubic.client_secret, &hubic.client_secret_file)
            .ok_or_else(|| invalid("hubic.client_secret", "missing"))?
            .read()
            .map_err(|e| invalid("hubic.client_secret_file", e))
    }

    /// Users with hashes read from files and account names resolved.
    pub fn resolved_users(&self) -> Result<Vec<ResolvedUser>, ConfigError> {
        self.users
            .iter()
            .enumerate()
            .map(|(i, user)| {
                let key_hash = match (&user.key_hash, &user.key_hash_file) {
                    (Some(h), _) => h.clone(),
                    (None, Some(path)) => {
                        let text = std::fs::read_to_string(path)
                            .map_err(|source| ConfigError::Read { path: path.display().to_string(), source })?;
                        let h = text.trim().to_owned();
                        check_hash(&format!("user[{i}].key_hash_file"), &h)?;
                        h
                    }
                    (None, None) => return Err(invalid(format!("user[{i}].key_hash"), "missing")),
                };
                let account = user.account_name();
                Ok(ResolvedUser { name: user.name.clone(), key_hash, account })
            })
            .collect()
    }
}

/// An account name derived from a user name: safe characters kept, others replaced by `_`.
pub fn account_from_name(name: &str) -> String {
    let mut s: String =
        name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    if s.is_empty() {
        s.push('_');
    }
    s
}

/// A TOML error as position and message, without the source line `toml` would quote: that line
/// may hold a secret (a misspelt `client_secret`), and so may a value the message quotes (an
/// unquoted number where a string was expected). Quoted values are left out, except the field
/// names an unknown-field or unknown-variant error lists.
fn parse_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim();
    // The names an unknown-field or unknown-variant error lists are keys and providers.
    let names_only = message.starts_with("unknown field") || message.starts_with("unknown variant");
    let message = if names_only { message.to_owned() } else { without_quoted(message) };
    match e.span() {
        Some(span) => {
            let before = text.get(..span.start).unwrap_or(text);
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
            format!("line {line}, column {column}: {message}")
        }
        None => message,
    }
}

/// `message` with every `"…"` and `` `…` `` literal replaced by `…`.
fn without_quoted(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut open: Option<char> = None;
    for c in message.chars() {
        match open {
            Some(q) if c == q => open = None,
            Some(_) => {}
            None if c == '"' || c == '`' => {
                open = Some(c);
                out.push('…');
            }
            None => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests;
