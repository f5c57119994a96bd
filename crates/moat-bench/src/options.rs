//! The command line of `moat-bench`: one subcommand per scenario, the target broker
//! (host, port, TLS, credentials, protocol version) and the bounds of every run. It
//! only describes and validates arguments; the scenarios do the work.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use moat_protocol::{ProtocolVersion, QoS};

/// Longest measured window a run may ask for: subscribers send nothing while they
/// receive, so a run must end well within 1.5 x the 300 s keep-alive we announce.
pub(crate) const MAX_RUN: Duration = Duration::from_secs(240);
/// Largest payload a run may ask for (the broker's default packet cap is 1 MiB).
pub(crate) const MAX_PAYLOAD: usize = 512 * 1024;
/// Most clients one scenario may open.
pub(crate) const MAX_CLIENTS: usize = 20_000;

#[derive(Debug, Parser)]
#[command(
    name = "moat-bench",
    about = "Drive an MQTT broker (any broker) with load over loopback and report \
             throughput, latency, connection rate and memory"
)]
pub struct BenchCli {
    #[command(subcommand)]
    pub scenario: Scenario,
}

#[derive(Debug, Subcommand)]
pub enum Scenario {
    /// N publishers -> 1 subscriber: messages/s received, and publisher-side rate.
    FanIn(FanInArgs),
    /// 1 publisher -> N subscribers: deliveries/s summed over subscribers.
    FanOut(FanOutArgs),
    /// 1 publisher -> 1 subscriber at a fixed rate: end-to-end latency percentiles.
    Latency(LatencyArgs),
    /// K parallel loops of connect (TLS handshake) -> CONNECT -> CONNACK -> DISCONNECT.
    ConnectRate(ConnectRateArgs),
    /// Open N idle connections, hold them, and optionally read the broker's VmRSS.
    Idle(IdleArgs),
}

impl Scenario {
    pub fn common(&self) -> &CommonArgs {
        match self {
            Scenario::FanIn(a) => &a.common,
            Scenario::FanOut(a) => &a.common,
            Scenario::Latency(a) => &a.common,
            Scenario::ConnectRate(a) => &a.common,
            Scenario::Idle(a) => &a.common,
        }
    }
}

/// MQTT protocol level on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Protocol {
    /// MQTT 3.1.1 (protocol level 4).
    #[value(name = "4", alias = "3.1.1", alias = "311")]
    V311,
    /// MQTT 5.0.
    #[value(name = "5", alias = "5.0")]
    V5,
}

impl Protocol {
    pub fn version(self) -> ProtocolVersion {
        match self {
            Protocol::V311 => ProtocolVersion::V311,
            Protocol::V5 => ProtocolVersion::V5,
        }
    }

    pub fn level(self) -> u8 {
        match self {
            Protocol::V311 => 4,
            Protocol::V5 => 5,
        }
    }
}

/// Where the broker is and how to log in; shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Broker address; loopback only (127.0.0.0/8 or ::1).
    #[arg(long, default_value = "127.0.0.1")]
    pub host: std::net::IpAddr,
    #[arg(long, default_value_t = 8883)]
    pub port: u16,
    /// PEM CA certificate: connect with TLS and verify the broker against it.
    #[arg(long)]
    pub cafile: Option<PathBuf>,
    /// The name checked against the broker's certificate.
    #[arg(long, default_value = "localhost")]
    pub server_name: String,
    /// Allow TLS session resumption (off: every connection does a full handshake).
    #[arg(long)]
    pub tls_resume: bool,
    #[arg(long, short = 'u')]
    pub username: Option<String>,
    #[arg(long, short = 'P', env = "MOAT_BENCH_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// MQTT protocol level: 4 (3.1.1) or 5.
    #[arg(long, value_enum, default_value = "5")]
    pub protocol: Protocol,
    /// Spread client sockets over this many loopback source addresses (127.0.0.1,
    /// 127.0.0.2, ...) for runs that need more source ports than one address has.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_addresses: u8,
    /// Topic prefix; a per-run suffix is added so stale messages never count.
    #[arg(long, default_value = "bench")]
    pub topic_prefix: String,
    /// Worker threads of the generator's runtime (default: the number of CPUs).
    #[arg(long)]
    pub threads: Option<usize>,
    /// One JSON object instead of the human table.
    #[arg(long)]
    pub json: bool,
}

