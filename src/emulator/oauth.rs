//! HubiC's OAuth2 endpoints: the consent page (`GET /oauth/auth`), its form POST, and the token
//! endpoint with the `authorization_code` and `refresh_token` grants.
//!
//! Shapes are HubiC's, not RFC 6749's: `invalid_request "invalid refresh token"` instead of
//! `invalid_grant`, error JSON with `error_description` first, error redirects with `error`
//! first, `code` then `scope` then `state` on success.

use http::{header, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::{AccessRec, CodeRec, Emulator, PendingGrant, RefreshRec};
use crate::body::{self, escape_html, form_get, form_pairs, Body};
use crate::secret::{random_alnum, Secret};

const PERIMETERS: [&str; 9] =
    ["usage", "account", "getAllLinks", "credentials", "activate", "links", "sponsorCode", "sponsored", "apps"];

/// Largest token-endpoint or form body read.
const FORM_LIMIT: usize = 64 * 1024;

fn valid_scope(scope: &str) -> bool {
    !scope.is_empty()
        && scope.split(',').all(|item| match item.split_once('.') {
            Some((perimeter, rights)) => {
                PERIMETERS.contains(&perimeter)
                    && !rights.is_empty()
                    && rights.chars().all(|c| matches!(c, 'r' | 'w' | 'd'))
            }
            None => false,
        })
}

/// `scheme://host:port` of a URL, lower-cased; `None` when it is not an absolute http(s) URL.
fn origin(url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let scheme = uri.scheme_str()?.to_ascii_lowercase();
    let authority = uri.authority()?;
    let port = authority.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
    Some(format!("{scheme}://{}:{port}", authority.host().to_ascii_lowercase()))
}

/// `redirect_uri` followed by `params`, keeping the URI exactly as the client sent it.
fn with_params(redirect_uri: &str, params: &[(&str, &str)]) -> String {
    let mut out = redirect_uri.to_owned();
    let mut sep = if redirect_uri.contains('?') { '&' } else { '?' };
    for (k, v) in params {
        out.push(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(v);
        sep = '&';
    }
    out
}

fn error_redirect(redirect_uri: &str, error: &str, description: &str) -> Response<Body> {
    let encoded: String = form_urlencoded::byte_serialize(description.as_bytes()).collect();
    body::redirect(&with_params(redirect_uri, &[("error", error), ("error_description", &encoded)]))
}

fn consent_page(oauth: &str, scope: &str, error: Option<&str>) -> String {
    let mut perimeters = String::new();
    for item in scope.split(',') {
        if let Some((p, rights)) = item.split_once('.') {
            perimeters.push_str(&format!(
                "<label><input type=\"checkbox\" name=\"{p}\" value=\"{r}\" checked> {p} ({r})</label>\n",
                p = escape_html(p),
                r = escape_html(rights)
            ));
        }
    }
    let error = error.map_or(String::new(), |e| format!("<p class=\"text-error\">\n{e}\n</p>\n"));
    format!(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>hubiC - Authorization</title></head><body>\n\
         <h1>An application wants to access your hubiC account</h1>\n{error}\
         <form action=\"/oauth/auth/\" method=\"post\">\n\
         <input type=\"hidden\" name=\"oauth\" value=\"{oauth}\"><input type=\"hidden\" name=\"action\" value=\"accepted\">\n\
         <label>E-mail <input type=\"email\" name=\"login\"></label>\n\
         <label>Password <input type=\"password\" name=\"user_pwd\"></label>\n\
         {perimeters}\
         <button type=\"submit\">Accept</button>\n\
         <button type=\"submit\" name=\"action\" value=\"refused\">Refuse</button>\n\
         </form>\n</body></html>\n"
    )
}

/// `GET /oauth/auth/`: validates the request and shows the consent page.
pub(super) fn authorize_page(emu: &Emulator, query: &str) -> Response<Body> {
    if let Some(fault) = emu.count_call("oauth_auth_get") {
        return fault;
    }
    let pairs = form_pairs(query.as_bytes());
    let get = |k| form_get(&pairs, k).filter(|v| !v.is_empty());
    let Some(redirect_uri) = get("redirect_uri") else {
        return body::html(
            StatusCode::BAD_REQUEST,
            "<html><body><h1>invalid_request</h1><p>missing arguments</p></body></html>",
        );
    };
    let (Some(client_id), Some(scope), Some(response_type)) = (get("client_id"), get("scope"), get("response_type"))
    else {
        return error_redirect(redirect_uri, "invalid_request", "missing arguments");
    };
    let registered = emu.lock().apps.get(client_id).map(|a| a.redirect_uri.clone());
    let Some(registered) = registered else {
        return error_redirect(redirect_uri, "unauthorized_client", "please verify credentials");
    };
    if origin(redirect_uri).is_none() || origin(redirect_uri) != origin(&registered) {
        return error_redirect(redirect_uri, "invalid_request", "please verify redirect uri");
    }
    if response_type != "code" {
        return error_redirect(redirect_uri, "unsupported_response_type", "response type must be set to code or token");
    }
    if !valid_scope(scope) {
        return error_redirect(redirect_uri, "invalid_scope", "please verify scope");
    }
    let oauth = new_oauth_id(emu);
    let pending = PendingGrant {
        client_id: client_id.to_owned(),
        redirect_uri: redirect_uri.to_owned(),
        scope: scope.to_owned(),
        state: raw_param(query, "state").filter(|v| !v.is_empty()).map(str::to_owned),
        shown: emu.now(),
    };
    emu.lock().pending.insert(oauth.clone(), pending);
    body::html(StatusCode::OK, consent_page(&oauth, scope, None))
}

/// The value of `key` in `query` exactly as sent, not form-decoded: HubiC echoed `state` back
/// so (hubic_token's state is base64 with a bare `+`, which decoding would make a space).
fn raw_param<'a>(query: &'a str, key: &str) -> Option<&'a str> {
    query.split('&').find_map(|pair| pair.strip_prefix(key)?.strip_prefix('='))
}

