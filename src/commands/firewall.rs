//! `moat firewall`: not built yet.

use crate::cli::{FirewallArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &FirewallArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat firewall` is not implemented yet")
}
