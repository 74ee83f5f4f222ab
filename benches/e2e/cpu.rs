//! CPU accounting: the CPU time each proxy process and the whole machine spend while a path's
//! work runs, charged to that path.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::load::Route;
use crate::processes::family;

/// CPU seconds (user and system, to the nanosecond, from each thread's schedstat) used so far
/// by `pid` and its child processes. Only live threads count: the proxies' threads (event loops,
/// nginx's processes) live for the whole run. `/proc/<pid>/stat` would count in 10 ms ticks,
/// a tenth of a c=64 run's whole CPU time.
fn cpu_seconds(pid: u32) -> f64 {
    let threads = |pid: &String| -> f64 {
        let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
            .filter_map(|s| s.split_whitespace().next()?.parse::<f64>().ok())
            .sum::<f64>()
            / 1e9
    };
    family(pid).iter().map(threads).sum()
}

/// Busy CPU seconds of the whole machine so far (every CPU's time outside idle and I/O wait, in
/// `/proc/stat`'s 10 ms ticks): the load generator's, upstream's, the kernel's and the proxy's.
/// A proxy can lower its own figure by moving work onto the processes at either end (a body
/// passed by `splice(2)` on loopback makes both ends copy it more slowly); this one shows it.
fn machine_busy_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .map(|l| l.split_whitespace().filter_map(|t| t.parse().ok()).collect())
        .unwrap_or_default();
    // user nice system idle iowait irq softirq steal (guest time is within user).
    let busy: f64 = ticks.iter().take(8).enumerate().filter(|(i, _)| *i != 3 && *i != 4).map(|(_, t)| t).sum();
    busy / 100.0
}

/// CPUs the machine has (`/proc/stat`'s `cpuN` lines), whatever this process's affinity.
pub(crate) fn machine_cpus() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let n = stat.lines().filter(|l| l.starts_with("cpu") && !l.starts_with("cpu ")).count();
    n.max(1) as f64
}

/// CPU seconds spent, per path, and what was done for them (GiB moved, requests served): the
/// proxy's own (none for the direct path), and the whole machine's, over `wall` seconds.
#[derive(Default)]
pub(crate) struct Spent {
    pub(crate) own: f64,
    pub(crate) machine: f64,
    pub(crate) amount: f64,
    pub(crate) wall: f64,
}

impl Spent {
    pub(crate) fn add(&mut self, other: &Spent) {
        self.own += other.own;
        self.machine += other.machine;
        self.amount += other.amount;
        self.wall += other.wall;
    }

    /// `seconds` per unit of what was done.
    pub(crate) fn per_amount(&self, seconds: f64) -> f64 {
        seconds / self.amount.max(1e-9)
    }
}

pub(crate) type CpuLedger = BTreeMap<&'static str, Spent>;

/// Runs `work` on `p` and charges to `ledger`, for `amount`, the CPU time the machine spent
/// meanwhile and, when `p` is a proxy, its own.
pub(crate) async fn metered<T>(
    ledger: &mut CpuLedger,
    p: &Route,
    amount: f64,
    work: impl std::future::Future<Output = T>,
) -> T {
    let (own, machine, t) = (p.pid.map(cpu_seconds), machine_busy_seconds(), Instant::now());
    let out = work.await;
    let e = ledger.entry(p.name).or_default();
    e.machine += machine_busy_seconds() - machine;
    e.wall += t.elapsed().as_secs_f64();
    e.amount += amount;
    if let (Some(pid), Some(own)) = (p.pid, own) {
        e.own += cpu_seconds(pid) - own;
    }
    out
}
