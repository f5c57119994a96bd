//! Password verification against a stored hash: argon2id PHC strings (ours, and
//! mosquitto's with its 64-byte salt) and the imported mosquitto `$7$` (PBKDF2-HMAC-SHA512)
//! and `$6$` (SHA-512) hashes. Comparisons are constant-time, and a stored hash whose
//! cost parameters exceed a fixed ceiling is an error, so a hostile manifest cannot make
//! one verification eat the appliance. It does not schedule work: `pool` does that.

use argon2::{Algorithm, Argon2, Block, Params, Version};
use base64ct::{Base64, Base64Unpadded, Encoding};
use sha2::{Digest, Sha512};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

/// Highest argon2 memory cost accepted, in KiB (256 MiB).
pub const MAX_ARGON2_M_KIB: u32 = 256 * 1024;
/// Highest argon2 time cost (passes) accepted.
pub const MAX_ARGON2_T: u32 = 10;
/// Highest argon2 parallelism accepted.
pub const MAX_ARGON2_P: u32 = 4;
/// Highest PBKDF2 iteration count accepted for an imported `$7$` hash (about 0.5 s of
/// SHA-512 on x86; mosquitto writes 101 or 1000).
pub const MAX_PBKDF2_ITERATIONS: u32 = 1_000_000;
/// Longest stored hash string accepted.
const MAX_STORED_LEN: usize = 512;
/// Longest salt accepted (mosquitto uses 64 bytes).
const MAX_SALT_LEN: usize = 64;
/// Longest hash output accepted (mosquitto uses 64 bytes, we use 32).
const MAX_OUTPUT_LEN: usize = 128;
/// Shortest hash output accepted: anything shorter is not a real password hash.
const MIN_OUTPUT_LEN: usize = 16;

/// Why a stored hash could not be used. A wrong password is not an error: it is `Ok(false)`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    #[error("unsupported password hash format (expected $argon2id$, or mosquitto's $7$ or $6$)")]
    UnknownFormat,
    #[error("malformed password hash: {0}")]
    Malformed(&'static str),
    #[error(
        "password hash parameters too expensive: m={m} KiB, t={t}, p={p} \
         (ceiling m={MAX_ARGON2_M_KIB}, t={MAX_ARGON2_T}, p={MAX_ARGON2_P})"
    )]
    Argon2TooExpensive { m: u32, t: u32, p: u32 },
    #[error("PBKDF2 iteration count {0} exceeds the ceiling {MAX_PBKDF2_ITERATIONS}")]
    Pbkdf2TooExpensive(u32),
    #[error("argon2 failed: {0}")]
    Argon2(String),
}

/// The algorithm family of a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashKind {
    Argon2id,
    /// mosquitto `$7$`: PBKDF2-HMAC-SHA512.
    MosquittoPbkdf2,
    /// mosquitto `$6$`: one round of SHA-512.
    MosquittoSha512,
}

/// Which family a stored hash belongs to, without checking it further.
pub fn hash_kind(stored: &str) -> Option<HashKind> {
    if stored.starts_with("$argon2id$") {
        Some(HashKind::Argon2id)
    } else if stored.starts_with("$7$") {
        Some(HashKind::MosquittoPbkdf2)
    } else if stored.starts_with("$6$") {
        Some(HashKind::MosquittoSha512)
    } else {
        None
    }
}

/// True for imported mosquitto hashes (`$6$`, `$7$`): cheap to brute-force, accepted
/// with a warning and worth replacing with argon2id.
pub fn is_weak_import(stored: &str) -> bool {
    matches!(
        hash_kind(stored),
        Some(HashKind::MosquittoPbkdf2 | HashKind::MosquittoSha512)
    )
}

/// Checks that a stored hash is well-formed and within the cost ceilings, without a
/// password. Manifest validation uses it so a bad hash fails at load, not at login.
pub fn check_stored_hash(stored: &str) -> Result<HashKind, VerifyError> {
    let parsed = parse(stored)?;
    Ok(parsed.kind())
}

