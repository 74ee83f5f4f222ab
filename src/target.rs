//! Where an account's storage lives, parsed once per credential renewal: the storage path kept
//! in the gateway's storage URL, the origin connections go to, the `Host` and token fields sent
//! there. The token manager caches one beside each set of credentials; the proxy reads it.

use std::sync::Arc;

use http::uri::{PathAndQuery, Scheme};
use http::{HeaderValue, Uri};

use crate::provider::SwiftCredentials;

/// Where an account's storage lives, parsed once per credential renewal.
pub struct Target {
    /// The storage path, e.g. `/v1/AUTH_…` (kept unchanged in the gateway's storage URL).
    pub path: String,
    /// `scheme://authority` as upstream writes it in absolute `Location`s; also the key of its
    /// upstream connections.
    pub(crate) origin: Arc<str>,
    /// `scheme://authority/`, what the connector opens a connection to.
    pub(crate) connect_to: Uri,
    /// The `Host` header upstream gets: the host, and the port unless it is the scheme's default.
    pub(crate) host: HeaderValue,
    /// The upstream token as a header value.
    pub(crate) token: HeaderValue,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target").field("origin", &self.origin).field("path", &self.path).finish_non_exhaustive()
    }
}

impl Target {
    /// Parses the credentials' endpoint; `None` if it is not an absolute http(s) URL.
    pub fn parse(creds: &SwiftCredentials) -> Option<Target> {
        let uri: Uri = creds.endpoint.parse().ok()?;
        let scheme = uri.scheme()?.clone();
        if scheme != Scheme::HTTP && scheme != Scheme::HTTPS {
            return None;
        }
        let authority = uri.authority()?.clone();
        let path = uri.path().trim_end_matches('/').to_owned();
        let origin = format!("{scheme}://{authority}");
        let connect_to = format!("{origin}/").parse().ok()?;
        let default_port = if scheme == Scheme::HTTPS { 443 } else { 80 };
        let host = match authority.port_u16() {
            Some(port) if port != default_port => HeaderValue::from_str(&format!("{}:{port}", authority.host())),
            _ => HeaderValue::from_str(authority.host()),
        }
        .ok()?;
        let mut token = HeaderValue::from_str(creds.token.expose()).ok()?;
        token.set_sensitive(true);
        Some(Target { path, origin: origin.into(), connect_to, host, token })
    }

    /// True when `path` is the storage path or below it.
    pub fn covers(&self, path: &str) -> bool {
        path.strip_prefix(self.path.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
    }

    /// The path of upstream's `/info` (origin form, for this target's origin): the storage
    /// path's `/v<N>…` replaced by `/info`, as python-swiftclient derives it.
    pub fn info_path(&self) -> Option<PathAndQuery> {
        let prefix = match self.path.find("/v1") {
            Some(i) => &self.path[..i],
            None => "",
        };
        format!("{prefix}/info").parse().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::secret::Secret;

    fn target(endpoint: &str) -> Target {
        let creds = SwiftCredentials {
            token: Secret::new("tok"),
            endpoint: endpoint.into(),
            expires: std::time::SystemTime::now(),
        };
        Target::parse(&creds).unwrap()
    }

    #[test]
    fn targets_cover_their_storage_path_only() {
        let t = target("https://lb1040.hubic.ovh.net/v1/AUTH_abc");
        for (path, want) in [
            ("/v1/AUTH_abc", true),
            ("/v1/AUTH_abc/", true),
            ("/v1/AUTH_abc/c/o", true),
            ("/v1/AUTH_abcd", false),
            ("/v1/AUTH_ab", false),
            ("/v1/AUTH_other/c", false),
            ("/info", false),
        ] {
            assert_eq!(t.covers(path), want, "{path}");
        }
        assert_eq!(&*t.origin, "https://lb1040.hubic.ovh.net");
        assert_eq!(t.host, "lb1040.hubic.ovh.net");
        assert_eq!(target("http://h:8080/v1/AUTH_t").host, "h:8080");
        assert_eq!(target("https://h:443/v1/AUTH_t").host, "h");
        assert_eq!(t.info_path().unwrap(), "/info");
        let prefixed = target("http://h:8080/swift/v1/AUTH_t");
        assert_eq!((&*prefixed.origin, prefixed.info_path().unwrap().as_str()), ("http://h:8080", "/swift/info"));
    }
}
