//! Authentication: argon2id hashing and verification, mosquitto hash import, the
//! bounded verification pool, lockout and the success cache. It knows identities and
//! credentials, never sockets or sessions.

pub mod hash;

pub use hash::{HashError, generate_password, hash_password};
