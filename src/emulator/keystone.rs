//! Keystone v3 and Swift v1 auth in front of the built-in storage, as a real OpenStack's and a
//! tempauth's look to a client: `POST /v3/auth/tokens` (password scoped to a project,
//! application credential) and `GET /auth/v1.0`.
//!
//! Each emulator user is also a Keystone user of domain `Default`, with one project of the same
//! name whose id is its Swift account's hex part. Tokens obey the emulator's Swift-token life,
//! revocation and injected failures (endpoint `keystone` or `v1auth`), and are counted.

use std::time::SystemTime;

use http::{header, HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{Emulator, StorageConfig, SwiftTokenRec};
use crate::body::{self, Body};
use crate::clock::whole_seconds;
use crate::secret::random_hex;

/// The one domain the emulator knows, by name and id.
const DOMAIN: (&str, &str) = ("Default", "default");

#[derive(Deserialize)]
struct AuthDoc {
    auth: Auth,
}

#[derive(Deserialize)]
struct Auth {
    identity: IdentityDoc,
    #[serde(default)]
    scope: Option<ScopeDoc>,
}

#[derive(Deserialize)]
struct IdentityDoc {
    methods: Vec<String>,
    #[serde(default)]
    password: Option<PasswordDoc>,
    #[serde(default)]
    application_credential: Option<AppCredDoc>,
}

#[derive(Deserialize)]
struct PasswordDoc {
    user: UserDoc,
}

#[derive(Deserialize)]
struct UserDoc {
    name: String,
    #[serde(default)]
    domain: Option<NameOrId>,
    password: String,
}

#[derive(Deserialize)]
struct NameOrId {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
}

impl NameOrId {
    /// True when this names the default domain (by name or by id).
    fn is_default_domain(&self) -> bool {
        self.name.as_deref() == Some(DOMAIN.0) || self.id.as_deref() == Some(DOMAIN.1)
    }
}

#[derive(Deserialize)]
struct AppCredDoc {
    id: String,
    secret: String,
}

#[derive(Deserialize)]
struct ScopeDoc {
    project: ProjectDoc,
}

#[derive(Deserialize)]
struct ProjectDoc {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(default)]
    domain: Option<NameOrId>,
}

/// Keystone's error document.
fn error(status: StatusCode, message: &str) -> Response<Body> {
    let title = status.canonical_reason().unwrap_or("Error");
    let doc = serde_json::json!({ "error": { "code": status.as_u16(), "message": message, "title": title } });
    body::json(status, doc.to_string())
}

fn unauthorized(emu: &Emulator) -> Response<Body> {
    let mut resp = error(StatusCode::UNAUTHORIZED, "The request you have made requires authentication.");
    if let Ok(v) = HeaderValue::from_str(&format!("Keystone uri=\"{}/v3\"", emu.base_url)) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// An instant as Keystone writes it: RFC 3339 in UTC with microseconds.
fn keystone_time(at: SystemTime) -> String {
    let secs = crate::clock::unix_secs(at) as i64;
    let utc = time::OffsetDateTime::from_unix_timestamp(secs).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    let format = time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second].000000Z");
    utc.format(&format).unwrap_or_default()
}

