//! The `swiftgate` command: flags, logging, configuration, then one of `serve`, `demo`,
//! `emulate`, `register`, `hash-key`, `check-config`. Thin: the work is in the library.

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Parser, Subcommand};

use swiftgate::clock::SystemClock;
use swiftgate::config::Config;
#[cfg(feature = "emulator")]
use swiftgate::emulator::{AppSpec, Emulator, EmulatorConfig, StorageConfig, UserSpec};
use swiftgate::gateway::Gateway;
use swiftgate::secret::Secret;
use swiftgate::server::{self, Observer, ServeOptions};
use swiftgate::tokens::RenewPolicy;

/// How often `serve` looks for grants `swiftgate register` wrote while it runs.
const STORE_WATCH: Duration = Duration::from_secs(10);
/// How often `serve` looks at the TLS certificate and key for a new pair.
const CERT_WATCH: Duration = Duration::from_secs(2);

/// How often a shared store is pinged (spooled grants are written once it answers), and its
/// grants checked for registrations another instance completed.
const SHARED_WATCH: Duration = Duration::from_secs(1);

#[derive(Parser)]
#[command(
    name = "swiftgate",
    version,
    about = "Swift v1.0 auth gateway in front of Keystone v3, Swift v1, static and HubiC accounts"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Listen address, overriding the file and SWIFTGATE_LISTEN.
        #[arg(long)]
        listen: Option<SocketAddr>,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// Also authenticate each account once and print its storage URL and token life.
        #[arg(long)]
        online: bool,
    },
    /// Print an argon2 hash of a key (read from stdin) for the `key_hash` of a user.
    HashKey,
    /// Register a user's HubiC account without the gateway's web pages.
    Register {
        /// Configuration file (TOML).
        #[arg(long)]
        config: PathBuf,
        /// The gateway user whose account to register.
        #[arg(long)]
        user: String,
        /// Fill HubiC's login form with this HubiC e-mail (the password is prompted for).
        #[arg(long)]
        login: Option<String>,
        /// Do not listen for the callback; only accept the pasted redirect URL.
        #[arg(long)]
        no_listen: bool,
    },
    /// Copy every grant from one store to the other: `--from file --to redis` moves an
    /// instance's grants to the shared store, `--from redis --to file` back. The file store is
    /// the config's `state_dir`; the Redis store its `[store]` table. A grant already there and
    /// newer is kept.
    StoreCopy {
        /// Configuration file (TOML) with a `[store]` table of kind `redis`.
        #[arg(long)]
        config: PathBuf,
        /// `file` or `redis`.
        #[arg(long, value_parser = ["file", "redis"])]
        from: String,
        /// `redis` or `file`.
        #[arg(long, value_parser = ["file", "redis"])]
        to: String,
    },
    /// Run the HubiC emulator.
    #[cfg(feature = "emulator")]
    Emulate {
        /// Listen address; the base URL is printed as the first line of stdout.
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: SocketAddr,
        #[command(flatten)]
        emulator: EmulatorFlags,
        /// Register an app: CLIENT_ID:CLIENT_SECRET:REDIRECT_URI (repeatable).
        #[arg(long = "app")]
        apps: Vec<String>,
        /// Create a user: LOGIN:PASSWORD (repeatable).
        #[arg(long = "user")]
        users: Vec<String>,
        /// Keep object data here instead of a temporary directory.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Largest object the built-in storage accepts, in bytes.
        #[arg(long, default_value_t = 5 * 1024 * 1024 * 1024 + 2)]
        max_file_size: u64,
        /// Answer 509 to a consent POST sooner than this many seconds after the page.
        #[arg(long)]
        min_post_delay: Option<u64>,
    },
    /// Run the emulator and the gateway together with a registered demo user.
    #[cfg(feature = "emulator")]
    Demo {
        /// Gateway listen address (port 0 picks a free port).
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// `proxy` (storage through the gateway) or `redirect` (upstream URL and token).
        #[arg(long, default_value = "proxy", value_parser = ["proxy", "redirect"])]
        mode: String,
        /// The upstream auth the gateway uses: `hubic` (registered through the browser flow),
        /// `keystone` or `swift-v1`, all emulated in front of the built-in storage.
        #[arg(long, default_value = "hubic", value_parser = ["hubic", "keystone", "swift-v1"])]
        provider: String,
        #[command(flatten)]
        emulator: EmulatorFlags,
    },
}

