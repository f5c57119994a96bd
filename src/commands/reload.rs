//! `moat reload`: asks the running broker to re-read its manifest by sending it
//! SIGHUP. The broker validates first and keeps the old policy if the new one fails.

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::cli::{GlobalArgs, ReloadArgs};

pub fn run(global: &GlobalArgs, args: &ReloadArgs) -> anyhow::Result<u8> {
    let pid_file = args
        .pid_file
        .clone()
        .unwrap_or_else(|| super::serve::default_pid_file(global));
    let text = std::fs::read_to_string(&pid_file)
        .with_context(|| format!("reading {} (is `moat serve` running?)", pid_file.display()))?;
    let pid: i32 = text
        .trim()
        .parse()
        .with_context(|| format!("{} does not hold a process id", pid_file.display()))?;
    kill(Pid::from_raw(pid), Signal::SIGHUP)
        .with_context(|| format!("signalling process {pid}"))?;
    println!(
        "asked moat (pid {pid}) to reload {}",
        global.manifest.display()
    );
    Ok(super::EXIT_OK)
}
