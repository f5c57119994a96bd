//! A session as the router sees it: identity, client id, mailbox and current rights,
//! and the signal that tells its live connection to close. Shared by the router and
//! the connection; the session's own bookkeeping (subscriptions, expiry) stays in
//! the broker state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use moat_protocol::ReasonCode;

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
    /// Whether the session outlives its connection (and so is journaled).
    persistent: AtomicBool,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL. Part
    /// of the session: a resumed session must not route a resent message twice.
    inbound_qos2: Mutex<HashSet<u16>>,
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
            persistent: AtomicBool::new(false),
            inbound_qos2: Mutex::new(HashSet::new()),
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, HashSet<u16>> {
        self.inbound_qos2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a QoS 2 packet id is awaiting PUBREL.
    pub fn has_inbound_qos2(&self, packet_id: u16) -> bool {
        self.inbound().contains(&packet_id)
    }

    pub fn inbound_qos2_count(&self) -> usize {
        self.inbound().len()
    }

    pub fn add_inbound_qos2(&self, packet_id: u16) {
        self.inbound().insert(packet_id);
    }

    /// PUBREL: returns whether the id was awaiting it.
    pub fn remove_inbound_qos2(&self, packet_id: u16) -> bool {
        self.inbound().remove(&packet_id)
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
