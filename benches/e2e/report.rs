//! Statistics and output: what the sections measured, the table and the lines under it, and the
//! JSON written to `target/bench`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::json;

use crate::cpu::{machine_cpus, CpuLedger, Spent};
use crate::load::Route;
use crate::processes::Gateway;
use crate::{Settings, GIB, KIB, MIB};

/// Samples, in the order they were taken, per metric (a row of the table) and path.
pub(crate) type Samples = BTreeMap<String, BTreeMap<&'static str, Vec<f64>>>;

/// Rows of the JSON document, by name.
type Rows = serde_json::Map<String, serde_json::Value>;

/// What the sections measured.
#[derive(Default)]
pub(crate) struct Measured {
    /// Samples of each metric, per path.
    pub(crate) results: Samples,
    /// Bulk CPU is kept per operation (GET, PUT), and summed for the figures of both.
    pub(crate) cpu_ops: BTreeMap<&'static str, CpuLedger>,
    /// CPU spent on the 4 KiB GETs at c=64.
    pub(crate) cpu_c64: CpuLedger,
    /// The plain gateway's RSS (KiB) before any load.
    pub(crate) idle_rss: u64,
    /// Its high-water mark (KiB) after the large transfer of the RSS section.
    pub(crate) peak_rss: u64,
}

impl Measured {
    /// Adds sample `v` of metric `key` for path `path`.
    pub(crate) fn record(&mut self, key: String, path: &'static str, v: f64) {
        self.results.entry(key).or_default().entry(path).or_default().push(v);
    }
}

/// Prints the table of `m`, what each proxy adds at c=1, its CPU and the gateway's RSS (read
/// once more here, after every run); returns the JSON document of it all.
pub(crate) fn report(
    m: &Measured,
    routes: &[Route],
    settings: &Settings,
    quick: bool,
    gateway: &Gateway,
) -> serde_json::Value {
    println!(
        "\nswiftgate e2e ({} rounds{}); MB/s and req/s: higher is better; µs: lower is better",
        settings.rounds,
        if quick { ", quick" } else { "" }
    );
    let proxies: Vec<&'static str> = routes.iter().filter(|p| p.pid.is_some()).map(|p| p.name).collect();
    let json_rows = print_table(&m.results, &proxies, settings.rounds);
    println!();
    let added = print_added(&m.results, &proxies);
    let cpu = CpuFigures::of(m);
    cpu.print(&proxies);
    let final_rss = gateway.status_kib("VmRSS:");
    println!(
        "gateway RSS: {:.1} MiB idle, {:.1} MiB peak during a {} GET + PUT, {:.1} MiB after every run",
        m.idle_rss as f64 / 1024.0,
        m.peak_rss as f64 / 1024.0,
        human(settings.rss_transfer),
        final_rss as f64 / 1024.0
    );
    json!({
        "quick": quick,
        "rounds": settings.rounds,
        "metrics": json_rows,
        "cpu_s_per_gib": cpu.per_gib,
        "machine_cpu_s_per_gib": cpu.machine_per_gib,
        "machine_cpu_s_per_gib_by_op": cpu.machine_per_gib_op,
        "machine_busy_percent": cpu.busy_share,
        "cpu_us_per_4k_get_c64": cpu.per_req,
        "added_p50_c1_us": added,
        "gateway_rss_kib": { "idle": m.idle_rss, "peak": m.peak_rss, "after_all": final_rss, "transfer_bytes": settings.rss_transfer },
        "commit": commit(),
    })
}

