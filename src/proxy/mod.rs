//! Proxy mode's streaming path: a client's storage request goes to the account's current
//! upstream endpoint with the upstream token, byte for byte, and the answer comes back the same
//! way; an upstream 401 renews the upstream token (single-flight, shared with auth) and retries
//! once when the body can still be sent again.
//!
//! One policy, two drivers:
//! - [`policy`] says what crosses and what does not: header fields, locations, the replay and
//!   renewal rules, timeouts, the error answers;
//! - [`forward`] is the hyper engine, which serves every request;
//! - [`fast`] is the fast engine, which relays the commonest requests without hyper and hands
//!   the rest to the hyper engine before writing a byte of answer;
//! - [`pool`] holds the upstream connections both use, [`stream`] the hyper engine's bodies,
//!   [`splice`] the fast engine's kernel relay.

mod fast;
mod forward;
pub mod policy;
mod pool;
mod splice;
pub mod stream;

pub use fast::Authority;
pub use forward::drain_then;
pub use policy::{strip_request_headers, strip_response_headers};

use std::sync::Arc;
use std::time::Duration;

use hyper_util::client::legacy::connect::HttpConnector;

use crate::config::ProxySettings;
use crate::server::{Connection, Peer, Served, Signals};
pub use crate::target::Target;
use policy::Policy;

/// Why the upstream client could not be built.
#[derive(Debug, thiserror::Error)]
#[error("cannot set up the upstream TLS client: {0}")]
pub struct ClientError(String);

/// The streaming proxy: its policy, the upstream connections, and what the fast engine did.
pub struct Proxy {
    policy: Policy,
    /// One connection pool per worker thread, so an upstream connection is driven by the same
    /// event loop as the client connections that use it.
    pools: pool::Pools,
    /// What the fast engine did, per worker.
    fast_counts: Box<[fast::WorkerCounts]>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy").field("policy", &self.policy).finish_non_exhaustive()
    }
}

fn tls_config(extra_ca: Option<&std::path::Path>) -> Result<rustls::ClientConfig, ClientError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for cert in native.certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            let cert = cert.map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
            roots.add(cert).map_err(|e| ClientError(format!("{}: {e}", path.display())))?;
        }
    }
    Ok(rustls::ClientConfig::builder().with_root_certificates(roots).with_no_client_auth())
}

impl Proxy {
    /// A proxy answering as `public_url` (scheme://host[:port], no path), used from `workers`
    /// worker threads (see [`crate::server::worker_index`]).
    pub fn new(settings: ProxySettings, public_url: &str, workers: usize) -> Result<Proxy, ClientError> {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(Duration::from_secs(10)));
        http.set_keepalive(Some(Duration::from_secs(60)));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(settings.extra_ca.as_deref())?)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Ok(Proxy {
            pools: pool::Pools::new(https, workers),
            policy: Policy::new(settings, public_url),
            fast_counts: (0..workers.max(1)).map(|_| fast::WorkerCounts::default()).collect(),
        })
    }

    /// The settings in force.
    pub fn settings(&self) -> &ProxySettings {
        self.policy.settings()
    }

    /// Requests answered by the fast engine since the start, over all workers.
    pub fn fast_answers(&self) -> u64 {
        fast::WorkerCounts::total(&self.fast_counts, |c| &c.answers)
    }

    /// Of the fast engine's answers, those whose body went from socket to socket through the
    /// kernel alone (see [`splice`]), since the start.
    pub fn spliced_answers(&self) -> u64 {
        fast::WorkerCounts::total(&self.fast_counts, |c| &c.spliced)
    }

    /// Serves an HTTP/1 connection's storage requests with the fast engine (when the settings
    /// allow it) until one is not for it, then hands the connection to hyper, whose requests
    /// reach [`Proxy::forward`].
    pub async fn serve_h1<S, A>(&self, auth: &A, io: S, peer: &Arc<Peer>, signals: &mut Signals) -> Served<S>
    where
        S: Connection,
        A: Authority,
    {
        if !self.policy.settings().fast_path {
            return Served::HandOver(crate::server::Prefixed::new(bytes::Bytes::new(), io));
        }
        fast::FastPath::new(&self.policy, &self.pools, &self.fast_counts).serve(auth, io, peer, signals).await
    }
}
