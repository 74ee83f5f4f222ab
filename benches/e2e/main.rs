//! End-to-end benchmark: the same load, round by round, straight to a fast Swift-like upstream
//! and through `swiftgate serve` (release build, its own process), plain HTTP and TLS.
//!
//! `cargo bench --bench e2e` (full), `cargo bench --bench e2e -- --quick` (smoke, < 2 min).
//! Prints a table with per-round ratios (median, min-max) and writes target/bench/results.json.
//! Under `cargo test` it runs one tiny round as a check that the harness works.
//! `--instructions [--annotate]` (`benches/instructions.sh`) counts the gateway's user-space
//! instructions per request under callgrind instead.
//!
//! The fast upstream is in `upstream.rs`, the proxies' processes in `processes.rs`, the load
//! generator in `load.rs`, CPU accounting in `cpu.rs`, the table and JSON in `report.rs`, the
//! callgrind count in `instructions.rs` and the floor relay in `relay.rs`; this file runs the
//! sections in order.

mod cpu;
mod instructions;
mod load;
mod processes;
mod relay;
mod report;
mod upstream;

use std::net::SocketAddr;

use bytes::Bytes;

use crate::cpu::metered;
use crate::instructions::instructions;
use crate::load::{auths, batch, c1_gets, clients, get_bytes, login, put_bytes, small_gets, throughput, Load, Route};
use crate::processes::{start_gateway, start_nginx, start_relay, Gateway, Other, Pinning};
use crate::report::{human, report, write_json, Measured};
use crate::upstream::start_upstream;

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;
const GIB: u64 = 1024 * MIB;
const TOKEN: &str = "AUTH_tkbench";

/// The command line (`cargo bench` passes `--bench`; `cargo test` does not).
struct Options {
    bench: bool,
    quick: bool,
    /// `--only bulk,small,auth,rss` runs just those sections (for profiling one of them).
    only: Option<Vec<String>>,
    instructions: bool,
    annotate: bool,
}

impl Options {
    fn parse(args: &[String]) -> Options {
        let flag = |name: &str| args.iter().any(|a| a == name);
        let only: Option<Vec<String>> = args
            .iter()
            .position(|a| a == "--only")
            .and_then(|i| args.get(i + 1))
            .map(|v| v.split(',').map(str::to_owned).collect());
        Options {
            bench: flag("--bench"),
            quick: flag("--quick"),
            only,
            instructions: flag("--instructions"),
            annotate: flag("--annotate"),
        }
    }

    fn wanted(&self, section: &str) -> bool {
        self.only.as_ref().is_none_or(|o| o.iter().any(|s| s == section))
    }
}

struct Settings {
    rounds: usize,
    sizes: Vec<u64>,
    /// Bytes a throughput cell moves at least (see `batch`); 0: one object per cell.
    cell_bytes: u64,
    small_total: usize,
    auth_total: usize,
    rss_transfer: u64,
}

