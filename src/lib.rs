//! moat: a locked-down MQTT broker appliance for smart homes.
//!
//! The library holds every layer; `main.rs` only dispatches the CLI. Layers point
//! down: `protocol` knows nothing of sessions or sockets, `broker` nothing of TLS or
//! sockets, `manifest` nothing of the runtime.
#![forbid(unsafe_code)]

pub mod acl;
pub mod auth;
pub mod backup;
pub mod bench;
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