fn new_oauth_id(emu: &Emulator) -> String {
    use rand::Rng;
    loop {
        let id = rand::thread_rng().gen_range(100_000..1_000_000u32).to_string();
        if !emu.lock().pending.contains_key(&id) {
            return id;
        }
    }
}

/// The scope granted: the requested items whose perimeter was posted (all when none was),
/// plus `account.r`, which HubiC always granted.
fn granted_scope(requested: &str, form: &[(String, String)]) -> String {
    let posted: Vec<&str> =
        form.iter().filter(|(k, _)| PERIMETERS.contains(&k.as_str())).map(|(k, _)| k.as_str()).collect();
    let mut items: Vec<String> = requested
        .split(',')
        .filter(|item| posted.is_empty() || item.split_once('.').is_some_and(|(p, _)| posted.contains(&p)))
        .map(str::to_owned)
        .collect();
    if !items.iter().any(|i| i.starts_with("account.")) {
        items.push("account.r".to_owned());
    }
    items.join(",")
}

/// `POST /oauth/auth/`: the consent form.
pub(super) async fn authorize_post(emu: &Emulator, req: Request<Incoming>) -> Response<Body> {
    if let Some(fault) = emu.count_call("oauth_auth_post") {
        return fault;
    }
    let form = match body::read_limited(req.into_body(), FORM_LIMIT).await {
        Ok(b) => form_pairs(&b),
        Err(e) => return body::html(e.status(), "<html><body><h1>Bad Request</h1></body></html>"),
    };
    let field = |k| form_get(&form, k).unwrap_or("");
    let oauth = field("oauth");
    let now = emu.now();
    let mut inner = emu.lock();
    let Some(pending) = inner.pending.get(oauth) else {
        return body::html(
            StatusCode::BAD_REQUEST,
            "<html><body><h1>invalid_request</h1><p>unknown or expired oauth id</p></body></html>",
        );
    };
    if let Some(min) = inner.min_post_delay {
        if now.duration_since(pending.shown).unwrap_or_default() < min {
            return body::html(
                StatusCode::from_u16(509).unwrap_or(StatusCode::TOO_MANY_REQUESTS),
                "<html><body><h1>509 Bandwidth Limit Exceeded</h1></body></html>",
            );
        }
    }
    // The last `action` wins: a browser's Refuse button adds a second `action=refused`.
    let action = form.iter().rev().find(|(k, _)| k == "action").map_or("", |(_, v)| v.as_str());
    if action != "accepted" {
        let pending = inner.pending.remove(oauth);
        drop(inner);
        let redirect = pending.map_or_else(String::new, |p| p.redirect_uri);
        return error_redirect(&redirect, "access_denied", "user refused");
    }
    let login = field("login");
    let password_ok = inner.users.get(login).is_some_and(|u| u.password == Secret::new(field("user_pwd")));
    if !password_ok {
        let page = consent_page(oauth, &pending.scope, Some("Authentication failed, please check your credentials"));
        return body::html(StatusCode::OK, page);
    }
    let Some(pending) = inner.pending.remove(oauth) else {
        return body::html(StatusCode::BAD_REQUEST, "<html><body><h1>invalid_request</h1></body></html>");
    };
    let unix = crate::clock::unix_secs(now);
    let code = format!("{unix:010}{}", random_alnum(22));
    let expires = now + emu.config.code_ttl;
    inner.codes.insert(
        code.clone(),
        CodeRec {
            client_id: pending.client_id.clone(),
            login: login.to_owned(),
            redirect_uri: pending.redirect_uri.clone(),
            scope: granted_scope(&pending.scope, &form),
            expires,
        },
    );
    drop(inner);
    let mut params = vec![("code", code.as_str()), ("scope", pending.scope.as_str())];
    if let Some(state) = &pending.state {
        params.push(("state", state));
    }
    body::redirect(&with_params(&pending.redirect_uri, &params))
}

