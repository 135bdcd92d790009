//! Built-in TLS (`assay server --tls-cert CERT.pem --tls-key KEY.pem`): rustls on the
//! listener, so that tokens and session cookies never cross a network in clear.
//! Handshakes run in the accept loop's connection tasks ([`super::serve`]), each within
//! a time limit: a client that opens a connection and says nothing holds up no one else.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::TlsAcceptor;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {path}: {source} (--tls-cert and --tls-key take PEM files)")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: rustls_pki_types::pem::Error,
    },
    #[error("{0} holds no certificate (--tls-cert takes a PEM file, the server's certificate first, then its chain)")]
    NoCertificate(PathBuf),
    #[error("the TLS certificate and key do not make a usable configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// The acceptor for a certificate chain and its private key, both PEM.
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor, TlsError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Read {
            what: "the certificate",
            path: cert.to_path_buf(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.to_path_buf()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Read {
        what: "the private key",
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}
