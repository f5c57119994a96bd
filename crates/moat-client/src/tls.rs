//! TLS settings for a connection: which roots to trust (a CA file, certificates in
//! memory, or the operating system's store), an optional client certificate, the name
//! to verify, and whether to resume sessions. Built once into a [`TlsConfig`] that
//! every connection shares (one rustls config, one session cache). It owns no socket.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::TlsConnector;

use crate::ClientError;

/// Which certificate authorities a server certificate must chain to.
#[derive(Debug, Clone)]
pub enum Roots {
    /// The operating system's trust store (`SSL_CERT_FILE`, or the distribution's
    /// bundle, as `rustls-native-certs` finds it).
    System,
    /// Every certificate in a PEM file.
    CaFile(PathBuf),
    /// Certificates already loaded.
    Certificates(Vec<CertificateDer<'static>>),
}

/// A certificate chain and its private key, for brokers that ask for one.
#[derive(Debug)]
pub struct ClientCertificate {
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl ClientCertificate {
    pub fn new(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> Self {
        ClientCertificate { chain, key }
    }

    /// Reads a PEM certificate chain and a PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<Self, ClientError> {
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
            .map_err(|e| file_error(cert, e))?;
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| file_error(key, e))?;
        Ok(ClientCertificate { chain, key })
    }
}

fn file_error(path: &Path, e: impl std::fmt::Display) -> ClientError {
    ClientError::TlsConfig(format!("{}: {e}", path.display()))
}

/// What [`TlsConfig::new`] builds from.
#[derive(Debug)]
pub struct TlsOptions {
    pub roots: Roots,
    /// The name the server certificate must carry: a DNS name or an IP address.
    pub server_name: String,
    pub client_certificate: Option<ClientCertificate>,
    /// Resume TLS sessions (rustls' default); off makes every handshake a full one.
    pub resumption: bool,
}

impl TlsOptions {
    pub fn new(roots: Roots, server_name: impl Into<String>) -> Self {
        TlsOptions {
            roots,
            server_name: server_name.into(),
            client_certificate: None,
            resumption: true,
        }
    }
}

/// A built TLS client configuration, cheap to clone.
#[derive(Clone)]
pub struct TlsConfig {
    pub(crate) connector: TlsConnector,
    pub(crate) server_name: ServerName<'static>,
}

impl std::fmt::Debug for TlsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsConfig")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl TlsConfig {
    pub fn new(options: TlsOptions) -> Result<TlsConfig, ClientError> {
        let roots = root_store(&options.roots)?;
        let server_name = ServerName::try_from(options.server_name.clone()).map_err(|e| {
            ClientError::TlsConfig(format!("server name {:?}: {e}", options.server_name))
        })?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| ClientError::TlsConfig(e.to_string()))?
            .with_root_certificates(roots);
        let mut config = match options.client_certificate {
            Some(ClientCertificate { chain, key }) => builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| ClientError::TlsConfig(format!("client certificate: {e}")))?,
            None => builder.with_no_client_auth(),
        };
        if !options.resumption {
            config.resumption = rustls::client::Resumption::disabled();
        }
        Ok(TlsConfig {
            connector: TlsConnector::from(Arc::new(config)),
            server_name,
        })
    }
}

fn root_store(roots: &Roots) -> Result<rustls::RootCertStore, ClientError> {
    let mut store = rustls::RootCertStore::empty();
    match roots {
        Roots::CaFile(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_error(path, e))?;
            for cert in certs {
                store.add(cert).map_err(|e| file_error(path, e))?;
            }
            if store.is_empty() {
                return Err(file_error(path, "no certificate in the file"));
            }
        }
        Roots::Certificates(certs) => {
            for cert in certs {
                store
                    .add(cert.clone())
                    .map_err(|e| ClientError::TlsConfig(e.to_string()))?;
            }
        }
        Roots::System => {
            // Unreadable entries are skipped, as rustls-native-certs documents; none
            // at all is an error the caller can act on.
            let found = rustls_native_certs::load_native_certs();
            let (added, _ignored) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found
                    .errors
                    .first()
                    .map_or("no certificates found".to_owned(), ToString::to_string);
                return Err(ClientError::TlsConfig(format!(
                    "the system trust store: {why}"
                )));
            }
        }
    }
    Ok(store)
}
