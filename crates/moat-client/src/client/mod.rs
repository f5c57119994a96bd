//! The managed client: one task per connection drives the socket (keep-alive
//! PINGREQs, acknowledgements of what arrives, packet ids, the broker's receive
//! maximum) while [`Client`] handles, cheap to clone, publish, subscribe and
//! disconnect, each call answering when the broker has. Messages arrive on
//! [`Incoming`]. It never reconnects: a caller that wants to (a bridge) connects again
//! and decides what to resend.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use moat_protocol::{
    Ack, ConnAck, Disconnect, Packet, Properties, Publish, QoS, ReasonCode, RetainHandling,
    Subscribe, SubscribeFilter, SubscriptionOptions, Unsubscribe,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};

use crate::ClientError;
use crate::connection::{Connection, PacketReader, PacketWriter, packet_name};
use crate::options::ConnectOptions;

/// Requests waiting for the driver (beyond this, callers wait to queue).
const COMMAND_QUEUE: usize = 64;
/// Messages received and not yet taken from [`Incoming`]; when full, the driver
/// stops reading the socket until there is room (the broker sees back-pressure).
const INCOMING_QUEUE: usize = 256;
/// How long `disconnect` waits for the broker to close its end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

type Reply<T> = oneshot::Sender<Result<T, ClientError>>;

enum Command {
    Publish(Box<Publish>, Reply<ReasonCode>),
    Subscribe(Vec<SubscribeFilter>, Reply<Vec<ReasonCode>>),
    Unsubscribe(Vec<String>, Reply<Vec<ReasonCode>>),
    Disconnect(Reply<()>),
}

/// A handle on one connection's driver.
#[derive(Clone)]
pub struct Client {
    commands: mpsc::Sender<Command>,
    connack: Arc<ConnAck>,
}

/// Messages the broker delivers, in order, already acknowledged.
///
/// Read it from a task of its own, or drop it: when it holds `INCOMING_QUEUE` (256)
/// unread messages the driver stops reading the socket, so a task that awaits
/// [`Client::publish`] on the same connection before reading here can wait for an
/// acknowledgement that sits behind the unread messages. Dropped, messages are still
/// acknowledged and discarded.
pub struct Incoming {
    messages: mpsc::Receiver<Publish>,
    ended: Arc<Mutex<Option<ClientError>>>,
}

impl Incoming {
    /// The next message; once the connection has ended, why it ended (then
    /// [`ClientError::Stopped`]). A `disconnect` we asked for ends it with `Stopped`.
    pub async fn recv(&mut self) -> Result<Publish, ClientError> {
        match self.messages.recv().await {
            Some(publish) => Ok(publish),
            None => Err(self
                .ended
                .lock()
                .ok()
                .and_then(|mut ended| ended.take())
                .unwrap_or(ClientError::Stopped)),
        }
    }
}

impl Client {
    /// Connects and logs in (see [`Connection::open`]), then starts the driver task
    /// on the current tokio runtime (so it must be called inside one). The driver
    /// ends, failing whatever still waits with [`ClientError::Stopped`], when the
    /// broker closes or misbehaves, on [`Client::disconnect`], or when every handle
    /// is dropped (it then sends DISCONNECT itself).
    pub async fn connect(options: &ConnectOptions) -> Result<(Client, Incoming), ClientError> {
        let connection = Connection::open(options).await?;
        Ok(Client::start(connection, options.keep_alive))
    }

    /// Starts the driver on a logged-in connection.
    fn start(connection: Connection, keep_alive: u16) -> (Client, Incoming) {
        let connack = Arc::new(connection.connack().clone());
        let receive_maximum = usize::from(connection.receive_maximum().max(1));
        let (reader, writer) = connection.split();
        let (command_tx, command_rx) = mpsc::channel(COMMAND_QUEUE);
        let (message_tx, message_rx) = mpsc::channel(INCOMING_QUEUE);
        let ended = Arc::new(Mutex::new(None));
        // MQTT 5: the broker may shorten the keep-alive (Server Keep Alive).
        let keep_alive = connack.properties.server_keep_alive.unwrap_or(keep_alive);
        let driver = Driver {
            reader,
            writer,
            commands: command_rx,
            messages: message_tx,
            waiting: HashMap::new(),
            held: VecDeque::new(),
            publishes_in_flight: 0,
            receive_maximum,
            received_qos2: HashSet::new(),
            next_id: 0,
            ping_outstanding: false,
        };
        let ended_by = Arc::clone(&ended);
        tokio::spawn(async move {
            let why = driver.run(keep_alive).await;
            if let Ok(mut ended) = ended_by.lock() {
                *ended = Some(why);
            }
        });
        (
            Client {
                commands: command_tx,
                connack,
            },
            Incoming {
                messages: message_rx,
                ended,
            },
        )
    }