/// Prints the header and a row per metric: each path's `median (min-max)`, then each proxy's
/// ratio to direct; returns the rows for the JSON.
fn print_table(results: &Samples, proxies: &[&'static str], rounds: usize) -> Rows {
    let mut header = format!("{:30} {:>22}", "metric", "direct");
    for name in proxies {
        header += &format!(" {name:>22}");
    }
    for name in proxies {
        header += &format!(" {:>16}", format!("{}/direct", short(name)));
    }
    println!("{header}");
    let mut json_rows = serde_json::Map::new();
    for (key, by_path) in results {
        let cell = |name: &str| by_path.get(name).map_or("-".to_owned(), |v| summary(v, 1));
        let mut line = format!("{key:30} {:>22}", cell("direct"));
        let mut row = serde_json::Map::new();
        row.insert("samples".into(), json!(by_path));
        for name in proxies {
            line += &format!(" {:>22}", cell(name));
        }
        for name in proxies {
            let r = ratios(by_path, name, rounds);
            line += &format!(" {:>16}", r.as_ref().map_or("-".to_owned(), |v| summary(v, 2)));
            row.insert(format!("ratio_{}", short(name)), json!(r.as_ref().map(|v| median(v))));
        }
        println!("{line}");
        json_rows.insert(key.clone(), row.into());
    }
    json_rows
}

/// `name`'s samples over direct's, one ratio per round: ratios are taken within each round,
/// then summarised.
fn ratios(by_path: &BTreeMap<&str, Vec<f64>>, name: &str, rounds: usize) -> Option<Vec<f64>> {
    let (a, d) = (by_path.get(name)?, by_path.get("direct")?);
    let per_round = a.len() / rounds.max(1);
    let ratios: Vec<f64> = (0..rounds)
        .map(|r| {
            let sa: f64 = a[r * per_round..(r + 1) * per_round].iter().sum();
            let sd: f64 = d[r * per_round..(r + 1) * per_round].iter().sum();
            sa / sd
        })
        .collect();
    Some(ratios)
}

/// Prints what each proxy adds to the c=1 median, taken within each round, unpinned and on one
/// CPU; returns the same, by label, for the JSON.
fn print_added(results: &Samples, proxies: &[&'static str]) -> Rows {
    let mut added = serde_json::Map::new();
    for (label, key) in [("unpinned", "4 KiB GET c=1 p50 µs"), ("one CPU", "4 KiB GET c=1 one CPU p50 µs")] {
        let Some(by_path) = results.get(key) else { continue };
        let Some(direct) = by_path.get("direct") else { continue };
        let mut cells = Vec::new();
        let mut row = serde_json::Map::new();
        for name in proxies {
            if let Some(v) = by_path.get(*name) {
                let per_round: Vec<f64> = v.iter().zip(direct).map(|(a, d)| a - d).collect();
                let (lo, hi) = span(&per_round);
                cells.push(format!("{name} {:.1} ({lo:.1} to {hi:.1})", median(&per_round)));
                row.insert((*name).into(), json!(median(&per_round)));
            }
        }
        println!("added p50 at c=1, {label}, µs: {}", cells.join(", "));
        added.insert(label.into(), row.into());
    }
    added
}

/// A figure per path, from the paths whose work took at least `min_wall` seconds.
fn figures(ledger: &CpuLedger, min_wall: f64, of: &dyn Fn(&Spent) -> f64) -> BTreeMap<&'static str, f64> {
    ledger.iter().filter(|(_, s)| s.wall >= min_wall).map(|(k, s)| (*k, of(s))).collect()
}

/// CPU per path: the proxy's own per GiB of bulk and per 4 KiB GET at c=64, the whole
/// machine's per GiB (GET and PUT together, and each alone), and how busy the machine was.
struct CpuFigures {
    per_gib: BTreeMap<&'static str, f64>,
    per_req: BTreeMap<&'static str, f64>,
    machine_per_gib: BTreeMap<&'static str, f64>,
    machine_per_gib_op: BTreeMap<&'static str, BTreeMap<&'static str, f64>>,
    busy_share: BTreeMap<&'static str, f64>,
    /// CPUs the machine has.
    cpus: f64,
}

impl CpuFigures {
    fn of(m: &Measured) -> CpuFigures {
        let mut cpu_bulk = CpuLedger::new();
        for (name, spent) in m.cpu_ops.values().flatten() {
            cpu_bulk.entry(name).or_default().add(spent);
        }
        let per_gib = figures(&cpu_bulk, 0.0, &|s| s.per_amount(s.own));
        let per_req = figures(&m.cpu_c64, 0.0, &|s| s.per_amount(s.own) * 1e6);
        // `/proc/stat` counts 10 ms ticks: over less than a fifth of a second of transfers (the
        // `cargo test` run), the machine's figures would be noise, so they are left out.
        const MACHINE_MIN_WALL: f64 = 0.2;
        let machine_per_gib_of = |ledger: &CpuLedger| figures(ledger, MACHINE_MIN_WALL, &|s| s.per_amount(s.machine));
        let machine_per_gib = machine_per_gib_of(&cpu_bulk);
        let machine_per_gib_op: BTreeMap<&str, BTreeMap<&str, f64>> =
            m.cpu_ops.iter().map(|(op, ledger)| (*op, machine_per_gib_of(ledger))).collect();
        // The share of the machine's CPU time that was busy while each path moved its bulk: near
        // 100 %, throughput is bound by the machine's CPU, and a path's ratio to direct follows
        // the ratio of their whole-machine CPU per GiB.
        let cpus = machine_cpus();
        let busy_share = figures(&cpu_bulk, MACHINE_MIN_WALL, &|s| 100.0 * s.machine / (s.wall * cpus));
        CpuFigures { per_gib, per_req, machine_per_gib, machine_per_gib_op, busy_share, cpus }
    }

    /// Prints each proxy's own CPU, then the whole machine's, when it was measured long enough.
    fn print(&self, proxies: &[&'static str]) {
        for name in proxies {
            let (gib, req) = (self.per_gib.get(name), self.per_req.get(name));
            if gib.is_some() || req.is_some() {
                println!(
                    "{name} CPU: {} CPU-s/GiB (bulk transfers), {} µs per 4 KiB GET at c=64",
                    gib.map_or("-".into(), |v| format!("{v:.3}")),
                    req.map_or("-".into(), |v| format!("{v:.1}"))
                );
            }
        }
        if self.machine_per_gib.is_empty() {
            return;
        }
        let cells = |of: &BTreeMap<&str, f64>, show: fn(f64) -> String| -> String {
            let cells: Vec<String> = std::iter::once(&"direct")
                .chain(proxies)
                .filter_map(|name| of.get(name).map(|v| format!("{name} {}", show(*v))))
                .collect();
            cells.join(", ")
        };
        println!(
            "whole machine CPU-s/GiB (bulk; load generator, upstream and kernel included): {}",
            cells(&self.machine_per_gib, |v| format!("{v:.2}"))
        );
        for (op, of) in &self.machine_per_gib_op {
            println!("  {op} only: {}", cells(of, |v| format!("{v:.2}")));
        }
        let share = cells(&self.busy_share, |v| format!("{v:.0}%"));
        println!("whole machine busy during the bulk transfers ({} CPUs): {share}", self.cpus);
    }
}

/// A proxy's name in ratio columns and JSON keys (`ratio_gateway`, `ratio_tls`, ...).
fn short(name: &str) -> &str {
    match name {
        "gateway+TLS" => "tls",
        other => other,
    }
}

/// `median (min-max)` of `v` with `digits` decimals.
fn summary(v: &[f64], digits: usize) -> String {
    let (lo, hi) = span(v);
    format!("{:.digits$} ({lo:.digits$}-{hi:.digits$})", median(v))
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    s[s.len() / 2]
}

fn span(v: &[f64]) -> (f64, f64) {
    (v.iter().copied().fold(f64::INFINITY, f64::min), v.iter().copied().fold(f64::NEG_INFINITY, f64::max))
}

pub(crate) fn human(size: u64) -> String {
    if size >= GIB {
        format!("{} GiB", size / GIB)
    } else if size >= MIB {
        format!("{} MiB", size / MIB)
    } else {
        format!("{} KiB", size / KIB)
    }
}

/// The commit measured, for comparisons across commits.
pub(crate) fn commit() -> Option<String> {
    let out = Command::new("git").args(["rev-parse", "--short", "HEAD"]).output().ok()?;
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Writes `doc` to `target/bench/<name>`.
pub(crate) fn write_json(name: &str, doc: &serde_json::Value) {
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    let out = target.join("bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(name), serde_json::to_string_pretty(doc).unwrap()).unwrap();
    println!("wrote {}", out.join(name).display());
}
