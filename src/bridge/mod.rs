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
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::broker::Broker;
use crate::broker::session::Kick;
use moat_protocol::ReasonCode;

/// How long a reload waits for a changed or removed bridge to close.
const RELOAD_STOP_LIMIT: Duration = Duration::from_secs(3);

struct Running {
    plan: BridgePlan,
    kick: Arc<Kick>,
    task: JoinHandle<()>,
}

/// The running bridges of one `serve`.
pub struct Bridges {
    broker: Arc<Broker>,
    running: Vec<Running>,
    /// What the status writer reports, one per running bridge.
    statuses: Arc<Mutex<Vec<Arc<BridgeStatus>>>>,
}

impl Bridges {
    /// Starts every bridge of `plans` and the writer of `<state>/bridges.json`.
    /// Call it before the listeners accept, so a bridge's client id is taken by its
    /// own session first.
    pub fn start(broker: &Arc<Broker>, plans: &[BridgePlan], state: &Path) -> Bridges {
        let mut bridges = Bridges {
            broker: Arc::clone(broker),
            running: Vec::new(),
            statuses: Arc::new(Mutex::new(Vec::new())),
        };
        for plan in plans {
            bridges.spawn(plan);
        }
        tokio::spawn(status::run_writer(
            Arc::clone(broker),
            Arc::clone(&bridges.statuses),
            status::path_in(state),
        ));
        bridges
    }

    fn statuses(&self) -> std::sync::MutexGuard<'_, Vec<Arc<BridgeStatus>>> {
        self.statuses.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn spawn(&mut self, plan: &BridgePlan) {
        let status = BridgeStatus::new(&plan.name, format!("{}:{}", plan.host, plan.port));
        {
            let mut statuses = self.statuses();
            statuses.retain(|s| s.name != plan.name);
            statuses.push(Arc::clone(&status));
        }
        let kick = Kick::new();
        let task = tokio::spawn(run::run(
            Arc::clone(&self.broker),
            Arc::new(plan.clone()),
            status,
            Arc::clone(&kick),
        ));
        self.running.push(Running {
            plan: plan.clone(),
            kick,
            task,
        });
    }

    /// A reload, after the broker took the new rights: bridges removed or changed
    /// in the manifest are closed (a changed one keeps its session and queue, and
    /// is started again at once with its new settings), new ones start.
    pub async fn reload(&mut self, plans: &[BridgePlan]) {
        let (kept, stopping): (Vec<Running>, Vec<Running>) = std::mem::take(&mut self.running)
            .into_iter()
            .partition(|r| plans.contains(&r.plan));
        self.running = kept;
        for r in stopping {
            r.kick.kick(ReasonCode::AdministrativeAction);
            if tokio::time::timeout(RELOAD_STOP_LIMIT, r.task)
                .await
                .is_err()
            {
                tracing::warn!(bridge = %r.plan.name, "bridge still closing after the reload's deadline");
            }
            if !plans.iter().any(|p| p.name == r.plan.name) {
                self.statuses().retain(|s| s.name != r.plan.name);
                tracing::info!(bridge = %r.plan.name, "bridge removed by the reload");
            }
        }
        for plan in plans {
            if !self.running.iter().any(|r| r.plan.name == plan.name) {
                tracing::info!(bridge = %plan.name, "bridge (re)started by the reload");
                self.spawn(plan);
            }
        }
    }

    /// Waits for the bridges to close their connections after the broker told
    /// every session to stop (`Broker::shutdown`), within `limit`.
    pub async fn stopped(self, limit: Duration) {
        let all = async {
            for r in self.running {
                let _ = r.task.await;
            }
        };
        if tokio::time::timeout(limit, all).await.is_err() {
            tracing::warn!("shutdown deadline passed with a bridge still closing");
        }
    }
}
