//! Each bridge of the manifest as the running broker last reported it
//! (`<state>/bridges.json`, written by `crate::bridge::status`): connected or not,
//! the last error, the queue depth and what was dropped. It reads; a bridge that
//! is down is a WARN with where to look, never a FAIL (the home still works).

use std::path::Path;

use super::Finding;
use crate::bridge::status::{self, BridgeReport, LinkState};
use crate::policy::Policy;

const CHECK: &str = "bridges";

pub fn check(policy: &Policy, state_dir: &Path) -> Vec<Finding> {
    if policy.bridges.is_empty() {
        return Vec::new();
    }
    let reports = match status::read(state_dir) {
        Ok(reports) => reports,
        Err(e) => {
            return vec![Finding::warn(
                CHECK,
                format!(
                    "no bridge status in {} ({e})",
                    status::path_in(state_dir).display()
                ),
                "start `moat serve` (it writes the status while it runs)",
            )];
        }
    };
    policy
        .bridges
        .iter()
        .map(|plan| match reports.iter().find(|r| r.name == plan.name) {
            Some(report) => judge(report),
            None => Finding::warn(
                CHECK,
                format!("bridge {}: not running", plan.name),
                "run `moat reload` (or restart `moat serve`) so the broker starts it",
            ),
        })
        .collect()
}

/// One bridge's finding from its report.
pub fn judge(r: &BridgeReport) -> Finding {
    let counts = format!(
        "{} queued, {} in flight, {} sent, {} received, {} dropped",
        r.queued, r.in_flight, r.sent, r.received, r.dropped
    );
    let name = &r.name;
    match r.state {
        LinkState::Connected if r.dropped == 0 => Finding::pass(
            CHECK,
            format!("bridge {name}: connected to {}; {counts}", r.remote),
        ),
        LinkState::Connected => Finding::warn(
            CHECK,
            format!(
                "bridge {name}: connected to {}, but messages were dropped; {counts}",
                r.remote
            ),
            format!(
                "raise bridges.{name}.queue.max_messages if the remote is often away, and see moat's log for `bridge: message dropped`"
            ),
        ),
        state => Finding::warn(
            CHECK,
            format!(
                "bridge {name}: {} (remote {}); last error: {}; {counts}",
                state.as_str(),
                r.remote,
                r.last_error.as_deref().unwrap_or("none")
            ),
            format!(
                "check bridges.{name} (address, port, tls, credentials) against the remote broker, and that `moat firewall` lets it out; under the NixOS module also that its address is in services.moat.allowedAddresses (the unit's IPAddressAllow= fences outbound too, which looks like a timeout); queued messages are kept until it connects"
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::doctor::Status;

    fn report(state: LinkState, dropped: u64) -> BridgeReport {
        BridgeReport {
            name: "cloud".into(),
            remote: "mqtt.example.net:8883".into(),
            state,
            since: 0,
            last_error: Some("the remote refused the connection: NotAuthorized".into()),
            queued: 3,
            in_flight: 0,
            connects: 1,
            sent: 10,
            received: 2,
            dropped,
        }
    }

    #[test]
    fn connected_passes_and_down_warns_with_the_error() {
        assert_eq!(judge(&report(LinkState::Connected, 0)).status, Status::Pass);
        assert_eq!(judge(&report(LinkState::Connected, 4)).status, Status::Warn);
        let down = judge(&report(LinkState::Retrying, 0));
        assert_eq!(down.status, Status::Warn);
        assert!(down.message.contains("NotAuthorized"), "{}", down.message);
        assert!(down.message.contains("3 queued"), "{}", down.message);
    }
}