fn token_error(status: StatusCode, error: &str, description: &str) -> Response<Body> {
    body::json(status, format!("{{\"error_description\":\"{description}\",\"error\":\"{error}\"}}"))
}

/// Fields of a `multipart/form-data` body (text parts only), as the seed gateway sent them.
fn multipart_fields(content_type: &str, body: &[u8]) -> Option<Vec<(String, String)>> {
    let boundary = content_type.split(';').find_map(|p| p.trim().strip_prefix("boundary="))?.trim_matches('"');
    let text = String::from_utf8_lossy(body);
    let delimiter = format!("--{boundary}");
    let mut fields = Vec::new();
    for part in text.split(&delimiter).skip(1) {
        if part.starts_with("--") {
            break;
        }
        let part = part.strip_prefix("\r\n").unwrap_or(part);
        let (head, value) = part.split_once("\r\n\r\n")?;
        let name = head
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("content-disposition"))
            .and_then(|l| l.split(';').find_map(|p| p.trim().strip_prefix("name=")))
            .map(|n| n.trim_matches('"').to_owned())?;
        fields.push((name, value.strip_suffix("\r\n").unwrap_or(value).to_owned()));
    }
    Some(fields)
}

/// Same origin, also when the client double-encoded the URI or sent the whole callback URL.
fn redirect_matches(sent: &str, issued: &str) -> bool {
    let once = percent_encoding::percent_decode_str(sent).decode_utf8_lossy().into_owned();
    let twice = percent_encoding::percent_decode_str(&once).decode_utf8_lossy().into_owned();
    let want = origin(issued);
    [sent, &once, &twice].iter().any(|s| origin(s).is_some() && origin(s) == want)
}

