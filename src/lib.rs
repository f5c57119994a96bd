//! moat: a locked-down MQTT broker appliance for smart homes.
//!
//! The workspace's root package: the broker and the CLI (`main.rs` only dispatches).
//! The wire protocol is the `moat-protocol` crate, the one MQTT client (for
//! `doctor --probe`) is `moat-client`, and the load generator is the `moat-bench`
//! package, kept out of this binary. Layers point down: `broker` knows nothing of TLS
//! or sockets, `manifest` nothing of the runtime, `store` nothing of MQTT; this crate
//! must not re-implement what those crates own (framing, a client).
#![forbid(unsafe_code)]

pub mod acl;
pub mod auth;
pub mod backup;
pub mod bridge;
pub mod broker;
pub mod cli;
pub mod commands;
pub mod doctor;
pub mod export;
pub mod firewall;
pub mod firstboot;
pub mod import;
pub mod latency;
pub mod logging;
pub mod machine;
pub mod manifest;
pub mod metrics;
pub mod net;
pub mod pki;
pub mod policy;
pub mod provision;
pub mod server;
pub mod store;
