//! `moat import mosquitto`: turns a Mosquitto setup (`mosquitto.conf` with its
//! includes, `password_file`, `acl_file`, and the Home Assistant add-on's go-auth
//! files and `logins`) into a moat manifest, with a report of everything that could
//! not be carried over and why. `source` reads files and keeps each line's origin,
//! `conf`, `acl` and `passwd` parse Mosquitto's formats, `convert` decides what each
//! setting becomes in moat and renders the manifest, which is validated by
//! `crate::manifest` before anyone writes it. It reads files only: writing the
//! manifest and printing the report is the CLI edge's job, and it never touches the
//! broker or the state directory.

pub mod acl;
pub mod conf;
pub mod convert;
pub mod passwd;
pub mod source;

use std::path::PathBuf;

pub use convert::{Imported, Note, Options, Report, import};
pub use source::Origin;

/// Why an import stopped. Each names the file and line at fault where there is one.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{}cannot read {what} {}: {message}", prefix(.at), .path.display())]
    Read {
        at: Option<Origin>,
        what: &'static str,
        path: PathBuf,
        message: String,
    },
    #[error("{}{message}", prefix(.at))]
    Invalid { at: Option<Origin>, message: String },
    #[error(
        "{at}: allow_anonymous true: moat has no anonymous access, on any listener. Fix: give \
         each client that connects without a name a user (`mosquitto_passwd FILE NAME`) and its \
         topics in the acl_file, set `allow_anonymous false`, check that mosquitto still works, \
         and import again"
    )]
    Anonymous { at: Origin },
    #[error("hashing a password failed: {0}")]
    Hash(String),
    /// What the import produced is not a manifest moat accepts (a plain listener on
    /// 8883 without a TLS listener, say); the diagnostics point into the generated text.
    #[error("the imported manifest does not validate, so nothing was written:\n{0}")]
    Manifest(String),
}

fn prefix(at: &Option<Origin>) -> String {
    at.as_ref().map(|o| format!("{o}: ")).unwrap_or_default()
}
