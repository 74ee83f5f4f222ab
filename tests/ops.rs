//! What an operator of `swiftgate serve` reads and does, with the tools that would do it:
//! `/metrics` checked by Prometheus' `promtool`, the JSON log parsed line by line, readiness
//! and `NOTIFY_SOCKET` during a SIGTERM drain, a certificate swapped on disk and read back by
//! `openssl s_client`, and the systemd unit checked by `systemd-analyze verify`. The gateway
//! runs as its own process in front of `common::pattern`, a Swift that keeps no object bytes.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::pattern::{chunks, expected_md5, generated, MIB, TOKEN as UPSTREAM_TOKEN};
use md5::{Digest, Md5};

const BIN: &str = env!("CARGO_BIN_EXE_swiftgate");
const DEADLINE: Duration = Duration::from_secs(60);

/// `swiftgate serve` as a child: its base URL, its stderr (the log) in a file, SIGKILL on drop.
struct Served {
    child: Child,
    url: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let status = self.child.wait();
        if std::thread::panicking() {
            eprintln!("gateway {status:?}, its log:\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

impl Served {
    /// Starts the gateway with one `swift-v1` account on `upstream`, `extra` added to its
    /// configuration and `env` to its environment, and waits for its URL.
    fn start(upstream: &str, extra: &str, env: &[(&str, &str)]) -> Served {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, upstream, extra, env)
    }

    fn start_in(dir: tempfile::TempDir, upstream: &str, extra: &str, env: &[(&str, &str)]) -> Served {
        let config = dir.path().join("swiftgate.toml");
        std::fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:0\"\nstate_dir = \"{}\"\n{extra}\n\
                 [[account]]\nname = \"pat\"\nprovider = \"swift-v1\"\nauth_url = \"{upstream}/auth/v1.0\"\nuser = \"pattern\"\nkey = \"pattern\"\n\
                 [[user]]\nname = \"{}\"\nkey_hash = \"{}\"\naccount = \"pat\"\n",
                dir.path().display(),
                common::USER,
                common::key_hash()
            ),
        )
        .unwrap();
        let log = dir.path().join("stderr.log");
        let mut child = Command::new(BIN)
            .args(["serve", "--config"])
            .arg(&config)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let url = common::first_line(&mut child, DEADLINE);
        assert!(!url.is_empty(), "the gateway exited: {}", std::fs::read_to_string(&log).unwrap_or_default());
        Served { child, url, log, _dir: dir }
    }

    fn signal(&self, name: &str) {
        assert!(Command::new("kill").args(["-s", name, &self.child.id().to_string()]).status().unwrap().success());
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    /// The exit status, polled until `within` has passed.
    fn exit_within(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }
}

/// A `NOTIFY_SOCKET` for the gateway to tell systemd's notifications to.
struct Notify {
    socket: std::os::unix::net::UnixDatagram,
    path: String,
}

impl Notify {
    fn bind(dir: &Path) -> Notify {
        let path = dir.join("notify.sock");
        let socket = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
        socket.set_read_timeout(Some(DEADLINE)).unwrap();
        Notify { socket, path: path.to_str().unwrap().to_owned() }
    }