/// `POST /oauth/token/`.
pub(super) async fn token(emu: &Emulator, req: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = req.into_parts();
    let bytes = match body::read_limited(incoming, FORM_LIMIT).await {
        Ok(b) => b,
        Err(e) => return token_error(e.status(), "invalid_request", "missing parameters"),
    };
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let mut form = if content_type.starts_with("multipart/form-data") {
        multipart_fields(content_type, &bytes).unwrap_or_default()
    } else {
        form_pairs(&bytes)
    };
    form.extend(form_pairs(parts.uri.query().unwrap_or("").as_bytes()));
    let grant_type = form_get(&form, "grant_type").unwrap_or("");
    let endpoint = match grant_type {
        "authorization_code" => "token_authorization_code",
        "refresh_token" => "token_refresh_token",
        _ => "token_other",
    };
    if let Some(fault) = emu.count_call(endpoint) {
        return fault;
    }
    // Client authentication: any valid pair among Basic header, body fields and query wins;
    // an undecodable Basic header is ignored (Swift Explorer sent one beside body credentials).
    let mut candidates = Vec::new();
    if let Some(pair) = body::basic_credentials(&parts.headers) {
        candidates.push(pair);
    }
    let ids = form.iter().filter(|(k, _)| k == "client_id").map(|(_, v)| v);
    let secrets: Vec<&String> = form.iter().filter(|(k, _)| k == "client_secret").map(|(_, v)| v).collect();
    for id in ids {
        for secret in &secrets {
            candidates.push((id.clone(), (*secret).clone()));
        }
    }
    let now = emu.now();
    let mut inner = emu.lock();
    let client = candidates.iter().find_map(|(id, secret)| {
        inner
            .apps
            .get(id)
            .filter(|app| app.client_secret == Secret::new(secret.as_str()))
            .map(|app| app.client_id.clone())
    });
    let Some(client_id) = client else {
        return token_error(StatusCode::UNAUTHORIZED, "unauthorized_client", "please verify credentials");
    };
    let access_ttl = inner.access_ttl;
    match grant_type {
        "authorization_code" => {
            let (Some(code), Some(redirect_uri)) = (form_get(&form, "code"), form_get(&form, "redirect_uri")) else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "missing parameters");
            };
            let Some(rec) = inner.codes.get(code) else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "invalid code");
            };
            if rec.client_id != client_id {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "invalid code");
            }
            if rec.expires <= now {
                inner.codes.remove(code);
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "expired code");
            }
            if !redirect_matches(redirect_uri, &rec.redirect_uri) {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "please verify redirect uri");
            }
            let Some(rec) = inner.codes.remove(code) else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "invalid code");
            };
            // A new authorisation of the same app by the same user revokes the old refresh token.
            inner.refresh.retain(|_, r| !(r.client_id == rec.client_id && r.login == rec.login));
            let refresh = random_alnum(64);
            let access = random_alnum(64);
            inner
                .refresh
                .insert(refresh.clone(), RefreshRec { client_id, login: rec.login.clone(), scope: rec.scope.clone() });
            inner.access.insert(
                access.clone(),
                AccessRec { login: rec.login, scope: rec.scope, expires: now + access_ttl, revoked: false },
            );
            body::json(
                StatusCode::OK,
                format!(
                    "{{\"refresh_token\":\"{refresh}\",\"expires_in\":{},\"access_token\":\"{access}\",\"token_type\":\"Bearer\"}}",
                    access_ttl.as_secs()
                ),
            )
        }
        "refresh_token" => {
            let Some(token) = form_get(&form, "refresh_token") else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "missing parameters");
            };
            let Some(rec) = inner.refresh.get(token).filter(|r| r.client_id == client_id) else {
                return token_error(StatusCode::BAD_REQUEST, "invalid_request", "invalid refresh token");
            };
            let access = random_alnum(64);
            let rec = AccessRec {
                login: rec.login.clone(),
                scope: rec.scope.clone(),
                expires: now + access_ttl,
                revoked: false,
            };
            inner.access.insert(access.clone(), rec);
            body::json(
                StatusCode::OK,
                format!(
                    "{{\"expires_in\":{},\"access_token\":\"{access}\",\"token_type\":\"Bearer\"}}",
                    access_ttl.as_secs()
                ),
            )
        }
        "" => token_error(StatusCode::BAD_REQUEST, "invalid_request", "missing parameters"),
        _ => token_error(StatusCode::BAD_REQUEST, "invalid_request", "grant type must be set to authorization_code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes() {
        for ok in ["credentials.r", "usage.r,account.r,credentials.r", "links.drw", "links.wd"] {
            assert!(valid_scope(ok), "{ok}");
        }
        for bad in ["", "credentials", "credentials.x", "files.r", "credentials.r,", "credentials."] {
            assert!(!valid_scope(bad), "{bad}");
        }
    }

    #[test]
    fn redirect_uris_keep_their_form() {
        assert_eq!(
            with_params("http://h/cb", &[("code", "1"), ("scope", "a.r,b.r")]),
            "http://h/cb?code=1&scope=a.r,b.r"
        );
        assert_eq!(with_params("http://h/cb?x=1", &[("code", "1")]), "http://h/cb?x=1&code=1");
    }

    #[test]
    fn origins_and_lenient_redirect_checks() {
        assert_eq!(origin("http://LocalHost/cb"), Some("http://localhost:80".into()));
        assert_eq!(origin("https://h:443/"), origin("https://h/x"));
        assert!(redirect_matches("http://localhost:8080/callback", "http://localhost:8080/callback"));
        assert!(redirect_matches(
            "http%253A%252F%252Flocalhost%253A8080%252Fcallback",
            "http://localhost:8080/callback"
        ));
        assert!(redirect_matches("http://localhost:8080/callback?code=1&scope=x", "http://localhost:8080/callback"));
        assert!(!redirect_matches("http://evil:8080/callback", "http://localhost:8080/callback"));
    }

    #[test]
    fn granted_scope_intersects_posted_perimeters() {
        let posted = vec![("credentials".to_owned(), "r".to_owned()), ("login".to_owned(), "x".to_owned())];
        assert_eq!(granted_scope("usage.r,credentials.r", &posted), "credentials.r,account.r");
        assert_eq!(granted_scope("usage.r,credentials.r", &[]), "usage.r,credentials.r,account.r");
    }

    #[test]
    fn multipart_bodies_are_read() {
        let body = "--XX\r\nContent-Disposition: form-data; name=\"grant_type\"\r\n\r\nrefresh_token\r\n--XX\r\nContent-Disposition: form-data; name=\"refresh_token\"\r\n\r\nabc\r\n--XX--\r\n";
        let fields = multipart_fields("multipart/form-data; boundary=XX", body.as_bytes()).unwrap();
        assert_eq!(fields, vec![("grant_type".into(), "refresh_token".into()), ("refresh_token".into(), "abc".into())]);
    }
}
