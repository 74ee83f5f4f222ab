//! The `[[account]]` tables: one per upstream account, tagged by `provider`, with each
//! provider's keys and their validation. The providers themselves are in `crate::provider`.

use std::path::PathBuf;

use serde::Deserialize;

use super::{check_url, invalid, is_loopback_url, one_of, ConfigError};
use crate::secret::{Secret, SecretSource};

impl KeystoneConfig {
    pub(super) fn validate(&self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        check_url(&key("auth_url"), &self.auth_url)?;
        if !matches!(self.interface.as_str(), "public" | "internal" | "admin") {
            return Err(invalid(key("interface"), "must be public, internal or admin"));
        }
        if self.region.as_deref().is_some_and(str::is_empty) {
            return Err(invalid(key("region"), "must not be empty (leave it out instead)"));
        }
        if let Some(id) = &self.application_credential_id {
            if id.is_empty() {
                return Err(invalid(key("application_credential_id"), "must not be empty"));
            }
            // The credential carries its own user and scope.
            let password_keys = [
                ("username", self.username.is_some()),
                ("password", self.password.is_some() || self.password_file.is_some()),
                ("project", self.project.is_some() || self.project_id.is_some()),
                ("user_domain", self.user_domain.is_some() || self.user_domain_id.is_some()),
                ("project_domain", self.project_domain.is_some() || self.project_domain_id.is_some()),
            ];
            if let Some((k, _)) = password_keys.iter().find(|(_, set)| *set) {
                return Err(invalid(key(k), "not used with an application credential: leave it out"));
            }
            return one_of(
                &key("application_credential_secret"),
                &self.application_credential_secret,
                &self.application_credential_secret_file,
            );
        }
        if self.application_credential_secret.is_some() || self.application_credential_secret_file.is_some() {
            return Err(invalid(key("application_credential_id"), "missing (the secret is set)"));
        }
        if self.username.as_deref().is_none_or(str::is_empty) {
            return Err(invalid(
                key("username"),
                "missing: set username, password and project, or application_credential_id and its secret",
            ));
        }
        one_of(&key("password"), &self.password, &self.password_file)?;
        if self.user_domain.is_some() && self.user_domain_id.is_some() {
            return Err(invalid(key("user_domain"), "set either user_domain or user_domain_id, not both"));
        }
        if self.project_domain.is_some() && self.project_domain_id.is_some() {
            return Err(invalid(key("project_domain"), "set either project_domain or project_domain_id, not both"));
        }
        match (&self.project, &self.project_id) {
            (Some(_), Some(_)) => Err(invalid(key("project"), "set either project or project_id, not both")),
            (None, None) => Err(invalid(key("project"), "missing (or set project_id)")),
            (Some(p), None) | (None, Some(p)) if p.is_empty() => Err(invalid(key("project"), "must not be empty")),
            _ => Ok(()),
        }
    }
}

/// One declared upstream account: its name and how its Swift credentials are obtained.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "provider", rename_all = "kebab-case", deny_unknown_fields)]
pub enum AccountConfig {
    /// Keystone v3 (OpenStack: OVHcloud, Infomaniak, Catalyst, Cleura, private clouds).
    Keystone(Box<KeystoneConfig>),
    /// Swift v1 auth (`X-Auth-User`/`X-Auth-Key`: Ceph RGW, StorageGRID, tempauth).
    SwiftV1(SwiftV1Config),
    /// A fixed storage URL and token.
    Static(StaticConfig),
    /// A HubiC account, registered through the gateway (needs `[hubic]`).
    Hubic(HubicAccountConfig),
}

impl AccountConfig {
    /// The account's name, which users' `account` refers to.
    pub fn name(&self) -> &str {
        match self {
            AccountConfig::Keystone(a) => &a.name,
            AccountConfig::SwiftV1(a) => &a.name,
            AccountConfig::Static(a) => &a.name,
            AccountConfig::Hubic(a) => &a.name,
        }
    }

    /// The account's secrets and the key each is set by, to read them all once at start.
    pub fn secrets(&self) -> Vec<(&'static str, SecretSource)> {
        let pairs = match self {
            AccountConfig::Keystone(k) => vec![
                ("password", SecretSource::of(&k.password, &k.password_file)),
                (
                    "application_credential_secret",
                    SecretSource::of(&k.application_credential_secret, &k.application_credential_secret_file),
                ),
            ],
            AccountConfig::SwiftV1(a) => vec![("key", SecretSource::of(&a.key, &a.key_file))],
            AccountConfig::Static(a) => vec![("token", SecretSource::of(&a.token, &a.token_file))],
            AccountConfig::Hubic(_) => Vec::new(),
        };
        pairs.into_iter().filter_map(|(key, source)| Some((key, source?))).collect()
    }

