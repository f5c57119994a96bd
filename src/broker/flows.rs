//! The QoS 1/2 flows as a session's connection reports them: each step the client
//! takes (PUBACK, PUBREC, PUBREL, PUBCOMP) or the connection takes (sending a
//! queued QoS 2 message) changes the session's in-flight state and records it
//! through the `journal`. The connection asks ("acknowledge", "release",
//! "complete"); it never builds a store operation. These steps touch one session
//! only, so they take no broker lock: the connection's own order is the order
//! that matters, and its reservation keeps it.

use std::time::Instant;

use moat_protocol::QoS;

use super::Broker;
use super::journal::{self, Batch, Durable, Reservation};
use super::mailbox::{Outbound, Settle};
use super::session::SessionLink;

impl Broker {
    /// The client acknowledged an outbound message (PUBACK, PUBCOMP, or a PUBREC
    /// that refuses it): the message leaves the in-flight window and the store.
    /// Nothing is answered on this, so nothing waits for the commit.
    pub fn acknowledge(&self, session: &SessionLink, packet_id: u16, room: Reservation) {
        let Some(entry) = session.mailbox.complete(packet_id) else {
            return;
        };
        if let Some(op) = journal::acknowledged(session, packet_id, &entry) {
            drop(room.record(|| op));
        }
    }

    /// Acknowledgements of outbound messages from a client whose acknowledgements
    /// record nothing (a session that is not persistent, or persistence off), in
    /// their order under one mailbox lock: each step what [`Broker::acknowledge`]
    /// (`Settle::Complete`) or [`Broker::release`] (`Settle::Received`) does
    /// then, `found[i]` whether step i's packet id was in flight. The caller
    /// drains the mailbox next (see [`Mailbox::settle`](super::mailbox::Mailbox::settle)).
    pub fn settle_unrecorded(&self, session: &SessionLink, steps: &[Settle], found: &mut [bool]) {
        debug_assert!(!self.acknowledgements_recorded(session));
        session.mailbox.settle(steps, found);
    }

    /// Whether `session`'s acknowledgements are store operations (a persistent
    /// session, persistence on): each then needs room reserved in the journal.
    pub fn acknowledgements_recorded(&self, session: &SessionLink) -> bool {
        self.journal().is_enabled() && session.is_persistent()
    }

    /// PUBREC for an outbound QoS 2 message: `None` if its packet id is not in
    /// flight; else the PUBREL is due once "released" is durable, so that after a
    /// crash the client gets PUBREL again, never the PUBLISH (which it would take
    /// for a new message once it has seen PUBREL).
    pub fn release(
        &self,
        session: &SessionLink,
        packet_id: u16,
        room: Reservation,
    ) -> Option<Durable> {
        if !session.mailbox.received(packet_id) {
            return None;
        }
        Some(room.record(|| journal::released(session, packet_id)))
    }

    /// PUBREL for an inbound QoS 2 message: whether its packet id was awaiting
    /// it. The PUBCOMP need not wait: a resent PUBREL is answered the same way.
    pub fn complete(&self, session: &SessionLink, packet_id: u16, room: Reservation) -> bool {
        if !session.remove_inbound_qos2(packet_id) {
            return false;
        }
        drop(room.record(|| journal::exactly_once_completed(session, packet_id)));
        true
    }

    /// Messages drained from a persistent session's mailbox, about to be written:
    /// each new QoS 2 message is recorded in flight under its packet id before it
    /// is sent (a resend after a crash must reuse that id, or the client would see
    /// it twice).
    pub fn record_sent(
        &self,
        session: &SessionLink,
        outbound: &[Outbound],
        now: Instant,
        room: Reservation,
    ) -> Durable {
        let mut batch = Batch::default();
        for item in outbound {
            if let Outbound::Publish {
                packet_id,
                dup: false,
                message,
            } = item
                && message.qos == QoS::ExactlyOnce
                && message.seq != 0
            {
                batch.push(journal::sent(session, *packet_id, message, now));
            }
        }
        batch.submit(room)
    }
}
