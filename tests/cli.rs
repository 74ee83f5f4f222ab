//! The `swiftgate` binary as users run it: `demo` driven by python-swiftclient's `swift` CLI,
//! `hash-key`, `check-config`, and `emulate`'s first stdout line.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_swiftgate");

/// A child process that is killed and reaped when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `swiftgate args…` and returns it with its first `n` stdout lines (60 s deadline).
fn start(args: &[&str], n: usize) -> (Running, Vec<String>) {
    let mut child = Command::new(BIN)
        .args(args)
        .env("SWIFTGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("swiftgate starts");
    let stdout = child.stdout.take().unwrap();
    let running = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let lines = (0..n)
        .map(|i| rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("line {i} of {args:?} never came")))
        .collect();
    (running, lines)
}

/// True when `program` runs; when it does not, a failure if the suite requires the real
/// clients (tests/all.sh sets SWIFTGATE_REQUIRE_CLIENTS), else a visible skip.
fn client_available(program: &str, version_arg: &str, package: &str) -> bool {
    let found = Command::new(program)
        .arg(version_arg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
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

fn swift_cli_available() -> bool {
    client_available("swift", "--version", "python3-swiftclient")
}

fn rclone_available() -> bool {
    client_available("rclone", "version", "rclone")
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

fn swift_cli_against_demo(mode: &str) {
    if !swift_cli_available() {
        return;
    }
    let (_demo, env) = start_demo(&["--mode", mode]);
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
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(std::time::Instant::now() < deadline, "process did not exit in {within:?}");
        std::thread::yield_now();
    }
}

#[test]
fn demo_exits_cleanly_on_sigterm_and_sigint() {
    for signal in ["-TERM", "-INT"] {
        let (mut demo, lines) = start(&["demo", "--listen", "127.0.0.1:0"], 3);
        assert!(lines[0].starts_with("export ST_AUTH=http://127.0.0.1:"));
        let pid = demo.0.id().to_string();
        assert!(Command::new("kill").args([signal, &pid]).status().unwrap().success());
        let status = wait_exit(&mut demo.0, Duration::from_secs(30));
        assert!(status.success(), "{signal}: {status:?}");
    }
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
    let mut child = Command::new(BIN)
        .args(["register", "--no-listen", "--user", "alice", "--config"])
        .arg(&config)
        .env("SWIFTGATE_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let mut child = Running(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
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
    let rest: Vec<String> = rx.try_iter().collect();
    assert!(rest.iter().any(|l| l.contains("registered account alice")), "{rest:?}");
    assert!(dir.path().join("state/accounts/alice.json").exists());
}

fn file_md5(path: &Path) -> String {
    use md5::{Digest, Md5};
    use std::io::Read;
    let mut file = std::fs::File::open(path).unwrap();
    let mut md5 = Md5::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        md5.update(&buf[..n]);
    }
    hex::encode(md5.finalize())
}

#[test]
fn swift_and_rclone_move_a_gib_across_three_second_tokens() {
    if !swift_cli_available() || !rclone_available() {
        return;
    }
    let (_demo, env) = start_demo(&["--swift-token-ttl", "3"]);
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.bin");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&big).unwrap());
        let block: Vec<u8> = (0..(1u32 << 20)).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
        for i in 0..1024u32 {
            f.write_all(&i.to_le_bytes()).unwrap();
            f.write_all(&block[4..]).unwrap();
        }
    }
    let want = file_md5(&big);
    let run = |cmd: &mut Command, what: &str| {
        let out = cmd.current_dir(dir.path()).output().unwrap();
        assert!(
            out.status.success(),
            "{what}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let swift = |args: &[&str]| swift_command(dir.path(), &env, args);
    // python-swiftclient: whole object, then segmented (DLO, 100 MiB segments).
    run(&mut swift(&["upload", "whole", "big.bin"]), "swift upload");
    run(&mut swift(&["download", "whole", "big.bin", "-o", "whole.out"]), "swift download");
    assert_eq!(file_md5(&dir.path().join("whole.out")), want, "swift whole");
    run(&mut swift(&["upload", "-S", "104857600", "segs", "big.bin"]), "swift upload -S");
    run(&mut swift(&["download", "segs", "big.bin", "-o", "segs.out"]), "swift download segmented");
    assert_eq!(file_md5(&dir.path().join("segs.out")), want, "swift segmented");
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
    run(&mut rclone(&["copyto", "big.bin", "gw:rc/big.bin"]), "rclone upload");
    run(&mut rclone(&["copyto", "gw:rc/big.bin", "rclone.out"]), "rclone download");
    assert_eq!(file_md5(&dir.path().join("rclone.out")), want, "rclone");
}
