//! A session as the router sees it: identity, client id, mailbox and current rights,
//! and the signal that tells its live connection to close. Shared by the router and
//! the connection; the session's own bookkeeping (subscriptions, expiry) stays in
//! the broker state.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::Notify;

use moat_protocol::ReasonCode;

use super::keepalive::Deadline;
use super::mailbox::Mailbox;
use super::permissions::Permissions;

/// The QoS 2 packet ids awaiting PUBREL, allocated only while there is one (one
/// pointer in every session instead of an empty 48-byte set).
type InboundQos2 = Box<HashSet<u16>>;

pub struct SessionLink {
    /// Unique for the broker's lifetime: a new session under the same client id gets
    /// a new id, so stale subscriptions can never reach it.
    pub id: u64,
    pub client_id: Arc<str>,
    /// The identity that owns the session; only it may take the client id over.
    pub owner: Arc<str>,
    pub mailbox: Mailbox,
    permissions: RwLock<Arc<dyn Permissions>>,
    /// Counts the rights installed so far (see [`SessionLink::receive_cover`]).
    rights_generation: AtomicU64,
    /// Whether the session outlives its connection (and so is journaled).
    persistent: AtomicBool,
    /// QoS 2 packet ids received and acknowledged with PUBREC, awaiting PUBREL. Part
    /// of the session: a resumed session must not route a resent message twice.
    /// Allocated only while one is awaited: most sessions never publish at QoS 2,
    /// and an empty set would take 48 bytes in each.
    inbound_qos2: Mutex<Option<InboundQos2>>,
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
            rights_generation: AtomicU64::new(0),
            persistent: AtomicBool::new(false),
            inbound_qos2: Mutex::new(None),
        }
    }

    pub fn is_persistent(&self) -> bool {
        self.persistent.load(Ordering::Relaxed)
    }

    pub fn set_persistent(&self, persistent: bool) {
        self.persistent.store(persistent, Ordering::Relaxed);
    }

    fn inbound(&self) -> std::sync::MutexGuard<'_, Option<InboundQos2>> {
        self.inbound_qos2.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a QoS 2 packet id is awaiting PUBREL.
    pub fn has_inbound_qos2(&self, packet_id: u16) -> bool {
        self.inbound()
            .as_ref()
            .is_some_and(|ids| ids.contains(&packet_id))
    }

    pub fn inbound_qos2_count(&self) -> usize {
        self.inbound().as_ref().map_or(0, |ids| ids.len())
    }

    pub fn add_inbound_qos2(&self, packet_id: u16) {
        self.inbound().get_or_insert_default().insert(packet_id);
    }

    /// PUBREL: returns whether the id was awaiting it. The last one frees the set.
    pub fn remove_inbound_qos2(&self, packet_id: u16) -> bool {
        let mut inbound = self.inbound();
        let Some(ids) = inbound.as_mut() else {
            return false;
        };
        let removed = ids.remove(&packet_id);
        if ids.is_empty() {
            *inbound = None;
        }
        removed
    }

    pub fn permissions(&self) -> Arc<dyn Permissions> {
        Arc::clone(&self.permissions.read().unwrap_or_else(|e| e.into_inner()))
    }

    pub fn set_permissions(&self, permissions: Arc<dyn Permissions>) {
        let mut current = self.permissions.write().unwrap_or_else(|e| e.into_inner());
        *current = permissions;
        // Under the write lock: a reader of both sees them agree.
        self.rights_generation.fetch_add(1, Ordering::Relaxed);
    }

    /// Decided once per subscription, at SUBSCRIBE: `Some(generation)` when the
    /// current rights let this client receive every topic `filter` can match, so a
    /// delivery through it needs no receive check while those rights are in force
    /// ([`SessionLink::may_receive`]). Any new rights (a reload, a resumed session)
    /// end the cover.
    pub fn receive_cover(&self, filter: &str) -> Option<u64> {
        let permissions = self.permissions.read().unwrap_or_else(|e| e.into_inner());
        permissions
            .may_receive_all(&self.client_id, filter)
            .then(|| self.rights_generation.load(Ordering::Relaxed))
    }

    /// Whether a message on `topic` may be delivered through a subscription with
    /// `cover` ([`SessionLink::receive_cover`]): without a check while the rights that
    /// granted the cover are in force, else the full one. Rights are swapped and
    /// messages routed under the broker's lock, which orders the two.
    pub fn may_receive(&self, cover: Option<u64>, topic: &str) -> bool {
        cover.is_some_and(|generation| generation == self.rights_generation.load(Ordering::Relaxed))
            || self.permissions().may_receive(&self.client_id, topic)
    }
}

