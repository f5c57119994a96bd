//! The command-line contract (clap derive): global `--manifest`/`--state` and one
//! subcommand per verb. It only describes arguments; `commands` does the work.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "moat", version, about = "A locked-down MQTT broker appliance")]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct GlobalArgs {
    /// The manifest (YAML) describing users, devices and rules.
    #[arg(
        long,
        global = true,
        env = "MOAT_MANIFEST",
        default_value = "moat.yaml"
    )]
    pub manifest: PathBuf,
    /// The state directory: keys, certificates, hashes, the database.
    #[arg(long, global = true, env = "MOAT_STATE", default_value = "moat-state")]
    pub state: PathBuf,
    /// Machine-readable output where a command supports it.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a commented starter manifest with a `homeassistant` user.
    Init(InitArgs),
    /// Generate (or read from stdin) a password and print its argon2id hash.
    Passwd(PasswdArgs),
    /// Validate the manifest and print who may publish and subscribe to what.
    Check(CheckArgs),
    /// Create or renew the CA, server and device certificates (idempotent).
    Provision,
    /// Run the broker.
    Serve(ServeArgs),
    /// Ask a running broker to re-read its manifest (SIGHUP).
    Reload(ReloadArgs),
    /// Render, check or apply the nftables ruleset.
    Firewall(FirewallArgs),
    /// Audit this setup and print PASS/WARN/FAIL lines.
    Doctor(DoctorArgs),
    /// First boot of the appliance: import the manifest from the boot partition.
    Firstboot(FirstbootArgs),
    /// Print client settings for an identity (Home Assistant, Zigbee2MQTT, ...).
    Export(ExportArgs),
    /// Write a backup archive of the state directory (or `--restore` one).
    Backup(BackupArgs),
    /// What the running broker refused, with the manifest line that would allow it.
    Denials(DenialsArgs),
    /// Write a manifest from another broker's configuration (`import mosquitto CONF`).
    #[command(subcommand)]
    Import(ImportSource),
}

#[derive(Debug, Args)]
pub struct InitArgs {
    /// Where to write the manifest (defaults to --manifest).
    pub path: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// The user or device whose password this is.
    pub name: String,
    /// Read the password from standard input instead of generating one.
    #[arg(long)]
    pub stdin: bool,
    /// Write the hash into the manifest in place, keeping comments and layout.
    #[arg(long)]
    pub write: bool,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Explain whether NAME may publish and subscribe TOPIC, and which rule decides.
    #[arg(long, num_args = 2, value_names = ["NAME", "TOPIC"])]
    pub explain: Option<Vec<String>>,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Write the PID here (used by `moat reload`).
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
    /// Log lines on stderr: `text` (`name="value"` pairs) or `json` (one object per
    /// line, for log shippers). Every peer-controlled value is escaped in both.
    #[arg(long, value_enum, default_value_t)]
    pub log_format: crate::logging::LogFormat,
    /// Threads that run connections (default: one per CPU this process may use,
    /// from its affinity mask and cgroup quota, e.g. 4 on a Pi Zero 2 W).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub workers: Option<u16>,
}

#[derive(Debug, Args)]
pub struct ReloadArgs {
    /// The PID file written by `moat serve --pid-file`.
    #[arg(long)]
    pub pid_file: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FirewallArgs {
    /// Validate the ruleset with `nft -c` instead of printing it.
    #[arg(long, conflicts_with = "apply")]
    pub check: bool,
    /// Load the ruleset atomically with `nft -f`.
    #[arg(long)]
    pub apply: bool,
    /// Also restrict outbound traffic to the LAN, DNS and NTP.
    #[arg(long)]
    pub egress: bool,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Also ask the router (UPnP IGD) for port mappings that point at this host.
    #[arg(long)]
    pub upnp: bool,
    /// Probe the broker listening here (host:port) over loopback.
    #[arg(long)]
    pub probe: Option<String>,
}

#[derive(Debug, Args)]
pub struct FirstbootArgs {
    /// The mounted boot (FAT) partition holding `moat.yaml`.
    #[arg(long, default_value = "/boot/firmware")]
    pub boot: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The identity to export settings for.
    pub name: String,
}

#[derive(Debug, Args)]
pub struct DenialsArgs {
    /// How many of the most frequent refusals to print.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
}

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The archive to write (0600; it holds private keys).
    #[arg(required_unless_present = "restore")]
    pub output: Option<PathBuf>,
    /// Restore this archive into an empty state directory instead.
    #[arg(long, value_name = "ARCHIVE", conflicts_with = "output")]
    pub restore: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ImportSource {
    /// Read a mosquitto.conf (with its password_file, acl_file and includes) and write
    /// a moat manifest, reporting what could not be carried over.
    Mosquitto(MosquittoImportArgs),
}

#[derive(Debug, Args)]
pub struct MosquittoImportArgs {
    /// The mosquitto.conf to read.
    pub conf: PathBuf,
    /// Where to write the manifest (defaults to --manifest).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Overwrite an existing file.
    #[arg(long)]
    pub force: bool,
    /// Read absolute paths named in the files under this directory (e.g. a copy of
    /// the Home Assistant add-on's /etc/mosquitto taken out of its container).
    #[arg(long, value_name = "DIR")]
    pub root: Option<PathBuf>,
    /// The Home Assistant add-on's options.json, whose `logins` become users.
    #[arg(long, value_name = "FILE")]
    pub addon_options: Option<PathBuf>,
    /// Carry over no plaintext listener: every user logs in over TLS.
    #[arg(long)]
    pub tls_only: bool,
}
