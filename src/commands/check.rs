//! `moat check`: not built yet.

use crate::cli::{CheckArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &CheckArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat check` is not implemented yet")
}