/// Tells one live connection to close, with the reason to send (v5).
#[derive(Default)]
pub struct Kick {
    reason: Mutex<Option<ReasonCode>>,
    notify: Notify,
    /// When the connection is closed for silence (see `broker::keepalive`).
    keepalive: Deadline,
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

    pub fn keepalive_deadline(&self) -> &Deadline {
        &self.keepalive
    }

    pub fn reason(&self) -> Option<ReasonCode> {
        *self.reason.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Completes when the connection may have been kicked: check [`Kick::reason`].
    /// A kick that came while nobody waited completes the next one at once.
    pub fn notified(&self) -> tokio::sync::futures::Notified<'_> {
        self.notify.notified()
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::mailbox::QueueLimits;

    #[test]
    fn an_idle_session_link_fits_a_272_byte_allocation() {
        // One per session, behind an `Arc` (16 bytes of counts): 248 bytes keep the
        // allocation in glibc's 272-byte chunk on x86_64 (issue 16, idle memory).
        let size = std::mem::size_of::<SessionLink>();
        assert!(size <= 248, "SessionLink is {size} bytes");
    }

    /// May receive, and subscribe to, what starts with `prefix`.
    struct Under(&'static str);

    impl Permissions for Under {
        fn may_publish(&self, _: &str, _: moat_protocol::TopicName<'_>) -> bool {
            false
        }
        fn may_subscribe(&self, _: &str, filter: &str) -> bool {
            filter.starts_with(self.0)
        }
        fn may_receive(&self, _: &str, topic: &str) -> bool {
            topic.starts_with(self.0)
        }
        fn may_receive_all(&self, _: &str, filter: &str) -> bool {
            filter.starts_with(self.0)
        }
        fn may_retain(&self) -> bool {
            false
        }
    }

    fn link(rights: Under) -> SessionLink {
        let limits = QueueLimits {
            max_messages: 1,
            max_bytes: 1024,
            max_inflight: 1,
        };
        SessionLink::new(
            1,
            Arc::from("c"),
            Arc::from("o"),
            Mailbox::new(limits),
            Arc::new(rights),
        )
    }

    #[test]
    fn a_receive_cover_is_given_only_for_a_wholly_granted_filter() {
        let link = link(Under("a/"));
        assert!(link.receive_cover("a/#").is_some());
        assert_eq!(link.receive_cover("#"), None);
        // Without a cover every delivery is checked.
        assert!(link.may_receive(None, "a/x"));
        assert!(!link.may_receive(None, "b/x"));
    }

    #[test]
    fn new_rights_end_every_cover_given_before_them() {
        let link = link(Under("a/"));
        let cover = link.receive_cover("a/#");
        assert!(link.may_receive(cover, "a/x"));
        // A reload (or a resumed session) installs rights that no longer grant a/.
        link.set_permissions(Arc::new(Under("b/")));
        assert!(
            !link.may_receive(cover, "a/x"),
            "a revoked right must stop deliveries through an old cover"
        );
        assert_eq!(link.receive_cover("a/#"), None);
        // A cover under the new rights holds for them.
        let cover = link.receive_cover("b/#");
        assert!(cover.is_some());
        assert!(link.may_receive(cover, "b/y"));
    }
}
