//! `moat-bench`: a load generator that drives any MQTT broker over loopback (host,
//! port, TLS with a CA file, username and password, MQTT 3.1.1 or 5) and reports
//! fan-in and fan-out throughput, end-to-end latency percentiles at a fixed offered
//! rate, connection setup rate and the broker's memory per idle connection. Every run
//! is bounded in time and in count.
//!
//! It owns the scenarios, their measurements and the report. It must not touch the
//! broker: it is a client only, speaking through `moat-client` over a socket, and
//! reading the broker's CPU time and memory from `/proc` by pid. Its own executable
//! (`src/main.rs`) keeps it out of the `moat` binary the appliance runs. The library
//! facade (`parse`, `run`, `Report`) is what the executable and the smoke test use.
#![forbid(unsafe_code)]

mod client;
mod connect_rate;
mod flow;
mod histogram;
mod idle;
mod latency;
mod options;
mod report;
mod system;

use std::time::{SystemTime, UNIX_EPOCH};

use moat_client::ClientError;
use moat_protocol::ReasonCode;

pub use options::{BenchCli, CommonArgs, Scenario, parse};
pub use report::Report;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("the broker granted a lower QoS than asked: {0:?}")]
    Downgraded(ReasonCode),
    #[error("broker memory: {0}")]
    Memory(String),
    #[error("CPU time: {0}")]
    Cpu(String),
    #[error("a load task failed: {0}")]
    Task(String),
}

/// Runs one scenario on its own runtime and returns its report.
pub fn run(cli: &BenchCli) -> Result<Report, BenchError> {
    let common = cli.scenario.common();
    // Many sockets are the point of some scenarios; a failure here surfaces later
    // as "too many open files" with the actual count in the message.
    let _ = system::raise_open_files_limit();
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = common.threads {
        builder.worker_threads(threads.clamp(1, 64));
    }
    let runtime = builder.enable_all().build()?;
    runtime.block_on(async {
        match &cli.scenario {
            Scenario::FanIn(args) => flow::fan_in(args).await,
            Scenario::FanOut(args) => flow::fan_out(args).await,
            Scenario::Latency(args) => latency::run(args).await,
            Scenario::ConnectRate(args) => connect_rate::run(args).await,
            Scenario::Idle(args) => idle::run(args).await,
        }
    })
}

/// A short tag unique to this run, so client ids and topics never meet a stale one.
fn run_tag() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let mixed = (nanos as u64) ^ (u64::from(std::process::id()) << 40);
    format!("{:08x}", mixed & 0xffff_ffff)
}

/// Turns a join failure (a panic in a load task) into an error.
fn joined<T>(
    outcome: Result<Result<T, BenchError>, tokio::task::JoinError>,
) -> Result<T, BenchError> {
    outcome.map_err(|e| BenchError::Task(e.to_string()))?
}
