//! `moat-bench`: the load generator (`moat::bench`) as its own executable. It is
//! kept out of the `moat` binary on purpose: an idle broker's resident memory is
//! mostly its own code pages, and the appliance never runs a load generator.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use moat::commands::{EXIT_FINDING, EXIT_OK, EXIT_USAGE};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let cli = match moat::bench::parse(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let usage = err.use_stderr();
            let _ = err.print();
            return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let report = match moat::bench::run(&cli) {
        Ok(report) => report,
        Err(err) => {
            eprintln!("moat-bench: error: {err}");
            return ExitCode::from(EXIT_FINDING);
        }
    };
    if cli.scenario.common().json {
        match serde_json::to_string(&report) {
            Ok(json) => println!("{json}"),
            Err(err) => {
                eprintln!("moat-bench: error: {err}");
                return ExitCode::from(EXIT_FINDING);
            }
        }
    } else {
        print!("{}", report.to_table());
    }
    ExitCode::from(EXIT_OK)
}
