//! The configuration's unit tests: what validates, and errors that name the key and quote no
//! secret.

use super::*;

const HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHQ$mJ0qvFOCgnHq4SYxJ0e8Ig";

fn base() -> String {
    format!(
        "state_dir = \"/tmp/x\"\n[hubic]\nclient_id = \"api_hubic_x\"\nclient_secret = \"s\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{HASH}\"\n"
    )
}

#[test]
fn a_minimal_file_validates() {
    let config = Config::parse(&base(), "t").unwrap();
    config.validate().unwrap();
    assert_eq!(config.public_url(), "http://127.0.0.1:8080");
    assert_eq!(config.resolved_users().unwrap()[0].account, "alice");
    assert_eq!(config.mode, Mode::Proxy);
    assert_eq!(config.proxy.replay_buffer, 4 * 1024 * 1024);
    assert!(config.worker_count() >= 1);
}

#[test]
fn errors_name_the_key() {
    let cases = [
        (base().replace("client_id = \"api_hubic_x\"", "client_id = \"\""), "hubic.client_id"),
        (base().replace(HASH, "plain"), "user[0].key_hash"),
        (base() + "[[user]]\nname = \"alice\"\nkey_hash = \"" + HASH + "\"\n", "user[1].name"),
        (base().replace("client_secret = \"s\"\n", ""), "hubic.client_secret"),
        (base() + "public_url = \"ftp://x\"\n", "public_url"),
        (base() + "public_url = \"https://x/prefix\"\n", "public_url"),
        (base() + "[proxy]\ntoken_ttl = 5\n", "proxy.token_ttl"),
        (base() + "[store]\nkind = \"redis\"\n", "store.url"),
        (base() + "[store]\nurl = \"redis://h:6379/0\"\n", "store.url"),
        (base() + "[store]\nkind = \"redis\"\nurl = \"http://:pw@h:6379\"\n", "store.url"),
        (base() + "[store]\nkind = \"redis\"\nurl = \"redis://h\"\nkey_prefix = \"a b\"\n", "store.key_prefix"),
        ("workers = 0\n".to_owned() + &base(), "workers"),
        ("workers = 1000\n".to_owned() + &base(), "workers"),
        ("drain_timeout = 9223372036854775807\n".to_owned() + &base(), "drain_timeout"),
        (base() + "[proxy]\nbuffer = 5\n", "buffer"),
        (base().replace("name = \"alice\"", "name = \"alice\"\naccount = \"../etc\""), "user[0].account"),
        (base() + "[proxy]\ntoken_ttl = 9223372036854775807\n", "proxy.token_ttl"),
        ("listen = \"0.0.0.0:8080\"\n".to_owned() + &base(), "public_url"),
        ("listen = \"[::]:8080\"\n".to_owned() + &base(), "public_url"),
        (base().replace("[hubic]\n", "[hubic]\napi_base = \"http://api.example.org\"\n"), "hubic.api_base"),
        (base().replace("name = \"alice\"", &format!("name = \"{}\"", "a".repeat(129))), "user[0].account"),
        (
            base()
                + "[[user]]\nname = \"al ice\"\nkey_hash = \""
                + HASH
                + "\"\n"
                + "[[user]]\nname = \"al.ice\"\nkey_hash = \""
                + HASH
                + "\"\n",
            "user[2].account",
        ),
        // Derived on one side, written on the other: written on both, or refused.
        (base() + "[[user]]\nname = \"bob\"\nkey_hash = \"" + HASH + "\"\naccount = \"alice\"\n", "user[0].account"),
    ];
    for (text, key) in cases {
        let err = Config::parse(&text, "t").and_then(|c| c.validate()).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
    }
}

#[test]
fn what_may_pass() {
    // Sharing an account is allowed when written on both; http to a loopback host (the
    // emulator); every interface with a public URL.
    let shared = base().replace("name = \"alice\"", "name = \"alice\"\naccount = \"alice\"")
        + "[[user]]\nname = \"al.ice\"\nkey_hash = \""
        + HASH
        + "\"\naccount = \"alice\"\n"
        + "[[user]]\nname = \"al_ice\"\nkey_hash = \""
        + HASH
        + "\"\n";
    for text in [
        shared,
        base().replace("[hubic]\n", "[hubic]\napi_base = \"http://127.0.0.1:9000\"\n"),
        base().replace("[hubic]\n", "[hubic]\napi_base = \"http://localhost:9000\"\n"),
        base().replace("[hubic]\n", "[hubic]\napi_base = \"http://[::1]:9000\"\n"),
        "listen = \"0.0.0.0:8080\"\npublic_url = \"https://gw.example.org\"\n".to_owned() + &base(),
    ] {
        Config::parse(&text, "t").and_then(|c| c.validate()).unwrap_or_else(|e| panic!("{e}\n{text}"));
    }
}