    /// The next notification, within the deadline.
    fn next(&self) -> String {
        let mut buf = [0u8; 256];
        let n = self.socket.recv(&mut buf).expect("a notification in time");
        String::from_utf8_lossy(&buf[..n]).trim_end().to_owned()
    }
}

/// Logs in as the test user: storage URL and gateway token.
async fn login(http: &reqwest::Client, gw: &str) -> (String, String) {
    let resp = http
        .get(format!("{gw}/auth/v1.0"))
        .header("x-auth-user", common::USER)
        .header("x-auth-key", common::KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let header = |name: &str| resp.headers()[name].to_str().unwrap().to_owned();
    (header("x-storage-url"), header("x-auth-token"))
}

/// PUTs `len` bytes of the pattern to `url`.
async fn put(http: &reqwest::Client, url: &str, token: &str, len: u64, parts: Arc<Vec<bytes::Bytes>>) {
    let (body, _) = generated(len, parts);
    let resp = http
        .put(url)
        .header("x-auth-token", token)
        .header("content-length", len)
        .body(reqwest::Body::wrap(body))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201, "PUT {url}");
}

/// The body of a GET of `url`, as its MD5 and length; `on_first` runs once the first MiB is in.
async fn get_md5(http: &reqwest::Client, url: &str, token: &str, on_first: impl FnOnce()) -> (String, u64) {
    let mut resp = http.get(url).header("x-auth-token", token).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let (mut md5, mut len, mut on_first) = (Md5::new(), 0u64, Some(on_first));
    while let Some(chunk) = resp.chunk().await.expect("the body arrives whole") {
        md5.update(&chunk);
        len += chunk.len() as u64;
        if len >= MIB {
            if let Some(f) = on_first.take() {
                f();
            }
        }
    }
    (hex::encode(md5.finalize()), len)
}

/// The value of the sample `name` (labels included, as written) in an exposition.
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_json_logs_after_a_mix_of_traffic() {
    let parts = chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let gw = Served::start(&upstream.origin, "log_format = \"json\"", &[("SWIFTGATE_LOG", "info")]);
    let http = reqwest::Client::new();
    let metrics = || async { http.get(format!("{}/metrics", gw.url)).send().await.unwrap().text().await.unwrap() };
    let before = metrics().await;
    let moved = |text: &str, direction: &str| {
        sample(text, &format!("swiftgate_transferred_bytes_total{{direction=\"{direction}\"}}")).unwrap()
    };

    let (url, token) = login(&http, &gw.url).await;
    let refused = http.get(format!("{}/auth/v1.0", gw.url)).header("x-auth-user", common::USER);
    assert_eq!(refused.header("x-auth-key", "wrong").send().await.unwrap().status(), 401);
    let len = 64 * MIB;
    put(&http, &format!("{url}/c/big?temp_url_sig=s3cr3t&temp_url_expires=1"), &token, len, parts.clone()).await;
    assert_eq!(get_md5(&http, &format!("{url}/c/big"), &token, || {}).await, (expected_md5(len, &parts), len));
    for path in ["/healthz", "/readyz"] {
        assert!(http.get(format!("{}{path}", gw.url)).send().await.unwrap().status().is_success(), "{path}");
    }
    // The pattern upstream has no `/info`: whatever it answers is counted as such.
    let info = http.get(format!("{}/info", gw.url)).send().await.unwrap().status().as_u16();
    let missing = http.get(format!("{url}/c/none")).header("x-auth-token", &token).send().await.unwrap();
    assert_eq!(missing.status(), 404);

    let after = metrics().await;
    assert!(moved(&after, "in") - moved(&before, "in") >= len as f64, "{after}");
    assert!(moved(&after, "out") - moved(&before, "out") >= len as f64, "{after}");
    for (name, at_least) in [
        ("swiftgate_requests_total{kind=\"storage\",code=\"201\"}", 1.0),
        ("swiftgate_requests_total{kind=\"storage\",code=\"200\"}", 1.0),
        ("swiftgate_requests_total{kind=\"storage\",code=\"404\"}", 1.0),
        ("swiftgate_requests_total{kind=\"auth\",code=\"200\"}", 1.0),
        ("swiftgate_requests_total{kind=\"auth\",code=\"401\"}", 1.0),
        ("swiftgate_requests_total{kind=\"ops\",code=\"200\"}", 3.0),
        ("swiftgate_request_duration_seconds_count{kind=\"storage\"}", 3.0),
        ("swiftgate_upstream_renewals_total{account=\"pat\",result=\"ok\"}", 1.0),
        ("swiftgate_upstream_token_expiry_seconds{account=\"pat\"}", 1.0),
        ("swiftgate_open_connections", 1.0),
    ] {
        let got = sample(&after, name).unwrap_or_else(|| panic!("{name} missing from\n{after}"));
        assert!(got >= at_least, "{name} = {got}, want at least {at_least}");
    }
    let info = format!("swiftgate_requests_total{{kind=\"info\",code=\"{info}\"}}");
    assert!(sample(&after, &info).is_some_and(|n| n >= 1.0), "{info} missing from\n{after}");
    assert!(!after.contains(&token) && !after.contains(UPSTREAM_TOKEN) && !after.contains("/c/big"));

    // A scraper that asks for OpenMetrics (Prometheus does) gets it; promtool reads the older
    // text format, which the others get.
    let open = http.get(format!("{}/metrics", gw.url)).header("accept", "application/openmetrics-text; version=1.0.0");
    let open = open.send().await.unwrap().text().await.unwrap();
    assert!(open.ends_with("# EOF\n") && open.contains("# TYPE swiftgate_requests counter"), "{open}");
    if common::tool_available("promtool", "--version", "prometheus") {
        let mut check = Command::new("promtool")
            .args(["check", "metrics"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        use std::io::Write;
        check.stdin.take().unwrap().write_all(after.as_bytes()).unwrap();
        let out = check.wait_with_output().unwrap();
        let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success() && said.trim().is_empty(), "promtool check metrics:\n{said}\n{after}");
    }

    // The log: one JSON object per line, an access line per request, no secret anywhere.
    let log = gw.log_text();
    let lines: Vec<serde_json::Value> =
        log.lines().map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}"))).collect();
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "swiftgate::access").collect();
    let put_line = access.iter().find(|l| l["method"] == "PUT").expect("an access line for the PUT");
    assert_eq!(put_line["status"], 201);
    assert_eq!(put_line["user"], common::USER);
    assert_eq!(put_line["account"], "pat");
    assert_eq!(put_line["path"], "/v1/AUTH_pattern/c/big?temp_url_sig=-&temp_url_expires=-", "{put_line}");
    assert!(put_line["bytes_in"].as_u64().unwrap() >= len, "{put_line}");
    assert!(put_line["engine"] == "fast" || put_line["engine"] == "hyper", "{put_line}");
    let get_line = access.iter().find(|l| l["method"] == "GET" && l["path"] == "/v1/AUTH_pattern/c/big").unwrap();
    assert!(get_line["bytes_out"].as_u64().unwrap() >= len, "{get_line}");
    assert!(access.iter().any(|l| l["path"] == "/auth/v1.0" && l["status"] == 401));
    for secret in [common::KEY, token.as_str(), UPSTREAM_TOKEN, "s3cr3t", "pattern\""] {
        assert!(!log.contains(secret), "the log holds {secret:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_access_log_can_be_turned_off_and_sighup_without_tls_is_harmless() {
    let upstream = common::pattern::start(chunks()).await;
    let env = [("SWIFTGATE_ACCESS_LOG", "false"), ("SWIFTGATE_LOG", "info")];
    let gw = Served::start(&upstream.origin, "log_format = \"json\"", &env);
    let http = reqwest::Client::new();
    let (url, token) = login(&http, &gw.url).await;
    let missing = http.get(format!("{url}/c/none")).header("x-auth-token", &token).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    // `systemctl reload` without [tls]: logged, and the gateway serves on.
    gw.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    while !gw.log_text().contains("nothing to reload") {
        assert!(Instant::now() < deadline, "SIGHUP not seen: {}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(http.get(format!("{}/healthz", gw.url)).send().await.unwrap().status().is_success());
    let log = gw.log_text();
    assert!(log.contains("swiftgate serving"), "{log}");
    assert!(!log.contains("swiftgate::access"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_a_download_finish_while_readyz_says_503() {
    let parts = chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let notify = Notify::bind(dir.path());
    let mut gw = Served::start_in(dir, &upstream.origin, "", &[("NOTIFY_SOCKET", notify.path.as_str())]);
    assert_eq!(notify.next(), "READY=1");

    let http = reqwest::Client::new();
    // Ready once the account's first credentials are in.
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resp = http.get(format!("{}/readyz", gw.url)).send().await.unwrap();
        let (status, text) = (resp.status(), resp.text().await.unwrap());
        if status == 200 {
            assert!(text.starts_with("ready\n") && text.contains("account pat: token held"), "{text}");
            break;
        }
        assert!(Instant::now() < deadline, "never ready: {text}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let (url, token) = login(&http, &gw.url).await;
    let len = 1024 * MIB;
    put(&http, &format!("{url}/c/huge"), &token, len, parts.clone()).await;

    let (tx, first_mib) = std::sync::mpsc::channel();
    let download = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tokio::spawn(
            async move { get_md5(&http, &format!("{url}/c/huge"), &token, move || tx.send(()).unwrap()).await },
        )
    };
    tokio::task::spawn_blocking(move || first_mib.recv_timeout(DEADLINE).expect("the download started")).await.unwrap();
    gw.signal("TERM");
    assert_eq!(notify.next(), "STOPPING=1");
    // A fresh client, as a load balancer's probe: readiness is gone, new work is turned away.
    // A connection that arrives as the drain begins may be closed before its first request
    // (idle connections close then), as a probe retries, this one does.
    let probe = reqwest::Client::new();
    let mut tries = 0;
    let ready = loop {
        match probe.get(format!("{}/readyz", gw.url)).send().await {
            Ok(ready) => break ready,
            Err(e) if e.is_request() && tries < 3 => tries += 1,
            Err(e) => panic!("no answer to the probe: {e}"),
        }
    };
    assert_eq!(ready.status(), 503);
    assert!(ready.text().await.unwrap().starts_with("draining"));
    let turned = probe.get(format!("{url}/c/huge")).header("x-auth-token", &token).send().await.unwrap();
    assert_eq!(turned.status(), 503);
    assert!(!download.is_finished(), "the download ended before the drain was seen; nothing was tested");
    assert_eq!(download.await.unwrap(), (expected_md5(len, &parts), len), "the download finished whole");
    let status = gw.exit_within(DEADLINE).expect("the gateway exits once the download is done");
    assert!(status.success(), "{status}");
}

/// A download that stops being read after its first MiB: it holds the gateway's drain open
/// until the drain's limit.
async fn stalled_download(gw: &Served, url: &str, token: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = gw.url.trim_start_matches("http://");
    let path = url.split_once(addr).unwrap().1;
    let mut client = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!("GET {path}/c/stalled HTTP/1.1\r\nHost: gw\r\nX-Auth-Token: {token}\r\n\r\n");
    client.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut got = 0;
    while got < MIB as usize {
        let n = tokio::time::timeout(DEADLINE, client.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "the download ended early");
        got += n;
    }
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_drain_ends_at_its_limit_or_at_a_second_sigterm() {
    let parts = chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let http = reqwest::Client::new();
    for second_signal in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let notify = Notify::bind(dir.path());
        // Without a second signal, the drain ends at its 3 s limit; with one, it would last 10 min.
        let limit = if second_signal { "drain_timeout = 600" } else { "drain_timeout = 3" };
        let mut gw = Served::start_in(dir, &upstream.origin, limit, &[("NOTIFY_SOCKET", notify.path.as_str())]);
        let (url, token) = login(&http, &gw.url).await;
        put(&http, &format!("{url}/c/stalled"), &token, 256 * MIB, parts.clone()).await;
        let _stalled = stalled_download(&gw, &url, &token).await;
        gw.signal("TERM");
        while notify.next() != "STOPPING=1" {}
        assert!(gw.exit_within(Duration::ZERO).is_none(), "the drain waits for the stalled download");
        if second_signal {
            gw.signal("TERM");
        }
        let status = gw.exit_within(Duration::from_secs(20)).expect("the gateway stops");
        assert!(status.success(), "{status}");
        let log = gw.log_text();
        let said = if second_signal { "drain cut short" } else { "end of the drain" };
        assert!(log.contains(said), "{log}");
    }
}

/// A self-signed certificate for `localhost` and its key, valid from `from` to `until`
/// (years).
fn pair(dir: &Path, name: &str, from: i32, until: i32) -> (PathBuf, PathBuf) {
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
    params.not_before = rcgen::date_time_ymd(from, 1, 1);
    params.not_after = rcgen::date_time_ymd(until, 1, 1);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    let (cert_path, key_path) = (dir.join(format!("{name}.crt")), dir.join(format!("{name}.key")));
    std::fs::write(&cert_path, cert.pem()).unwrap();
    std::fs::write(&key_path, key.serialize_pem()).unwrap();
    (cert_path, key_path)
}

/// Puts `from`'s file in place of `to` at once, as certbot's renewal swaps a link.
fn swap_in(from: &Path, to: &Path) {
    let staged = to.with_extension("new");
    std::fs::copy(from, &staged).unwrap();
    std::fs::rename(&staged, to).unwrap();
}

/// The SHA-256 fingerprint of the certificate `openssl s_client` is served at `addr`.
fn served_fingerprint(addr: &str) -> String {
    let shown = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-servername", "localhost"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .unwrap();
    fingerprint_of(&shown.stdout)
}

fn fingerprint_of(pem: &[u8]) -> String {
    let mut x509 = Command::new("openssl")
        .args(["x509", "-noout", "-fingerprint", "-sha256"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    x509.stdin.take().unwrap().write_all(pem).unwrap();
    String::from_utf8_lossy(&x509.wait_with_output().unwrap().stdout).trim().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_swapped_on_disk_serves_new_handshakes_while_a_download_goes_on() {
    if !common::tool_available("openssl", "version", "openssl") {
        return;
    }
    let parts = chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let dir = tempfile::tempdir().unwrap();
    let (old_cert, old_key) = pair(dir.path(), "old", 2020, 2090);
    let (new_cert, new_key) = pair(dir.path(), "new", 2020, 2090);
    let (expired_cert, expired_key) = pair(dir.path(), "expired", 2000, 2001);
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    swap_in(&old_cert, &cert);
    swap_in(&old_key, &key);
    let tls = format!("[tls]\ncert = \"{}\"\nkey = \"{}\"", cert.display(), key.display());
    let mut gw = Served::start_in(dir, &upstream.origin, &tls, &[("SWIFTGATE_LOG", "info")]);
    let addr = gw.url.trim_start_matches("https://").to_owned();
    let fingerprint = |p: &Path| fingerprint_of(&std::fs::read(p).unwrap());
    assert_eq!(served_fingerprint(&addr), fingerprint(&old_cert));

    let http = reqwest::Client::builder().danger_accept_invalid_certs(true).build().unwrap();
    let (url, token) = login(&http, &gw.url).await;
    let len = 512 * MIB;
    put(&http, &format!("{url}/c/o"), &token, len, parts.clone()).await;
    let (tx, first_mib) = std::sync::mpsc::channel();
    let download = {
        let (http, url, token) = (http.clone(), url.clone(), token.clone());
        tokio::spawn(async move { get_md5(&http, &format!("{url}/c/o"), &token, move || tx.send(()).unwrap()).await })
    };
    tokio::task::spawn_blocking(move || first_mib.recv_timeout(DEADLINE).expect("the download started")).await.unwrap();

    // Renewed on disk: new handshakes get the new pair within a few seconds.
    swap_in(&new_key, &key);
    swap_in(&new_cert, &cert);
    let (addr_, want) = (addr.clone(), fingerprint(&new_cert));
    let seen = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let served = served_fingerprint(&addr_);
            if served == want || Instant::now() > deadline {
                return served == want;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    assert!(seen.await.unwrap(), "the new certificate was not served within 10 s");
    assert!(!download.is_finished(), "the download ended before the swap; nothing was tested");
    assert_eq!(download.await.unwrap(), (expected_md5(len, &parts), len), "the download finished whole");

    // An expired pair, then a mismatched one, asked for with SIGHUP: refused, the new one stays.
    for (bad_cert, bad_key, why) in [(&expired_cert, &expired_key, "not valid now"), (&old_cert, &new_key, "fit")] {
        swap_in(bad_key, &key);
        swap_in(bad_cert, &cert);
        gw.signal("HUP");
        let deadline = Instant::now() + DEADLINE;
        while !gw.log_text().lines().any(|l| l.contains("TLS certificate not reloaded") && l.contains(why)) {
            assert!(Instant::now() < deadline, "no refusal logged: {}", gw.log_text());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(served_fingerprint(&addr), fingerprint(&new_cert));
    }
    // A key that is gone: refused too.
    std::fs::remove_file(&key).unwrap();
    gw.signal("HUP");
    let deadline = Instant::now() + DEADLINE;
    while !gw.log_text().lines().any(|l| l.contains("TLS certificate not reloaded") && l.contains("cannot read")) {
        assert!(Instant::now() < deadline, "no refusal logged: {}", gw.log_text());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(served_fingerprint(&addr), fingerprint(&new_cert));
    assert!(gw.exit_within(Duration::ZERO).is_none(), "SIGHUP does not end the gateway");
}

#[test]
fn the_systemd_unit_verifies_cleanly() {
    if !common::tool_available("systemd-analyze", "--version", "systemd") {
        return;
    }
    // `verify` checks that ExecStart's program exists: the copy names the one just built.
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/swiftgate.service")).unwrap();
    assert!(unit.contains("Type=notify") && unit.contains("ExecReload="), "{unit}");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("swiftgate.service");
    let exec = "ExecStart=/usr/bin/swiftgate ";
    assert!(unit.contains(exec));
    std::fs::write(&copy, unit.replace(exec, &format!("ExecStart={BIN} "))).unwrap();
    let out = Command::new("systemd-analyze").arg("verify").arg(&copy).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && said.trim().is_empty(), "systemd-analyze verify:\n{said}");
}

#[test]
fn the_example_configuration_checks_clean() {
    let example = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/dist/swiftgate.toml.example")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    // Its secrets and state where this test can put them.
    std::fs::write(dir.path().join("rgw.key"), "a key\n").unwrap();
    std::fs::write(dir.path().join("backup.hash"), common::key_hash()).unwrap();
    let local = example
        .replace("/etc/swiftgate/", &format!("{}/", dir.path().display()))
        .replace("\"/var/lib/swiftgate\"", &format!("\"{}/state\"", dir.path().display()));
    assert_ne!(local, example);
    let config = dir.path().join("swiftgate.toml");
    std::fs::write(&config, local).unwrap();
    let out = Command::new(BIN).args(["check-config", "--config"]).arg(&config).output().unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}{}", String::from_utf8_lossy(&out.stderr));
    assert!(said.starts_with("configuration OK"), "{said}");
}
