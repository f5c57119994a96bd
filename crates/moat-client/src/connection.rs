//! One MQTT connection at the packet level: log in, then queue packets into a write
//! buffer and flush them in batches, and decode what arrives through the strict codec
//! in the client role. Nothing happens behind the caller's back (no keep-alive, no
//! automatic acknowledgements), which is what a load generator or a probe wants;
//! [`crate::Client`] builds the managed client on top. It can be split into a reader
//! and a writer for two tasks.

use std::time::Duration;

use bytes::BytesMut;
use moat_protocol::{
    Ack, Codec, ConnAck, Disconnect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    Role, SubAck, Subscribe, SubscribeFilter,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt, ReadHalf, WriteHalf};

use crate::ClientError;
use crate::options::ConnectOptions;
use crate::transport::Stream;

const READ_CHUNK: usize = 64 * 1024;
/// How long `disconnect` waits for the broker to close its end.
const CLOSE_WAIT: Duration = Duration::from_secs(1);

/// A logged-in connection.
pub struct Connection {
    reader: PacketReader,
    writer: PacketWriter,
    connack: ConnAck,
}

/// The receiving half: decodes packets from a buffer refilled from the stream.
pub struct PacketReader {
    stream: ReadHalf<Box<dyn Stream>>,
    codec: Codec,
    buffer: BytesMut,
}

/// The sending half: packets are encoded into a buffer and written on `flush`.
pub struct PacketWriter {
    stream: WriteHalf<Box<dyn Stream>>,
    codec: Codec,
    buffer: BytesMut,
}

impl Connection {
    /// Opens the endpoint and logs in; fails unless CONNACK says success (a refusal
    /// is [`ClientError::Refused`] with the broker's reason). Bounded by
    /// `options.connect_timeout`.
    pub async fn open(options: &ConnectOptions) -> Result<Connection, ClientError> {
        tokio::time::timeout(options.connect_timeout, Connection::login(options))
            .await
            .map_err(|_| ClientError::Timeout("the connection and CONNACK"))?
    }

    async fn login(options: &ConnectOptions) -> Result<Connection, ClientError> {
        let stream = options.endpoint.open().await?;
        Connection::login_over(stream, options).await
    }

    /// CONNECT and CONNACK over a stream already open (the endpoint in `options` is
    /// not used), such as a test's in-memory pipe; unbounded in time.
    pub async fn login_over(
        stream: Box<dyn Stream>,
        options: &ConnectOptions,
    ) -> Result<Connection, ClientError> {
        let (read, write) = tokio::io::split(stream);
        let codec = || {
            let mut codec = Codec::new(Role::Client, options.max_incoming_packet);
            codec.set_version(options.protocol);
            codec
        };
        let mut reader = PacketReader {
            stream: read,
            codec: codec(),
            buffer: BytesMut::with_capacity(READ_CHUNK),
        };
        let mut writer = PacketWriter {
            stream: write,
            codec: codec(),
            buffer: BytesMut::with_capacity(READ_CHUNK),
        };
        writer.queue(&Packet::Connect(Box::new(options.connect_packet())))?;
        writer.flush().await?;
        match reader.recv().await? {
            Some(Packet::ConnAck(ack)) if !ack.reason.is_error() => {
                // MQTT 5: never send the broker more than it said it takes.
                writer
                    .codec
                    .set_max_outgoing_packet_size(ack.properties.maximum_packet_size);
                Ok(Connection {
                    reader,
                    writer,
                    connack: ack,
                })
            }
            Some(Packet::ConnAck(ack)) => Err(ClientError::Refused(ack.reason)),
            Some(Packet::Disconnect(d)) => Err(ClientError::Disconnected(d.reason)),
            Some(other) => Err(ClientError::Unexpected(packet_name(&other))),
            None => Err(ClientError::Closed),
        }
    }

    /// The broker's CONNACK: session present, its limits (MQTT 5 properties).
    pub fn connack(&self) -> &ConnAck {
        &self.connack
    }

    /// QoS 1/2 publications the broker accepts unacknowledged (MQTT 5 CONNACK).
    pub fn receive_maximum(&self) -> u16 {
        self.connack.properties.receive_maximum.unwrap_or(u16::MAX)
    }

    pub fn protocol(&self) -> ProtocolVersion {
        self.writer.codec.version().unwrap_or(ProtocolVersion::V5)
    }

