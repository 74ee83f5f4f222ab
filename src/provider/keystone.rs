//! Keystone v3 as a credential source: `POST {auth_url}/auth/tokens` with a password scoped to
//! a project, or with an application credential, and the storage URL taken from the catalog's
//! `object-store` entry.
//!
//! The token is the `X-Subject-Token` field of the answer, not part of its body. Its life is
//! `expires_at - issued_at` as Keystone states them, counted from when the request was sent, so
//! a skewed clock on either side does not shorten or stretch it. This file neither caches nor
//! retries; the token manager does both.

use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;

use super::{swift_usage, unavailable, CredentialSource, ProviderError, SwiftCredentials, Usage};
use crate::clock::{parse_rfc3339, Clock};
use crate::config::KeystoneConfig;
use crate::secret::{Secret, SecretSource};

/// How the account proves who it is.
#[derive(Debug)]
enum Identity {
    /// A user's password, scoped to a project.
    Password { username: String, user_domain: Domain, password: SecretSource, project: Project },
    /// An application credential, which carries its own user and project.
    ApplicationCredential { id: String, secret: SecretSource },
}

/// The project a password token is scoped to.
#[derive(Debug)]
enum Project {
    Named { name: String, domain: Domain },
    Id(String),
}

/// A domain, as Keystone takes one: by name or by id.
#[derive(Clone, Debug)]
enum Domain {
    Name(String),
    Id(String),
}

impl Domain {
    fn json(&self) -> serde_json::Value {
        match self {
            Domain::Name(name) => serde_json::json!({ "name": name }),
            Domain::Id(id) => serde_json::json!({ "id": id }),
        }
    }
}

/// One Keystone v3 account.
#[derive(Debug)]
pub struct KeystoneAccount {
    account: String,
    http: reqwest::Client,
    tokens_url: String,
    identity: Identity,
    region: Option<String>,
    interface: String,
    clock: Arc<dyn Clock>,
}

#[derive(Deserialize)]
struct TokenDoc {
    token: TokenBody,
}

#[derive(Deserialize)]
struct TokenBody {
    expires_at: String,
    #[serde(default)]
    issued_at: Option<String>,
    #[serde(default)]
    catalog: Option<Vec<Service>>,
}

#[derive(Deserialize)]
struct Service {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    endpoints: Vec<Endpoint>,
}

#[derive(Deserialize)]
struct Endpoint {
    interface: String,
    #[serde(default)]
    region: Option<String>,
    #[serde(default)]
    region_id: Option<String>,
    url: String,
}

#[derive(Deserialize)]
struct ErrorDoc {
    error: ErrorBody,
}

#[derive(Deserialize)]
struct ErrorBody {
    #[serde(default)]
    message: String,
}

/// `auth_url` with `/v3` added when it does not end in it, and `/auth/tokens` after that.
pub fn tokens_url(auth_url: &str) -> String {
    let base = auth_url.trim_end_matches('/');
    if base.ends_with("/v3") {
        format!("{base}/auth/tokens")
    } else {
        format!("{base}/v3/auth/tokens")
    }
}

impl KeystoneAccount {
    /// The source for a validated `[[account]]` table.
    pub fn new(config: &KeystoneConfig, http: reqwest::Client, clock: Arc<dyn Clock>) -> KeystoneAccount {
        let identity = match &config.application_credential_id {
            Some(id) => Identity::ApplicationCredential {
                id: id.clone(),
                secret: SecretSource::configured(
                    &config.application_credential_secret,
                    &config.application_credential_secret_file,
                ),
            },
            None => {
                let user_domain = match (&config.user_domain_id, &config.user_domain) {
                    (Some(id), _) => Domain::Id(id.clone()),
                    (None, name) => Domain::Name(name.clone().unwrap_or_else(|| "Default".to_owned())),
                };
                let project_domain = match (&config.project_domain_id, &config.project_domain) {
                    (Some(id), _) => Domain::Id(id.clone()),
                    (None, Some(name)) => Domain::Name(name.clone()),
                    (None, None) => user_domain.clone(),
                };
                let project = match (&config.project_id, &config.project) {
                    (Some(id), _) => Project::Id(id.clone()),
                    (None, name) => Project::Named { name: name.clone().unwrap_or_default(), domain: project_domain },
                };
                Identity::Password {
                    username: config.username.clone().unwrap_or_default(),
                    user_domain,
                    password: SecretSource::configured(&config.password, &config.password_file),
                    project,
                }
            }
        };
        KeystoneAccount {
            account: config.name.clone(),
            http,
            tokens_url: tokens_url(&config.auth_url),
            identity,
            region: config.region.clone(),
            interface: config.interface.clone(),
            clock,
        }
    }