    /// The broker's CONNACK (session present, its MQTT 5 limits).
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    async fn request<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> Command,
    ) -> Result<T, ClientError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(command(reply))
            .await
            .map_err(|_| ClientError::Stopped)?;
        answer.await.map_err(|_| ClientError::Stopped)?
    }

    /// Publishes and waits for the QoS flow to finish: at QoS 0 until the message
    /// is queued, at 1 for PUBACK, at 2 for PUBCOMP. The broker's reason code is
    /// returned (e.g. "no matching subscribers"); a refusal is
    /// [`ClientError::Rejected`].
    pub async fn publish(
        &self,
        topic: impl Into<String>,
        payload: impl Into<Bytes>,
        qos: QoS,
        retain: bool,
    ) -> Result<ReasonCode, ClientError> {
        self.publish_packet(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into().into(),
            packet_id: 0,
            payload: payload.into(),
            properties: Properties::default(),
        })
        .await
    }

    /// As [`Client::publish`], with properties (MQTT 5); the packet id and the DUP
    /// flag are the client's to set.
    pub async fn publish_packet(&self, publish: Publish) -> Result<ReasonCode, ClientError> {
        self.request(|reply| Command::Publish(Box::new(publish), reply))
            .await
    }

    /// Subscribes to one filter (no local off, retained messages sent) and returns
    /// the QoS the broker granted as its reason code; a refusal is
    /// [`ClientError::Rejected`].
    pub async fn subscribe(
        &self,
        filter: impl Into<String>,
        qos: QoS,
    ) -> Result<ReasonCode, ClientError> {
        let filter = SubscribeFilter {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                no_local: false,
                retain_as_published: false,
                retain_handling: RetainHandling::SendAtSubscribe,
            },
        };
        let reasons = self.subscribe_many(vec![filter]).await?;
        match reasons.first() {
            Some(&reason) if reason.is_error() => Err(ClientError::Rejected(reason)),
            Some(&reason) => Ok(reason),
            None => Err(ClientError::Unexpected("SUBACK without a reason code")),
        }
    }

    /// Subscribes to several filters at once; one reason code per filter.
    pub async fn subscribe_many(
        &self,
        filters: Vec<SubscribeFilter>,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        self.request(|reply| Command::Subscribe(filters, reply))
            .await
    }

    pub async fn unsubscribe(&self, filters: Vec<String>) -> Result<Vec<ReasonCode>, ClientError> {
        self.request(|reply| Command::Unsubscribe(filters, reply))
            .await
    }

    /// Sends DISCONNECT (normal: the broker discards any will) and ends the driver.
    pub async fn disconnect(&self) -> Result<(), ClientError> {
        self.request(Command::Disconnect).await
    }
}

/// What a request waits for.
enum Waiting {
    /// `released`: PUBREC came (QoS 2) with this reason; PUBCOMP is next.
    Publish {
        reply: Reply<ReasonCode>,
        released: Option<ReasonCode>,
    },
    Subscribe(Reply<Vec<ReasonCode>>),
    Unsubscribe(Reply<Vec<ReasonCode>>),
}

struct Driver {
    reader: PacketReader,
    writer: PacketWriter,
    commands: mpsc::Receiver<Command>,
    messages: mpsc::Sender<Publish>,
    waiting: HashMap<u16, Waiting>,
    /// Publications beyond the broker's receive maximum, in order.
    held: VecDeque<(Publish, Reply<ReasonCode>)>,
    publishes_in_flight: usize,
    receive_maximum: usize,
    /// QoS 2 packet ids received and not yet released: a resent PUBLISH with one of
    /// them is not delivered twice.
    received_qos2: HashSet<u16>,
    next_id: u16,
    ping_outstanding: bool,
}

