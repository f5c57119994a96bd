//! `moat provision`: not built yet.

use crate::cli::GlobalArgs;

pub fn run(_global: &GlobalArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat provision` is not implemented yet")
}