/// Why a token request is refused.
enum Refusal {
    /// Unknown user, wrong secret, or a scope that is not the user's: Keystone's 401.
    Unauthorized,
    /// A request Keystone cannot read.
    BadRequest(&'static str),
}

/// The login and the method a request authenticates with, and whether the token is scoped to
/// the login's project; or why it is refused.
fn identify(emu: &Emulator, auth: &Auth) -> Result<(String, &'static str, bool), Refusal> {
    let identity = &auth.identity;
    if identity.methods.iter().any(|m| m == "application_credential") {
        let Some(cred) = &identity.application_credential else {
            return Err(Refusal::BadRequest("application_credential is missing"));
        };
        if auth.scope.is_some() {
            // Keystone refuses a scope beside an application credential, which has its own.
            return Err(Refusal::Unauthorized);
        }
        let inner = emu.lock();
        return match inner.app_creds.get(&cred.id) {
            Some((login, secret)) if secret.expose() == cred.secret => {
                Ok((login.clone(), "application_credential", true))
            }
            _ => Err(Refusal::Unauthorized),
        };
    }
    if !identity.methods.iter().any(|m| m == "password") {
        return Err(Refusal::BadRequest("unsupported authentication method"));
    }
    let Some(password) = &identity.password else {
        return Err(Refusal::BadRequest("password is missing"));
    };
    let user = &password.user;
    let Some(domain) = &user.domain else {
        return Err(Refusal::BadRequest("Expecting to find domain in user"));
    };
    let inner = emu.lock();
    let known = inner.users.get(&user.name).is_some_and(|u| u.password.expose() == user.password);
    if !known || !domain.is_default_domain() {
        return Err(Refusal::Unauthorized);
    }
    // Without a scope, Keystone hands out an unscoped token: no project, no catalog.
    let Some(scope) = &auth.scope else {
        return Ok((user.name.clone(), "password", false));
    };
    let own_id = inner.users.get(&user.name).map(|u| project_id(&u.swift_account)).unwrap_or_default();
    let project = &scope.project;
    let by_id = project.id.as_deref() == Some(own_id.as_str());
    let by_name = project.name.as_deref() == Some(user.name.as_str())
        && project.domain.as_ref().is_some_and(NameOrId::is_default_domain);
    if !(by_id || by_name) {
        // Keystone answers an unknown project or one without a role the same way.
        return Err(Refusal::Unauthorized);
    }
    Ok((user.name.clone(), "password", true))
}

/// A project id from a Swift account name (`AUTH_<hex>`).
fn project_id(account: &str) -> String {
    account.trim_start_matches("AUTH_").to_owned()
}

/// `POST /v3/auth/tokens`.
pub(super) async fn tokens(emu: &Emulator, req: Request<Incoming>) -> Response<Body> {
    let doc = match body::read_limited(req.into_body(), 64 * 1024).await {
        Ok(b) => serde_json::from_slice::<AuthDoc>(&b),
        Err(e) => return error(e.status(), "the request body could not be read"),
    };
    let doc = match doc {
        Ok(d) => d,
        Err(e) => return error(StatusCode::BAD_REQUEST, &format!("Expecting to find auth in request body: {e}")),
    };
    let method = if doc.auth.identity.methods.iter().any(|m| m == "application_credential") {
        "keystone_application_credential"
    } else {
        "keystone_password"
    };
    if let Some(fault) = emu.count_call(method) {
        return fault;
    }
    if !matches!(emu.config.storage, StorageConfig::BuiltIn { .. }) {
        return error(StatusCode::NOT_IMPLEMENTED, "Keystone is emulated in front of the built-in storage only");
    }
    let (login, method, scoped) = match identify(emu, &doc.auth) {
        Ok(who) => who,
        Err(Refusal::Unauthorized) => return unauthorized(emu),
        Err(Refusal::BadRequest(why)) => return error(StatusCode::BAD_REQUEST, why),
    };
    let now = emu.now();
    let mut inner = emu.lock();
    let account = inner.users.get(&login).map(|u| u.swift_account.clone()).unwrap_or_default();
    let expires = whole_seconds(now + inner.swift_ttl);
    let token = format!("gAAAAA{}", random_hex(32));
    inner.swift_tokens.insert(token.clone(), SwiftTokenRec { account: account.clone(), expires, revoked: false });
    drop(inner);
    let endpoints: Vec<serde_json::Value> = emu
        .config
        .keystone_regions
        .iter()
        .enumerate()
        .flat_map(|(i, region)| {
            let prefix = if i == 0 { String::new() } else { format!("/{region}") };
            let url = format!("{}{prefix}/v1/{account}", emu.base_url);
            ["public", "internal", "admin"].map(|interface| {
                serde_json::json!({ "id": random_hex(16), "interface": interface, "region": region,
                    "region_id": region, "url": url })
            })
        })
        .collect();
    let project = project_id(&account);
    let mut doc = serde_json::json!({ "token": {
        "methods": [method],
        "user": { "domain": { "id": DOMAIN.1, "name": DOMAIN.0 }, "id": random_hex(16), "name": login,
            "password_expires_at": null },
        "audit_ids": [random_hex(11)],
        "expires_at": keystone_time(expires),
        "issued_at": keystone_time(whole_seconds(now)),
        "project": { "domain": { "id": DOMAIN.1, "name": DOMAIN.0 }, "id": project, "name": login },
        "is_domain": false,
        "roles": [{ "id": random_hex(16), "name": "member" }],
        "catalog": [
            { "endpoints": [{ "id": random_hex(16), "interface": "public", "region": emu.config.keystone_regions[0],
                "region_id": emu.config.keystone_regions[0], "url": format!("{}/v3", emu.base_url) }],
              "id": random_hex(16), "type": "identity", "name": "keystone" },
            { "endpoints": endpoints, "id": random_hex(16), "type": "object-store", "name": "swift" },
        ],
    } });
    if !scoped {
        if let Some(token) = doc.get_mut("token").and_then(|t| t.as_object_mut()) {
            for key in ["project", "is_domain", "roles", "catalog"] {
                token.remove(key);
            }
        }
    }
    let mut resp = body::json(StatusCode::CREATED, doc.to_string());
    if let Ok(v) = HeaderValue::from_str(&token) {
        resp.headers_mut().insert("x-subject-token", v);
    }
    resp
}

/// `GET /auth/v1.0`, as tempauth answers it: the user's current token until it expires.
pub(super) fn v1_auth<B>(emu: &Emulator, req: &Request<B>) -> Response<Body> {
    if let Some(fault) = emu.count_call("v1auth") {
        return fault;
    }
    let (user, key) = crate::front::v1_credentials(req.headers()).unwrap_or(("", ""));
    let known = emu.lock().users.get(user).is_some_and(|u| u.password.expose() == key);
    if !known || !matches!(emu.config.storage, StorageConfig::BuiltIn { .. }) {
        return body::html(StatusCode::UNAUTHORIZED, "<html><h1>Unauthorized</h1></html>");
    }
    let (token, endpoint, expires) = super::api::builtin_token(emu, user);
    let mut resp = body::status(StatusCode::OK);
    let h = resp.headers_mut();
    for (name, value) in [
        ("x-storage-url", endpoint),
        ("x-auth-token", token.clone()),
        ("x-storage-token", token),
        ("x-auth-token-expires", crate::clock::secs_until(emu.now(), expires).to_string()),
    ] {
        if let Ok(v) = HeaderValue::from_str(&value) {
            h.insert(name, v);
        }
    }
    h.insert(header::CONTENT_LENGTH, HeaderValue::from_static("0"));
    resp
}

impl Emulator {
    /// Creates an application credential of `login`'s: its id and secret.
    pub fn add_application_credential(&self, login: &str) -> (String, String) {
        let (id, secret) = (random_hex(16), random_hex(24));
        self.lock().app_creds.insert(id.clone(), (login.to_owned(), crate::secret::Secret::new(secret.clone())));
        (id, secret)
    }

    /// `login`'s current Swift token of the built-in storage (a new one once the last expired
    /// or was revoked), its storage URL and its expiry: what a fixed-token account is given.
    pub fn current_swift_token(&self, login: &str) -> (String, String, SystemTime) {
        super::api::builtin_token(self, login)
    }

    /// The Keystone project of `login`: its name and id.
    pub fn keystone_project(&self, login: &str) -> Option<(String, String)> {
        self.swift_account(login).map(|account| (login.to_owned(), project_id(&account)))
    }

    /// The region a storage path is under (`/<region>/v1/…` for every region but the first,
    /// which serves `/v1/…`), and the path's part from `/v1/` on.
    pub(super) fn region_path<'a>(&self, path: &'a str) -> Option<&'a str> {
        self.config.keystone_regions.iter().skip(1).find_map(|region| {
            path.strip_prefix('/')?
                .strip_prefix(region.as_str())?
                .strip_prefix("/v1/")
                .map(|_| &path[region.len() + 1..])
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_written_as_keystone_does() {
        let at = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(1_796_531_399);
        assert_eq!(keystone_time(at), "2026-12-06T04:29:59.000000Z");
        assert_eq!(crate::clock::parse_rfc3339(&keystone_time(at)), Some(at));
    }
}
