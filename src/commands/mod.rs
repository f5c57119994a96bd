//! The CLI edge: one module per subcommand, each turning arguments into calls on the
//! library and results into human (or `--json`) output and an exit code. This is the
//! only place `anyhow` is used; everything below returns typed errors.

use std::process::ExitCode;

use crate::cli::{Cli, Command};

pub mod backup;
pub mod check;
pub mod denials;
pub mod doctor;
pub mod export;
pub mod firewall;
pub mod firstboot;
pub mod import;
pub mod init;
pub mod passwd;
pub mod provision;
pub mod reload;
pub mod serve;
pub mod state_owner;

/// Exit code for success.
pub const EXIT_OK: u8 = 0;
/// Exit code for a finding or a refusal (`check`, `doctor`) and for failures.
pub const EXIT_FINDING: u8 = 1;
/// Exit code for bad usage.
pub const EXIT_USAGE: u8 = 2;

/// Whether a command may write a new manifest at `path`: not over an existing file
/// unless `force` (it says so on stderr).
fn may_write(path: &std::path::Path, force: bool) -> bool {
    if !force && std::fs::symlink_metadata(path).is_ok() {
        eprintln!(
            "moat: {} already exists; not overwriting it (use --force to replace it)",
            path.display()
        );
        return false;
    }
    true
}

/// Writes a new manifest atomically; without `force` the name is claimed first, so a
/// file created since `may_write` said yes is not replaced.
fn write_new(path: &std::path::Path, text: &str, force: bool) -> anyhow::Result<()> {
    use anyhow::Context;
    if !force {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .with_context(|| format!("creating {}", path.display()))?;
    }
    crate::manifest::write_atomically(path, text)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs the parsed command line and maps its outcome to the process exit code.
pub fn dispatch(cli: Cli) -> ExitCode {
    let g = &cli.global;
    let outcome = match &cli.command {
        Command::Init(a) => init::run(g, a),
        Command::Passwd(a) => passwd::run(g, a),
        Command::Check(a) => check::run(g, a),
        Command::Provision => provision::run(g),
        Command::Serve(a) => serve::run(g, a),
        Command::Reload(a) => reload::run(g, a),
        Command::Firewall(a) => firewall::run(g, a),
        Command::Doctor(a) => doctor::run(g, a),
        Command::Firstboot(a) => firstboot::run(g, a),
        Command::Export(a) => export::run(g, a),
        Command::Backup(a) => backup::run(g, a),
        Command::Denials(a) => denials::run(g, a),
        Command::Import(crate::cli::ImportSource::Mosquitto(a)) => import::mosquitto(g, a),
    };
    // `serve` runs as the state directory's owner under the NixOS unit; run by hand
    // as root it is left as it is.
    if !matches!(cli.command, Command::Serve(_)) {
        for warning in state_owner::give_back(&g.state) {
            eprintln!("moat: warning: {warning}");
        }
    }
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(err) => {
            eprintln!("moat: error: {err:#}");
            ExitCode::from(EXIT_FINDING)
        }
    }
}
