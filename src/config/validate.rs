//! Validation: every check on a configuration, each error naming the key it concerns.

use super::*;

impl Config {
    /// Checks every value; the error names the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.public_url.is_none() && self.listen.ip().is_unspecified() {
            return Err(invalid(
                "public_url",
                format!(
                    "must be set when listen is {} (every interface): clients and HubiC need an address they can reach",
                    self.listen
                ),
            ));
        }
        if let Some(url) = &self.public_url {
            check_url("public_url", url)?;
            let has_path = url.parse::<http::Uri>().is_ok_and(|u| !u.path().trim_end_matches('/').is_empty());
            if self.mode == Mode::Proxy && has_path {
                return Err(invalid(
                    "public_url",
                    "must have no path in proxy mode (storage paths are kept as upstream has them)",
                ));
            }
        }
        if self.workers.is_some_and(|n| !(1..=MAX_WORKERS).contains(&n)) {
            return Err(invalid("workers", "must be between 1 and 256"));
        }
        if self.max_connections_per_address == 0 {
            return Err(invalid("max_connections_per_address", "must be at least 1"));
        }
        if self.drain_timeout > MAX_DRAIN_TIMEOUT {
            return Err(invalid("drain_timeout", "must be at most 86400 seconds (a day)"));
        }
        if self.max_head_memory < crate::body::MAX_HEAD {
            return Err(invalid("max_head_memory", "must hold at least one whole request head (65536 bytes)"));
        }
        if !(60..=MAX_TOKEN_TTL).contains(&self.proxy.token_ttl) {
            return Err(invalid("proxy.token_ttl", "must be between 60 seconds and 366 days"));
        }
        if self.proxy.expect_timeout == 0 || self.proxy.header_timeout == 0 || self.proxy.idle_timeout < 15 {
            return Err(invalid(
                "proxy",
                "timeouts must be positive, and idle_timeout at least 15 s (Swift heartbeats every 10 s)",
            ));
        }
        if let Some(hubic) = &self.hubic {
            hubic.validate()?;
        }
        self.validate_store()?;
        self.validate_accounts()?;
        let mut seen = std::collections::HashSet::new();
        // Account → the user that reaches it; written ones first, so a derived name that lands
        // on any other user's account is refused, wherever that user stands.
        let mut derived_by: std::collections::HashMap<String, usize> =
            self.users.iter().enumerate().filter_map(|(i, u)| Some((u.account.clone()?, i))).collect();
        for (i, user) in self.users.iter().enumerate() {
            let key = |field: &str| format!("user[{i}].{field}");
            if user.name.is_empty() || user.name.chars().any(|c| c.is_control()) {
                return Err(invalid(key("name"), "must be non-empty printable text"));
            }
            if !seen.insert(user.name.as_str()) {
                return Err(invalid(key("name"), format!("duplicate user {:?}", user.name)));
            }
            match (&user.key_hash, &user.key_hash_file) {
                (Some(_), Some(_)) => {
                    return Err(invalid(key("key_hash"), "set either key_hash or key_hash_file, not both"))
                }
                (None, None) => {
                    return Err(invalid(key("key_hash"), "missing (generate one with `swiftgate hash-key`)"))
                }
                (Some(h), None) => check_hash(&key("key_hash"), h)?,
                (None, Some(_)) => {}
            }
            match &user.account {
                Some(account) => check_account(&key("account"), account)?,
                None => {
                    let derived = account_from_name(&user.name);
                    check_account(&key("account"), &derived).map_err(|_| {
                        invalid(key("account"), format!("cannot be derived from the name {:?}: set it", user.name))
                    })?;
                    // Two names that differ only where characters are replaced would silently
                    // share one HubiC account; sharing one is allowed, but only when written.
                    if let Some(other) = derived_by.insert(derived.clone(), i).filter(|&o| o != i) {
                        return Err(invalid(
                            key("account"),
                            format!(
                                "user[{other}] and user[{i}] would both reach account {derived:?}: set `account` on both (the same value to share it)"
                            ),
                        ));
                    }
                }
            }
        }
        self.validate_bindings()
    }

    /// Each declared account's own keys, and their names unique.
    fn validate_store(&self) -> Result<(), ConfigError> {
        let store = &self.store;
        match (store.kind, &store.url) {
            (StoreKind::Redis, None) => return Err(invalid("store.url", "missing (kind = \"redis\" needs it)")),
            (StoreKind::File, Some(_)) => return Err(invalid("store.url", "set kind = \"redis\" to use it")),
            (StoreKind::Redis, Some(url)) => {
                let url = url.expose();
                let scheme_ok = ["redis://", "rediss://", "unix://", "redis+unix://", "valkey://", "valkeys://"]
                    .iter()
                    .any(|s| url.starts_with(s));
                if !scheme_ok {
                    return Err(invalid("store.url", "must be a redis://, rediss:// or unix:// URL"));
                }
            }
            (StoreKind::File, None) => {}
        }
        if store.key_prefix.is_empty()
            || store.key_prefix.len() > 64
            || store.key_prefix.chars().any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(invalid("store.key_prefix", "use 1-64 printable characters without spaces"));
        }
        Ok(())
    }

    fn validate_accounts(&self) -> Result<(), ConfigError> {
        let mut names = std::collections::HashSet::new();
        for (i, account) in self.accounts.iter().enumerate() {
            let key = |field: &str| format!("account[{i}].{field}");
            check_account(&key("name"), account.name())?;
            if !names.insert(account.name()) {
                return Err(invalid(key("name"), format!("duplicate account {:?}", account.name())));
            }
            match account {
                AccountConfig::Keystone(k) => k.validate(&key)?,
                AccountConfig::SwiftV1(a) => {
                    check_url(&key("auth_url"), &a.auth_url)?;
                    if a.user.is_empty() {
                        return Err(invalid(key("user"), "must not be empty"));
                    }
                    one_of(&key("key"), &a.key, &a.key_file)?;
                    if !(60..=MAX_TOKEN_TTL).contains(&a.token_life) {
                        return Err(invalid(key("token_life"), "must be between 60 seconds and 366 days"));
                    }
                }
                AccountConfig::Static(a) => {
                    check_url(&key("storage_url"), &a.storage_url)?;
                    one_of(&key("token"), &a.token, &a.token_file)?;
                }
                AccountConfig::Hubic(_) => {}
            }
        }
        Ok(())
    }

    /// Every user reaches an account that exists, and `[hubic]` is there when a HubiC account is.
    fn validate_bindings(&self) -> Result<(), ConfigError> {
        if !self.accounts.is_empty() {
            for (i, user) in self.users.iter().enumerate() {
                let account = user.account_name();
                if !self.accounts.iter().any(|a| a.name() == account) {
                    return Err(invalid(
                        format!("user[{i}].account"),
                        format!(
                            "no [[account]] is named {account:?} (declare HubiC accounts with provider = \"hubic\")"
                        ),
                    ));
                }
            }
        }
        if self.hubic.is_none() {
            if let Some(account) = self.resolved_accounts().iter().find(|a| matches!(a, AccountConfig::Hubic(_))) {
                return Err(invalid(
                    "hubic",
                    format!("account {:?} is a HubiC account: the [hubic] table is needed", account.name()),
                ));
            }
        }
        Ok(())
    }
}

