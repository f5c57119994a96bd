//! Bridges: outbound connections from moat to remote brokers the user trusts (a
//! cloud or VPS broker), carrying only the topics the manifest maps, so a home can
//! be reached without opening a port. `plan` compiles a manifest entry, `rights`
//! holds a bridge's local rights (exactly its mappings), `link` is the remote
//! connection (TLS, MQTT 5 over moat's own codec), `run` drives one bridge (its
//! local session is the durable outbound queue) with `backoff` between attempts,
//! `status` reports state for `moat doctor` and `$SYS`. A bridge reaches the broker
//! only through the session API a client connection uses; the broker knows nothing
//! of bridges.

pub mod backoff;
pub mod link;
pub mod plan;
pub mod rights;
pub mod run;
pub mod status;

pub use plan::{BridgePlan, local_identity};
pub use status::BridgeStatus;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::broker::Broker;

/// The running bridges of one `serve`.
pub struct Bridges {
    tasks: tokio::task::JoinSet<()>,
    plans: Vec<BridgePlan>,
}

impl Bridges {
    /// Starts every bridge of `plans` and the writer of `<state>/bridges.json`.
    /// Call it before the listeners accept, so a bridge's client id is taken by its
    /// own session first.
    pub fn start(broker: &Arc<Broker>, plans: &[BridgePlan], state: &Path) -> Bridges {
        let mut tasks = tokio::task::JoinSet::new();
        let mut statuses = Vec::new();
        for plan in plans {
            let status = BridgeStatus::new(&plan.name, format!("{}:{}", plan.host, plan.port));
            statuses.push(Arc::clone(&status));
            tasks.spawn(run::run(Arc::clone(broker), Arc::new(plan.clone()), status));
        }
        tokio::spawn(status::run_writer(
            Arc::clone(broker),
            statuses,
            status::path_in(state),
        ));
        Bridges {
            tasks,
            plans: plans.to_vec(),
        }
    }

    /// A reload: rights follow the new policy at once (the broker re-resolves the
    /// bridge identities, and a removed bridge's session is closed); a changed
    /// endpoint or mapping needs a restart, which this says.
    pub fn reloaded(&self, plans: &[BridgePlan]) {
        if plans != self.plans.as_slice() {
            tracing::warn!(
                "bridges changed in the manifest: their rights follow now; new or changed bridges start at the next restart of moat"
            );
        }
    }

    /// Waits for the bridges to close their connections after the broker told
    /// every session to stop (`Broker::shutdown`), within `limit`.
    pub async fn stopped(mut self, limit: Duration) {
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("shutdown deadline passed with a bridge still closing");
        }
    }
}
