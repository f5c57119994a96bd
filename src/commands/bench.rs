//! `moat bench`: not built yet.

use crate::cli::{BenchArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &BenchArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat bench` is not implemented yet")
}