pub(super) fn check_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let ok = (url.starts_with("http://") || url.starts_with("https://"))
        && url.parse::<http::Uri>().is_ok_and(|u| u.host().is_some() && u.query().is_none());
    if ok {
        Ok(())
    } else {
        Err(invalid(key, format!("{url:?} is not an http(s) URL without query")))
    }
}

/// True for an `http(s)://` URL whose host is a loopback address or `localhost`.
pub(super) fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<http::Uri>() else { return false };
    let Some(host) = uri.host() else { return false };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A secret set either in the file or in a file of its own, exactly one of the two.
pub(super) fn one_of(key: &str, inline: &Option<Secret>, file: &Option<PathBuf>) -> Result<(), ConfigError> {
    match (inline, file) {
        (Some(_), Some(_)) => Err(invalid(key, format!("set either {key} or its _file, not both"))),
        (None, None) => Err(invalid(key, "missing (or set its _file)")),
        (Some(s), None) if s.is_empty() => Err(invalid(key, "must not be empty")),
        _ => Ok(()),
    }
}

pub(super) fn check_hash(key: &str, hash: &str) -> Result<(), ConfigError> {
    match argon2::PasswordHash::new(hash) {
        Ok(parsed) if parsed.algorithm.as_str().starts_with("argon2") => Ok(()),
        _ => Err(invalid(key, "not an argon2 PHC string (generate one with `swiftgate hash-key`)")),
    }
}

fn check_account(key: &str, account: &str) -> Result<(), ConfigError> {
    let ok = !account.is_empty()
        && account.len() <= 128
        && !account.starts_with('.')
        && account.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(invalid(key, "use 1-128 characters from A-Z a-z 0-9 . _ - (not starting with '.')"))
    }
}