/// Rate and size knobs shared by fan-in and fan-out.
#[derive(Debug, Clone, Args)]
pub struct FlowArgs {
    /// QoS of publications and of the subscription: 0, 1 or 2.
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Payload size: bytes, or with a unit (1KiB, 1k).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub payload: usize,
    /// The measured window (after the warm-up): 10s, 500ms, 1m.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Traffic before the measured window, not counted in the rates.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Messages each publisher sends at most (the count bound of the run).
    #[arg(long, default_value_t = 50_000_000)]
    pub max_messages: u64,
    /// QoS 1/2 messages a publisher keeps unacknowledged at once.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub inflight: u16,
    /// Subscribers keep their session after disconnecting (v5 session expiry
    /// 60 s, 3.1.1 clean session off), so the broker must hold every QoS 1/2
    /// message for them durably (moat writes it to its store; mosquitto keeps it
    /// in memory until its next autosave).
    #[arg(long)]
    pub persistent_subscribers: bool,
    /// The broker's process id: its CPU time (user + system) is read at the start
    /// and the end of the measured window, and reported per delivered message.
    #[arg(long)]
    pub broker_pid: Option<u32>,
    /// Stamp every payload with its send time and report the subscribers' latency
    /// percentiles for messages sent inside the window (needs --payload >= 16).
    #[arg(long)]
    pub measure_latency: bool,
    /// Add one more subscriber to the same topics that reads at most RATE
    /// messages per second; reported apart, so the others' rate and latency show
    /// what it costs them.
    #[arg(long, value_name = "RATE", value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub slow_subscriber: Option<u32>,
    /// Messages per second all publishers together offer, on a fixed schedule
    /// (default: as fast as the broker takes them). Latency under a load the broker
    /// can carry measures delivery, not queues.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    pub rate: Option<u32>,
}

#[derive(Debug, Clone, Args)]
pub struct FanInArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[arg(long, default_value_t = 8)]
    pub publishers: usize,
}

#[derive(Debug, Clone, Args)]
pub struct FanOutArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub flow: FlowArgs,
    #[arg(long, default_value_t = 8)]
    pub subscribers: usize,
}

#[derive(Debug, Clone, Args)]
pub struct LatencyArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[arg(long, default_value = "0", value_parser = parse_qos)]
    pub qos: QoS,
    /// Offered rate in messages per second.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=200_000))]
    pub rate: u32,
    /// Payload size (at least 16 bytes: the send timestamp and a sequence number).
    #[arg(long, default_value = "64", value_parser = parse_size)]
    pub payload: usize,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct ConnectRateArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Connection loops running in parallel.
    #[arg(long, default_value_t = 8)]
    pub parallel: usize,
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub warmup: Duration,
    /// Connections each loop makes at most.
    #[arg(long, default_value_t = 1_000_000)]
    pub max_connections: u64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    /// Idle connections to open.
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Connections being set up at once.
    #[arg(long, default_value_t = 32)]
    pub parallel: usize,
    /// How long to keep them open once all are up.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub hold: Duration,
    /// Wait this long after the last connection before reading the broker's memory.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub settle: Duration,
    /// The broker's process id: read its VmRSS before and after, report KiB/connection.
    #[arg(long)]
    pub broker_pid: Option<u32>,
}

/// Parses `moat-bench` arguments (without the program name). A leading `--` is
/// ignored, so `moat-bench -- fan-in ...` (as `cargo run --bin moat-bench -- ...`
/// passes it) and `moat-bench fan-in ...` both work.
pub fn parse(args: &[String]) -> Result<BenchCli, clap::Error> {
    let rest = match args.first() {
        Some(first) if first == "--" => &args[1..],
        _ => args,
    };
    let cli = BenchCli::try_parse_from(
        std::iter::once("moat-bench").chain(rest.iter().map(String::as_str)),
    )?;
    validate(&cli).map_err(|msg| {
        let mut cmd = <BenchCli as clap::CommandFactory>::command();
        cmd.error(clap::error::ErrorKind::InvalidValue, msg)
    })?;
    Ok(cli)
}

