//! `moat backup`: not built yet.

use crate::cli::{BackupArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &BackupArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat backup` is not implemented yet")
}
