//! `moat export NAME [--json]`: client settings for one identity (host, port, CA file,
//! username, topics, and a snippet for its client software). Passwords are never
//! printed. The work is `crate::export`.

use anyhow::Context;

use crate::cli::{ExportArgs, GlobalArgs};
use crate::commands::{EXIT_FINDING, EXIT_OK};
use crate::export::{self, ExportError};
use crate::policy::Policy;

pub fn run(global: &GlobalArgs, args: &ExportArgs) -> anyhow::Result<u8> {
    let (policy, _warnings) = match Policy::load(&global.manifest) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("{e}");
            return Ok(EXIT_FINDING);
        }
    };
    let settings = match export::client_settings(&policy, &global.state, &args.name, None) {
        Ok(settings) => settings,
        Err(e @ ExportError::UnknownIdentity(_)) => {
            eprintln!("moat: {}: {e}", global.manifest.display());
            return Ok(EXIT_FINDING);
        }
        Err(e) => return Err(e).context("reading the state directory"),
    };
    if global.json {
        println!("{}", serde_json::to_string_pretty(&settings)?);
    } else {
        print!("{}", export::render(&settings));
    }
    Ok(EXIT_OK)
}