/// A file with one user bound to the account `ks`, declared by `account`, and no `[hubic]`.
fn declared(account: &str) -> String {
    format!(
        "state_dir = \"/tmp/x\"\n[[user]]\nname = \"alice\"\nkey_hash = \"{HASH}\"\naccount = \"ks\"\n[[account]]\nname = \"ks\"\n{account}"
    )
}

const KEYSTONE: &str = "provider = \"keystone\"\nauth_url = \"https://auth.example/v3\"\nusername = \"u\"\npassword = \"p\"\nproject = \"pr\"\n";
const APP_CREDENTIAL: &str = "provider = \"keystone\"\nauth_url = \"https://auth.example/v3\"\napplication_credential_id = \"i\"\napplication_credential_secret = \"s\"\n";

#[test]
fn declared_accounts_need_no_hubic_table() {
    for account in [
        KEYSTONE.to_owned(),
        KEYSTONE.replace("project = \"pr\"", "project_id = \"0123\"") + "region = \"GRA\"\ninterface = \"internal\"\n",
        APP_CREDENTIAL.to_owned(),
        "provider = \"swift-v1\"\nauth_url = \"http://rgw.example:8080/auth/v1.0\"\nuser = \"t:u\"\nkey_file = \"k\"\n"
            .to_owned(),
        "provider = \"static\"\nstorage_url = \"https://s.example/v1/AUTH_x\"\ntoken_file = \"t\"\n".to_owned(),
    ] {
        let config = Config::parse(&declared(&account), "t").unwrap();
        config.validate().unwrap_or_else(|e| panic!("{e}\n{account}"));
        assert!(config.hubic.is_none());
        assert_eq!(config.resolved_accounts().len(), 1);
    }
    // A HubiC account among them needs [hubic]; without [[account]], every account is HubiC.
    let hubic = declared("provider = \"hubic\"\n");
    let err = Config::parse(&hubic, "t").unwrap().validate().unwrap_err().to_string();
    assert!(err.contains("`hubic`") && err.contains("\"ks\""), "{err}");
    let with_table = hubic + "[hubic]\nclient_id = \"api_hubic_x\"\nclient_secret = \"s\"\n";
    Config::parse(&with_table, "t").unwrap().validate().unwrap();
    let implicit = Config::parse(&base(), "t").unwrap();
    assert!(matches!(&implicit.resolved_accounts()[..], [AccountConfig::Hubic(a)] if a.name == "alice"));
}

#[test]
fn account_errors_name_the_key() {
    let cases = [
        (declared(&KEYSTONE.replace("password = \"p\"\n", "")), "account[0].password"),
        (declared(&(KEYSTONE.to_owned() + "password_file = \"f\"\n")), "account[0].password"),
        (declared(&KEYSTONE.replace("project = \"pr\"\n", "")), "account[0].project"),
        (declared(&(KEYSTONE.to_owned() + "project_id = \"x\"\n")), "account[0].project"),
        (declared(&KEYSTONE.replace("username = \"u\"\n", "")), "account[0].username"),
        (declared(&(KEYSTONE.to_owned() + "interface = \"private\"\n")), "account[0].interface"),
        (declared(&(KEYSTONE.to_owned() + "user_domain = \"D\"\nuser_domain_id = \"d\"\n")), "account[0].user_domain"),
        (declared(&(APP_CREDENTIAL.to_owned() + "project_domain_id = \"d\"\n")), "account[0].project_domain"),
        (declared(&KEYSTONE.replace("https://auth.example/v3", "auth.example")), "account[0].auth_url"),
        (declared(&(APP_CREDENTIAL.to_owned() + "username = \"u\"\n")), "account[0].username"),
        (declared(&(APP_CREDENTIAL.to_owned() + "project = \"p\"\n")), "account[0].project"),
        (declared(&APP_CREDENTIAL.replace("application_credential_secret = \"s\"\n", "")), "application_credential_secret"),
        (declared(&KEYSTONE.replace("keystone", "openstack")), "openstack"),
        (declared(&(KEYSTONE.to_owned() + "colour = \"blue\"\n")), "colour"),
        (declared("provider = \"swift-v1\"\nauth_url = \"http://r/auth/v1.0\"\nuser = \"u\"\n"), "account[0].key"),
        (
            declared("provider = \"swift-v1\"\nauth_url = \"http://r/auth/v1.0\"\nuser = \"u\"\nkey = \"k\"\ntoken_life = 1\n"),
            "account[0].token_life",
        ),
        (declared("provider = \"static\"\nstorage_url = \"https://s/v1/AUTH_x\"\n"), "account[0].token"),
        (declared(KEYSTONE).replace("account = \"ks\"", "account = \"kz\""), "user[0].account"),
        (declared(KEYSTONE) + "[[account]]\nname = \"ks\"\n" + APP_CREDENTIAL, "account[1].name"),
        (declared(KEYSTONE).replace("name = \"ks\"\n", "name = \"../ks\"\n"), "account[0].name"),
    ];
    for (text, key) in cases {
        let err = Config::parse(&text, "t").and_then(|c| c.validate()).unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}\n{text}");
        assert!(!err.contains("\"p\"") && !err.contains("\"s\""), "a secret in the error: {err}");
    }
}

