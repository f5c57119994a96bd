//! The running service: wires the compiled policy, the password verifier, the
//! broker and the listeners together, and owns their life cycle (start, reload on
//! SIGHUP, graceful shutdown). It holds no protocol or policy logic of its own.

pub mod addresses;
pub mod denials_file;
pub mod gate;
pub mod run;

pub use run::{ServeOptions, serve};
