//! The gateway's Prometheus metrics (`GET /metrics`).
//!
//! Everything on the serving paths is counted with relaxed atomics in fixed arrays: a request's
//! kind and status pick a counter by index, a histogram's bucket by a comparison, and bytes
//! are added per read or write of the client's socket. Nothing there takes a lock, formats or
//! allocates. prometheus-client writes the exposition at scrape time, from a snapshot taken
//! then (the per-account figures come from the token manager).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::Registry;

/// What a request was for: the `kind` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// v1.0 auth.
    Auth,
    /// Storage, through the proxy.
    Storage,
    /// HubiC registration.
    Register,
    /// `/usage`.
    Usage,
    /// `/info`.
    Info,
    /// `/healthz`, `/readyz`, `/metrics`.
    Ops,
}

const KINDS: [Kind; 6] = [Kind::Auth, Kind::Storage, Kind::Register, Kind::Usage, Kind::Info, Kind::Ops];

impl Kind {
    /// Its label value.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Auth => "auth",
            Kind::Storage => "storage",
            Kind::Register => "register",
            Kind::Usage => "usage",
            Kind::Info => "info",
            Kind::Ops => "ops",
        }
    }
}

/// Status codes counted apart: 100 to 599; one below counts as 100, one above as 599.
const FIRST_CODE: u16 = 100;
const CODES: usize = 500;

/// Upper bounds of the duration histogram's buckets, in seconds, from a cached login or a
/// small object to an upstream's slow first byte.
const BOUNDS: [f64; 12] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// A histogram of durations, lock-free: one counter per bucket (not cumulative; their sum is
/// the count) and the sum in nanoseconds.
struct Histogram {
    buckets: [AtomicU64; BOUNDS.len() + 1],
    sum_nanos: AtomicU64,
}

impl Histogram {
    fn new() -> Self {
        Histogram { buckets: [const { AtomicU64::new(0) }; BOUNDS.len() + 1], sum_nanos: AtomicU64::new(0) }
    }

    fn observe(&self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = BOUNDS.iter().position(|&b| seconds <= b).unwrap_or(BOUNDS.len());
        self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.sum_nanos.fetch_add(u64::try_from(took.as_nanos()).unwrap_or(u64::MAX), Ordering::Relaxed);
    }

    /// Sum in seconds, count, and buckets as prometheus-client takes them: each bucket's own
    /// count (it adds them up), the last one's bound `f64::MAX` (which it writes as `+Inf`).
    fn snapshot(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let mut total = 0;
        let mut buckets = Vec::with_capacity(BOUNDS.len() + 1);
        for (i, bound) in BOUNDS.iter().copied().chain([f64::MAX]).enumerate() {
            let n = self.buckets[i].load(Ordering::Relaxed);
            total += n;
            buckets.push((bound, n));
        }
        // The count is the buckets' sum, so that it and `+Inf` always agree in one exposition.
        (self.sum_nanos.load(Ordering::Relaxed) as f64 / 1e9, total, buckets)
    }
}

/// One gateway's counters.
pub struct Metrics {
    /// Per kind, per status code.
    requests: Box<[[AtomicU64; CODES]; KINDS.len()]>,
    /// Per kind: time to the response head.
    durations: [Histogram; KINDS.len()],
    bytes_in: AtomicU64,
    bytes_out: AtomicU64,
    open_connections: AtomicI64,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests: Box::new([const { [const { AtomicU64::new(0) }; CODES] }; KINDS.len()]),
            durations: std::array::from_fn(|_| Histogram::new()),
            bytes_in: AtomicU64::new(0),
            bytes_out: AtomicU64::new(0),
            open_connections: AtomicI64::new(0),
        }
    }
}

/// What the token manager knows of one account, for the per-account families.
#[derive(Debug, Clone)]
pub struct AccountFigures {
    /// The configured account name.
    pub name: String,
    /// Renewals that brought credentials.
    pub renewed: u64,
    /// Renewals that failed.
    pub failed: u64,
    /// Renewals answered by credentials another instance obtained (shared store).
    pub adopted: u64,
    /// Time left on the upstream token held, if any (zero once expired).
    pub expires_in: Option<Duration>,
    /// The last renewal failed, and no usable token is held.
    pub failing: bool,
}