impl Settings {
    fn new(bench: bool, quick: bool) -> Settings {
        match (bench, quick) {
            (true, false) => Settings {
                rounds: 5,
                sizes: vec![MIB, 64 * MIB, GIB],
                cell_bytes: 64 * MIB,
                small_total: 4096,
                auth_total: 4000,
                rss_transfer: 4 * GIB,
            },
            (true, true) => Settings {
                rounds: 5,
                sizes: vec![MIB, 64 * MIB],
                cell_bytes: 64 * MIB,
                small_total: 1024,
                auth_total: 1000,
                rss_transfer: 512 * MIB,
            },
            // `cargo test`: one tiny round proves the harness and the gateway process work.
            (false, _) => Settings {
                rounds: 1,
                sizes: vec![MIB],
                cell_bytes: 0,
                small_total: 64,
                auth_total: 64,
                rss_transfer: 16 * MIB,
            },
        }
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    // The bench starts itself again as the floor relay (see `start_relay`).
    if let [_, flag, port, upstream, ..] = args.as_slice() {
        if flag == "--relay" {
            relay::serve(port.parse().expect("relay port"), upstream.parse().expect("relay upstream"));
            return;
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    runtime.block_on(bench(Options::parse(&args)));
}

async fn bench(opts: Options) {
    let settings = Settings::new(opts.bench, opts.quick);
    let up = start_upstream().await;
    let emulator = start_emulator(up).await;
    if opts.instructions {
        instructions(&emulator, up, opts.annotate).await;
        emulator.stop().await;
        return;
    }
    let gateways =
        [start_gateway(&emulator, false, "plain", None).await, start_gateway(&emulator, true, "tls", None).await];
    let (plain, tls) = clients();
    let logins = [login(&plain, &gateways[0].url).await, login(&tls, &gateways[1].url).await];
    let relay = start_relay(up, None).expect("the floor relay did not start");
    let nginx = start_nginx(up);
    let others = [("relay", Some(&relay)), ("nginx", nginx.as_ref())];
    let routes = routes_to_storage(up, &gateways, logins, &plain, &tls, others);
    let measured = measure(&opts, &settings, &routes, &gateways[0], &plain, up).await;
    let doc = report(&measured, &routes, &settings, opts.quick, &gateways[0]);
    if !opts.bench {
        // Under `cargo test` this was a check of the harness, not a measurement.
        drop(gateways);
        drop(nginx);
        drop(relay);
        emulator.stop().await;
        return;
    }
    write_json("results.json", &doc);
    drop(gateways);
    emulator.stop().await;
}

/// The emulator, handing out the fast upstream at `up` as the bench user's storage.
async fn start_emulator(up: SocketAddr) -> swiftgate::emulator::EmulatorHandle {
    swiftgate::emulator::Emulator::start(
        swiftgate::emulator::EmulatorConfig {
            storage: swiftgate::emulator::StorageConfig::External {
                auth_url: format!("http://{up}/auth/v1.0"),
                user: "bench".into(),
                key: swiftgate::secret::Secret::new("bench"),
            },
            users: vec![swiftgate::emulator::UserSpec {
                login: "bench@example.com".into(),
                password: swiftgate::secret::Secret::new("bench-pw"),
            }],
            ..Default::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap()
}

/// The paths measured: direct to the upstream at `up`, the plain and the TLS gateway (with the
/// storage URL and token of their `logins`), then each of the `others` that started.
fn routes_to_storage(
    up: SocketAddr,
    gateways: &[Gateway; 2],
    logins: [(String, String); 2],
    plain: &Load,
    tls: &Load,
    others: [(&'static str, Option<&Other>); 2],
) -> Vec<Route> {
    let [(gw_url, gw_token), (gwt_url, gwt_token)] = logins;
    let mut routes = vec![
        Route {
            name: "direct",
            load: plain.clone(),
            url: format!("http://{up}/v1/AUTH_bench"),
            token: TOKEN.into(),
            pid: None,
        },
        Route { name: "gateway", load: plain.clone(), url: gw_url, token: gw_token, pid: Some(gateways[0].child.id()) },
        Route {
            name: "gateway+TLS",
            load: tls.clone(),
            url: gwt_url,
            token: gwt_token,
            pid: Some(gateways[1].child.id()),
        },
    ];
    for (name, other) in others {
        if let Some(o) = other {
            routes.push(Route {
                name,
                load: plain.clone(),
                url: format!("http://127.0.0.1:{}/v1/AUTH_bench", o.port),
                token: TOKEN.into(),
                pid: Some(o.child.id()),
            });
        }
    }
    routes
}

/// Runs the wanted sections: RSS first, then bulk, small GETs (unpinned, then on one CPU) and
/// auth, each for every round, with `gateway` (the plain one) as the one whose RSS is read.
async fn measure(
    opts: &Options,
    settings: &Settings,
    routes: &[Route],
    gateway: &Gateway,
    plain: &Load,
    up: SocketAddr,
) -> Measured {
    let idle_rss = gateway.status_kib("VmRSS:");
    let buf = Bytes::from(vec![0xa5u8; MIB as usize]);
    // Peak RSS while a large object streams through (GET then PUT), first, so the peak is
    // the transfer's; the RSS left after every other run is reported beside it.
    if opts.wanted("rss") {
        get_bytes(&routes[1], settings.rss_transfer).await;
        put_bytes(&routes[1], settings.rss_transfer, &buf).await;
    }
    let peak_rss = gateway.status_kib("VmHWM:");
    let mut m = Measured { idle_rss, peak_rss, ..Default::default() };
    if opts.wanted("bulk") {
        bulk(&mut m, routes, settings, &buf).await;
    }
    let pinning = Pinning::new(&routes.iter().filter_map(|p| p.pid).collect::<Vec<_>>());
    if pinning.is_none() {
        println!("taskset did not work: no one-CPU c=1 rows");
    }
    if opts.wanted("small") {
        small(&mut m, routes, settings).await;
        // After every unpinned round: threads that shared a CPU tend to stay together afterwards.
        if let Some(pinning) = &pinning {
            small_one_cpu(&mut m, routes, settings, pinning).await;
        }
    }
    if opts.wanted("auth") {
        auth(&mut m, plain, up, &gateway.url, settings).await;
    }
    m
}

/// MB/s of GETs and PUTs of each size, with the CPU they cost per operation.
async fn bulk(m: &mut Measured, routes: &[Route], settings: &Settings, buf: &Bytes) {
    for round in 0..settings.rounds {
        for &size in &settings.sizes {
            for op in ["GET", "PUT"] {
                // Rotate the order each round so no path always goes first.
                for i in 0..routes.len() {
                    let p = &routes[(i + round) % routes.len()];
                    let count = batch(size, settings.cell_bytes);
                    let gib = (size * count) as f64 / GIB as f64;
                    let ledger = m.cpu_ops.entry(op).or_default();
                    let mbps = metered(ledger, p, gib, throughput(p, op, size, count, buf)).await;
                    m.record(format!("{op} {} MB/s", human(size)), p.name, mbps);
                }
            }
        }
    }
}

/// 4 KiB GETs at c=1, 16 and 64: requests/s and latency, with the CPU they cost at c=64.
async fn small(m: &mut Measured, routes: &[Route], settings: &Settings) {
    for round in 0..settings.rounds {
        for c in [1usize, 16, 64] {
            for i in 0..routes.len() {
                let p = &routes[(i + round) % routes.len()];
                let total = settings.small_total;
                let (rps, p50, p99) = match c {
                    1 => c1_gets(p, total).await,
                    64 => metered(&mut m.cpu_c64, p, total as f64, small_gets(p, c, total)).await,
                    _ => small_gets(p, c, total).await,
                };
                m.record(format!("4 KiB GET c={c} req/s"), p.name, rps);
                m.record(format!("4 KiB GET c={c} p50 µs"), p.name, p50);
                m.record(format!("4 KiB GET c={c} p99 µs"), p.name, p99);
            }
        }
    }
}

/// 4 KiB GET latency at c=1 with the bench and every proxy on one CPU.
async fn small_one_cpu(m: &mut Measured, routes: &[Route], settings: &Settings, pinning: &Pinning) {
    for round in 0..settings.rounds {
        for i in 0..routes.len() {
            let p = &routes[(i + round) % routes.len()];
            let (_, p50, p99) = pinning.one_cpu(c1_gets(p, settings.small_total)).await;
            m.record("4 KiB GET c=1 one CPU p50 µs".into(), p.name, p50);
            m.record("4 KiB GET c=1 one CPU p99 µs".into(), p.name, p99);
        }
    }
}

/// v1.0 auth requests/s (warm) at c=16, straight to the upstream at `up` and through the
/// gateway at `gateway`.
async fn auth(m: &mut Measured, plain: &Load, up: SocketAddr, gateway: &str, settings: &Settings) {
    for _ in 0..settings.rounds {
        let direct_auth =
            auths(plain, &format!("http://{up}/auth/v1.0"), "bench", "bench", 16, settings.auth_total).await;
        let gw_auth =
            auths(plain, &format!("{gateway}/auth/v1.0"), "bench", "bench-key", 16, settings.auth_total).await;
        m.record("v1.0 auth req/s (warm)".into(), "direct", direct_auth);
        m.record("v1.0 auth req/s (warm)".into(), "gateway", gw_auth);
    }
}
