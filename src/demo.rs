//! `swiftgate demo`: the emulator with built-in storage and the gateway in one process, with a
//! demo user ready for `swift` and rclone: registered through the real browser flow (HubiC), or
//! bound to the emulator's Keystone or Swift v1 auth.
//!
//! Also holds the scripted "browser" that walks the registration flow over HTTP, which the
//! tests share.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};

use crate::clock::SystemClock;
use crate::config::{Config, HubicConfig, Mode, UserConfig};
use crate::emulator::{AppSpec, Emulator, EmulatorConfig, EmulatorHandle, StorageConfig, UserSpec};
use crate::front::hash_key;
use crate::gateway::Gateway;
use crate::register::scrape_oauth_id;
use crate::secret::{random_alnum, Secret};
use crate::server::{self, ServeOptions};
use crate::tokens::RenewPolicy;

/// What `demo` runs with.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// The gateway's listen address (port 0 allowed).
    pub listen: SocketAddr,
    /// The emulator's Swift-token lifetime.
    pub swift_token_ttl: Duration,
    /// The emulator's access-token lifetime.
    pub access_token_ttl: Duration,
    /// The storage the emulator hands out.
    pub storage: StorageConfig,
    /// How the gateway answers v1.0 auth.
    pub mode: Mode,
    /// How the gateway obtains the account's credentials from the emulator: `hubic` (the
    /// browser registration first), `keystone` (a password scoped to a project) or `swift-v1`.
    pub provider: String,
}

/// Walks the browser registration flow the way a person's browser would: posts the gateway's
/// `/register` form, follows the redirect to HubiC's consent page, submits it with the HubiC
/// login and password, and follows the redirect back to the gateway's `/callback`. Returns the
/// final page's status and text.
pub async fn browser_register(
    gateway_url: &str,
    user: &str,
    key: &str,
    login: &str,
    password: &str,
) -> anyhow::Result<(u16, String)> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let form = |pairs: &[(&str, &str)]| {
        let mut s = form_urlencoded::Serializer::new(String::new());
        for (k, v) in pairs {
            s.append_pair(k, v);
        }
        s.finish()
    };
    let location = |resp: &reqwest::Response| -> anyhow::Result<String> {
        resp.headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| anyhow!("expected a redirect, got {}", resp.status()))
    };
    let resp = http
        .post(format!("{gateway_url}/register"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[("user", user), ("key", key)]))
        .send()
        .await?;
    if resp.status() != 302 {
        return Ok((resp.status().as_u16(), resp.text().await?));
    }
    let authorize = location(&resp)?;
    // A browser keeps the registration cookie and brings it back to the callback.
    let cookie = resp
        .headers()
        .get("set-cookie")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(str::to_owned);
    let page = http.get(&authorize).send().await?;
    if page.status() != 200 {
        bail!("consent page answered {}", page.status());
    }
    let page = page.text().await?;
    let oauth = scrape_oauth_id(&page).ok_or_else(|| anyhow!("consent page has no oauth id"))?;
    let post_url = authorize.split_once('?').map_or(authorize.as_str(), |(u, _)| u).to_owned();
    let resp = http
        .post(&post_url)
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&[
            ("oauth", &oauth),
            ("action", "accepted"),
            ("login", login),
            ("user_pwd", password),
            ("credentials", "r"),
            ("usage", "r"),
            ("account", "r"),
        ]))
        .send()
        .await?;
    if resp.status() != 302 {
        return Ok((resp.status().as_u16(), resp.text().await?));
    }
    let callback = location(&resp)?;
    let mut request = http.get(&callback);
    if let Some(cookie) = cookie {
        request = request.header("cookie", cookie);
    }
    let resp = request.send().await?;
    Ok((resp.status().as_u16(), resp.text().await?))
}