/// An argon2id hash's memory cost (KiB) and passes, read by the parser login uses;
/// `None` for a hash of another family or one login would refuse.
pub fn argon2_cost(stored: &str) -> Option<(u32, u32)> {
    match parse(stored).ok()? {
        Parsed::Argon2id { params, .. } => Some((params.m_cost(), params.t_cost())),
        Parsed::Pbkdf2 { .. } | Parsed::Sha512 { .. } => None,
    }
}

/// Verifies `password` against `stored`. `Ok(false)` means a wrong password; `Err` means
/// the stored hash itself is unusable.
pub fn verify_password(stored: &str, password: &[u8]) -> Result<bool, VerifyError> {
    verify_password_with(stored, password, &mut Scratch::default())
}

/// argon2 working memory, reused across verifications. Allocating 19 MiB per login on
/// whichever blocking thread runs it makes glibc keep one such block per thread arena
/// (its mmap threshold adapts upwards), so resident memory grows with the number of
/// threads that ever verified; a fixed set of reused buffers keeps it at one per slot.
#[derive(Default)]
pub struct Scratch {
    blocks: Vec<Block>,
}

impl Scratch {
    /// Bytes held.
    pub fn capacity_bytes(&self) -> usize {
        self.blocks.len() * Block::SIZE
    }

    /// Wipes the working memory (it holds password-derived state).
    pub fn wipe(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.blocks.iter_mut());
    }

    fn blocks_for(&mut self, params: &Params) -> &mut [Block] {
        let needed = params.block_count();
        if self.blocks.len() < needed {
            self.blocks.resize_with(needed, Block::default);
        }
        &mut self.blocks[..needed]
    }
}

impl std::fmt::Debug for Scratch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Scratch({} bytes)", self.capacity_bytes())
    }
}

/// `verify_password` with caller-provided argon2 working memory.
pub fn verify_password_with(
    stored: &str,
    password: &[u8],
    scratch: &mut Scratch,
) -> Result<bool, VerifyError> {
    let (computed, expected) = match parse(stored)? {
        Parsed::Argon2id {
            params,
            version,
            salt,
            expected,
        } => {
            let mut out = Zeroizing::new(vec![0u8; expected.len()]);
            let memory = scratch.blocks_for(&params);
            let hashed = Argon2::new(Algorithm::Argon2id, version, params)
                .hash_password_into_with_memory(password, &salt, &mut out, memory)
                .map_err(|e| VerifyError::Argon2(e.to_string()));
            scratch.wipe();
            hashed?;
            (out, expected)
        }
        Parsed::Pbkdf2 {
            iterations,
            salt,
            expected,
        } => {
            let mut out = Zeroizing::new(vec![0u8; expected.len()]);
            pbkdf2::pbkdf2_hmac::<Sha512>(password, &salt, iterations, &mut out);
            (out, expected)
        }
        Parsed::Sha512 { salt, expected } => {
            let mut hasher = Sha512::new();
            hasher.update(password);
            hasher.update(&salt);
            (Zeroizing::new(hasher.finalize().to_vec()), expected)
        }
    };
    Ok(constant_time_eq(&computed, &expected))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && bool::from(a.ct_eq(b))
}

