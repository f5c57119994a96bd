//! `moat export`: not built yet.

use crate::cli::{ExportArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &ExportArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat export` is not implemented yet")
}
