//! `moat init [PATH] [--force]`: writes the commented starter manifest with a
//! `homeassistant` user, and this machine's host name and LAN addresses as the names
//! the server certificate covers. The generated password goes to stdout once; only
//! its argon2id hash is written. An existing file is left alone unless `--force` is
//! given.

use std::io::Write;

use anyhow::Context;

use super::EXIT_FINDING;
use crate::auth::{generate_password, hash_password};
use crate::cli::{GlobalArgs, InitArgs};
use crate::machine::Machine;
use crate::manifest::{LoadOptions, StarterScope, parse_str, starter_manifest};

pub fn run(global: &GlobalArgs, args: &InitArgs) -> anyhow::Result<u8> {
    let path = args.path.as_ref().unwrap_or(&global.manifest);
    if !super::may_write(path, args.force) {
        return Ok(EXIT_FINDING);
    }
    let password = generate_password().context("generating a password")?;
    let hash = hash_password(password.as_bytes()).context("hashing the password")?;
    let machine = Machine::detect();
    let text = starter_manifest(
        &hash,
        StarterScope::Lan,
        machine.name.as_deref(),
        &machine.addresses,
    );
    // The starter must always be a manifest `check` and `serve` accept.
    parse_str(&text, &path.display().to_string(), LoadOptions::default())
        .context("the starter manifest does not validate (a bug in moat)")?;
    super::write_new(path, &text, args.force)?;
    eprintln!(
        "moat: wrote {} with the user `homeassistant`. Its password follows; it is shown only now:",
        path.display()
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "{password}")?;
    out.flush()?;
    let mut reach: Vec<String> = machine.name.iter().cloned().collect();
    reach.extend(machine.name.iter().map(|n| format!("{n}.local")));
    reach.extend(machine.addresses.iter().map(ToString::to_string));
    if reach.is_empty() {
        eprintln!(
            "moat: found no host name or LAN address: put the name or address clients use in broker.hostnames or broker.addresses"
        );
    } else {
        eprintln!(
            "moat: the certificate will cover {} (and localhost)",
            reach.join(", ")
        );
    }
    eprintln!("moat: next: edit the file, then run `moat check` and `moat provision`.");
    Ok(super::EXIT_OK)
}
