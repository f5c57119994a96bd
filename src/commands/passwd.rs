//! `moat passwd`: not built yet.

use crate::cli::{GlobalArgs, PasswdArgs};

pub fn run(_global: &GlobalArgs, _args: &PasswdArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat passwd` is not implemented yet")
}
