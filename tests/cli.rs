//! The `swiftgate` binary as users run it: `demo` driven by python-swiftclient's `swift` CLI,
//! `hash-key`, `check-config`, and `emulate`'s first stdout line.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_swiftgate");

/// A child process with its own TMPDIR. When dropped it gets SIGTERM, as a user would stop it,
/// and 30 s to exit before SIGKILL; then the TMPDIR goes, with anything the child left there.
struct Running(Child, tempfile::TempDir);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.0.id().to_string()]).stderr(Stdio::null()).status();
        if poll_exit(&mut self.0, Duration::from_secs(30)).is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// The child's exit status, polled until `within` has passed.
fn poll_exit(child: &mut Child, within: Duration) -> Option<std::process::ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Spawns `cmd` with its own TMPDIR and its stdout read line by line into the receiver.
fn launch(mut cmd: Command) -> (Running, mpsc::Receiver<String>) {
    let tmp = tempfile::tempdir().unwrap();
    let mut child = cmd
        .env("SWIFTGATE_LOG", "warn")
        .env("TMPDIR", tmp.path())
        .stdout(Stdio::piped())
        .spawn()
        .expect("swiftgate starts");
    let stdout = child.stdout.take().unwrap();
    (Running(child, tmp), lines_of(stdout))
}

/// The lines of a child's output, read on a thread of their own. It reads to the end even when
/// nobody takes the lines any more, so the pipe stays open: a write to a closed pipe fails (the
/// demo, which prints five lines where `start_demo` takes three, once exited on it; it now
/// warns and serves on).
fn lines_of(from: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Starts `swiftgate args…` and returns it with its first `n` stdout lines (60 s deadline).
fn start(args: &[&str], n: usize) -> (Running, Vec<String>) {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stderr(Stdio::inherit());
    let (running, rx) = launch(cmd);
    let lines = (0..n)
        .map(|i| rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("line {i} of {args:?} never came")))
        .collect();
    (running, lines)
}

fn swift_cli_available() -> bool {
    common::tool_available("swift", "--version", "python3-swiftclient")
}

fn rclone_available() -> bool {
    common::tool_available("rclone", "version", "rclone")
}

