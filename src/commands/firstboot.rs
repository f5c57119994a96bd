//! `moat firstboot`: not built yet.

use crate::cli::{FirstbootArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &FirstbootArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat firstboot` is not implemented yet")
}
