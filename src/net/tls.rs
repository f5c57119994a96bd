//! TLS with rustls (ring; TLS 1.3 and 1.2). Two server configurations built from the
//! same CA: ECDSA P-256 for everyone who can, and, when provisioned, RSA-2048 with
//! small records for clients whose ClientHello offers no ECDSA signature scheme
//! (Tasmota on ESP8266 has 1-2 KB TLS buffers). Client certificates are optional at
//! the TLS layer and, when sent, must chain to moat's CA; the common name then names
//! the device. The stream itself is `net::tls_stream` (rustls' unbuffered API with
//! buffers released when idle).

use std::sync::Arc;

use arc_swap::ArcSwap;
use rustls::SignatureScheme;
use rustls::server::WebPkiClientVerifier;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpStream;

use crate::pki::ServerCredentials;

use super::tls_stream::TlsStream;

/// TLS record size for the RSA (small-device) configuration.
const SMALL_DEVICE_RECORD_SIZE: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    #[error("client certificate verifier: {0}")]
    Verifier(String),
}

/// The server configurations in force; swapped when certificates change.
pub struct TlsSettings {
    ecdsa: Arc<rustls::ServerConfig>,
    rsa: Option<Arc<rustls::ServerConfig>>,
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn server_config(
    ca: &CertificateDer<'static>,
    chain: Vec<CertificateDer<'static>>,
    key: rustls_pki_types::PrivateKeyDer<'static>,
    max_fragment_size: Option<usize>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone())?;
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    config.max_fragment_size = max_fragment_size;
    // No session tickets or resumption state beyond rustls' small default cache.
    Ok(Arc::new(config))
}

impl TlsSettings {
    pub fn new(credentials: ServerCredentials) -> Result<TlsSettings, TlsError> {
        let ServerCredentials {
            ecdsa_chain,
            ecdsa_key,
            rsa,
            ca,
        } = credentials;
        let ecdsa = server_config(&ca, ecdsa_chain, ecdsa_key, None)?;
        let rsa = match rsa {
            Some((chain, key)) => Some(server_config(
                &ca,
                chain,
                key,
                Some(SMALL_DEVICE_RECORD_SIZE),
            )?),
            None => None,
        };
        Ok(TlsSettings { ecdsa, rsa })
    }

    /// Picks the configuration for a ClientHello's signature schemes: ECDSA whenever
    /// the client can verify it, RSA otherwise (if we have one). A ClientHello that
    /// could not be parsed up front (`None`: split over records) gets ECDSA.
    fn choose(&self, schemes: Option<&[SignatureScheme]>) -> Arc<rustls::ServerConfig> {
        let ecdsa_ok =
            schemes.is_none_or(|schemes| schemes.contains(&SignatureScheme::ECDSA_NISTP256_SHA256));
        match (&self.rsa, ecdsa_ok) {
            (Some(rsa), false) => Arc::clone(rsa),
            _ => Arc::clone(&self.ecdsa),
        }
    }
}

/// Runs the TLS handshake (the caller bounds it with the connect deadline) and
/// returns the stream with the verified client certificate's common name, if any.
pub async fn handshake(
    settings: &ArcSwap<TlsSettings>,
    tcp: TcpStream,
) -> std::io::Result<(TlsStream, Option<String>)> {
    let stream = TlsStream::accept(tcp, |schemes| settings.load().choose(schemes)).await?;
    let name = stream
        .peer_certificates()
        .and_then(|certs| certs.first())
        .and_then(common_name);
    Ok((stream, name))
}

/// The subject common name of a (verified) certificate.
fn common_name(cert: &CertificateDer<'_>) -> Option<String> {
    let (_, parsed) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let cn = parsed.subject().iter_common_name().next()?;
    cn.as_str().ok().map(str::to_owned)
}
