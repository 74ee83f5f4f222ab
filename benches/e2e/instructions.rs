//! `--instructions`: the gateway's and the floor relay's user-space instructions per request,
//! counted under callgrind.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde_json::json;

use crate::load::{clients, login, small_gets, Route};
use crate::processes::{start_gateway, start_relay};
use crate::report::{commit, write_json};
use crate::TOKEN;

/// Requests counted per concurrency in `--instructions`.
const COUNTED: usize = 2048;

/// `--instructions` (`benches/instructions.sh`): the plain gateway under callgrind, and the
/// user-space instructions it executes per 4 KiB GET at c=1 and c=64, counted exactly. The
/// timed rows drift with the VM's day by more than a small change to the request path moves
/// them; an instruction count barely moves, so it is how such a change is judged. Kernel time
/// is not in it (callgrind sees user space only), the gateway runs some fifty times slower, and
/// SHA-256 (the token check) runs in software: valgrind does not offer the CPU's SHA
/// extensions, so some 7 000 of the count are instructions the CPU runs as a few hundred.
pub(crate) async fn instructions(emulator: &swiftgate::emulator::EmulatorHandle, upstream: SocketAddr, annotate: bool) {
    let scratch = tempfile::Builder::new().prefix("swiftgate-bench-callgrind-").tempdir().unwrap();
    let (plain, _) = clients();
    let mut rows = serde_json::Map::new();
    {
        let out = scratch.path().join("gateway.out");
        let gateway = start_gateway(emulator, false, "plain", Some(&out)).await;
        let (url, token) = login(&plain, &gateway.url).await;
        let p = Route { name: "gateway", load: plain.clone(), url, token, pid: Some(gateway.child.id()) };
        rows.insert("gateway".into(), count_instructions(&p, &out, annotate).await);
    }
    // The floor under the same count: what a proxy that only relays bytes executes per request.
    let out = scratch.path().join("relay.out");
    let relay = start_relay(upstream, Some(&out)).expect("the floor relay did not start under callgrind");
    let p = Route {
        name: "relay",
        load: plain,
        url: format!("http://127.0.0.1:{}/v1/AUTH_bench", relay.port),
        token: TOKEN.into(),
        pid: Some(relay.child.id()),
    };
    rows.insert("relay".into(), count_instructions(&p, &out, false).await);
    let doc = json!({ "instructions_per_4k_get": rows, "commit": commit() });
    write_json("instructions.json", &doc);
}

/// User-space instructions per 4 KiB GET at c=1 and c=64 of `p`'s proxy, running under
/// callgrind with its output going to `out`.
async fn count_instructions(p: &Route, out: &Path, annotate: bool) -> serde_json::Value {
    let pid = p.pid.expect("a proxy process").to_string();
    let control = |what: &str| {
        let ok = Command::new("callgrind_control")
            .args([what, &pid])
            .stdout(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "callgrind_control {what} {pid} failed");
    };
    // Warm: the pools hold their connections and every lazy initialisation has run. At c=64,
    // so that no connection opens while counting (warmed at c=16, the c=64 count included 48
    // client and 48 upstream connections opened: 1 270 instructions per request).
    small_gets(p, 64, 512).await;
    let mut rows = serde_json::Map::new();
    // callgrind numbers its dumps from 1: c=1's is the first, c=64's the second.
    for (dump, c) in [(1, 1usize), (2, 64)] {
        control("--zero");
        small_gets(p, c, COUNTED).await;
        control("--dump");
        let (dump, total) = dump_written(out, dump).await;
        let per = total as f64 / COUNTED as f64;
        println!("{}, 4 KiB GET c={c}: {per:.0} instructions per request ({total} for {COUNTED})", p.name);
        rows.insert(format!("c={c}"), json!(per));
        if annotate && c == 64 {
            print_costliest(&dump);
        }
    }
    serde_json::Value::Object(rows)
}

/// Dump `number` that callgrind writes after `callgrind_control --dump` (`callgrind.out.1` for
/// the first), once complete, and its instruction count (the `totals:` line).
/// `callgrind_control` returns before the file is written, so this polls with a deadline.
async fn dump_written(out: &Path, number: u32) -> (PathBuf, u64) {
    let dump = PathBuf::from(format!("{}.{number}", out.display()));
    let deadline = Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let text = std::fs::read_to_string(&dump).unwrap_or_default();
        let total = text
            .lines()
            .find_map(|l| l.strip_prefix("totals:").or_else(|| l.strip_prefix("summary:")))
            .and_then(|v| v.split_whitespace().next()?.parse().ok());
        if let Some(total) = total {
            return (dump, total);
        }
        assert!(Instant::now() < deadline, "callgrind wrote no complete {}", dump.display());
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// The 40 functions of `dump` with the highest self cost, per request.
fn print_costliest(dump: &Path) {
    let Ok(out) = Command::new("callgrind_annotate").args(["--auto=no", "--threshold=100"]).arg(dump).output() else {
        println!("callgrind_annotate did not run");
        return;
    };
    println!("instructions per request (self cost), c=64:");
    let text = String::from_utf8_lossy(&out.stdout);
    let rows = text.lines().filter_map(|l| {
        let (count, rest) = l.trim_start().split_once(' ')?;
        let count: u64 = count.replace(',', "").parse().ok()?;
        let what = rest.trim_start().split_once(")  ").map_or(rest, |(_, w)| w);
        // Paths of the registry and the toolchain say nothing the function's name does not.
        let what = what.rsplit_once(".rs:").map_or(what, |(_, f)| f);
        Some((count, what.to_owned()))
    });
    // The totals, and the entry points a thread's whole run is charged to (callgrind_annotate
    // counts the inlined frames there as the caller's own), say nothing: skip them.
    let entry = [
        "PROGRAM TOTALS",
        "(below main)",
        "???:main",
        "swiftgate::main",
        "lang_start",
        "__rust_begin_short_backtrace",
        "libc_start",
        "???:0x",
        "clone.S:clone",
        "pthread_create.c:start_thread",
        "Thread>::new::thread_start",
        "FnOnce::call_once{{vtable.shim}}",
        "Runtime::block_on",
        "CoreGuard::block_on",
        "runtime::enter_runtime",
    ];
    for (count, what) in rows.filter(|(_, w)| !entry.iter().any(|e| w.contains(e))).take(40) {
        println!("{:>8.0}  {what}", count as f64 / COUNTED as f64);
    }
}