/// A gateway configuration for the given HubiC app and one user, with state in `state_dir`.
pub fn single_user_config(
    state_dir: &Path,
    listen: SocketAddr,
    api_base: &str,
    app: &AppSpec,
    user: &str,
    key_hash: &str,
    mode: Mode,
) -> Config {
    Config {
        listen,
        public_url: None,
        state_dir: state_dir.to_owned(),
        mode,
        // The demo serves with server::run on the caller's runtime: one connection pool.
        workers: Some(1),
        max_connections_per_address: crate::config::CONNECTIONS_PER_ADDRESS,
        max_head_memory: crate::config::HEAD_MEMORY,
        log_format: crate::config::LogFormat::Text,
        access_log: true,
        metrics: true,
        drain_timeout: crate::config::DRAIN_TIMEOUT,
        proxy: crate::config::ProxyConfig::default(),
        store: crate::config::StoreConfig::default(),
        tls: None,
        hubic: Some(HubicConfig {
            api_base: api_base.to_owned(),
            client_id: app.client_id.clone(),
            client_secret: Some(app.client_secret.clone()),
            client_secret_file: None,
            scope: crate::config::default_scope(),
        }),
        accounts: Vec::new(),
        users: vec![UserConfig {
            name: user.to_owned(),
            key_hash: Some(key_hash.to_owned()),
            key_hash_file: None,
            account: None,
        }],
    }
}

/// Runs the demo until `shutdown` resolves, printing the `export` lines to `out` first (see
/// [`server::announce`]: the demo serves on if they cannot be written).
pub async fn run(
    options: DemoOptions,
    out: &mut (dyn Write + Send),
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    if options.provider != "hubic" && matches!(options.storage, StorageConfig::External { .. }) {
        bail!("the emulated {} stands in front of the built-in storage only: leave out --swift-auth", options.provider);
    }
    let listener = tokio::net::TcpListener::bind(options.listen)
        .await
        .with_context(|| format!("cannot listen on {}", options.listen))?;
    let gateway_addr = listener.local_addr()?;
    let gateway_url = format!("http://{gateway_addr}");
    let app = AppSpec::random(&format!("{gateway_url}/callback"));
    let login = "demo@swiftgate.invalid";
    let password = random_alnum(16);
    let emulator_listener = tokio::net::TcpListener::bind(("127.0.0.1", 0)).await?;
    let emulator: EmulatorHandle = Emulator::start(
        EmulatorConfig {
            access_token_ttl: options.access_token_ttl,
            swift_token_ttl: options.swift_token_ttl,
            storage: options.storage,
            apps: vec![app.clone()],
            users: vec![UserSpec { login: login.to_owned(), password: Secret::new(password.clone()) }],
            ..EmulatorConfig::default()
        },
        emulator_listener,
    )
    .await?;
    let state = crate::scratch::ScratchDir::new("swiftgate-demo")?;
    let key = random_alnum(24);
    let key_hash = hash_key(&key).map_err(|e| anyhow!("hashing the demo key: {e}"))?;
    let mut config =
        single_user_config(state.path(), gateway_addr, emulator.base_url(), &app, "demo", &key_hash, options.mode);
    let base = emulator.base_url();
    let account = match options.provider.as_str() {
        "hubic" => None,
        "keystone" => Some(format!(
            "provider = \"keystone\"\nauth_url = \"{base}/v3\"\nusername = \"{login}\"\npassword = \"{password}\"\nproject = \"{login}\"\n"
        )),
        "swift-v1" => Some(format!(
            "provider = \"swift-v1\"\nauth_url = \"{base}/auth/v1.0\"\nuser = \"{login}\"\nkey = \"{password}\"\n"
        )),
        other => bail!("unknown provider {other:?}: hubic, keystone or swift-v1"),
    };
    if let Some(account) = &account {
        let declared: crate::config::AccountConfig = toml::from_str(&format!("name = \"demo\"\n{account}"))?;
        config.hubic = None;
        config.accounts = vec![declared];
        config.validate()?;
    }
    let gateway = Gateway::new(&config, Arc::new(SystemClock), RenewPolicy::default())?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::run(listener, gateway, ServeOptions::default(), async {
        let _ = stop_rx.await;
    }));
    if account.is_none() {
        let (status, page) = browser_register(&gateway_url, "demo", &key, login, &password).await?;
        if status != 200 {
            bail!("demo registration failed ({status}): {page}");
        }
    }
    server::announce(
        out,
        &format!(
            "export ST_AUTH={gateway_url}/auth/v1.0\nexport ST_USER=demo\nexport ST_KEY={key}\n\
             # then, for example:  swift upload default README.md && swift list default\n\
             # emulator ({} upstream) at {} (user {login}); Ctrl-C stops the demo\n",
            options.provider,
            emulator.base_url()
        ),
    );
    shutdown.await;
    let _ = stop_tx.send(());
    let _ = server.await;
    emulator.stop().await;
    drop(state);
    Ok(())
}
