//! The emulator's test knobs over HTTP, under `/_admin/`: counters, token lifetimes,
//! revocation, fault injection, apps, users and Keystone application credentials. The same knobs exist as methods on
//! [`Emulator`] for in-process tests.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde::Deserialize;

use super::{AppSpec, Emulator, UserSpec};
use crate::body::{self, Body};
use crate::secret::Secret;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Ttls {
    access_token_ttl: Option<u64>,
    swift_token_ttl: Option<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Revoke {
    #[serde(default)]
    access: bool,
    #[serde(default)]
    swift: bool,
    #[serde(default)]
    refresh: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fail {
    status: u16,
    #[serde(default = "one")]
    count: u32,
    endpoint: Option<String>,
}

fn one() -> u32 {
    1
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewApp {
    client_id: String,
    client_secret: String,
    redirect_uri: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewUser {
    login: String,
    password: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewAppCred {
    login: String,
}

async fn parse<T: serde::de::DeserializeOwned>(req: Request<Incoming>) -> Result<T, Response<Body>> {
    let bytes = body::read_limited(req.into_body(), 64 * 1024)
        .await
        .map_err(|e| body::text(e.status(), "body could not be read\n"))?;
    serde_json::from_slice(&bytes).map_err(|e| body::text(StatusCode::BAD_REQUEST, format!("bad JSON: {e}\n")))
}

fn ok() -> Response<Body> {
    body::json(StatusCode::OK, "{\"ok\":true}")
}

/// Serves `/_admin/<rest>`.
pub(super) async fn handle(emu: &Emulator, req: Request<Incoming>, rest: &str) -> Response<Body> {
    match (req.method().clone(), rest) {
        (Method::GET, "counters") => {
            body::json(StatusCode::OK, serde_json::to_string(&emu.counters()).unwrap_or_default())
        }
        (Method::POST, "counters/reset") => {
            emu.reset_counters();
            ok()
        }
        (Method::POST, "ttl") => match parse::<Ttls>(req).await {
            Ok(t) => {
                emu.set_ttls(t.access_token_ttl.map(Duration::from_secs), t.swift_token_ttl.map(Duration::from_secs));
                ok()
            }
            Err(resp) => resp,
        },
        (Method::POST, "revoke") => match parse::<Revoke>(req).await {
            Ok(r) => {
                emu.revoke(r.access, r.swift, r.refresh);
                ok()
            }
            Err(resp) => resp,
        },
        (Method::POST, "fail") => match parse::<Fail>(req).await {
            Ok(f) if (100..=999).contains(&f.status) => {
                emu.fail_next(f.status, f.count, f.endpoint.as_deref());
                ok()
            }
            Ok(_) => body::text(StatusCode::BAD_REQUEST, "status must be 100-999\n"),
            Err(resp) => resp,
        },
        (Method::POST, "apps") => match parse::<NewApp>(req).await {
            Ok(a) => {
                emu.add_app(AppSpec {
                    client_id: a.client_id,
                    client_secret: Secret::new(a.client_secret),
                    redirect_uri: a.redirect_uri,
                });
                ok()
            }
            Err(resp) => resp,
        },
        (Method::POST, "users") => match parse::<NewUser>(req).await {
            Ok(u) => {
                let account = emu.add_user(UserSpec { login: u.login, password: Secret::new(u.password) });
                body::json(StatusCode::OK, serde_json::json!({ "swift_account": account }).to_string())
            }
            Err(resp) => resp,
        },
        (Method::POST, "keystone/application_credentials") => match parse::<NewAppCred>(req).await {
            Ok(c) if emu.swift_account(&c.login).is_some() => {
                let (id, secret) = emu.add_application_credential(&c.login);
                body::json(StatusCode::OK, serde_json::json!({ "id": id, "secret": secret }).to_string())
            }
            Ok(_) => body::text(StatusCode::NOT_FOUND, "no such user\n"),
            Err(resp) => resp,
        },
        _ => body::text(StatusCode::NOT_FOUND, "unknown admin endpoint\n"),
    }
}
