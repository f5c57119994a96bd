//! `moat serve`: runs the broker. With no manifest at all it first writes a starter
//! manifest that listens on loopback only, and prints the generated password once.

use std::io::Write;

use anyhow::Context;

use crate::auth::{generate_password, hash_password};
use crate::cli::{GlobalArgs, ServeArgs};
use crate::manifest::{StarterScope, starter_manifest};
use crate::server::{ServeOptions, serve};

/// Logs go to stderr (journald captures them); `RUST_LOG` overrides the level.
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(true)
        .try_init();
}

/// Writes the starter manifest and prints its credentials, once.
fn create_starter(global: &GlobalArgs) -> anyhow::Result<()> {
    let password = generate_password()?;
    let hash = hash_password(password.as_bytes())?;
    let text = starter_manifest(&hash, StarterScope::LoopbackOnly);
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&global.manifest)
        .with_context(|| format!("creating {}", global.manifest.display()))?;
    file.write_all(text.as_bytes())?;
    println!(
        "No manifest found: wrote a starter manifest to {} (loopback only).",
        global.manifest.display()
    );
    println!("Home Assistant credentials (shown once, only the hash was stored):");
    println!("  username: homeassistant");
    println!("  password: {password}");
    println!(
        "  CA certificate: {}/ca.pem (after provisioning)",
        global.state.display()
    );
    std::io::stdout().flush()?;
    Ok(())
}

/// Where `serve` writes its PID unless told otherwise (`reload` looks there too).
pub fn default_pid_file(global: &GlobalArgs) -> std::path::PathBuf {
    global.state.join("moat.pid")
}

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<u8> {
    init_logging();
    if !global.manifest.exists() {
        create_starter(global)?;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(ServeOptions {
        manifest: global.manifest.clone(),
        state: global.state.clone(),
        pid_file: Some(
            args.pid_file
                .clone()
                .unwrap_or_else(|| default_pid_file(global)),
        ),
    }))?;
    Ok(super::EXIT_OK)
}
