//! The manifest: schema v1 (`schema`), strict loading with line/column diagnostics
//! (`load`), validation that collects every problem (`validate`), the built-in role
//! presets (`roles`), the starter file (`starter`) and comment-preserving edits
//! (`edit`). It knows nothing of the runtime: `crate::policy` compiles a loaded
//! manifest into what the broker enforces.

pub mod bridge;
pub mod edit;
pub mod load;
pub mod metrics;
mod quantity;
pub mod roles;
pub mod schema;
pub mod starter;
pub mod validate;

pub use edit::{EditError, set_password_hash, write_atomically};
pub use load::{
    Diagnostic, LoadOptions, Loaded, MAX_MANIFEST_BYTES, ManifestError, Warning, load,
    load_for_firstboot, load_with, parse_str, read_text,
};
pub use schema::Manifest;
pub use starter::{StarterScope, starter_manifest};
