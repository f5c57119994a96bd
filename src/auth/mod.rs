//! Authentication: argon2id hashing and verification, mosquitto hash import, the
//! bounded verification pool, lockout and the success cache, and hashes of
//! `password_file` secrets. It knows identities and credentials, never sockets or
//! sessions.

pub mod cache;
pub mod hash;
pub mod lockout;
pub mod pool;
pub mod secret_file;
pub mod verify;

pub use hash::{HashError, generate_password, hash_password};
pub use lockout::LockoutConfig;
pub use pool::{AuthConfig, AuthError, AuthStats, Authenticator};
pub use secret_file::{SecretFileError, hash_for_secret_file};
pub use verify::{
    HashKind, VerifyError, argon2_cost, check_stored_hash, is_weak_import, verify_password,
};
