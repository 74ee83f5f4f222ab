//! Operational endpoints: `/healthz`, `/usage` (the user's HubiC usage, HTML or JSON) and
//! `/info` (Swift discoverability, synthesised in redirect mode).
//!
//! Nothing here touches storage traffic.

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};

use crate::body::{self, escape_html, Body};
use crate::front::{self, Users};
use crate::register::page;
use crate::tokens::TokenManager;

/// `GET /healthz`: the process is up and serving.
pub fn healthz() -> Response<Body> {
    body::text(StatusCode::OK, "ok\n")
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