    /// The request body, with the secret read now (a rotated file is picked up).
    fn request_body(&self) -> Result<serde_json::Value, ProviderError> {
        let read = |source: &SecretSource| super::read_secret(&self.account, source);
        Ok(match &self.identity {
            Identity::Password { username, user_domain, password, project } => {
                let scope = match project {
                    Project::Named { name, domain } => {
                        serde_json::json!({ "project": { "name": name, "domain": domain.json() } })
                    }
                    Project::Id(id) => serde_json::json!({ "project": { "id": id } }),
                };
                serde_json::json!({ "auth": {
                    "identity": { "methods": ["password"], "password": { "user": {
                        "name": username, "domain": user_domain.json(), "password": read(password)?.expose(),
                    } } },
                    "scope": scope,
                } })
            }
            Identity::ApplicationCredential { id, secret } => serde_json::json!({ "auth": { "identity": {
                "methods": ["application_credential"],
                "application_credential": { "id": id, "secret": read(secret)?.expose() },
            } } }),
        })
    }

    /// The storage URL among the catalog's `object-store` endpoints of the configured interface
    /// (and region, if one is configured).
    fn storage_url(&self, catalog: Option<Vec<Service>>) -> Result<String, ProviderError> {
        let failed = |what: String| ProviderError::AuthFailed(format!("account {}: {what}", self.account));
        let Some(catalog) = catalog else {
            return Err(failed("Keystone's token has no catalog (is it scoped to a project?)".into()));
        };
        let endpoints: Vec<Endpoint> = catalog
            .into_iter()
            .filter(|s| s.kind == "object-store")
            .flat_map(|s| s.endpoints)
            .filter(|e| e.interface == self.interface)
            .collect();
        if endpoints.is_empty() {
            return Err(failed(format!(
                "Keystone's catalog has no object-store endpoint (interface {})",
                self.interface
            )));
        }
        let region_of = |e: &Endpoint| e.region.clone().or_else(|| e.region_id.clone()).unwrap_or_default();
        let mut regions: Vec<String> = endpoints.iter().map(region_of).collect();
        regions.sort_unstable();
        regions.dedup();
        let chosen: Vec<&Endpoint> = match &self.region {
            Some(want) => endpoints
                .iter()
                .filter(|e| e.region.as_deref() == Some(want.as_str()) || e.region_id.as_deref() == Some(want.as_str()))
                .collect(),
            None => endpoints.iter().collect(),
        };
        match (chosen.first(), &self.region) {
            (None, Some(want)) => Err(failed(format!(
                "Keystone's catalog has no object-store endpoint in region {want} (interface {}; regions: {})",
                self.interface,
                regions.join(", ")
            ))),
            (Some(_), None) if regions.len() > 1 => Err(failed(format!(
                "Keystone's catalog has object-store endpoints in several regions ({}): set `region`",
                regions.join(", ")
            ))),
            (Some(endpoint), _) if endpoint.url.starts_with("http://") || endpoint.url.starts_with("https://") => {
                Ok(endpoint.url.clone())
            }
            _ => Err(failed("Keystone's object-store endpoint is not an http(s) URL".into())),
        }
    }
}

