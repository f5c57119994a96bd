//! `moat bench`: parses the load generator's own arguments, runs one scenario and
//! prints its report (a table, or one JSON object with `--json`).

use crate::bench;
use crate::cli::{BenchArgs, GlobalArgs};
use crate::commands::{EXIT_OK, EXIT_USAGE};

pub fn run(global: &GlobalArgs, args: &BenchArgs) -> anyhow::Result<u8> {
    let cli = match bench::parse(&args.args) {
        Ok(cli) => cli,
        Err(err) => {
            let usage = err.use_stderr();
            let _ = err.print();
            return Ok(if usage { EXIT_USAGE } else { EXIT_OK });
        }
    };
    let report = bench::run(&cli)?;
    if global.json || cli.scenario.common().json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(EXIT_OK)
}