impl Metrics {
    /// Counts a request of `kind` answered with `status`, whose answer head was ready after
    /// `took`.
    pub fn request(&self, kind: Kind, status: u16, took: Duration) {
        let code = usize::from(status.clamp(FIRST_CODE, FIRST_CODE + CODES as u16 - 1) - FIRST_CODE);
        self.requests[kind as usize][code].fetch_add(1, Ordering::Relaxed);
        self.durations[kind as usize].observe(took);
    }

    /// Counts bytes read from a client.
    pub fn bytes_in(&self, n: usize) {
        self.bytes_in.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts bytes written to a client.
    pub fn bytes_out(&self, n: usize) {
        self.bytes_out.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Counts a client connection opened; closed when the guard is dropped.
    pub fn connection(self: &std::sync::Arc<Self>) -> OpenConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        OpenConnection(self.clone())
    }

    /// The text exposition (OpenMetrics) of these counters and of `accounts`.
    pub fn exposition(self: &std::sync::Arc<Self>, accounts: Vec<AccountFigures>) -> String {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(Snapshot { metrics: self.clone(), accounts }));
        let mut text = String::new();
        // Writing to a String cannot fail; an error here would be a bug in the encoder.
        if prometheus_client::encoding::text::encode(&mut text, &registry).is_err() {
            text.clear();
        }
        text
    }
}

