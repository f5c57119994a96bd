//! `moat doctor`: not built yet.

use crate::cli::{DoctorArgs, GlobalArgs};

pub fn run(_global: &GlobalArgs, _args: &DoctorArgs) -> anyhow::Result<u8> {
    anyhow::bail!("`moat doctor` is not implemented yet")
}