/// How a loop turn ended the connection, if it did.
enum Step {
    Continue,
    Stop(ClientError),
}

impl Driver {
    async fn run(mut self, keep_alive: u16) -> ClientError {
        // A PINGREQ every half keep-alive; no PINGRESP by the next one ends the
        // connection (the broker allows one and a half keep-alives).
        let period = Duration::from_secs(u64::from(keep_alive.max(1))) / 2;
        let mut ping = tokio::time::interval_at(Instant::now() + period, period);
        ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let why = loop {
            let step = tokio::select! {
                packet = self.reader.recv() => match packet {
                    Ok(Some(packet)) => self.handle(packet).await,
                    Ok(None) => Err(ClientError::Closed),
                    Err(e) => Err(e),
                },
                command = self.commands.recv(), if self.held.is_empty() => match command {
                    Some(command) => self.command(command).await,
                    // Every handle is gone: leave politely.
                    None => self.goodbye().await.map(|()| Step::Stop(ClientError::Stopped)),
                },
                _ = ping.tick(), if keep_alive > 0 => {
                    if self.ping_outstanding {
                        Err(ClientError::Timeout("PINGRESP"))
                    } else {
                        self.ping_outstanding = true;
                        self.writer.queue(&Packet::PingReq).map(|()| Step::Continue)
                    }
                }
            };
            let step = match step.and_then(|step| self.release_held().map(|()| step)) {
                Ok(Step::Continue) => self.writer.flush().await.map(|()| Step::Continue),
                other => other,
            };
            match step {
                Ok(Step::Continue) => {}
                Ok(Step::Stop(why)) | Err(why) => break why,
            }
        };
        // Whoever still waits learns that the connection is gone.
        for (_, waiting) in self.waiting.drain() {
            match waiting {
                Waiting::Publish { reply, .. } => drop(reply.send(Err(ClientError::Stopped))),
                Waiting::Subscribe(reply) | Waiting::Unsubscribe(reply) => {
                    drop(reply.send(Err(ClientError::Stopped)))
                }
            }
        }
        for (_, reply) in self.held.drain(..) {
            drop(reply.send(Err(ClientError::Stopped)));
        }
        why
    }