enum Parsed {
    Argon2id {
        params: Params,
        version: Version,
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
    Pbkdf2 {
        iterations: u32,
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
    Sha512 {
        salt: Vec<u8>,
        expected: Vec<u8>,
    },
}

impl Parsed {
    fn kind(&self) -> HashKind {
        match self {
            Parsed::Argon2id { .. } => HashKind::Argon2id,
            Parsed::Pbkdf2 { .. } => HashKind::MosquittoPbkdf2,
            Parsed::Sha512 { .. } => HashKind::MosquittoSha512,
        }
    }
}

fn parse(stored: &str) -> Result<Parsed, VerifyError> {
    if stored.len() > MAX_STORED_LEN {
        return Err(VerifyError::Malformed("longer than 512 characters"));
    }
    match hash_kind(stored) {
        Some(HashKind::Argon2id) => parse_argon2id(stored),
        Some(HashKind::MosquittoPbkdf2) => parse_pbkdf2(stored),
        Some(HashKind::MosquittoSha512) => parse_sha512(stored),
        None => Err(VerifyError::UnknownFormat),
    }
}

/// `$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`, parsed by hand because the PHC
/// parser caps salts at 48 bytes and mosquitto writes 64.
fn parse_argon2id(stored: &str) -> Result<Parsed, VerifyError> {
    let fields: Vec<&str> = stored.split('$').collect();
    // "", "argon2id", "v=19", "m=..,t=..,p=..", salt, hash
    let [empty, _alg, version, params, salt, hash] = fields.as_slice() else {
        return Err(VerifyError::Malformed(
            "argon2id hash needs $argon2id$v=..$m=..,t=..,p=..$salt$hash",
        ));
    };
    if !empty.is_empty() {
        return Err(VerifyError::Malformed("must start with $"));
    }
    let version = match *version {
        "v=19" => Version::V0x13,
        "v=16" => Version::V0x10,
        _ => {
            return Err(VerifyError::Malformed(
                "argon2 version must be v=19 or v=16",
            ));
        }
    };
    let (m, t, p) = parse_argon2_params(params)?;
    if m > MAX_ARGON2_M_KIB || t > MAX_ARGON2_T || p > MAX_ARGON2_P {
        return Err(VerifyError::Argon2TooExpensive { m, t, p });
    }
    let salt = decode_b64(salt, "argon2 salt")?;
    if salt.len() < argon2::MIN_SALT_LEN || salt.len() > MAX_SALT_LEN {
        return Err(VerifyError::Malformed(
            "argon2 salt must be 8 to 64 bytes long",
        ));
    }
    let expected = decode_b64(hash, "argon2 hash")?;
    check_output_len(&expected)?;
    let params = Params::new(m, t, p, Some(expected.len()))
        .map_err(|_| VerifyError::Malformed("argon2 parameters out of range"))?;
    Ok(Parsed::Argon2id {
        params,
        version,
        salt,
        expected,
    })
}

fn parse_argon2_params(params: &str) -> Result<(u32, u32, u32), VerifyError> {
    let (mut m, mut t, mut p) = (None, None, None);
    for pair in params.split(',') {
        let (name, value) = pair
            .split_once('=')
            .ok_or(VerifyError::Malformed("argon2 parameter without '='"))?;
        let value: u32 = value
            .parse()
            .map_err(|_| VerifyError::Malformed("argon2 parameter is not a number"))?;
        let slot = match name {
            "m" => &mut m,
            "t" => &mut t,
            "p" => &mut p,
            _ => return Err(VerifyError::Malformed("unknown argon2 parameter")),
        };
        if slot.replace(value).is_some() {
            return Err(VerifyError::Malformed("repeated argon2 parameter"));
        }
    }
    match (m, t, p) {
        (Some(m), Some(t), Some(p)) => Ok((m, t, p)),
        _ => Err(VerifyError::Malformed("argon2 needs m, t and p")),
    }
}

/// mosquitto `$7$<iterations>$<b64 salt>$<b64 hash>`.
fn parse_pbkdf2(stored: &str) -> Result<Parsed, VerifyError> {
    let fields: Vec<&str> = stored.split('$').collect();
    let [_, _, iterations, salt, hash] = fields.as_slice() else {
        return Err(VerifyError::Malformed(
            "$7$ hash needs $7$iterations$salt$hash",
        ));
    };
    let iterations: u32 = iterations
        .parse()
        .map_err(|_| VerifyError::Malformed("$7$ iteration count is not a number"))?;
    if iterations == 0 {
        return Err(VerifyError::Malformed("$7$ iteration count is zero"));
    }
    if iterations > MAX_PBKDF2_ITERATIONS {
        return Err(VerifyError::Pbkdf2TooExpensive(iterations));
    }
    let salt = decode_salt(salt)?;
    let expected = decode_b64(hash, "$7$ hash")?;
    check_output_len(&expected)?;
    Ok(Parsed::Pbkdf2 {
        iterations,
        salt,
        expected,
    })
}

/// mosquitto `$6$<b64 salt>$<b64 hash>`: SHA-512(password || salt).
fn parse_sha512(stored: &str) -> Result<Parsed, VerifyError> {
    let fields: Vec<&str> = stored.split('$').collect();
    let [_, _, salt, hash] = fields.as_slice() else {
        return Err(VerifyError::Malformed("$6$ hash needs $6$salt$hash"));
    };
    let salt = decode_salt(salt)?;
    let expected = decode_b64(hash, "$6$ hash")?;
    if expected.len() != 64 {
        return Err(VerifyError::Malformed("$6$ hash must be 64 bytes"));
    }
    Ok(Parsed::Sha512 { salt, expected })
}

fn decode_salt(b64: &str) -> Result<Vec<u8>, VerifyError> {
    let salt = decode_b64(b64, "salt")?;
    if salt.is_empty() || salt.len() > MAX_SALT_LEN {
        return Err(VerifyError::Malformed("salt must be 1 to 64 bytes long"));
    }
    Ok(salt)
}

fn check_output_len(hash: &[u8]) -> Result<(), VerifyError> {
    if hash.len() < MIN_OUTPUT_LEN || hash.len() > MAX_OUTPUT_LEN {
        return Err(VerifyError::Malformed("hash must be 16 to 128 bytes long"));
    }
    Ok(())
}

/// Standard-alphabet base64, with or without padding (PHC omits it, mosquitto writes it).
fn decode_b64(b64: &str, what: &'static str) -> Result<Vec<u8>, VerifyError> {
    let decoded = if b64.ends_with('=') {
        Base64::decode_vec(b64)
    } else {
        Base64Unpadded::decode_vec(b64)
    };
    decoded.map_err(|_| VerifyError::Malformed(what))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::hash_password;

    /// Produced by `mosquitto_passwd -c -b file alice 'correct horse'` (mosquitto 2.0.11).
    const MOSQUITTO_PBKDF2: &str = "$7$101$iEn53dLheVtKvyPE$NPtCXMocTIeoR4W7696NMbh3Q8jU27WW753taX//dbjNwYKGT5rXPMnBpRQxYzLFQfepxO7TKcChKVxO45e7Tw==";
    /// Produced by `mosquitto_passwd -H sha512 -c -b file bob hunter2`.
    const MOSQUITTO_SHA512: &str = "$6$XNrSeUAmIViBTRV7$0GwbhlRgv6YTbKFNoKN49znt7EdXsWgz1Ox49VdNTpCIV0GuHAtiuLo7+NSGhUWlI223canGsWNGTxdRfOXS3w==";

    /// A cheap argon2id string in the given salt/output sizes, built the way mosquitto
    /// and libargon2 encode them.
    fn argon2id_line(password: &[u8], salt: &[u8], out_len: usize, m: u32, t: u32) -> String {
        let params = Params::new(m, t, 1, Some(out_len)).unwrap();
        let mut out = vec![0u8; out_len];
        Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
            .hash_password_into(password, salt, &mut out)
            .unwrap();
        format!(
            "$argon2id$v=19$m={m},t={t},p=1${}${}",
            Base64Unpadded::encode_string(salt),
            Base64Unpadded::encode_string(&out)
        )
    }

    #[test]
    fn our_own_hashes_round_trip() {
        let stored = hash_password(b"correct horse").unwrap();
        assert_eq!(verify_password(&stored, b"correct horse"), Ok(true));
        assert_eq!(verify_password(&stored, b"correct horsf"), Ok(false));
        assert!(!is_weak_import(&stored));
    }

    #[test]
    fn mosquitto_pbkdf2_vector_verifies() {
        assert_eq!(
            verify_password(MOSQUITTO_PBKDF2, b"correct horse"),
            Ok(true)
        );
        assert_eq!(verify_password(MOSQUITTO_PBKDF2, b"wrong horse"), Ok(false));
        assert!(is_weak_import(MOSQUITTO_PBKDF2));
    }

    #[test]
    fn mosquitto_sha512_vector_verifies() {
        assert_eq!(verify_password(MOSQUITTO_SHA512, b"hunter2"), Ok(true));
        assert_eq!(verify_password(MOSQUITTO_SHA512, b"hunter3"), Ok(false));
        assert!(is_weak_import(MOSQUITTO_SHA512));
    }

    #[test]
    fn live_mosquitto_passwd_output_verifies_when_installed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("passwd");
        let status = std::process::Command::new("mosquitto_passwd")
            .args(["-c", "-b"])
            .arg(&file)
            .args(["carol", "s3cret pass"])
            .status();
        let Ok(status) = status else {
            eprintln!("mosquitto_passwd not installed; the hard-coded vector covers $7$");
            return;
        };
        assert!(status.success());
        let line = std::fs::read_to_string(&file).unwrap();
        let stored = line.trim_end().strip_prefix("carol:").unwrap();
        assert!(stored.starts_with("$7$"), "{stored}");
        assert_eq!(verify_password(stored, b"s3cret pass"), Ok(true));
        assert_eq!(verify_password(stored, b"s3cret pasS"), Ok(false));
    }

    #[test]
    fn mosquitto_argon2id_with_64_byte_salt_verifies() {
        let salt = [7u8; 64];
        let stored = argon2id_line(b"pw", &salt, 64, 64, 1);
        // The PHC parser refuses such a salt; our own parser must not.
        assert!(argon2::password_hash::phc::PasswordHash::new(&stored).is_err());
        assert_eq!(verify_password(&stored, b"pw"), Ok(true));
        assert_eq!(verify_password(&stored, b"pW"), Ok(false));
    }

    #[test]
    fn argon2_parameters_above_the_ceiling_are_refused_before_hashing() {
        let too_much_memory = "$argon2id$v=19$m=4194304,t=1,p=1$c2FsdHNhbHQ$\
                               AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(
            verify_password(too_much_memory, b"x"),
            Err(VerifyError::Argon2TooExpensive { m: 4194304, .. })
        ));
        let too_many_passes = "$argon2id$v=19$m=64,t=11,p=1$c2FsdHNhbHQ$\
                               AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(
            verify_password(too_many_passes, b"x"),
            Err(VerifyError::Argon2TooExpensive { t: 11, .. })
        ));
        let too_parallel = "$argon2id$v=19$m=64,t=1,p=5$c2FsdHNhbHQ$\
                            AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";
        assert!(matches!(
            verify_password(too_parallel, b"x"),
            Err(VerifyError::Argon2TooExpensive { p: 5, .. })
        ));
        let pbkdf2 = "$7$2000000$iEn53dLheVtKvyPE$NPtCXMocTIeoR4W7696NMbh3Q8jU27WW753taX//dbjNwYKGT5rXPMnBpRQxYzLFQfepxO7TKcChKVxO45e7Tw==";
        assert_eq!(
            verify_password(pbkdf2, b"x"),
            Err(VerifyError::Pbkdf2TooExpensive(2_000_000))
        );
    }

    #[test]
    fn malformed_and_foreign_hashes_are_errors_not_false() {
        for stored in [
            "",
            "plaintext",
            "$argon2i$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1,p=1,m=64$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1,p=1$!!!$AAAAAAAAAAAAAAAAAAAAAA",
            "$argon2id$v=19$m=64,t=1,p=1$c2FsdHNhbHQ$AAAA",
            "$argon2id$v=20$m=64,t=1,p=1$c2FsdHNhbHQ$AAAAAAAAAAAAAAAAAAAAAA",
            "$7$0$iEn53dLheVtKvyPE$AAAAAAAAAAAAAAAAAAAAAA==",
            "$7$abc$iEn53dLheVtKvyPE$AAAAAAAAAAAAAAAAAAAAAA==",
            "$7$101$iEn53dLheVtKvyPE",
            "$6$XNrSeUAmIViBTRV7$AAAA",
            "$1$abc$def",
        ] {
            assert!(
                verify_password(stored, b"x").is_err(),
                "{stored:?} must be an error"
            );
        }
        let huge = format!("$6${}", "A".repeat(600));
        assert!(verify_password(&huge, b"x").is_err());
    }

    #[test]
    fn check_stored_hash_classifies_without_a_password() {
        assert_eq!(
            check_stored_hash(MOSQUITTO_PBKDF2),
            Ok(HashKind::MosquittoPbkdf2)
        );
        assert_eq!(
            check_stored_hash(&argon2id_line(b"p", &[1; 16], 32, 64, 1)),
            Ok(HashKind::Argon2id)
        );
        assert_eq!(check_stored_hash("nope"), Err(VerifyError::UnknownFormat));
    }
}