/// `swift args…` in `dir` with exactly the v1.0 environment `env` (no stray OS_* variables,
/// which would switch the auth version).
fn swift_command(dir: &Path, env: &[(String, String)], args: &[&str]) -> Command {
    let mut cmd = Command::new("swift");
    cmd.args(args).current_dir(dir);
    for var in ["OS_AUTH_URL", "OS_USERNAME", "OS_PASSWORD", "OS_STORAGE_URL", "OS_AUTH_TOKEN", "ST_AUTH_VERSION"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    cmd
}

fn swift(dir: &Path, env: &[(String, String)], args: &[&str]) -> std::process::Output {
    swift_command(dir, env, args).output().expect("swift runs")
}

/// Starts `swiftgate demo args…` and returns it with ST_AUTH, ST_USER, ST_KEY from its
/// first three lines.
fn start_demo(args: &[&str]) -> (Running, Vec<(String, String)>) {
    let mut all = vec!["demo", "--listen", "127.0.0.1:0"];
    all.extend_from_slice(args);
    let (demo, lines) = start(&all, 3);
    let env = lines
        .iter()
        .zip(["ST_AUTH", "ST_USER", "ST_KEY"])
        .map(|(line, name)| {
            let value =
                line.strip_prefix(&format!("export {name}=")).unwrap_or_else(|| panic!("unexpected line {line:?}"));
            (name.to_owned(), value.to_owned())
        })
        .collect();
    (demo, env)
}

#[test]
fn swift_cli_against_demo_in_redirect_mode() {
    swift_cli_against_demo("redirect");
}

#[test]
fn swift_cli_against_demo_in_proxy_mode() {
    swift_cli_against_demo("proxy");
}

#[test]
fn swift_cli_against_demo_with_keystone_in_redirect_mode() {
    swift_cli_against_demo_of("redirect", "keystone");
}

#[test]
fn swift_cli_against_demo_with_swift_v1_in_proxy_mode() {
    swift_cli_against_demo_of("proxy", "swift-v1");
}

fn swift_cli_against_demo(mode: &str) {
    swift_cli_against_demo_of(mode, "hubic");
}

fn swift_cli_against_demo_of(mode: &str, provider: &str) {
    if !swift_cli_available() {
        return;
    }
    let (_demo, env) = start_demo(&["--mode", mode, "--provider", provider]);
    assert!(env[0].1.starts_with("http://127.0.0.1:") && env[0].1.ends_with("/auth/v1.0"));
    let dir = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(dir.path().join("blob.bin"), &data).unwrap();
    let ok = |out: std::process::Output, what: &str| {
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let auth = ok(swift(dir.path(), &env, &["auth"]), "auth");
    let gateway = env[0].1.trim_end_matches("/auth/v1.0");
    assert_eq!(auth.contains(&format!("OS_STORAGE_URL={gateway}/v1/AUTH_")), mode == "proxy", "{auth}");
    let stat = ok(swift(dir.path(), &env, &["stat"]), "stat");
    assert!(stat.contains("Containers: 2"), "{stat}");
    ok(swift(dir.path(), &env, &["upload", "c1", "blob.bin"]), "upload");
    let list = ok(swift(dir.path(), &env, &["list", "c1"]), "list");
    assert_eq!(list.trim(), "blob.bin");
    ok(swift(dir.path(), &env, &["download", "c1", "blob.bin", "-o", "back.bin"]), "download");
    assert!(std::fs::read(dir.path().join("back.bin")).unwrap() == data, "downloaded bytes differ");
    let mut wrong = env.clone();
    wrong[2].1.push('x');
    let out = swift(dir.path(), &wrong, &["stat"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("401"), "{stderr}");
}

#[test]
fn hash_key_prints_a_verifiable_argon2_hash() {
    let mut child = Command::new(BIN).arg("hash-key").stdin(Stdio::piped()).stdout(Stdio::piped()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"my key\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap();
    assert!(hash.trim().starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains("my key"));
}

#[test]
fn check_config_accepts_good_files_and_names_bad_keys() {
    let dir = tempfile::tempdir().unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$mJ0qvFOCgnHq4SYxJ0e8Ig";
    let certs = Path::new(env!("CARGO_MANIFEST_DIR")).join("certs-dev");
    let good = format!(
        "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[tls]\ncert = \"{c}/server.crt\"\nkey = \"{c}/server.key\"\n[hubic]\nclient_id = \"api_hubic_x\"\nclient_secret_file = \"secret\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{hash}\"\n",
        c = certs.display()
    );
    std::fs::write(dir.path().join("secret"), "s3cr3t\n").unwrap();
    let run = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(BIN).args(["check-config", "--config"]).arg(&path).env_remove("SWIFTGATE_LISTEN").output().unwrap()
    };
    let out = run(&good);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("public URL https://127.0.0.1:0"));
    for (text, key) in [
        (good.replace("[[user]]", "[[users]]"), "users"),
        (good.replace("client_id = \"api_hubic_x\"", "client_id = \"\""), "hubic.client_id"),
        (good.replace("secret\"\n[[user]]", "missing\"\n[[user]]"), "missing"),
    ] {
        let out = run(&text);
        assert!(!out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(key), "{key}: {stderr}");
        assert!(!stderr.contains("s3cr3t"));
    }
    // `serve --listen` on every interface, with no public_url: refused before anything starts.
    let path = dir.path().join("c.toml");
    std::fs::write(&path, &good).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["serve", "--listen", "0.0.0.0:0", "--config"]).arg(&path);
    cmd.env_remove("SWIFTGATE_LISTEN").env_remove("SWIFTGATE_PUBLIC_URL").stderr(Stdio::piped());
    let (mut serve, _) = launch(cmd);
    let stderr = lines_of(serve.0.stderr.take().unwrap());
    assert!(!wait_exit(&mut serve.0, Duration::from_secs(30)).success());
    let said: Vec<String> = stderr.iter().collect();
    assert!(said.iter().any(|l| l.contains("public_url")), "{said:?}");
}

#[test]
fn check_config_online_authenticates_each_account_and_never_prints_a_token() {
    let (_emu, lines) = start(&["emulate", "--listen", "127.0.0.1:0", "--user", "u@example.com:pw-123456"], 1);
    let base = &lines[0];
    let dir = tempfile::tempdir().unwrap();
    let hash = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$mJ0qvFOCgnHq4SYxJ0e8Ig";
    let config = |password: &str| {
        format!(
            "state_dir = \"state\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{hash}\"\naccount = \"ks\"\n\
             [[account]]\nname = \"ks\"\nprovider = \"keystone\"\nauth_url = \"{base}/v3\"\nusername = \"u@example.com\"\npassword = \"{password}\"\nproject = \"u@example.com\"\n\
             [[account]]\nname = \"rgw\"\nprovider = \"swift-v1\"\nauth_url = \"{base}/auth/v1.0\"\nuser = \"u@example.com\"\nkey = \"pw-123456\"\n"
        )
    };
    let run = |text: &str| {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, text).unwrap();
        Command::new(BIN).args(["check-config", "--online", "--config"]).arg(&path).output().unwrap()
    };
    let out = run(&config("pw-123456"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    for name in ["account ks (keystone): OK, storage URL ", "account rgw (swift-v1): OK, storage URL "] {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{name}: {stdout}"));
        assert!(line.contains(&format!("{base}/v1/AUTH_")) && line.contains("token valid for 86"), "{line}");
    }
    assert!(!stdout.contains("gAAAAA") && !stdout.contains("pw-123456"), "a secret printed: {stdout}");
    let out = run(&config("wrong"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(
        stdout.contains("account ks (keystone): FAILED: account ks: Keystone answered 401 Unauthorized"),
        "{stdout}"
    );
    assert!(stdout.contains("account rgw (swift-v1): OK"), "{stdout}");
}

#[test]
fn emulate_prints_its_base_url_first() {
    let (_emu, lines) = start(&["emulate", "--listen", "127.0.0.1:0", "--user", "u@example.com:pw"], 1);
    let base = &lines[0];
    assert!(base.starts_with("http://127.0.0.1:"), "{base}");
    let out =
        Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/oauth")]).output();
    if let Ok(out) = out {
        assert_eq!(String::from_utf8_lossy(&out.stdout), "301");
    }
}

/// Waits for the child to exit, polling with a deadline.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    poll_exit(child, within).unwrap_or_else(|| panic!("process did not exit in {within:?}"))
}

fn dir_entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn demo_exits_cleanly_on_sigterm_and_sigint() {
    for signal in ["-TERM", "-INT"] {
        let (mut demo, lines) = start(&["demo", "--listen", "127.0.0.1:0"], 3);
        assert!(lines[0].starts_with("export ST_AUTH=http://127.0.0.1:"));
        // The demo keeps its state and its objects in scratch dirs under TMPDIR while it runs
        // and removes them when stopped.
        let scratch = dir_entries(demo.1.path());
        assert_eq!(scratch.len(), 2, "{scratch:?}");
        let pid = demo.0.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
        let status = wait_exit(&mut demo.0, Duration::from_secs(30));
        assert!(status.success(), "{signal}: {status:?}");
        assert_eq!(dir_entries(demo.1.path()), Vec::<String>::new(), "{signal} left scratch dirs");
    }
}

/// Stdout that cannot be written (here /dev/full; a pipe whose reader left, in practice) costs
/// the demo its `export` lines, not its service: it warns on stderr and serves on until stopped.
#[test]
fn a_demo_whose_stdout_fails_serves_on() {
    let tmp = tempfile::tempdir().unwrap();
    let full = std::fs::OpenOptions::new().write(true).open("/dev/full").unwrap();
    let child = Command::new(BIN)
        .args(["demo", "--listen", "127.0.0.1:0"])
        .env("SWIFTGATE_LOG", "warn")
        .env("TMPDIR", tmp.path())
        .stdout(full)
        .stderr(Stdio::piped())
        .spawn()
        .expect("swiftgate starts");
    let mut demo = Running(child, tmp);
    let rx = lines_of(demo.0.stderr.take().unwrap());
    let warned = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("the demo warns that stdout failed");
        if line.contains("cannot write the announcement") {
            break line;
        }
    };
    assert!(!warned.contains("ST_KEY"), "the warning carries the announcement: {warned}");
    assert!(demo.0.try_wait().unwrap().is_none(), "the demo exited after its stdout failed");
    assert!(Command::new("kill").args(["-TERM", &demo.0.id().to_string()]).status().unwrap().success());
    let status = wait_exit(&mut demo.0, Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
}

#[tokio::test]
async fn headless_register_takes_the_pasted_redirect_url() {
    let public = "http://gateway.invalid:8080";
    let (_emu, lines) = start(
        &[
            "emulate",
            "--listen",
            "127.0.0.1:0",
            "--app",
            &format!("api_hubic_cli:cli-secret:{public}/callback"),
            "--user",
            "u@example.com:pw",
        ],
        1,
    );
    let base = lines[0].clone();
    let dir = tempfile::tempdir().unwrap();
    let hash = swiftgate::front::hash_key("k").unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            "public_url = \"{public}\"\nstate_dir = \"state\"\n[hubic]\napi_base = \"{base}\"\nclient_id = \"api_hubic_cli\"\nclient_secret = \"cli-secret\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{hash}\"\n"
        ),
    )
    .unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["register", "--no-listen", "--user", "alice", "--config"]).arg(&config).stdin(Stdio::piped());
    let (mut child, rx) = launch(cmd);
    let mut stdin = child.0.stdin.take().unwrap();
    let url = loop {
        let line = rx.recv_timeout(Duration::from_secs(60)).expect("authorize URL printed");
        if let Some(i) = line.find("http") {
            break line[i..].trim().to_owned();
        }
    };
    assert!(url.starts_with(&format!("{base}/oauth/auth/?")), "{url}");
    // The person's browser: consent page, login, and the redirect it ends on.
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(&url).send().await.unwrap().text().await.unwrap();
    let oauth = swiftgate::register::scrape_oauth_id(&page).unwrap();
    let body = format!("oauth={oauth}&action=accepted&login=u%40example.com&user_pwd=pw");
    let resp = http
        .post(format!("{base}/oauth/auth/"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(&format!("{public}/callback?code=")), "{location}");
    writeln!(stdin, "not a url").unwrap();
    writeln!(stdin, "{location}").unwrap();
    let status = wait_exit(&mut child.0, Duration::from_secs(60));
    assert!(status.success());
    let rest: Vec<String> = rx.iter().collect();
    assert!(rest.iter().any(|l| l.contains("registered account alice")), "{rest:?}");
    assert!(dir.path().join("state/accounts/alice.json").exists());
}

/// The MD5 of everything `from` yields.
fn md5_of(mut from: impl std::io::Read) -> String {
    use md5::{Digest, Md5};
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = from.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
    }
    hex::encode(md5.finalize())
}