#[cfg(feature = "emulator")]
#[derive(clap::Args)]
struct EmulatorFlags {
    /// Access-token lifetime in seconds.
    #[arg(long, default_value_t = 21600)]
    access_token_ttl: u64,
    /// Swift-token lifetime in seconds.
    #[arg(long, default_value_t = 86400)]
    swift_token_ttl: u64,
    /// Hand out tokens of this external Swift (v1.0 auth URL) instead of the built-in storage.
    #[arg(long, requires_all = ["swift_user", "swift_key"])]
    swift_auth: Option<String>,
    /// User for --swift-auth.
    #[arg(long)]
    swift_user: Option<String>,
    /// Key for --swift-auth.
    #[arg(long)]
    swift_key: Option<String>,
}

#[cfg(feature = "emulator")]
impl EmulatorFlags {
    fn storage(&self, data_dir: Option<PathBuf>, max_file_size: u64) -> StorageConfig {
        match (&self.swift_auth, &self.swift_user, &self.swift_key) {
            (Some(auth_url), Some(user), Some(key)) => StorageConfig::External {
                auth_url: auth_url.clone(),
                user: user.clone(),
                key: Secret::new(key.clone()),
            },
            _ => StorageConfig::BuiltIn { data_dir, max_file_size },
        }
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let config = match &cli.command {
        Command::Serve { config, .. } => Some(config.as_path()),
        _ => None,
    };
    swiftgate::logging::init(swiftgate::logging::format_of(config));
    // `serve` runs its own worker threads (server::run_workers); this thread is worker 0.
    let built = match cli.command {
        Command::Serve { .. } => tokio::runtime::Builder::new_current_thread().enable_all().build(),
        _ => tokio::runtime::Builder::new_multi_thread().enable_all().build(),
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("swiftgate: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("swiftgate: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn load(path: &std::path::Path) -> anyhow::Result<Config> {
    Ok(Config::load(path, |k| std::env::var(k).ok())?)
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config, listen } => {
            let mut config = load(&config)?;
            if let Some(listen) = listen {
                config.listen = listen;
                // The flag can make the configuration invalid (every interface, no public_url).
                config.validate()?;
            }
            serve(config).await
        }
        Command::CheckConfig { config, online } => check_config(load(&config)?, online).await,
        Command::HashKey => {
            let key = read_secret("Key to hash: ")?;
            if key.is_empty() {
                bail!("the key is empty");
            }
            println!("{}", swiftgate::front::hash_key(&key).map_err(|e| anyhow!("hashing failed: {e}"))?);
            Ok(())
        }
        Command::Register { config, user, login, no_listen } => register(load(&config)?, &user, login, no_listen).await,
        Command::StoreCopy { config, from, to } => store_copy(load(&config)?, &from, &to).await,
        #[cfg(feature = "emulator")]
        Command::Emulate { listen, emulator, apps, users, data_dir, max_file_size, min_post_delay } => {
            let mut app_specs = Vec::new();
            for a in &apps {
                let mut parts = a.splitn(3, ':');
                match (parts.next(), parts.next(), parts.next()) {
                    (Some(id), Some(secret), Some(redirect)) if !id.is_empty() => app_specs.push(AppSpec {
                        client_id: id.to_owned(),
                        client_secret: Secret::new(secret),
                        redirect_uri: redirect.to_owned(),
                    }),
                    _ => bail!("--app {a:?}: expected CLIENT_ID:CLIENT_SECRET:REDIRECT_URI"),
                }
            }
            let mut user_specs = Vec::new();
            for u in &users {
                match u.split_once(':') {
                    Some((login, password)) if !login.is_empty() => {
                        user_specs.push(UserSpec { login: login.to_owned(), password: Secret::new(password) })
                    }
                    _ => bail!("--user {u:?}: expected LOGIN:PASSWORD"),
                }
            }
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let config = EmulatorConfig {
                access_token_ttl: Duration::from_secs(emulator.access_token_ttl),
                swift_token_ttl: Duration::from_secs(emulator.swift_token_ttl),
                min_post_delay: min_post_delay.map(Duration::from_secs),
                storage: emulator.storage(data_dir, max_file_size),
                apps: app_specs,
                users: user_specs,
                ..EmulatorConfig::default()
            };
            let stop = server::shutdown_signal()?;
            let handle = Emulator::start(config, listener).await?;
            server::announce(&mut std::io::stdout(), &format!("{}\n", handle.base_url()));
            stop.await;
            handle.stop().await;
            Ok(())
        }
        #[cfg(feature = "emulator")]
        Command::Demo { listen, mode, provider, emulator } => {
            let options = swiftgate::demo::DemoOptions {
                listen,
                swift_token_ttl: Duration::from_secs(emulator.swift_token_ttl),
                access_token_ttl: Duration::from_secs(emulator.access_token_ttl),
                storage: emulator.storage(None, 5 * 1024 * 1024 * 1024 + 2),
                mode: if mode == "redirect" {
                    swiftgate::config::Mode::Redirect
                } else {
                    swiftgate::config::Mode::Proxy
                },
                provider,
            };
            let stop = server::shutdown_signal()?;
            let mut stdout = std::io::stdout();
            swiftgate::demo::run(options, &mut stdout, stop).await
        }
    }
}

/// `check-config`: the file's keys, secrets and certificates; with `online`, one token per
/// account, its storage URL and life printed (the token never is).
async fn check_config(config: Config, online: bool) -> anyhow::Result<()> {
    if config.hubic.is_some() {
        config.client_secret()?;
    }
    let users = config.resolved_users()?;
    if let Some(tls) = &config.tls {
        server::tls_acceptor(&tls.cert, &tls.key)?;
    }
    let accounts = config.resolved_accounts();
    for (i, account) in config.accounts.iter().enumerate() {
        for (key, source) in account.secrets() {
            source.read().map_err(|e| anyhow!("account[{i}].{key}: {e}"))?;
        }
    }
    println!(
        "configuration OK: {} user(s), {} account(s), public URL {}",
        users.len(),
        accounts.len(),
        config.public_url()
    );
    if !online {
        return Ok(());
    }
    let policy = RenewPolicy { attempts: 1, ..RenewPolicy::default() };
    let gateway = Gateway::new(&config, Arc::new(SystemClock), policy)?;
    let mut failed = 0;
    for account in &accounts {
        let (name, provider) = (account.name(), account.provider());
        // The usage call reaches the storage (or HubiC's API) with the token: a token the
        // storage refuses is found here, not by the first client.
        let checked = match gateway.tokens().credentials(name).await {
            Ok(cached) => gateway.tokens().usage(name).await.map(|usage| (cached, usage)),
            Err(e) => Err(e),
        };
        match checked {
            Ok((cached, usage)) => {
                let left = cached.creds.expires.duration_since(std::time::SystemTime::now()).unwrap_or_default();
                println!(
                    "account {name} ({provider}): OK, storage URL {}, token valid for {} s, {} bytes used",
                    cached.creds.endpoint,
                    left.as_secs(),
                    usage.used
                );
            }
            Err(e) => {
                failed += 1;
                println!("account {name} ({provider}): FAILED: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} account(s) could not authenticate", accounts.len());
    }
    Ok(())
}

async fn serve(mut config: Config) -> anyhow::Result<()> {
    let (tls, certificates) = match &config.tls {
        Some(t) => {
            let (acceptor, certificates) = server::tls_acceptor(&t.cert, &t.key)?;
            (Some(acceptor), Some(certificates))
        }
        None => (None, None),
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    // With port 0 the default public URL must name the port actually bound.
    config.listen = listener.local_addr()?;
    let gateway = Gateway::new(&config, Arc::new(SystemClock), RenewPolicy::default())?;
    let observer = Observer { metrics: gateway.metrics().clone(), access_log: gateway.access_log() };
    let options = ServeOptions {
        tls,
        stall_cut: config.proxy.settings().stall_cut(),
        connections_per_address: config.max_connections_per_address,
        head_memory: config.max_head_memory,
        observer: Some(Arc::new(observer)),
        drain_timeout: Duration::from_secs(config.drain_timeout),
        ..ServeOptions::default()
    };
    // Ready once every account has had its first credential fetch (or failure).
    let warming = gateway.clone();
    tokio::spawn(async move {
        warming.tokens().clone().warm_up().await;
        warming.readiness().started();
    });
    if gateway.registrar().is_some() {
        let watched = gateway.clone();
        // A registration another instance completed is taken up within the shared period.
        let every = if gateway.tokens().shared().is_some() { SHARED_WATCH } else { STORE_WATCH };
        tokio::spawn(async move {
            if let Some(registrar) = watched.registrar() {
                registrar.watch_store(every).await;
            }
        });
    }
    tokio::spawn(gateway.tokens().clone().watch_sources(STORE_WATCH));
    tokio::spawn(gateway.tokens().clone().keep_shared(SHARED_WATCH));
    // SIGHUP (`systemctl reload`) reloads the certificate; without TLS it is logged and
    // ignored, never the end of the process.
    let hangups = server::hangups();
    match certificates {
        Some(certificates) => drop(tokio::spawn(certificates.watch(CERT_WATCH, hangups))),
        None => drop(tokio::spawn(async move {
            let mut hangups = hangups;
            loop {
                hangups.next().await;
                tracing::info!("SIGHUP: nothing to reload without [tls]");
            }
        })),
    }
    let mut signals = server::StopSignals::new()?;
    let hurry = options.hurry.clone();
    let draining = gateway.clone();
    let drain_timeout = config.drain_timeout;
    let stop = async move {
        signals.next().await;
        draining.readiness().drain();
        notify(sd_notify::NotifyState::Stopping);
        tracing::info!(
            drain_timeout_s = drain_timeout,
            "draining: transfers in flight finish, /readyz says 503; a second signal stops at once"
        );
        tokio::spawn(async move {
            signals.next().await;
            hurry.cancel();
        });
    };
    server::announce(&mut std::io::stdout(), &format!("{}\n", config.public_url()));
    notify(sd_notify::NotifyState::Ready);
    let workers = config.worker_count();
    tracing::info!(listen = %config.listen, public_url = %config.public_url(), workers, "swiftgate serving");
    server::run_workers(listener, gateway, options, workers, stop).await.context("serving failed")?;
    tracing::info!("swiftgate stopped");
    Ok(())
}

/// Tells systemd (`Type=notify`, `NOTIFY_SOCKET`) `state`; nothing without a socket.
fn notify(state: sd_notify::NotifyState<'_>) {
    if let Err(e) = sd_notify::notify(false, &[state]) {
        tracing::warn!(cause = %e, "cannot notify systemd");
    }
}

/// Reads a secret: a no-echo prompt on a terminal, one line of stdin otherwise.
fn read_secret(prompt: &str) -> anyhow::Result<String> {
    use std::io::IsTerminal;
    if std::io::stdin().is_terminal() {
        return Ok(rpassword::prompt_password(prompt)?);
    }
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// `swiftgate store-copy`: each grant of one store written to the other, then read back.
async fn store_copy(config: Config, from: &str, to: &str) -> anyhow::Result<()> {
    use swiftgate::store::{FileStore, GrantStore, RedisStore};
    if from == to {
        bail!("--from and --to name the same store");
    }
    if config.store.kind != swiftgate::config::StoreKind::Redis {
        bail!("the configuration's [store] is not of kind \"redis\": there is nothing to copy to or from");
    }
    let files = FileStore::open(&config.state_dir)?;
    let redis = RedisStore::open(&config.store, &config.state_dir)?;
    redis.ping().await.with_context(|| format!("the Redis store at {}", redis.place()))?;
    let to_redis = to == "redis";
    let (source, target): (&dyn GrantStore, &dyn GrantStore) =
        if to_redis { (&files, &redis) } else { (&redis, &files) };
    let accounts = if to_redis { files.accounts()? } else { redis.accounts().await? };
    let (mut copied, mut kept) = (0, 0);
    for account in &accounts {
        let Some(grant) = source.load(account).await? else { continue };
        // Written over an older grant only, as the Redis store itself does.
        let written = match to_redis {
            true => redis.put_grant(account, &grant).await?,
            false => match files.load(account).await? {
                Some(there) if there.registered_at > grant.registered_at => false,
                _ => files.save(account, &grant).await.map(|()| true)?,
            },
        };
        match written {
            true if target.load(account).await?.as_ref() == Some(&grant) => {
                copied += 1;
                println!("{account}: copied");
            }
            true => bail!("{account}: written, but not read back the same"),
            false => {
                kept += 1;
                println!("{account}: kept the newer grant already in the {to} store");
            }
        }
    }
    println!("{copied} copied, {kept} kept, from the {from} store to the {to} store");
    Ok(())
}

async fn register(config: Config, user: &str, login: Option<String>, no_listen: bool) -> anyhow::Result<()> {
    let users = config.resolved_users()?;
    let account = users
        .iter()
        .find(|u| u.name == user)
        .map(|u| u.account.clone())
        .ok_or_else(|| anyhow!("no user {user:?} in the configuration"))?;
    let gateway = Gateway::new(&config, Arc::new(SystemClock), RenewPolicy::default())?;
    let registrar = match gateway.registrar() {
        Some(r) if r.registers(&account) => r,
        _ => bail!("account {account:?} is not a HubiC account: it needs no registration"),
    };
    if let Some(login) = login {
        let password = Secret::new(read_secret(&format!("HubiC password for {login}: "))?);
        registrar.autoregister(&account, &login, &password).await?;
        println!("registered account {account}");
        return Ok(());
    }
    let mut done = registrar.subscribe();
    let (_, url) = registrar.begin(&account).await?;
    println!("Open this URL in a browser and authorise the application:\n\n  {url}\n");
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = if no_listen {
        None
    } else {
        match tokio::net::TcpListener::bind(config.listen).await {
            Ok(listener) => {
                println!(
                    "Waiting for HubiC's redirect to {}/callback, or paste the URL you were sent to:",
                    config.public_url()
                );
                // The browser comes back as `serve` would receive it: over TLS if so configured.
                let tls = config.tls.as_ref().map(|t| server::tls_acceptor(&t.cert, &t.key)).transpose()?;
                let options = ServeOptions { tls: tls.map(|(acceptor, _)| acceptor), ..ServeOptions::default() };
                Some(tokio::spawn(server::run(listener, gateway.clone(), options, async {
                    let _ = stop_rx.await;
                })))
            }
            Err(e) => {
                println!("Cannot listen on {} ({e}); paste the URL you were redirected to:", config.listen);
                None
            }
        }
    };
    if server.is_none() && no_listen {
        println!("Paste the URL you were redirected to:");
    }
    let (line_tx, mut line_rx) = tokio::sync::mpsc::channel::<String>(4);
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            if line_tx.blocking_send(line).is_err() {
                break;
            }
        }
    });
    let result: anyhow::Result<()> = loop {
        tokio::select! {
            registered = done.recv() => match registered {
                Ok(a) if a == account => break Ok(()),
                Ok(_) => continue,
                Err(_) => break Err(anyhow!("registration channel closed")),
            },
            line = line_rx.recv() => match line {
                Some(line) => {
                    let line = line.trim();
                    let Some((_, query)) = line.split_once('?') else {
                        println!("That is not the redirect URL (it has no query string); paste the whole URL:");
                        continue;
                    };
                    match registrar.complete(query, None).await {
                        Ok(_) => break Ok(()),
                        Err(e) => break Err(e.into()),
                    }
                }
                None => break Err(anyhow!("standard input closed before the registration completed")),
            },
        }
    };
    let _ = stop_tx.send(());
    if let Some(server) = server {
        let _ = server.await;
    }
    result?;
    println!("registered account {account}");
    Ok(())
}
