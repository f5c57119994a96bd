//! `moat-bench`: the load generator (the `moat_bench` library) as its own executable.
//! It is kept out of the `moat` binary on purpose: an idle broker's resident memory is
//! mostly its own code pages, and the appliance never runs a load generator. Exit
//! codes follow `moat`'s: 0 success, 1 a failed run, 2 bad usage.
#![forbid(unsafe_code)]

use std::process::ExitCode;

const EXIT_OK: u8 = 0;
const EXIT_FINDING: u8 = 1;
const EXIT_USAGE: u8 = 2;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|arg| arg.to_string_lossy().into_owned())
        .collect();
    let cli = match moat_bench::parse(&args) {
        Ok(cli) => cli,
        Err(err) => {
            let usage = err.use_stderr();
            let _ = err.print();
            return ExitCode::from(if usage { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let report = match moat_bench::run(&cli) {
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
