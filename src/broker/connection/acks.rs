//! Acknowledgements of what the broker sent, handled together. A subscriber
//! answers every QoS 1/2 message with a PUBACK (or PUBREC, then PUBCOMP), and
//! answers a batch of them in one write; one by one, each was decoded into a
//! `Packet` (a 27-field `Properties` built, copied and dropped), dispatched, and
//! applied under a mailbox lock of its own, with a wake-up of the connection's own
//! task. Here the acknowledgements at the front of what was read are decoded
//! without a packet (`Codec::decode_ack`), applied in their order under one
//! lock, and answered (PUBREL, PUBCOMP) in their turn; the driver refills the
//! in-flight window once, after the read. What they mean is unchanged: anything
//! else (an acknowledgement with properties, a malformed one, another packet) ends
//! the batch and goes through the handler, and so do all the acknowledgements of a
//! session whose acknowledgements are store operations (persistent), which need
//! room reserved in the journal one by one.

use bytes::BytesMut;

use moat_protocol::{AckKind, Codec, ReasonCode};

use crate::broker::journal::Reservation;
use crate::broker::mailbox::Settle;

use super::Connection;

/// Acknowledgements handled under one mailbox lock at most. The batch lives on
/// the stack of a function that never waits, so it takes no room in the
/// connection's task.
const ACK_BATCH: usize = 64;

impl Connection {
    /// Handles the acknowledgements at the front of `rbuf`, stopping at the first
    /// other packet, at an incomplete one, or once `reply_limit` answers wait.
    pub(super) fn settle_acks(
        &mut self,
        codec: &mut Codec,
        rbuf: &mut BytesMut,
        reply_limit: usize,
    ) {
        if self.broker.acknowledgements_recorded(&self.session) {
            return;
        }
        while self.replies.len() < reply_limit {
            let mut acks = [(AckKind::PubAck, 0u16, ReasonCode::Success); ACK_BATCH];
            let mut taken = 0;
            while taken < ACK_BATCH
                && let Some(ack) = codec.decode_ack(rbuf)
            {
                acks[taken] = ack;
                taken += 1;
            }
            if taken == 0 {
                return;
            }
            let acks = &acks[..taken];
            // The steps that concern the mailbox, in order (PUBREL is inbound).
            let mut steps = [Settle::Complete(0); ACK_BATCH];
            let mut count = 0;
            for &(kind, packet_id, reason) in acks {
                let step = match kind {
                    AckKind::PubAck | AckKind::PubComp => Settle::Complete(packet_id),
                    // The client refused the message: its flow ends here.
                    AckKind::PubRec if reason.is_error() => Settle::Complete(packet_id),
                    AckKind::PubRec => Settle::Received(packet_id),
                    AckKind::PubRel => continue,
                };
                steps[count] = step;
                count += 1;
            }
            let mut found = [false; ACK_BATCH];
            if count > 0 {
                self.broker
                    .settle_unrecorded(&self.session, &steps[..count], &mut found);
            }
            // The answers, in the order of the packets they answer.
            let mut step = 0;
            for &(kind, packet_id, reason) in acks {
                match kind {
                    AckKind::PubAck | AckKind::PubComp => step += 1,
                    AckKind::PubRec if reason.is_error() => step += 1,
                    AckKind::PubRec => {
                        let reason = if found[step] {
                            ReasonCode::Success
                        } else {
                            ReasonCode::PacketIdentifierNotFound
                        };
                        step += 1;
                        self.ack(AckKind::PubRel, packet_id, reason);
                    }
                    AckKind::PubRel => {
                        let reason =
                            if self
                                .broker
                                .complete(&self.session, packet_id, Reservation::NONE)
                            {
                                ReasonCode::Success
                            } else {
                                ReasonCode::PacketIdentifierNotFound
                            };
                        self.ack(AckKind::PubComp, packet_id, reason);
                    }
                }
            }
            if taken < ACK_BATCH {
                return;
            }
        }
    }
}
