//! `moat doctor`: runs the self-audit (`crate::doctor`) and prints one line per
//! finding, `PASS`/`WARN`/`FAIL`, with its fix on the next line; `--json` prints an
//! array of `{check, status, message, fix}`. Exits 1 if any check FAILed.

use anyhow::Context as _;

use crate::cli::{DoctorArgs, GlobalArgs};
use crate::commands::{EXIT_FINDING, EXIT_OK};
use crate::doctor::{self, Finding, Options, Setup, Status};
use crate::policy::Policy;

pub fn run(global: &GlobalArgs, args: &DoctorArgs) -> anyhow::Result<u8> {
    let (policy, _warnings) = Policy::load(&global.manifest)
        .with_context(|| format!("reading {}", global.manifest.display()))?;
    let setup = Setup {
        policy: &policy,
        manifest_path: &global.manifest,
        state_dir: &global.state,
    };
    let options = Options {
        probe: args.probe.clone(),
        upnp: args.upnp,
        ..Options::default()
    };
    let findings = doctor::run(&setup, &options);
    if global.json {
        println!("{}", serde_json::to_string_pretty(&findings)?);
    } else {
        print!("{}", human(&findings));
    }
    Ok(if doctor::any_failure(&findings) {
        EXIT_FINDING
    } else {
        EXIT_OK
    })
}

/// The human report: one line per finding, the fix indented below it, and a summary.
fn human(findings: &[Finding]) -> String {
    let mut out = String::new();
    for f in findings {
        out.push_str(&format!(
            "{}  {:<12} {}\n",
            f.status.as_str(),
            f.check,
            f.message
        ));
        if !f.fix.is_empty() {
            out.push_str(&format!("      {:<12} fix: {}\n", "", f.fix));
        }
    }
    let count = |s: Status| findings.iter().filter(|f| f.status == s).count();
    out.push_str(&format!(
        "\n{} passed, {} warning(s), {} failure(s)\n",
        count(Status::Pass),
        count(Status::Warn),
        count(Status::Fail)
    ));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_human_report_has_status_lines_fixes_and_a_summary() {
        let findings = vec![
            Finding::pass("tls", "fine"),
            Finding::fail("firewall", "no firewall", "run `moat firewall --apply`"),
        ];
        let text = human(&findings);
        let lines: Vec<&str> = text.lines().collect();
        assert!(lines[0].starts_with("PASS  tls"));
        assert!(lines[1].starts_with("FAIL  firewall"));
        assert!(
            lines[2]
                .trim_start()
                .starts_with("fix: run `moat firewall --apply`")
        );
        assert!(text.ends_with("1 passed, 0 warning(s), 1 failure(s)\n"));
    }

    #[test]
    fn json_uses_upper_case_statuses() {
        let json = serde_json::to_value(vec![Finding::warn("limits", "m", "f")]).unwrap();
        assert_eq!(json[0]["status"], "WARN");
        assert_eq!(json[0]["check"], "limits");
        assert_eq!(json[0]["fix"], "f");
    }
}
