//! `moat serve`: not built yet.

use crate::cli::{GlobalArgs, ServeArgs};

pub fn run(_global: &GlobalArgs, _args: &ServeArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat serve` is not implemented yet")
}
