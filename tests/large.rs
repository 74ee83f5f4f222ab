//! Large bodies through the gateway running as its own process: a 5 GiB PUT and GET checked by
//! MD5, with the gateway's peak RSS (VmHWM) under a fixed ceiling and within the heap's settling
//! of its peak after a 512 MiB object, and a slow reader that must not make the gateway buffer.
//! The upstream keeps no object bytes (`common::pattern`), so the test needs no disk.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::pattern::{chunks, expected_md5, generated, Boxed, MIB};
use http_body_util::BodyExt;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use md5::{Digest, Md5};
use swiftgate::clock::SystemClock;
use swiftgate::emulator::{AppSpec, Emulator, EmulatorConfig, StorageConfig, UserSpec};
use swiftgate::secret::Secret;

const GIB: u64 = 1 << 30;

/// The gateway's peak RSS (debug build) must stay under this whatever the object size.
const CEILING_KIB: u64 = 32 * 1024;

/// How far the peak may rise after the 512 MiB object. The heap's resident size never falls
/// and keeps rising slowly while a transfer goes on, until it holds the largest set of read
/// buffers ever alive at once: hyper's 1 MiB read buffers stay allocated while any chunk cut
/// from them waits in a write queue or the replay buffer. Twelve 1 GiB PUT and GET rounds with
/// both cores loaded took the anonymous RSS from 7.2 to 11.8 MiB, flat from the seventh round
/// on, and a CI run saw 4.3 MiB between 512 MiB and 5 GiB, 5.2 MiB after the slow reader.
/// Keeping the slow reader's 64 MiB object, or 0.2 % of the 4.5 GiB more that the large object
/// moves, goes past 8 MiB.
const SETTLING_KIB: u64 = 8 * 1024;

struct Gateway(Child);

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Gateway {
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.0.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

async fn put(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Boxed>,
    url: &str,
    token: &str,
    len: u64,
    parts: Arc<Vec<Bytes>>,
) {
    let (body, digest) = generated(len, parts);
    let req = http::Request::put(url).header("x-auth-token", token).header("content-length", len).body(body).unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 201, "PUT {len}");
    let etag = resp.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(etag, digest.await.unwrap(), "upstream stored what was sent");
}

/// GETs `url`, returning the MD5 and length of the body; `pace` slows the reader down.
async fn get(
    client: &Client<hyper_util::client::legacy::connect::HttpConnector, Boxed>,
    url: &str,
    token: &str,
    pace: Option<Duration>,
) -> (String, u64) {
    let req = http::Request::get(url)
        .header("x-auth-token", token)
        .body(BodyExt::boxed(http_body_util::Empty::new().map_err(|never| match never {})))
        .unwrap();
    let resp = client.request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let mut body = resp.into_body();
    let mut md5 = Md5::new();
    let mut len = 0u64;
    let mut next_pause = MIB;
    while let Some(frame) = body.frame().await {
        let frame = frame.expect("body arrives whole");
        if let Some(data) = frame.data_ref() {
            md5.update(data);
            len += data.len() as u64;
            if let Some(pace) = pace {
                if len >= next_pause {
                    // Workload shaping, not synchronisation: a reader of about 20 MiB/s.
                    tokio::time::sleep(pace).await;
                    next_pause += MIB;
                }
            }
        }
    }
    (hex::encode(md5.finalize()), len)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_gib_through_the_gateway_in_bounded_memory() {
    let parts = chunks();
    let upstream = common::pattern::start(parts.clone()).await;
    let app = AppSpec::random("http://127.0.0.1/callback");
    let emulator = Emulator::start(
        EmulatorConfig {
            clock: Arc::new(SystemClock),
            storage: StorageConfig::External {
                auth_url: format!("{}/auth/v1.0", upstream.origin),
                user: "pattern".into(),
                key: Secret::new("pattern"),
            },
            users: vec![UserSpec { login: common::LOGIN.into(), password: Secret::new(common::PASSWORD) }],
            ..EmulatorConfig::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let state = tempfile::tempdir().unwrap();
    let config = state.path().join("swiftgate.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nstate_dir = \"state\"\n[hubic]\napi_base = \"{}\"\nclient_id = \"{}\"\nclient_secret = \"{}\"\n[[user]]\nname = \"{}\"\nkey_hash = \"{}\"\n",
            emulator.base_url(),
            app.client_id,
            app.client_secret.expose(),
            common::USER,
            common::key_hash()
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_swiftgate"))
        .args(["serve", "--config"])
        .arg(&config)
        .env("SWIFTGATE_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let gateway = Gateway(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let gw = rx.recv_timeout(Duration::from_secs(60)).expect("gateway prints its URL").trim().to_owned();
    emulator.emulator.add_app(AppSpec { redirect_uri: format!("{gw}/callback"), ..app });
    let (status, page) =
        swiftgate::demo::browser_register(&gw, common::USER, common::KEY, common::LOGIN, common::PASSWORD)
            .await
            .unwrap();
    assert_eq!(status, 200, "{page}");
    let http = reqwest::Client::new();
    let auth = http
        .get(format!("{gw}/auth/v1.0"))
        .header("x-auth-user", common::USER)
        .header("x-auth-key", common::KEY)
        .send()
        .await
        .unwrap();
    let url = auth.headers()["x-storage-url"].to_str().unwrap().to_owned();
    let token = auth.headers()["x-auth-token"].to_str().unwrap().to_owned();
    let client: Client<_, Boxed> = Client::builder(TokioExecutor::new()).build_http();

    let small = 512 * MIB;
    put(&client, &format!("{url}/default/small"), &token, small, parts.clone()).await;
    assert_eq!(get(&client, &format!("{url}/default/small"), &token, None).await, (expected_md5(small, &parts), small));
    let after_small = gateway.peak_rss_kib();

    let large = 5 * GIB;
    put(&client, &format!("{url}/default/large"), &token, large, parts.clone()).await;
    let (md5, len) = get(&client, &format!("{url}/default/large"), &token, None).await;
    assert_eq!(len, large);
    assert_eq!(md5, expected_md5(large, &parts));
    let after_large = gateway.peak_rss_kib();

    let slow = 64 * MIB;
    put(&client, &format!("{url}/default/slow"), &token, slow, parts.clone()).await;
    assert_eq!(get(&client, &format!("{url}/default/slow"), &token, Some(Duration::from_millis(50))).await.1, slow);
    let after_slow = gateway.peak_rss_kib();

    eprintln!("gateway VmHWM: {after_small} KiB after 512 MiB, {after_large} KiB after 5 GiB, {after_slow} KiB after a slow reader");
    assert!(after_large < CEILING_KIB, "peak RSS {after_large} KiB after 5 GiB");
    assert!(after_slow < CEILING_KIB, "peak RSS {after_slow} KiB after a slow reader");
    assert!(after_large <= after_small + SETTLING_KIB, "5 GiB grew the peak by more than 8 MiB over 512 MiB");
    assert!(after_slow <= after_small + SETTLING_KIB, "a slow reader made the gateway buffer");
}
