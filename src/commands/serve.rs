//! `moat serve`: runs the broker. With no manifest at all it first writes a starter
//! manifest that listens on loopback only, and prints the generated password once.

use std::io::Write;

use anyhow::Context;

use crate::auth::{generate_password, hash_password};
use crate::cli::{GlobalArgs, ServeArgs};
use crate::manifest::{StarterScope, starter_manifest};
use crate::server::{ServeOptions, serve};

/// Writes the starter manifest and prints its credentials, once.
fn create_starter(global: &GlobalArgs) -> anyhow::Result<()> {
    let password = generate_password()?;
    let hash = hash_password(password.as_bytes())?;
    let text = starter_manifest(&hash, StarterScope::LoopbackOnly, None, &[]);
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

/// The glibc tunable that fixes malloc's mmap threshold.
const MMAP_THRESHOLD_TUNABLE: &str = "glibc.malloc.mmap_threshold";
/// glibc's initial threshold: blocks from 128 KiB up are mapped, and unmapped when freed.
const MMAP_THRESHOLD_BYTES: usize = 128 * 1024;

/// Makes sure this process runs with a fixed malloc mmap threshold, re-executing
/// itself (same PID, same arguments) with the glibc tunable set if it is not.
/// Returns whether the threshold is fixed; returns at all only if it already was or
/// the re-exec failed.
///
/// Why: glibc raises its mmap threshold the first time a mapped block is freed, so
/// after the first login argon2's 19 MiB working memory comes from per-thread
/// arenas that keep it resident (60 wrong passwords in a burst left 280 MB). With a
/// fixed threshold every verification's memory goes back to the OS when it ends.
/// Tunables are read only at process start, and setting them needs no unsafe code.
fn fixed_mmap_threshold() -> bool {
    use std::os::unix::process::CommandExt;

    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables
        .split(':')
        .any(|tunable| tunable.starts_with(MMAP_THRESHOLD_TUNABLE))
    {
        return true;
    }
    if !cfg!(target_env = "gnu") {
        // musl unmaps large blocks on free anyway, but keep the safe default.
        return false;
    }
    let exe = match std::env::current_exe() {
        Ok(exe) => exe,
        Err(e) => {
            tracing::warn!(error = %e, "cannot find this executable to set malloc tunables");
            return false;
        }
    };
    let setting = format!("{MMAP_THRESHOLD_TUNABLE}={MMAP_THRESHOLD_BYTES}");
    let tunables = if tunables.is_empty() {
        setting
    } else {
        format!("{tunables}:{setting}")
    };
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new(exe);
    if let Some(arg0) = args.next() {
        command.arg0(arg0);
    }
    let error = command.args(args).env("GLIBC_TUNABLES", tunables).exec();
    tracing::warn!(%error, "cannot re-execute with a fixed malloc mmap threshold; argon2 memory stays allocated per slot");
    false
}

/// Worker threads: as asked, else one per CPU this process may run on
/// (`std::thread::available_parallelism` reads the affinity mask and the cgroup
/// CPU quota, so `taskset -c 0` gives one). Set explicitly, which also keeps
/// tokio from reading `TOKIO_WORKER_THREADS` (it panics on a bad value).
fn worker_threads(requested: Option<u16>) -> usize {
    requested.map_or_else(
        || std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get),
        usize::from,
    )
}

pub fn run(global: &GlobalArgs, args: &ServeArgs) -> anyhow::Result<u8> {
    crate::logging::init(args.log_format);
    let large_frees_unmap = fixed_mmap_threshold();
    if !global.manifest.exists() {
        create_starter(global)?;
    }
    let workers = worker_threads(args.workers);
    tracing::info!(workers, "worker threads");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
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
        large_frees_unmap,
    }))?;
    Ok(super::EXIT_OK)
}

#[cfg(test)]
mod tests {
    use super::worker_threads;

    #[test]
    fn workers_are_as_asked_or_one_per_usable_cpu() {
        assert_eq!(worker_threads(Some(2)), 2);
        let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
        assert_eq!(worker_threads(None), cpus);
    }
}
