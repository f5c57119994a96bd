//! A session as the router sees it: identity, client id, mailbox and current rights,
//! and the signal that tells its live connection to close. Shared by the router and
//! the connection; the session's own bookkeeping (subscriptions, expiry) stays in
//! the broker state.

use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use crate::protocol::ReasonCode;

use super::mailbox::Mailbox;
use super::permissions::Permissions;

pub struct SessionLink {
    /// Unique for the broker's lifetime: a new session under the same client id gets
    /// a new id, so stale subscriptions can never reach it.
    pub id: u64,
    pub client_id: Arc<str>,
    /// The identity that owns the session; only it may take the client id over.
    pub owner: Arc<str>,
    pub mailbox: Mailbox,
    permissions: RwLock<Arc<dyn Permissions>>,
}

impl SessionLink {
    pub fn new(
        id: u64,
        client_id: Arc<str>,
        owner: Arc<str>,
        mailbox: Mailbox,
        permissions: Arc<dyn Permissions>,
    ) -> SessionLink {
        SessionLink {
            id,
            client_id,
            owner,
            mailbox,
            permissions: RwLock::new(permissions),
        }
    }

    pub fn permissions(&self) -> Arc<dyn Permissions> {
        Arc::clone(&self.permissions.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_permissions(&self, permissions: Arc<dyn Permissions>) {
        *self.permissions.write().unwrap_or_else(|e| e.into_inner()) = permissions;
    }
}

/// Tells one live connection to close, with the reason to send (v5).
#[derive(Default)]
pub struct Kick {
    reason: Mutex<Option<ReasonCode>>,
    notify: Notify,
}

impl Kick {
    pub fn new() -> Arc<Kick> {
        Arc::new(Kick::default())
    }

    pub fn kick(&self, reason: ReasonCode) {
        let mut slot = self.reason.lock().unwrap_or_else(|e| e.into_inner());
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        self.notify.notify_one();
    }

    pub fn reason(&self) -> Option<ReasonCode> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub async fn kicked(&self) -> ReasonCode {
        loop {
            if let Some(reason) = self.reason() {
                return reason;
            }
            self.notify.notified().await;
        }
    }
}
