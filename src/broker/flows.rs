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
use super::mailbox::Outbound;
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
