//! HubiC's `/1.0` API: `account/credentials` (the Swift token and endpoint), `account/usage`
//! and `account`, with HubiC's bearer-token errors.

use std::time::SystemTime;

use http::{header, Request, Response, StatusCode};

use super::{Emulator, ExternalToken, StorageConfig, SwiftTokenRec};
use crate::body::{self, Body};
use crate::clock::{format_paris, whole_seconds};
use crate::secret::random_hex;

const API_JSON: &str = "application/json; charset=utf8";

fn api_json(status: StatusCode, doc: String) -> Response<Body> {
    let mut resp = body::with_type(status, API_JSON, doc);
    resp.headers_mut().insert(header::CACHE_CONTROL, http::HeaderValue::from_static("private"));
    resp
}

fn api_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    api_json(status, format!("{{\"error\":\"{error}\",\"error_description\":\"{description}\"}}"))
}

/// Why a bearer token was refused: status, `error`, `error_description`.
type Denied = (StatusCode, &'static str, &'static str);

/// The user behind the request's bearer token, if it is valid and carries `perimeter.r`.
fn bearer_user<B>(emu: &Emulator, req: &Request<B>, perimeter: &str) -> Result<String, Denied> {
    let token = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    let Some(token) = token else {
        return Err((StatusCode::UNAUTHORIZED, "invalid_token", "not found"));
    };
    let now = emu.now();
    let inner = emu.lock();
    let Some(rec) = inner.access.get(token) else {
        return Err((StatusCode::UNAUTHORIZED, "invalid_token", "not found"));
    };
    if rec.revoked {
        return Err((StatusCode::FORBIDDEN, "invalid_token", "revoked"));
    }
    if rec.expires <= now {
        return Err((StatusCode::UNAUTHORIZED, "invalid_token", "expired"));
    }
    // HubiC always authorised account.r.
    let allowed = perimeter == "account"
        || rec
            .scope
            .split(',')
            .any(|item| item.split_once('.').is_some_and(|(p, r)| p == perimeter && r.contains('r')));
    if !allowed {
        return Err((StatusCode::BAD_REQUEST, "insufficient_scope", "this scope is insufficient"));
    }
    Ok(rec.login.clone())
}

/// `GET /1.0/account/credentials`.
pub(super) async fn credentials<B>(emu: &Emulator, req: &Request<B>) -> Response<Body> {
    if let Some(fault) = emu.count_call("credentials") {
        return fault;
    }
    let login = match bearer_user(emu, req, "credentials") {
        Ok(l) => l,
        Err((status, error, description)) => return api_error(status, error, description),
    };
    let (token, endpoint, expires) = match &emu.config.storage {
        StorageConfig::BuiltIn { .. } => builtin_token(emu, &login),
        StorageConfig::External { auth_url, user, key } => {
            match external_token(emu, auth_url, user, key.expose()).await {
                Ok(t) => t,
                Err(message) => {
                    tracing::warn!(cause = %message, "external Swift auth failed");
                    return body::html(StatusCode::BAD_GATEWAY, "<html><body><h1>502 Bad Gateway</h1></body></html>");
                }
            }
        }
    };
    let doc = serde_json::json!({ "token": token, "endpoint": endpoint, "expires": format_paris(expires) });
    api_json(StatusCode::OK, doc.to_string())
}

/// The user's current Swift token, minted anew once the previous one expired or was revoked.
pub(super) fn builtin_token(emu: &Emulator, login: &str) -> (String, String, SystemTime) {
    let now = emu.now();
    let mut inner = emu.lock();
    let account = inner.users.get(login).map(|u| u.swift_account.clone()).unwrap_or_default();
    let endpoint = format!("{}/v1/{account}", emu.base_url);
    if let Some(current) = inner.swift_current.get(login) {
        if let Some(rec) = inner.swift_tokens.get(current).filter(|r| !r.revoked && r.expires > now) {
            return (current.clone(), endpoint, rec.expires);
        }
    }
    // Tokens expire on whole seconds, since `expires` carries no fraction.
    let expires = whole_seconds(now + inner.swift_ttl);
    let token = random_hex(16);
    inner.swift_tokens.insert(token.clone(), SwiftTokenRec { account, expires, revoked: false });
    inner.swift_current.insert(login.to_owned(), token.clone());
    (token, endpoint, expires)
}

/// A token from the external Swift, reused until it (or the configured lifetime) runs out.
async fn external_token(
    emu: &Emulator,
    auth_url: &str,
    user: &str,
    key: &str,
) -> Result<(String, String, SystemTime), String> {
    let now = emu.now();
    if let Some(t) = emu.lock().external.as_ref().filter(|t| t.expires > now) {
        return Ok((t.token.clone(), t.url.clone(), t.expires));
    }
    let resp = emu
        .http
        .get(auth_url)
        .header("x-auth-user", user)
        .header("x-auth-key", key)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("external Swift auth answered {}", resp.status()));
    }
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let token = header("x-auth-token").or_else(|| header("x-storage-token")).ok_or("no X-Auth-Token")?;
    let url = header("x-storage-url").ok_or("no X-Storage-Url")?;
    let left = header("x-auth-token-expires").and_then(|v| v.parse::<u64>().ok()).unwrap_or(86400);
    let ttl = emu.lock().swift_ttl.min(std::time::Duration::from_secs(left));
    let expires = whole_seconds(now + ttl);
    emu.lock().external = Some(ExternalToken { token: token.clone(), url: url.clone(), expires });
    Ok((token, url, expires))
}

/// `GET /1.0/account/usage`.
pub(super) fn usage<B>(emu: &Emulator, req: &Request<B>) -> Response<Body> {
    if let Some(fault) = emu.count_call("usage") {
        return fault;
    }
    let login = match bearer_user(emu, req, "usage") {
        Ok(l) => l,
        Err((status, error, description)) => return api_error(status, error, description),
    };
    let account = emu.lock().users.get(&login).map(|u| u.swift_account.clone()).unwrap_or_default();
    let used = emu.store.as_ref().map_or(0, |s| s.bytes_used(&account));
    api_json(StatusCode::OK, format!("{{\"quota\":{},\"used\":{used}}}", emu.config.quota))
}

/// `GET /1.0/account`.
pub(super) fn account<B>(emu: &Emulator, req: &Request<B>) -> Response<Body> {
    if let Some(fault) = emu.count_call("account") {
        return fault;
    }
    let login = match bearer_user(emu, req, "account") {
        Ok(l) => l,
        Err((status, error, description)) => return api_error(status, error, description),
    };
    let created = emu.lock().users.get(&login).map_or(SystemTime::UNIX_EPOCH, |u| u.created);
    let doc = serde_json::json!({
        "email": login,
        "firstname": "Hubic",
        "lastname": "User",
        "activated": true,
        "creationDate": format_paris(created),
        "language": "en",
        "status": "ok",
        "offer": "10tb",
    });
    api_json(StatusCode::OK, doc.to_string())
}
