//! `moat init`: not built yet.

use crate::cli::{GlobalArgs, InitArgs};

pub fn run(_global: &GlobalArgs, _args: &InitArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat init` is not implemented yet")
}
