//! TLS termination: the acceptor from PEM files, offering HTTP/1.1 first and h2 by ALPN.

use super::*;

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The files hold no usable certificate or key, or they do not match.
    #[error("{0}")]
    Invalid(String),
}

/// A TLS acceptor for the PEM certificate chain and key, offering HTTP/1.1 and h2 by ALPN;
/// with the [`Certificates`] it offers, which a reload swaps for new handshakes.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<(TlsAcceptor, Arc<Certificates>), TlsError> {
    let builder = rustls::ServerConfig::builder().with_no_client_auth();
    let provider = builder.crypto_provider().clone();
    let pair = load_pair(cert, key, &provider)?;
    let certificates = Arc::new(Certificates {
        current: std::sync::RwLock::new(Arc::new(pair)),
        cert: cert.to_owned(),
        key: key.to_owned(),
        provider,
        seen: std::sync::Mutex::new(stamp(cert, key)),
    });
    let mut config = builder.with_cert_resolver(certificates.clone());
    // HTTP/1.1 first: Swift clients send `Expect: 100-continue` on uploads, and hyper's h2
    // server cannot answer it, so a Go client (rclone, restic) that picked h2 would wait its
    // 1 s expect timeout on every PUT. A client that offers only h2 still gets it.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok((TlsAcceptor::from(Arc::new(config)), certificates))
}

/// The certificate and key new handshakes get, read from their files again by
/// [`reload`](Self::reload). Connections already open keep the pair they began with.
pub struct Certificates {
    current: std::sync::RwLock<Arc<rustls::sign::CertifiedKey>>,
    cert: std::path::PathBuf,
    key: std::path::PathBuf,
    provider: Arc<rustls::crypto::CryptoProvider>,
    /// The files' modification times and sizes when last read, to see a change.
    seen: std::sync::Mutex<Option<Stamp>>,
}

impl std::fmt::Debug for Certificates {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Certificates").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl rustls::server::ResolvesServerCert for Certificates {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<rustls::sign::CertifiedKey>> {
        Some(self.current.read().unwrap_or_else(|p| p.into_inner()).clone())
    }
}

/// What identifies a version of the two files: modification time and length of each (through
/// symlinks, as certbot's `live/` links are replaced).
type Stamp = [(std::time::SystemTime, u64); 2];

fn stamp(cert: &Path, key: &Path) -> Option<Stamp> {
    let of = |p: &Path| std::fs::metadata(p).and_then(|m| Ok((m.modified()?, m.len()))).ok();
    Some([of(cert)?, of(key)?])
}

impl Certificates {
    /// Reads the pair again and, if it is usable (both files readable, the key the
    /// certificate's, the certificate in its validity period), offers it to new handshakes.
    /// A refused pair leaves the one in use in place.
    pub fn reload(&self) -> Result<(), TlsError> {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) = stamp(&self.cert, &self.key);
        let pair = load_pair(&self.cert, &self.key, &self.provider)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(pair);
        Ok(())
    }

    /// Whether either file changed since last read.
    fn changed(&self) -> bool {
        *self.seen.lock().unwrap_or_else(|p| p.into_inner()) != stamp(&self.cert, &self.key)
    }

    /// Reloads whenever a file changes (looked at every `period`) and whenever `hangups` has
    /// one (SIGHUP), logging the outcome. Polling, not inotify: it sees a symlink swapped
    /// (certbot), a bind mount or a Kubernetes secret volume updated, where a watch on the
    /// file would not. Runs until dropped.
    pub async fn watch(self: Arc<Self>, period: Duration, mut hangups: Hangups) {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let why = tokio::select! {
                _ = tick.tick() => {
                    if !self.changed() {
                        continue;
                    }
                    "the files changed"
                }
                () = hangups.next() => "SIGHUP",
            };
            match self.reload() {
                Ok(()) => tracing::info!(cert = %self.cert.display(), why, "TLS certificate reloaded"),
                Err(e) => tracing::error!(cause = %e, why, "TLS certificate not reloaded; the one in use stays"),
            }
        }
    }
}

/// SIGHUPs as they come ([`hangups`]); none where they cannot be had.
pub struct Hangups(Option<tokio::signal::unix::Signal>);

impl Hangups {
    /// Resolves at the next SIGHUP; never, without a handler.
    pub async fn next(&mut self) {
        if let Some(signal) = &mut self.0 {
            if signal.recv().await.is_some() {
                return;
            }
        }
        std::future::pending().await
    }
}

/// Registers for SIGHUP: from now on it no longer ends the process.
pub fn hangups() -> Hangups {
    let signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
    if let Err(e) = &signal {
        tracing::warn!(cause = %e, "cannot handle SIGHUP; certificates reload on change only");
    }
    Hangups(signal.ok())
}

/// Reads and checks a certificate chain and its key.
fn load_pair(
    cert: &Path,
    key: &Path,
    provider: &rustls::crypto::CryptoProvider,
) -> Result<rustls::sign::CertifiedKey, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?;
    let Some(leaf) = certs.first() else {
        return Err(TlsError::Invalid(format!("{}: no certificate found", cert.display())));
    };
    let (_, parsed) =
        x509_parser::parse_x509_certificate(leaf).map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?;
    if !parsed.validity().is_valid() {
        let validity = parsed.validity();
        return Err(TlsError::Invalid(format!(
            "{}: not valid now (valid from {} to {})",
            cert.display(),
            validity.not_before,
            validity.not_after
        )));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", key.display())))?
        .ok_or_else(|| TlsError::Invalid(format!("{}: no private key found", key.display())))?;
    rustls::sign::CertifiedKey::from_der(certs, key, provider)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not fit together: {e}")))
}
