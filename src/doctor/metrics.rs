//! The metrics endpoint (`broker.metrics`), reported with the listeners: is it
//! listening, and is its token file one `serve` will accept (private, readable,
//! well-formed)? Admission and the firewall limit it to the allowed networks like
//! the MQTT listeners, so where it is bound is not judged here.

use super::Finding;
use super::host::HostFacts;
use crate::metrics::Token;
use crate::policy::Policy;

const CHECK: &str = "listeners";

pub fn check(policy: &Policy, facts: &HostFacts) -> Vec<Finding> {
    let Some(plan) = &policy.metrics else {
        return Vec::new();
    };
    let port = plan.address.port();
    let mut findings = Vec::new();
    let listening: Vec<String> = facts
        .listening
        .iter()
        .filter(|s| s.port() == port)
        .map(ToString::to_string)
        .collect();
    if listening.is_empty() {
        findings.push(Finding::warn(
            CHECK,
            format!("nothing listens on the metrics port {port}: is the broker running?"),
            "start it: `systemctl start moat` or `moat serve`",
        ));
    } else {
        findings.push(Finding::pass(
            CHECK,
            format!(
                "metrics endpoint on {} (GET /metrics; admission check and firewall limit it to the allowed networks; {})",
                listening.join(", "),
                if plan.token_file.is_some() {
                    "bearer token required"
                } else {
                    "no token: anyone on the allowed networks may read the counters"
                }
            ),
        ));
    }
    if let Some(path) = &plan.token_file
        && let Err(e) = Token::read(path)
    {
        findings.push(Finding::fail(
            CHECK,
            format!("the metrics token is unusable, so `moat serve` will not start: {e}"),
            format!(
                "write one line of letters and digits to {} and `chmod 600` it",
                path.display()
            ),
        ));
    }
    findings
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::doctor::Status;
    use crate::manifest::{LoadOptions, parse_str};

    fn policy(metrics: &str) -> Policy {
        let text = format!("version: 1\nbroker:\n  metrics: {metrics}\n");
        let loaded = parse_str(&text, "t.yaml", LoadOptions::default()).unwrap();
        Policy::compile(&loaded.manifest).unwrap()
    }

    fn facts(listening: &[&str]) -> HostFacts {
        HostFacts {
            listening: listening.iter().map(|s| s.parse().unwrap()).collect(),
            addresses: Vec::new(),
        }
    }

    #[test]
    fn reports_the_endpoint_and_a_token_serve_would_refuse() {
        assert!(check(&policy("{}"), &facts(&[])).len() == 1);
        let found = check(&policy("{ port: 9100 }"), &facts(&["0.0.0.0:9100"]));
        assert_eq!(found[0].status, Status::Pass);

        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "abc\n").unwrap();
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
        let with_token = policy(&format!("{{ token_file: \"{}\" }}", token.display()));
        let found = check(&with_token, &facts(&["0.0.0.0:9883"]));
        assert_eq!(
            found.iter().map(|f| f.status).collect::<Vec<_>>(),
            [Status::Pass, Status::Fail]
        );
        std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(check(&with_token, &facts(&["0.0.0.0:9883"])).len(), 1);
    }
}
