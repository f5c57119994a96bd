//! TLS record mechanics under `TlsStream`: how much room a socket read gets, when the
//! first record is complete, the ClientHello's signature schemes (read from a copy,
//! for the certificate choice), and writing rustls' output into our buffer.

use std::io;

use rustls::server::Acceptor;
use rustls::unbuffered::{EncodeError, EncryptError};
use rustls::{SignatureAlgorithm, SignatureScheme};

/// TLS record header: type, version, length.
pub(super) const HEADER_LEN: usize = 5;
/// Largest plaintext fragment a record may carry (RFC 8446 5.1).
pub(super) const MAX_FRAGMENT_LEN: usize = 16 * 1024;
/// Largest record rustls accepts (fragment plus 2 KiB of ciphertext expansion): a
/// peer cannot make us hold more ciphertext than this.
pub(super) const MAX_INCOMING: usize = HEADER_LEN + MAX_FRAGMENT_LEN + 2048;
/// Least room offered to one socket read: small reads of many small records cost
/// system calls, and the buffer is released again once it is processed.
pub(super) const READ_SIZE: usize = 4096;
/// A TLS handshake record's content type.
const HANDSHAKE: u8 = 22;

/// Why rustls could not write into the space it was given.
pub(super) enum Unwritten {
    TooSmall(usize),
    Failed(rustls::Error),
}

impl From<EncodeError> for Unwritten {
    fn from(e: EncodeError) -> Unwritten {
        match e {
            EncodeError::InsufficientSize(s) => Unwritten::TooSmall(s.required_size),
            EncodeError::AlreadyEncoded => Unwritten::Failed(rustls::Error::General(e.to_string())),
        }
    }
}

impl From<EncryptError> for Unwritten {
    fn from(e: EncryptError) -> Unwritten {
        match e {
            EncryptError::InsufficientSize(s) => Unwritten::TooSmall(s.required_size),
            EncryptError::EncryptExhausted => Unwritten::Failed(rustls::Error::EncryptError),
        }
    }
}

/// Appends what `write` produces to `out`, offering `guess` bytes first and
/// exactly what rustls asks for if that was too few (rustls writes nothing then).
pub(super) fn append<E: Into<Unwritten>>(
    out: &mut Vec<u8>,
    guess: usize,
    mut write: impl FnMut(&mut [u8]) -> Result<usize, E>,
) -> Result<(), rustls::Error> {
    let start = out.len();
    out.resize(start + guess, 0);
    let result = match write(&mut out[start..]).map_err(Into::into) {
        Err(Unwritten::TooSmall(needed)) => {
            out.resize(start + needed, 0);
            write(&mut out[start..]).map_err(Into::into)
        }
        other => other,
    };
    match result {
        Ok(n) => {
            out.truncate(start + n);
            Ok(())
        }
        Err(e) => {
            out.truncate(start);
            Err(match e {
                Unwritten::TooSmall(_) => rustls::Error::General("TLS output size changed".into()),
                Unwritten::Failed(e) => e,
            })
        }
    }
}

/// Makes room for a socket read: at least `READ_SIZE`, or the rest of the record
/// that has begun, never beyond one maximal record (a handshake message split
/// over records must fit that too; ours are far smaller).
pub(super) fn reserve_read_space(incoming: &mut Vec<u8>) -> io::Result<()> {
    let used = incoming.len();
    if used >= MAX_INCOMING {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "more TLS input pending than one record may hold",
        ));
    }
    let record_end = match incoming.get(..HEADER_LEN) {
        Some(header) => HEADER_LEN + usize::from(u16::from_be_bytes([header[3], header[4]])),
        None => 0,
    };
    let want = (used + READ_SIZE).max(record_end).min(MAX_INCOMING);
    incoming.reserve_exact(want - used);
    Ok(())
}

/// Whether to stop waiting for the first record: it is complete, or it is not a
/// plausible ClientHello record (rustls will refuse it).
pub(super) fn first_record_complete(bytes: &[u8]) -> bool {
    let Some(header) = bytes.get(..HEADER_LEN) else {
        return bytes.first().is_some_and(|&b| b != HANDSHAKE);
    };
    let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
    header[0] != HANDSHAKE || len > MAX_FRAGMENT_LEN || bytes.len() >= HEADER_LEN + len
}

/// The signature schemes a ClientHello offers, parsed from a copy of the bytes
/// read so far; `None` if they hold no complete, valid ClientHello. ECDSA schemes are
/// left out when none of the offered cipher suites can carry an ECDSA certificate: a
/// TLS 1.2 client offering only ECDHE-RSA suites (Tasmota's BearSSL client offers
/// exactly one, ECDHE_RSA_WITH_AES_128_GCM_SHA256) needs the RSA certificate whatever
/// its signature_algorithms say (OpenSSL lists ECDSA there regardless).
pub(super) fn hello_signature_schemes(mut bytes: &[u8]) -> Option<Vec<SignatureScheme>> {
    let mut acceptor = Acceptor::default();
    while !bytes.is_empty() {
        if acceptor.read_tls(&mut bytes).ok()? == 0 {
            return None;
        }
    }
    let accepted = acceptor.accept().ok()??;
    let hello = accepted.client_hello();
    let mut schemes = hello.signature_schemes().to_vec();
    let ecdsa_suite = hello.cipher_suites().iter().any(|offered| {
        rustls::crypto::ring::ALL_CIPHER_SUITES.iter().any(|suite| {
            suite.suite() == *offered
                && suite.usable_for_signature_algorithm(SignatureAlgorithm::ECDSA)
        })
    });
    if !ecdsa_suite {
        schemes.retain(|scheme| !is_ecdsa(*scheme));
    }
    Some(schemes)
}

pub(super) fn is_ecdsa(scheme: SignatureScheme) -> bool {
    matches!(
        scheme,
        SignatureScheme::ECDSA_NISTP256_SHA256
            | SignatureScheme::ECDSA_NISTP384_SHA384
            | SignatureScheme::ECDSA_NISTP521_SHA512
            | SignatureScheme::ECDSA_SHA1_Legacy
    )
}
