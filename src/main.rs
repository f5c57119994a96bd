//! The `moat` binary: parses the command line and hands over to `moat::commands`.
#![forbid(unsafe_code)]

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = moat::cli::Cli::parse();
    moat::commands::dispatch(cli)
}
