//! `moat reload`: not built yet.

use crate::cli::{GlobalArgs, ReloadArgs};

pub fn run(_global: &GlobalArgs, _args: &ReloadArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat reload` is not implemented yet")
}
