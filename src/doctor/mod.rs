//! doctor: the self-audit behind `moat doctor`. Each check is a small function that
//! looks at one thing (listening sockets, the loaded firewall, certificates, file
//! modes, passwords, grants, limits, the database, a live probe, the router's UPnP
//! port mappings) and returns [`Finding`]s: PASS, WARN or FAIL, each with a one-line
//! fix. It reads; it never changes the system (it never asks a router to open a
//! port, never rewrites a file). Printing and the exit code belong to
//! `commands::doctor`.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::firewall::Nft;
use crate::policy::Policy;

pub mod bridges;
pub mod denials;
pub mod grants;
pub mod host;
pub mod limits;
pub mod listeners;
pub mod metrics;
pub mod passwords;
pub mod permissions;
pub mod persistence;
pub mod probe;
pub mod ruleset;
pub mod tls;
pub mod upnp;

/// How a check came out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Status {
    Pass,
    Warn,
    Fail,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "PASS",
            Status::Warn => "WARN",
            Status::Fail => "FAIL",
        }
    }
}

/// One line of the audit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// The check's short name, e.g. `listeners`, `firewall`.
    pub check: &'static str,
    pub status: Status,
    pub message: String,
    /// What to do about it, in one line; empty for a PASS.
    pub fix: String,
}

impl Finding {
    pub fn pass(check: &'static str, message: impl Into<String>) -> Finding {
        Finding {
            check,
            status: Status::Pass,
            message: message.into(),
            fix: String::new(),
        }
    }

    pub fn warn(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::with_fix(check, Status::Warn, message, fix)
    }

    pub fn fail(
        check: &'static str,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding::with_fix(check, Status::Fail, message, fix)
    }

    fn with_fix(
        check: &'static str,
        status: Status,
        message: impl Into<String>,
        fix: impl Into<String>,
    ) -> Finding {
        Finding {
            check,
            status,
            message: message.into(),
            fix: fix.into(),
        }
    }
}

/// What the audit looks at.
pub struct Setup<'a> {
    pub policy: &'a Policy,
    pub manifest_path: &'a Path,
    pub state_dir: &'a Path,
}

/// What the caller asked for beyond the local checks.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Probe this `host:port` instead of the manifest's TLS listener on loopback.
    pub probe: Option<String>,
    /// Ask the router over UPnP IGD for port mappings to this host.
    pub upnp: bool,
    /// How to run `nft` (a wrapper in tests; `nft` from `PATH` otherwise).
    pub nft: Option<Nft>,
    /// Where `net/` is read from (tests point it at fixtures);
    /// [`host::PROC_SELF`] when `None`.
    pub proc_root: Option<PathBuf>,
}

/// Runs every check and returns the findings in a stable order.
pub fn run(setup: &Setup<'_>, options: &Options) -> Vec<Finding> {
    let proc_root = options
        .proc_root
        .clone()
        .unwrap_or_else(|| PathBuf::from(host::PROC_SELF));
    let facts = host::HostFacts::read(&proc_root);
    let nft = options.nft.clone().unwrap_or_default();
    let firewall = ruleset::inspect(&nft, setup.policy);

    let mut findings = Vec::new();
    findings.extend(listeners::check(setup.policy, &facts));
    findings.extend(metrics::check(setup.policy, &facts));
    findings.extend(firewall.findings.iter().cloned());
    findings.push(ruleset::check_global_ipv6(&facts, &firewall));
    findings.extend(tls::check(
        setup.policy,
        setup.state_dir,
        &crate::machine::lan_addresses(&facts.addresses),
    ));
    findings.extend(permissions::check(setup.manifest_path, setup.state_dir));
    findings.extend(passwords::check(setup.policy));
    findings.extend(grants::check(setup.policy));
    findings.extend(limits::check(&setup.policy.limits));
    findings.extend(persistence::check(setup.policy, setup.state_dir));
    findings.extend(denials::check(setup.policy, setup.state_dir));
    findings.extend(bridges::check(setup.policy, setup.state_dir));
    findings.extend(probe::check(
        setup.policy,
        setup.state_dir,
        options.probe.as_deref(),
    ));
    if options.upnp {
        findings.extend(upnp::check(setup.policy, &facts));
    }
    findings
}

/// True if any finding is a FAIL (the command then exits 1).
pub fn any_failure(findings: &[Finding]) -> bool {
    findings.iter().any(|f| f.status == Status::Fail)
}