#[test]
fn account_secret_files_are_relative_to_the_file_and_kept_out_of_debug() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("pw"), "keystone-secret\n").unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, declared(&KEYSTONE.replace("password = \"p\"", "password_file = \"pw\""))).unwrap();
    let config = Config::load(&path, |_| None).unwrap();
    let AccountConfig::Keystone(ks) = &config.accounts[0] else { panic!("{config:?}") };
    let source = SecretSource::of(&ks.password, &ks.password_file).unwrap();
    assert_eq!(source.read().unwrap().expose(), "keystone-secret");
    let inline = Config::parse(&declared(&KEYSTONE.replace("\"p\"", "\"hunter2\"")), "t").unwrap();
    assert!(!format!("{inline:?}").contains("hunter2"));
    let err = Config::load(&path, |k| (k == "SWIFTGATE_HUBIC_CLIENT_ID").then(|| "x".to_owned())).unwrap_err();
    assert!(err.to_string().contains("SWIFTGATE_HUBIC_CLIENT_ID"), "{err}");
}

#[test]
fn parse_errors_quote_no_value() {
    // A misspelt key, a number where a string goes, a broken line: each names where, and
    // none repeats the secret written there.
    for (text, key) in [
        (base().replace("client_secret = \"s\"", "client-secret = \"hunter2-secret\""), "client-secret"),
        (base().replace("client_secret = \"s\"", "client_secret = 424242424242"), "line 4"),
        (base().replace("client_secret = \"s\"", "client_secret = \"hunter2-secret"), "line 4"),
    ] {
        let err = Config::parse(&text, "t").unwrap_err().to_string();
        assert!(err.contains(key), "{key}: {err}");
        assert!(!err.contains("hunter2") && !err.contains("424242"), "the value leaked: {err}");
    }
}

#[test]
fn unknown_keys_are_refused_with_their_name() {
    let err = Config::parse(&(base() + "colour = \"blue\"\n"), "t").unwrap_err().to_string();
    assert!(err.contains("colour"), "{err}");
}

#[test]
fn environment_overrides_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(&path, base()).unwrap();
    let env = |k: &str| match k {
        "SWIFTGATE_LISTEN" => Some("127.0.0.1:9999".to_owned()),
        "SWIFTGATE_HUBIC_CLIENT_SECRET" => Some("from-env".to_owned()),
        "SWIFTGATE_WORKERS" => Some("3".to_owned()),
        _ => None,
    };
    let config = Config::load(&path, env).unwrap();
    assert_eq!(config.listen.port(), 9999);
    assert_eq!(config.worker_count(), 3);
    assert_eq!(config.client_secret().unwrap().expose(), "from-env");
    assert!(!format!("{config:?}").contains("from-env"), "secret in Debug output");
}

#[test]
fn secrets_can_come_from_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), "file-secret\n").unwrap();
    let text = base().replace("client_secret = \"s\"", "client_secret_file = \"secret\"");
    let path = dir.path().join("c.toml");
    std::fs::write(&path, text).unwrap();
    let config = Config::load(&path, |_| None).unwrap();
    assert_eq!(config.client_secret().unwrap().expose(), "file-secret");
}

#[test]
fn a_redis_store_validates_and_keeps_its_password_out_of_debug() {
    let text = base() + "[store]\nkind = \"redis\"\nurl = \"rediss://:hunter2@cache:6379/0\"\n";
    let config = Config::parse(&text, "t").unwrap();
    config.validate().unwrap();
    assert_eq!(config.store.kind, StoreKind::Redis);
    assert_eq!(config.store.key_prefix, "swiftgate:");
    assert!(!format!("{config:?}").contains("hunter2"));
    let mut config = Config::parse(&base(), "t").unwrap();
    config.apply_env(|k| (k == "SWIFTGATE_STORE_URL").then(|| "redis://127.0.0.1:6379/0".into())).unwrap();
    config.validate().unwrap();
    assert_eq!(config.store.kind, StoreKind::Redis);
}
