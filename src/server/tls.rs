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

/// A TLS acceptor for the PEM certificate chain and key, offering HTTP/1.1 and h2 by ALPN.
pub fn tls_acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    let read = |p: &Path| std::fs::read(p).map_err(|source| TlsError::Read { path: p.display().to_string(), source });
    let cert_pem = read(cert)?;
    let key_pem = read(key)?;
    let certs = rustls_pemfile::certs(&mut cert_pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", cert.display())))?;
    if certs.is_empty() {
        return Err(TlsError::Invalid(format!("{}: no certificate found", cert.display())));
    }
    let key = rustls_pemfile::private_key(&mut key_pem.as_slice())
        .map_err(|e| TlsError::Invalid(format!("{}: {e}", key.display())))?
        .ok_or_else(|| TlsError::Invalid(format!("{}: no private key found", key.display())))?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError::Invalid(format!("certificate and key do not fit together: {e}")))?;
    // HTTP/1.1 first: Swift clients send `Expect: 100-continue` on uploads, and hyper's h2
    // server cannot answer it, so a Go client (rclone, restic) that picked h2 would wait its
    // 1 s expect timeout on every PUT. A client that offers only h2 still gets it.
    config.alpn_protocols = vec![b"http/1.1".to_vec(), b"h2".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