    /// The auth URL a secret goes to in clear: `http://` to a host other than a loopback one.
    pub fn plain_http_auth(&self) -> Option<&str> {
        let url = match self {
            AccountConfig::Keystone(k) => &k.auth_url,
            AccountConfig::SwiftV1(a) => &a.auth_url,
            AccountConfig::Static(_) | AccountConfig::Hubic(_) => return None,
        };
        (url.starts_with("http://") && !is_loopback_url(url)).then_some(url.as_str())
    }

    /// The provider's name as written in the file.
    pub fn provider(&self) -> &'static str {
        match self {
            AccountConfig::Keystone(_) => "keystone",
            AccountConfig::SwiftV1(_) => "swift-v1",
            AccountConfig::Static(_) => "static",
            AccountConfig::Hubic(_) => "hubic",
        }
    }
}

/// A Keystone v3 account: password auth scoped to a project, or an application credential.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeystoneConfig {
    /// The account's name.
    pub name: String,
    /// Keystone's URL, normally ending in `/v3` (added when missing).
    pub auth_url: String,
    /// Password auth: the user's name.
    #[serde(default)]
    pub username: Option<String>,
    /// The user's domain name (default `Default`, unless `user_domain_id` is set).
    #[serde(default)]
    pub user_domain: Option<String>,
    /// The user's password (or use `password_file`).
    #[serde(default)]
    pub password: Option<Secret>,
    /// A file holding the password, read at each token request.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The project to scope to, by name (with `project_domain`).
    #[serde(default)]
    pub project: Option<String>,
    /// The project to scope to, by id.
    #[serde(default)]
    pub project_id: Option<String>,
    /// The project's domain name (default: the user's domain).
    #[serde(default)]
    pub project_domain: Option<String>,
    /// The user's domain by id instead of by name (`OS_USER_DOMAIN_ID`).
    #[serde(default)]
    pub user_domain_id: Option<String>,
    /// The project's domain by id instead of by name (`OS_PROJECT_DOMAIN_ID`).
    #[serde(default)]
    pub project_domain_id: Option<String>,
    /// An application credential's id (then no username, password or project).
    #[serde(default)]
    pub application_credential_id: Option<String>,
    /// The application credential's secret (or use `application_credential_secret_file`).
    #[serde(default)]
    pub application_credential_secret: Option<Secret>,
    /// A file holding the application credential's secret.
    #[serde(default)]
    pub application_credential_secret_file: Option<PathBuf>,
    /// The catalog region; needed when the catalog has object-store endpoints in several.
    #[serde(default)]
    pub region: Option<String>,
    /// The catalog interface: `public` (default), `internal` or `admin`.
    #[serde(default = "default_interface")]
    pub interface: String,
}

/// A Swift v1 account (`GET auth_url` with `X-Auth-User` and `X-Auth-Key`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwiftV1Config {
    /// The account's name.
    pub name: String,
    /// The v1.0 auth URL, e.g. `http://rgw.example:8080/auth/v1.0`.
    pub auth_url: String,
    /// `X-Auth-User`, e.g. `test:tester`.
    pub user: String,
    /// `X-Auth-Key` (or use `key_file`).
    #[serde(default)]
    pub key: Option<Secret>,
    /// A file holding the key, read at each token request.
    #[serde(default)]
    pub key_file: Option<PathBuf>,
    /// The token's assumed life in seconds when upstream sends no `X-Auth-Token-Expires`.
    #[serde(default = "default_token_life")]
    pub token_life: u64,
}

/// A fixed storage URL and token: passed through, never renewed.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticConfig {
    /// The account's name.
    pub name: String,
    /// The storage URL, e.g. `https://swift.example/v1/AUTH_x`.
    pub storage_url: String,
    /// The token (or use `token_file`).
    #[serde(default)]
    pub token: Option<Secret>,
    /// A file holding the token, read again when it changes.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

/// A HubiC account declared among others; its grant comes from registration.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HubicAccountConfig {
    /// The account's name (its grant's file name in the state directory).
    pub name: String,
}

fn default_interface() -> String {
    "public".to_owned()
}

fn default_token_life() -> u64 {
    3600
}