    pub fn split(self) -> (PacketReader, PacketWriter) {
        (self.reader, self.writer)
    }

    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.writer.queue(packet)
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        self.writer.flush().await
    }

    /// Queues and flushes one packet.
    pub async fn send(&mut self, packet: &Packet) -> Result<(), ClientError> {
        self.writer.queue(packet)?;
        self.writer.flush().await
    }

    pub async fn recv(&mut self) -> Result<Option<Packet>, ClientError> {
        self.reader.recv().await
    }

    pub fn try_recv(&mut self) -> Result<Option<Packet>, ClientError> {
        self.reader.try_recv()
    }

    /// Sends SUBSCRIBE (packet id 1) and waits, within `timeout`, for its SUBACK:
    /// one reason code per filter, granted or not. Any other packet first is an
    /// error: call it before traffic starts.
    pub async fn subscribe(
        &mut self,
        filters: Vec<SubscribeFilter>,
        timeout: Duration,
    ) -> Result<Vec<ReasonCode>, ClientError> {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters,
            properties: Properties::default(),
        }))
        .await?;
        let reply = tokio::time::timeout(timeout, self.recv())
            .await
            .map_err(|_| ClientError::Timeout("SUBACK"))??;
        match reply {
            Some(Packet::SubAck(SubAck { reasons, .. })) => Ok(reasons),
            Some(Packet::Disconnect(d)) => Err(ClientError::Disconnected(d.reason)),
            Some(other) => Err(ClientError::Unexpected(packet_name(&other))),
            None => Err(ClientError::Closed),
        }
    }

    /// Sends DISCONNECT and waits (at most a second) for the broker to close, so the
    /// broker's side, not ours, keeps the TIME_WAIT socket.
    pub async fn disconnect(mut self) -> Result<(), ClientError> {
        self.send(&Packet::Disconnect(Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await?;
        let mut scratch = [0u8; 512];
        let mut stream = self.reader.stream;
        let _ = tokio::time::timeout(CLOSE_WAIT, async {
            while let Ok(n) = stream.read(&mut scratch).await {
                if n == 0 {
                    break;
                }
            }
        })
        .await;
        Ok(())
    }
}

impl PacketReader {
    /// The next packet, reading from the stream as needed; `None` at end of stream.
    /// Cancel-safe: bytes read so far stay in the buffer.
    pub async fn recv(&mut self) -> Result<Option<Packet>, ClientError> {
        loop {
            if let Some(packet) = self.try_recv()? {
                return Ok(Some(packet));
            }
            self.buffer.reserve(READ_CHUNK);
            if self.stream.read_buf(&mut self.buffer).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// A packet already in the buffer, without touching the stream.
    pub fn try_recv(&mut self) -> Result<Option<Packet>, ClientError> {
        Ok(self.codec.decode(&mut self.buffer)?)
    }
}

impl PacketWriter {
    pub fn queue(&mut self, packet: &Packet) -> Result<(), ClientError> {
        Ok(self.codec.encode(packet, &mut self.buffer)?)
    }

    /// Queues `packet`, then lets `patch` rewrite its last `tail_len` encoded bytes
    /// (a PUBLISH's payload is encoded last): one encoding of a template per message,
    /// with, say, a send time stamped into it.
    pub fn queue_patched(
        &mut self,
        packet: &Packet,
        tail_len: usize,
        patch: impl FnOnce(&mut [u8]),
    ) -> Result<(), ClientError> {
        let before = self.buffer.len();
        self.queue(packet)?;
        let at = self.buffer.len().saturating_sub(tail_len).max(before);
        patch(&mut self.buffer[at..]);
        Ok(())
    }

    /// A subscriber's side of the QoS flow: queues the PUBACK, PUBREC or PUBCOMP a
    /// packet from the broker calls for; returns the PUBLISH, if it was one. A
    /// DISCONNECT is an error; PINGRESP is ignored; anything else is unexpected.
    pub fn answer(&mut self, packet: Packet) -> Result<Option<Publish>, ClientError> {
        match packet {
            Packet::Publish(p) => {
                match p.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => {
                        self.queue(&Packet::PubAck(Ack::new(p.packet_id, ReasonCode::Success)))?
                    }
                    QoS::ExactlyOnce => {
                        self.queue(&Packet::PubRec(Ack::new(p.packet_id, ReasonCode::Success)))?
                    }
                }
                Ok(Some(p))
            }
            Packet::PubRel(ack) => {
                self.queue(&Packet::PubComp(Ack::new(
                    ack.packet_id,
                    ReasonCode::Success,
                )))?;
                Ok(None)
            }
            Packet::Disconnect(d) => Err(ClientError::Disconnected(d.reason)),
            Packet::PingResp => Ok(None),
            other => Err(ClientError::Unexpected(packet_name(&other))),
        }
    }

    pub fn queued_bytes(&self) -> usize {
        self.buffer.len()
    }

    pub async fn flush(&mut self) -> Result<(), ClientError> {
        if !self.buffer.is_empty() {
            self.stream.write_all(&self.buffer).await?;
            self.buffer.clear();
        }
        self.stream.flush().await?;
        Ok(())
    }
}

/// The packet's name as the specification writes it, for messages.
pub fn packet_name(packet: &Packet) -> &'static str {
    match packet {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect(_) => "DISCONNECT",
        Packet::Auth(_) => "AUTH",
    }
}