#[async_trait::async_trait]
impl CredentialSource for KeystoneAccount {
    async fn fetch(&self) -> Result<SwiftCredentials, ProviderError> {
        let body = self.request_body()?;
        let sent = self.clock.now();
        let resp = self
            .http
            .post(&self.tokens_url)
            .json(&body)
            .send()
            .await
            .map_err(|e| ProviderError::Transient(format!("Keystone unreachable: {e}")))?;
        drop(body);
        let status = resp.status();
        if let Some(busy) = unavailable("Keystone", status, resp.headers(), self.clock.now()) {
            return Err(busy);
        }
        let token = resp.headers().get("x-subject-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let server_date = resp
            .headers()
            .get(reqwest::header::DATE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok());
        let text = resp.bytes().await.map_err(|e| ProviderError::Transient(format!("Keystone unreachable: {e}")))?;
        if !status.is_success() {
            let message = serde_json::from_slice::<ErrorDoc>(&text).map(|d| d.error.message).unwrap_or_default();
            return Err(ProviderError::AuthFailed(
                format!("account {}: Keystone answered {status}: {message}", self.account).trim_end().to_owned(),
            ));
        }
        let Some(token) = token.filter(|t| !t.is_empty()) else {
            return Err(ProviderError::Protocol("Keystone's answer has no X-Subject-Token".into()));
        };
        let doc: TokenDoc = serde_json::from_slice(&text)
            .map_err(|e| ProviderError::Protocol(format!("Keystone's token is not the expected JSON: {e}")))?;
        let expires_at = parse_rfc3339(&doc.token.expires_at).ok_or_else(|| {
            ProviderError::Protocol(format!("Keystone's expires_at is not RFC 3339: {:?}", doc.token.expires_at))
        })?;
        // The life Keystone gave, counted on the local clock from when the request left.
        let issued = doc.token.issued_at.as_deref().and_then(parse_rfc3339).or(server_date);
        let expires = match issued {
            Some(issued) => sent + expires_at.duration_since(issued).unwrap_or(Duration::ZERO),
            None => expires_at,
        };
        let endpoint = self.storage_url(doc.token.catalog)?;
        Ok(SwiftCredentials { token: Secret::new(token), endpoint, expires })
    }

    async fn usage(&self, creds: Option<&SwiftCredentials>) -> Result<Usage, ProviderError> {
        swift_usage(&self.http, creds).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::SystemTime;

    fn account(region: Option<&str>) -> KeystoneAccount {
        let config: KeystoneConfig = toml::from_str(&format!(
            "name = \"ks\"\nauth_url = \"http://k/v3\"\napplication_credential_id = \"i\"\napplication_credential_secret = \"s\"\n{}",
            region.map_or(String::new(), |r| format!("region = \"{r}\"\n"))
        ))
        .unwrap();
        KeystoneAccount::new(
            &config,
            reqwest::Client::new(),
            Arc::new(crate::clock::ManualClock::new(SystemTime::UNIX_EPOCH)),
        )
    }

    fn catalog(json: &str) -> Option<Vec<Service>> {
        serde_json::from_str(json).unwrap()
    }

    const TWO_REGIONS: &str = r#"[
        {"type": "identity", "endpoints": [{"interface": "public", "region": "GRA", "url": "https://id"}]},
        {"type": "object-store", "endpoints": [
            {"interface": "internal", "region": "GRA", "url": "http://internal/v1/AUTH_p"},
            {"interface": "public", "region": "GRA", "region_id": "GRA", "url": "https://gra/v1/AUTH_p"},
            {"interface": "public", "region": "SBG", "region_id": "SBG", "url": "https://sbg/v1/AUTH_p"}]}]"#;

    #[test]
    fn the_catalog_gives_the_configured_regions_public_endpoint() {
        assert_eq!(account(Some("SBG")).storage_url(catalog(TWO_REGIONS)).unwrap(), "https://sbg/v1/AUTH_p");
        assert_eq!(account(Some("GRA")).storage_url(catalog(TWO_REGIONS)).unwrap(), "https://gra/v1/AUTH_p");
        let one = r#"[{"type": "object-store", "endpoints": [
            {"interface": "public", "region": "RegionOne", "url": "http://s/v1/AUTH_p"}]}]"#;
        assert_eq!(account(None).storage_url(catalog(one)).unwrap(), "http://s/v1/AUTH_p");
    }

    #[test]
    fn a_catalog_that_cannot_serve_says_why() {
        for (region, json, want) in [
            (None, TWO_REGIONS, "several regions (GRA, SBG): set `region`"),
            (Some("BHS"), TWO_REGIONS, "no object-store endpoint in region BHS (interface public; regions: GRA, SBG)"),
            (None, r#"[{"type": "identity", "endpoints": []}]"#, "no object-store endpoint (interface public)"),
            (None, "null", "no catalog"),
        ] {
            let err = account(region).storage_url(catalog(json)).unwrap_err();
            assert!(matches!(err, ProviderError::AuthFailed(_)), "{err:?}");
            assert!(err.to_string().contains(want) && err.to_string().contains("account ks"), "{err}");
        }
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let printed = format!("{:?}", account(None));
        assert!(
            printed.contains("[redacted]") && !printed.contains("secret = \"s\"") && !printed.contains("\"s\""),
            "{printed}"
        );
    }

    #[test]
    fn the_tokens_url_follows_the_auth_url() {
        assert_eq!(tokens_url("https://auth.cloud.ovh.net/v3"), "https://auth.cloud.ovh.net/v3/auth/tokens");
        assert_eq!(tokens_url("https://auth.cloud.ovh.net/v3/"), "https://auth.cloud.ovh.net/v3/auth/tokens");
        assert_eq!(tokens_url("http://k:5000"), "http://k:5000/v3/auth/tokens");
        assert_eq!(tokens_url("http://k/identity/v3"), "http://k/identity/v3/auth/tokens");
    }
}