    fn next_packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.wrapping_add(1).max(1);
            if !self.waiting.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    async fn command(&mut self, command: Command) -> Result<Step, ClientError> {
        match command {
            Command::Publish(publish, reply) => {
                self.held.push_back((*publish, reply));
                Ok(Step::Continue)
            }
            Command::Subscribe(filters, reply) => {
                let packet_id = self.next_packet_id();
                self.writer.queue(&Packet::Subscribe(Subscribe {
                    packet_id,
                    filters,
                    properties: Properties::default(),
                }))?;
                self.waiting.insert(packet_id, Waiting::Subscribe(reply));
                Ok(Step::Continue)
            }
            Command::Unsubscribe(filters, reply) => {
                let packet_id = self.next_packet_id();
                self.writer.queue(&Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties: Properties::default(),
                }))?;
                self.waiting.insert(packet_id, Waiting::Unsubscribe(reply));
                Ok(Step::Continue)
            }
            Command::Disconnect(reply) => {
                let outcome = self.goodbye().await;
                let _ = reply.send(outcome);
                Ok(Step::Stop(ClientError::Stopped))
            }
        }
    }

    /// Sends the publications the broker's receive maximum allows now.
    fn release_held(&mut self) -> Result<(), ClientError> {
        while self.publishes_in_flight < self.receive_maximum {
            let Some((mut publish, reply)) = self.held.pop_front() else {
                break;
            };
            publish.dup = false;
            if publish.qos == QoS::AtMostOnce {
                publish.packet_id = 0;
                self.writer.queue(&Packet::Publish(publish))?;
                let _ = reply.send(Ok(ReasonCode::Success));
                continue;
            }
            publish.packet_id = self.next_packet_id();
            let packet_id = publish.packet_id;
            self.writer.queue(&Packet::Publish(publish))?;
            self.publishes_in_flight += 1;
            self.waiting.insert(
                packet_id,
                Waiting::Publish {
                    reply,
                    released: None,
                },
            );
        }
        Ok(())
    }

    async fn goodbye(&mut self) -> Result<(), ClientError> {
        self.writer.queue(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))?;
        self.writer.flush().await?;
        // The broker closes; reading to the end keeps TIME_WAIT on its side.
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(Some(_)) = self.reader.recv().await {}
        })
        .await;
        Ok(())
    }

    async fn handle(&mut self, packet: Packet) -> Result<Step, ClientError> {
        match packet {
            Packet::Publish(publish) => {
                let deliver = match publish.qos {
                    QoS::AtMostOnce => true,
                    QoS::AtLeastOnce => {
                        self.writer.queue(&Packet::PubAck(Ack::new(
                            publish.packet_id,
                            ReasonCode::Success,
                        )))?;
                        true
                    }
                    QoS::ExactlyOnce => {
                        self.writer.queue(&Packet::PubRec(Ack::new(
                            publish.packet_id,
                            ReasonCode::Success,
                        )))?;
                        self.received_qos2.insert(publish.packet_id)
                    }
                };
                // A dropped `Incoming` means the caller wants no messages; the
                // acknowledgements above still go out.
                if deliver {
                    let _ = self.messages.send(publish).await;
                }
            }
            Packet::PubRel(ack) => {
                self.received_qos2.remove(&ack.packet_id);
                self.writer.queue(&Packet::PubComp(Ack::new(
                    ack.packet_id,
                    ReasonCode::Success,
                )))?;
            }
            Packet::PubAck(ack) => self.finish_publish(&ack, "PUBACK", None)?,
            Packet::PubRec(ack) if ack.reason.is_error() => {
                self.finish_publish(&ack, "PUBREC", None)?
            }
            Packet::PubRec(ack) => match self.waiting.get_mut(&ack.packet_id) {
                Some(Waiting::Publish { released, .. }) => {
                    *released = Some(ack.reason);
                    self.writer.queue(&Packet::PubRel(Ack::new(
                        ack.packet_id,
                        ReasonCode::Success,
                    )))?;
                }
                _ => return Err(ClientError::Unexpected("PUBREC for no publication of ours")),
            },
            Packet::PubComp(ack) => {
                let reason = match self.waiting.get(&ack.packet_id) {
                    Some(Waiting::Publish {
                        released: Some(reason),
                        ..
                    }) => *reason,
                    _ => return Err(ClientError::Unexpected("PUBCOMP before PUBREC")),
                };
                self.finish_publish(&ack, "PUBCOMP", Some(reason))?
            }
            Packet::SubAck(ack) => match self.waiting.remove(&ack.packet_id) {
                Some(Waiting::Subscribe(reply)) => drop(reply.send(Ok(ack.reasons))),
                _ => return Err(ClientError::Unexpected("SUBACK for no SUBSCRIBE of ours")),
            },
            Packet::UnsubAck(ack) => match self.waiting.remove(&ack.packet_id) {
                Some(Waiting::Unsubscribe(reply)) => drop(reply.send(Ok(ack.reasons))),
                _ => {
                    return Err(ClientError::Unexpected(
                        "UNSUBACK for no UNSUBSCRIBE of ours",
                    ));
                }
            },
            Packet::PingResp => self.ping_outstanding = false,
            Packet::Disconnect(d) => return Ok(Step::Stop(ClientError::Disconnected(d.reason))),
            other => return Err(ClientError::Unexpected(packet_name(&other))),
        }
        Ok(Step::Continue)
    }

    /// Completes a publication with the final acknowledgement's reason code (or,
    /// for PUBCOMP, PUBREC's).
    fn finish_publish(
        &mut self,
        ack: &Ack,
        name: &'static str,
        reason: Option<ReasonCode>,
    ) -> Result<(), ClientError> {
        match self.waiting.remove(&ack.packet_id) {
            Some(Waiting::Publish { reply, .. }) => {
                self.publishes_in_flight -= 1;
                let reason = reason.unwrap_or(ack.reason);
                let outcome = if reason.is_error() {
                    Err(ClientError::Rejected(reason))
                } else {
                    Ok(reason)
                };
                let _ = reply.send(outcome);
                Ok(())
            }
            _ => Err(ClientError::Unexpected(name)),
        }
    }
}

#[cfg(test)]
mod tests;
