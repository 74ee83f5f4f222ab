//! Operational endpoints: `/healthz`, `/readyz`, `/metrics`, `/usage` (the user's HubiC usage,
//! HTML or JSON) and `/info` (Swift discoverability, synthesised in redirect mode).
//!
//! Nothing here touches storage traffic.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{self, escape_html, Body};
use std::sync::atomic::Ordering;

use crate::front::{self, Users};
use crate::metrics::{AccountFigures, Metrics};
use crate::register::page;
use crate::tokens::TokenManager;

/// `GET /healthz`: the process is up and serving.
pub fn healthz() -> Response<Body> {
    body::text(StatusCode::OK, "ok\n")
}

/// Where the gateway is in its life: starting (its first credential fetch for every account
/// not done yet), ready, or draining after SIGTERM.
#[derive(Debug, Default)]
pub struct Readiness(std::sync::atomic::AtomicU8);

const STARTING: u8 = 0;
const READY: u8 = 1;
const DRAINING: u8 = 2;

impl Readiness {
    /// Started: ready unless already draining.
    pub fn started(&self) {
        let _ = self.0.compare_exchange(STARTING, READY, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Draining from now on.
    pub fn drain(&self) {
        self.0.store(DRAINING, Ordering::Release);
    }

    /// Whether the gateway is draining.
    pub fn draining(&self) -> bool {
        self.0.load(Ordering::Acquire) == DRAINING
    }
}

/// `GET /readyz`: `200` once the gateway serves, `503` while it starts or drains, with the
/// store's line and a line per account saying whether it holds an upstream token. An account
/// whose upstream is down, or a shared store that is, does not make the gateway unready: every
/// instance would then be unready at once.
pub fn readyz(readiness: &Readiness, store: &str, accounts: &[AccountFigures]) -> Response<Body> {
    let (status, first) = match readiness.0.load(Ordering::Acquire) {
        READY => (StatusCode::OK, "ready"),
        DRAINING => (StatusCode::SERVICE_UNAVAILABLE, "draining: shutting down"),
        _ => (StatusCode::SERVICE_UNAVAILABLE, "starting: first upstream credentials not fetched yet"),
    };
    let mut text = format!("{first}\n{store}\n");
    for account in accounts {
        let state = match (account.expires_in, account.failing) {
            (Some(left), false) if !left.is_zero() => format!("token held, expires in {} s", left.as_secs()),
            (_, true) => "no usable token: the last renewal failed".to_owned(),
            _ => "no token held".to_owned(),
        };
        text.push_str(&format!("account {}: {state}\n", account.name));
    }
    let mut resp = body::text(status, text);
    resp.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// `GET /metrics`: the Prometheus exposition, in OpenMetrics for a scraper that asks for it
/// (Prometheus does), else in the older text format (`curl`, `promtool check metrics`).
pub fn metrics(
    headers: &HeaderMap,
    metrics: &std::sync::Arc<Metrics>,
    accounts: Vec<AccountFigures>,
) -> Response<Body> {
    let openmetrics = headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains("application/openmetrics-text"));
    let text = metrics.exposition(accounts);
    let (text, content_type) = if openmetrics {
        (text, crate::metrics::CONTENT_TYPE)
    } else {
        (crate::metrics::text_format(&text), crate::metrics::TEXT_CONTENT_TYPE)
    };
    let mut resp = body::text(StatusCode::OK, text);
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    resp
}

/// The answer to any request but `/healthz`, `/readyz` and `/metrics` while the gateway
/// drains: `503` and a closed connection, which Swift clients retry, and a load balancer
/// sends to another instance.
pub fn draining() -> Response<Body> {
    let mut resp = body::text(StatusCode::SERVICE_UNAVAILABLE, "the gateway is shutting down; retry\n");
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
    resp
}

/// `GET /info`: what a Swift client may rely on. In redirect mode storage is not behind the
/// gateway, so this says only what the gateway itself knows.
pub fn info() -> Response<Body> {
    let doc = serde_json::json!({
        "swift": { "version": concat!("swiftgate-", env!("CARGO_PKG_VERSION")) },
        "tempauth": { "account_acls": false },
    });
    body::json(StatusCode::OK, doc.to_string())
}

/// `1536` → `1.5 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// `GET /usage`, authenticated with the gateway user's key (v1.0 headers or HTTP Basic).
pub async fn usage(
    headers: &HeaderMap,
    users: &Users,
    tokens: &std::sync::Arc<TokenManager>,
    public_url: &str,
    from: std::net::IpAddr,
) -> Response<Body> {
    let creds = front::v1_credentials(headers)
        .map(|(u, k)| (u.to_owned(), k.to_owned()))
        .or_else(|| body::basic_credentials(headers));
    let account = match creds {
        Some((user, key)) => users.verify(&user, &key, from).await,
        None => Err(front::Refused::Wrong),
    };
    let account = match account {
        Ok(account) => account,
        Err(front::Refused::Busy) => return front::busy(),
        Err(front::Refused::Wrong) => {
            let mut resp = front::unauthorized("");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"swiftgate usage\""));
            return resp;
        }
    };
    let usage = match tokens.usage(&account).await {
        Ok(u) => u,
        Err(e) => return front::token_error_response(&e, public_url),
    };
    let wants_json =
        headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|a| a.contains("application/json"));
    let percent = if usage.quota == 0 { 0.0 } else { usage.used as f64 * 100.0 / usage.quota as f64 };
    if wants_json {
        let doc = serde_json::json!({
            "account": account,
            "used": usage.used,
            "quota": usage.quota,
            "used_human": human_bytes(usage.used),
            "quota_human": human_bytes(usage.quota),
        });
        return body::json(StatusCode::OK, doc.to_string());
    }
    body::html(
        StatusCode::OK,
        page(
            "Storage usage",
            &format!(
                "<p>Account <b>{}</b>: {} used of {} ({percent:.1}%).</p>",
                escape_html(&account),
                human_bytes(usage.used),
                human_bytes(usage.quota)
            ),
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_units() {
        let cases = [
            (0, "0 B"),
            (1023, "1023 B"),
            (1536, "1.5 KiB"),
            (10 * 1024u64.pow(4), "10.0 TiB"),
            (u64::MAX, "16.0 EiB"),
        ];
        for (n, want) in cases {
            assert_eq!(human_bytes(n), want);
        }
    }

    #[test]
    fn basic_auth_is_parsed() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic dTprOnY="));
        assert_eq!(body::basic_credentials(&h), Some(("u".into(), "k:v".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic !!"));
        assert_eq!(body::basic_credentials(&h), None);
    }
}