/// Runs `cmd` in `dir` and fails with its output unless it succeeds.
fn run_ok(cmd: &mut Command, dir: &Path, what: &str) {
    let out = cmd.current_dir(dir).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `cmd` in `dir`, which writes a download to stdout, and returns the download's MD5.
/// Nothing is written to disk, so the test costs one stored copy beside its source file.
fn download_md5(cmd: &mut Command, dir: &Path, what: &str) -> String {
    let mut child = cmd.current_dir(dir).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let errors = std::thread::spawn(move || std::io::read_to_string(stderr).unwrap_or_default());
    let md5 = md5_of(child.stdout.take().unwrap());
    let status = child.wait().unwrap();
    assert!(status.success(), "{what}: {}", errors.join().unwrap());
    md5
}

#[test]
fn swift_and_rclone_move_a_gib_across_three_second_tokens() {
    if !swift_cli_available() || !rclone_available() {
        return;
    }
    let (_demo, env) = start_demo(&["--swift-token-ttl", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let big = dir.join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let block: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        for i in 0..1024u32 {
            f.write_all(&i.to_le_bytes()).unwrap();
            f.write_all(&block[4..]).unwrap();
        }
    }
    let want = md5_of(std::fs::File::open(&big).unwrap());
    let swift = |args: &[&str]| swift_command(dir, &env, args);
    // python-swiftclient: whole object, then segmented (DLO, 100 MiB segments). Each stored
    // copy is deleted once checked (with its segments), so the demo's storage holds one at most.
    run_ok(&mut swift(&["upload", "whole", "big.bin"]), dir, "swift upload");
    assert_eq!(download_md5(&mut swift(&["download", "whole", "big.bin", "-o", "-"]), dir, "swift download"), want);
    run_ok(&mut swift(&["delete", "whole"]), dir, "swift delete");
    run_ok(&mut swift(&["upload", "-S", "104857600", "segs", "big.bin"]), dir, "swift upload -S");
    let got = download_md5(&mut swift(&["download", "segs", "big.bin", "-o", "-"]), dir, "swift download segmented");
    assert_eq!(got, want, "swift segmented");
    run_ok(&mut swift(&["delete", "segs"]), dir, "swift delete segmented");
    // rclone (swift backend, v1 auth): one 1 GiB PUT with Expect: 100-continue, then a download.
    let rclone = |args: &[&str]| {
        let mut cmd = Command::new("rclone");
        cmd.args(["-q", "--config", "/nonexistent/rclone.conf", "--retries", "1", "--low-level-retries", "1"])
            .args(args);
        cmd.env("RCLONE_CONFIG_GW_TYPE", "swift")
            .env("RCLONE_CONFIG_GW_AUTH", &env[0].1)
            .env("RCLONE_CONFIG_GW_USER", &env[1].1)
            .env("RCLONE_CONFIG_GW_KEY", &env[2].1);
        cmd
    };
    run_ok(&mut rclone(&["copyto", "big.bin", "gw:rc/big.bin"]), dir, "rclone upload");
    assert_eq!(download_md5(&mut rclone(&["cat", "gw:rc/big.bin"]), dir, "rclone download"), want, "rclone");
}