fn validate(cli: &BenchCli) -> Result<(), String> {
    let common = cli.scenario.common();
    if !common.host.is_loopback() {
        return Err(format!(
            "--host {}: only loopback targets are allowed",
            common.host
        ));
    }
    let check_run = |duration: Duration, warmup: Duration| {
        if duration.is_zero() || duration + warmup > MAX_RUN {
            Err(format!(
                "--duration must be > 0 and duration + warm-up at most {}s",
                MAX_RUN.as_secs()
            ))
        } else {
            Ok(())
        }
    };
    let check_clients = |n: usize, what: &str| {
        if n == 0 || n > MAX_CLIENTS {
            Err(format!("--{what} must be between 1 and {MAX_CLIENTS}"))
        } else {
            Ok(())
        }
    };
    let check_payload = |n: usize, min: usize| {
        if n < min || n > MAX_PAYLOAD {
            Err(format!(
                "--payload must be between {min} and {MAX_PAYLOAD} bytes"
            ))
        } else {
            Ok(())
        }
    };
    match &cli.scenario {
        Scenario::FanIn(a) => {
            check_run(a.flow.duration, a.flow.warmup)?;
            check_clients(a.publishers, "publishers")?;
            check_payload(a.flow.payload, if a.flow.measure_latency { 16 } else { 0 })
        }
        Scenario::FanOut(a) => {
            check_run(a.flow.duration, a.flow.warmup)?;
            check_clients(a.subscribers, "subscribers")?;
            check_payload(a.flow.payload, if a.flow.measure_latency { 16 } else { 0 })
        }
        Scenario::Latency(a) => {
            check_run(a.duration, a.warmup)?;
            check_payload(a.payload, 16)
        }
        Scenario::ConnectRate(a) => {
            check_run(a.duration, a.warmup)?;
            check_clients(a.parallel, "parallel")
        }
        Scenario::Idle(a) => {
            check_clients(a.connections, "connections")?;
            check_clients(a.parallel, "parallel")?;
            if a.hold + a.settle > MAX_RUN {
                return Err(format!("--hold + --settle at most {}s", MAX_RUN.as_secs()));
            }
            Ok(())
        }
    }
}

fn parse_qos(text: &str) -> Result<QoS, String> {
    text.parse::<u8>()
        .ok()
        .and_then(QoS::from_u8)
        .ok_or_else(|| format!("{text:?} is not a QoS (0, 1 or 2)"))
}

/// `64`, `1KiB`, `1k`, `2MiB`.
pub(crate) fn parse_size(text: &str) -> Result<usize, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: usize = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a size (64, 1KiB, 1k)"))?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1024,
        "m" | "mb" | "mib" => 1024 * 1024,
        _ => return Err(format!("{text:?}: unknown size unit")),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| format!("{text:?} is too large"))
}

/// `10s`, `500ms`, `2m`, or a bare number of seconds.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let number: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?} is not a duration (10s, 500ms, 2m)"))?;
    match unit {
        "" | "s" => Ok(Duration::from_secs(number)),
        "ms" => Ok(Duration::from_millis(number)),
        "m" | "min" => Ok(Duration::from_secs(number.saturating_mul(60))),
        _ => Err(format!("{text:?}: unknown duration unit (ms, s, m)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn sizes_and_durations() {
        assert_eq!(parse_size("64"), Ok(64));
        assert_eq!(parse_size("1KiB"), Ok(1024));
        assert_eq!(parse_size("1k"), Ok(1024));
        assert!(parse_size("1x").is_err());
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("1h").is_err());
    }

    #[test]
    fn parses_a_fan_in_line_with_leading_double_dash() {
        let cli = parse(&args(
            "-- fan-in --port 1883 --username u --password p --protocol 4 --publishers 3 --qos 1 --payload 1KiB --duration 2s",
        ))
        .unwrap();
        let Scenario::FanIn(a) = cli.scenario else {
            panic!("not fan-in")
        };
        assert_eq!(a.publishers, 3);
        assert_eq!(a.flow.qos, QoS::AtLeastOnce);
        assert_eq!(a.flow.payload, 1024);
        assert_eq!(a.common.protocol, Protocol::V311);
        assert_eq!(a.flow.duration, Duration::from_secs(2));
        assert_eq!(a.flow.slow_subscriber, None);
        let cli = parse(&args(
            "fan-in --broker-pid 42 --measure-latency --slow-subscriber 5000",
        ))
        .unwrap();
        let Scenario::FanIn(a) = cli.scenario else {
            panic!("not fan-in")
        };
        assert_eq!(a.flow.broker_pid, Some(42));
        assert!(a.flow.measure_latency);
        assert_eq!(a.flow.slow_subscriber, Some(5000));
        assert_eq!(a.flow.rate, None);
    }

    #[test]
    fn refuses_non_loopback_and_unbounded_runs() {
        assert!(parse(&args("fan-in --host 192.168.1.10")).is_err());
        assert!(parse(&args("fan-in --duration 1h")).is_err());
        assert!(parse(&args("fan-out --subscribers 0")).is_err());
        assert!(parse(&args("latency --payload 8")).is_err());
        assert!(parse(&args("fan-in --qos 3")).is_err());
        assert!(parse(&args("fan-in --measure-latency --payload 8")).is_err());
        assert!(parse(&args("fan-in --slow-subscriber 0")).is_err());
    }
}