/// A client connection counted as open until dropped.
pub struct OpenConnection(std::sync::Arc<Metrics>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The content type of [`Metrics::exposition`].
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The content type of [`text_format`]'s output.
pub const TEXT_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// An OpenMetrics exposition (as prometheus-client writes it) in Prometheus' older text format
/// (0.0.4), for a scraper that does not ask for OpenMetrics, and for `promtool check metrics`,
/// which reads only that format. The two differ, for what prometheus-client writes, in a
/// counter's family name (`x` in OpenMetrics, `x_total` in 0.0.4, where samples and family must
/// share the name) and in the `# EOF` line.
pub fn text_format(openmetrics: &str) -> String {
    let mut counters = Vec::new();
    for line in openmetrics.lines() {
        if let Some(name) = line.strip_prefix("# TYPE ").and_then(|t| t.strip_suffix(" counter")) {
            counters.push(name);
        }
    }
    let mut text = String::with_capacity(openmetrics.len() + 32 * counters.len());
    for line in openmetrics.lines() {
        if line == "# EOF" || line.starts_with("# UNIT ") {
            continue;
        }
        let described = ["# HELP ", "# TYPE "].into_iter().find_map(|p| Some((p, line.strip_prefix(p)?)));
        match described {
            Some((prefix, rest)) if counters.iter().any(|c| rest.split(' ').next() == Some(*c)) => {
                let (name, tail) = rest.split_once(' ').unwrap_or((rest, ""));
                text.push_str(&format!("{prefix}{name}_total {tail}\n"));
            }
            _ => {
                text.push_str(line);
                text.push('\n');
            }
        }
    }
    text
}

#[derive(Debug)]
struct Snapshot {
    metrics: std::sync::Arc<Metrics>,
    accounts: Vec<AccountFigures>,
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let m = &self.metrics;
        let mut family = encoder.encode_descriptor(
            "swiftgate_requests",
            "Requests answered, by what they were for and status code.",
            None,
            MetricType::Counter,
        )?;
        for kind in KINDS {
            for (i, counter) in m.requests[kind as usize].iter().enumerate() {
                let n = counter.load(Ordering::Relaxed);
                if n > 0 {
                    let code = (FIRST_CODE + i as u16).to_string();
                    let labels = [("kind", kind.label()), ("code", code.as_str())];
                    ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        let mut family = encoder.encode_descriptor(
            "swiftgate_request_duration_seconds",
            "Time from a request's start to its answer's head.",
            None,
            MetricType::Histogram,
        )?;
        for kind in KINDS {
            let (sum, count, buckets) = m.durations[kind as usize].snapshot();
            family
                .encode_family(&[("kind", kind.label())])?
                .encode_histogram::<NoLabelSet>(sum, count, &buckets, None)?;
        }
        let mut family = encoder.encode_descriptor(
            "swiftgate_transferred_bytes",
            "Bytes read from clients (in) and written to them (out), heads included.",
            None,
            MetricType::Counter,
        )?;
        for (direction, counter) in [("in", &m.bytes_in), ("out", &m.bytes_out)] {
            ConstCounter::new(counter.load(Ordering::Relaxed))
                .encode(family.encode_family(&[("direction", direction)])?)?;
        }
        let mut family = encoder.encode_descriptor(
            "swiftgate_upstream_renewals",
            "Upstream credential renewals per account, by result.",
            None,
            MetricType::Counter,
        )?;
        for account in &self.accounts {
            for (result, n) in [("ok", account.renewed), ("error", account.failed), ("shared", account.adopted)] {
                let labels = [("account", account.name.as_str()), ("result", result)];
                ConstCounter::new(n).encode(family.encode_family(&labels)?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "swiftgate_upstream_token_expiry_seconds",
            "Remaining life of each account's upstream token (absent while none is held).",
            None,
            MetricType::Gauge,
        )?;
        for account in &self.accounts {
            if let Some(left) = account.expires_in {
                ConstGauge::new(left.as_secs_f64())
                    .encode(family.encode_family(&[("account", account.name.as_str())])?)?;
            }
        }
        let gauge = ConstGauge::new(m.open_connections.load(Ordering::Relaxed));
        let family = encoder.encode_descriptor(
            "swiftgate_open_connections",
            "Client connections open.",
            None,
            gauge.metric_type(),
        )?;
        gauge.encode(family)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn the_exposition_holds_each_family_with_its_labels() {
        let m = Arc::new(Metrics::default());
        m.request(Kind::Storage, 201, Duration::from_millis(3));
        m.request(Kind::Storage, 201, Duration::from_secs(20));
        m.request(Kind::Auth, 401, Duration::from_micros(10));
        m.request(Kind::Ops, 42, Duration::ZERO);
        m.bytes_in(5);
        m.bytes_out(7);
        let open = m.connection();
        let accounts = vec![AccountFigures {
            name: "acme".into(),
            renewed: 3,
            failed: 1,
            adopted: 2,
            expires_in: Some(Duration::from_secs(90)),
            failing: false,
        }];
        let text = m.exposition(accounts);
        for line in [
            "swiftgate_upstream_renewals_total{account=\"acme\",result=\"shared\"} 2",
            "swiftgate_requests_total{kind=\"storage\",code=\"201\"} 2",
            "swiftgate_requests_total{kind=\"auth\",code=\"401\"} 1",
            "swiftgate_requests_total{kind=\"ops\",code=\"100\"} 1",
            "swiftgate_request_duration_seconds_bucket{le=\"0.005\",kind=\"storage\"} 1",
            "swiftgate_request_duration_seconds_bucket{le=\"+Inf\",kind=\"storage\"} 2",
            "swiftgate_request_duration_seconds_count{kind=\"storage\"} 2",
            "swiftgate_transferred_bytes_total{direction=\"in\"} 5",
            "swiftgate_transferred_bytes_total{direction=\"out\"} 7",
            "swiftgate_upstream_renewals_total{account=\"acme\",result=\"ok\"} 3",
            "swiftgate_upstream_renewals_total{account=\"acme\",result=\"error\"} 1",
            "swiftgate_upstream_token_expiry_seconds{account=\"acme\"} 90.0",
            "swiftgate_open_connections 1",
            "# EOF",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing from\n{text}");
        }
        drop(open);
        assert!(m.exposition(Vec::new()).lines().any(|l| l == "swiftgate_open_connections 0"));

        let old = text_format(&text);
        for line in [
            "# TYPE swiftgate_requests_total counter",
            "# HELP swiftgate_transferred_bytes_total Bytes read from clients (in) and written to them (out), heads included.",
            "# TYPE swiftgate_request_duration_seconds histogram",
            "# TYPE swiftgate_open_connections gauge",
            "swiftgate_requests_total{kind=\"storage\",code=\"201\"} 2",
        ] {
            assert!(old.lines().any(|l| l == line), "{line} missing from\n{old}");
        }
        assert!(!old.contains("# EOF") && !old.contains("# TYPE swiftgate_requests counter"), "{old}");
    }
}
