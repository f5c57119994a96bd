//! The connection driven over an in-memory byte stream (`tokio::io::duplex`), with
//! our own codec as the client: CONNECT/CONNACK, QoS 0/1/2 round trips (also
//! against a persistent session on a real, in-memory SQLite store, whose in-flight
//! records are checked at each step), refusals, malformed packets, the
//! keepalive deadline, session takeover, and wills (published when the client
//! vanishes, refused at CONNECT, and checked again when due, retain right included). Real clients against the real binary are in `tests/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::task::JoinHandle;

use crate::broker::denials::DenialKind;
use crate::broker::journal::{Journal, Reservation};
use crate::broker::permissions::{
    Admission, AdmitFuture, ClientLimits, Gatekeeper, ListenerKind, PeerInfo, Permissions,
};
use crate::broker::{Broker, BrokerConfig};
use crate::store::{Durability, InflightOut, Snapshot, Store};
use moat_protocol::{
    Ack, Codec, ConnAck, Connect, Packet, Properties, ProtocolVersion, Publish, QoS, ReasonCode,
    RetainHandling, Role, Subscribe, SubscribeFilter, SubscriptionOptions, Unsubscribe, Will,
};

/// How long any single answer may take before a test fails.
const ANSWER: Duration = Duration::from_secs(5);

/// Publishes and subscribes under `a/`, nothing else; may retain.
struct UnderA;

impl Permissions for UnderA {
    fn may_publish(&self, _: &str, topic: moat_protocol::TopicName<'_>) -> bool {
        topic.as_str().starts_with("a/")
    }
    fn may_subscribe(&self, _: &str, filter: &str) -> bool {
        filter.starts_with("a/")
    }
    fn may_receive(&self, _: &str, topic: &str) -> bool {
        topic.starts_with("a/")
    }
    fn may_retain(&self) -> bool {
        true
    }
}

/// [`UnderA`] without the right to retain.
struct UnderANoRetain;

impl Permissions for UnderANoRetain {
    fn may_publish(&self, client_id: &str, topic: moat_protocol::TopicName<'_>) -> bool {
        UnderA.may_publish(client_id, topic)
    }
    fn may_subscribe(&self, client_id: &str, filter: &str) -> bool {
        UnderA.may_subscribe(client_id, filter)
    }
    fn may_receive(&self, client_id: &str, topic: &str) -> bool {
        UnderA.may_receive(client_id, topic)
    }
    fn may_retain(&self) -> bool {
        false
    }
}

/// Admits every CONNECT as the identity "tester" with [`UnderA`]'s rights.
struct AdmitAll;

impl Gatekeeper for AdmitAll {
    fn admit<'a>(&'a self, _: &'a Connect, _: &'a PeerInfo) -> AdmitFuture<'a> {
        Box::pin(async {
            Ok(Admission {
                identity: "tester".to_owned(),
                permissions: Arc::new(UnderA),
                limits: ClientLimits {
                    max_packet_size: 64 * 1024,
                    max_queued_messages: 100,
                    max_queued_bytes: 1 << 20,
                },
            })
        })
    }
}

/// One client over a duplex stream, speaking through our own codec.
struct Client {
    io: DuplexStream,
    codec: Codec,
    buf: BytesMut,
    task: JoinHandle<()>,
}

impl Client {
    fn start(broker: &Arc<Broker>) -> Client {
        let (io, server_side) = tokio::io::duplex(64 * 1024);
        let peer = PeerInfo {
            addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
            listener: ListenerKind::Plain,
            certificate_name: None,
        };
        let task = tokio::spawn(super::run(
            server_side,
            peer,
            Arc::clone(broker),
            Arc::new(AdmitAll),
            Instant::now() + Duration::from_secs(10),
            (),
        ));
        Client {
            io,
            codec: Codec::new(Role::Client, 1 << 20),
            buf: BytesMut::new(),
            task,
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        self.codec
            .encode(&packet, &mut out)
            .expect("test packet encodes");
        self.io.write_all(&out).await.expect("broker side is open");
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.expect("broker side is open");
    }

    /// The next packet, or `None` once the broker closed the stream.
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(ANSWER, async {
            loop {
                if let Some(packet) = self
                    .codec
                    .decode(&mut self.buf)
                    .expect("broker sends valid packets")
                {
                    return Some(packet);
                }
                if self.io.read_buf(&mut self.buf).await.expect("read") == 0 {
                    return None;
                }
            }
        })
        .await
        .expect("the broker answers in time")
    }

    async fn expect(&mut self) -> Packet {
        self.next()
            .await
            .expect("a packet, not the end of the stream")
    }

    /// Sends `packet` and returns the next packet received.
    async fn ask(&mut self, packet: Packet) -> Packet {
        self.send(packet).await;
        self.expect().await
    }

    async fn connect(&mut self, client_id: &str, keep_alive: u16, expiry: Option<u32>) -> ConnAck {
        self.connect_with_will(client_id, keep_alive, expiry, None)
            .await
    }

    async fn connect_with_will(
        &mut self,
        client_id: &str,
        keep_alive: u16,
        expiry: Option<u32>,
        will: Option<Will>,
    ) -> ConnAck {
        let connect = Connect {
            protocol: ProtocolVersion::V5,
            clean_start: true,
            keep_alive,
            client_id: client_id.to_owned(),
            will,
            username: Some("tester".to_owned()),
            password: None,
            properties: Properties {
                session_expiry_interval: expiry,
                ..Properties::default()
            },
        };
        match self.ask(Packet::Connect(Box::new(connect))).await {
            Packet::ConnAck(ack) => ack,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) -> Vec<ReasonCode> {
        self.send(Packet::Subscribe(Subscribe {
            packet_id: 1,
            filters: vec![SubscribeFilter {
                filter: filter.to_owned(),
                options: SubscriptionOptions {
                    qos,
                    no_local: false,
                    retain_as_published: false,
                    retain_handling: RetainHandling::SendAtSubscribe,
                },
            }],
            properties: Properties::default(),
        }))
        .await;
        match self.expect().await {
            Packet::SubAck(ack) => ack.reasons,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Closes the stream without DISCONNECT, and waits for the connection to end.
    async fn vanish(self) {
        drop(self.io);
        tokio::time::timeout(ANSWER, self.task)
            .await
            .expect("the connection task ends")
            .expect("the connection task does not panic");
    }

    /// Expects the DISCONNECT a v5 client gets before the broker closes.
    async fn expect_closed_with(&mut self, reason: ReasonCode) {
        match self.expect().await {
            Packet::Disconnect(d) => assert_eq!(d.reason, reason, "{d:?}"),
            other => panic!("expected DISCONNECT {reason:?}, got {other:?}"),
        }
        assert_eq!(self.next().await, None, "closed after DISCONNECT");
        tokio::time::timeout(ANSWER, &mut self.task)
            .await
            .expect("the connection task ends")
            .expect("the connection task does not panic");
    }
}

fn publish(topic: &str, qos: QoS, packet_id: u16, payload: &'static [u8]) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(payload),
        properties: Properties::default(),
    })
}

fn received(packet: Packet) -> Publish {
    match packet {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

fn memory_broker() -> (Arc<Broker>, Arc<Store>) {
    let store = Arc::new(Store::open_in_memory(Durability::Full).expect("in-memory store"));
    let broker = Broker::with_journal(
        BrokerConfig::default(),
        Journal::new(Some(Arc::clone(&store))),
    );
    (broker, store)
}

/// The stored state, read until `done` holds (commits nobody waits for land
/// shortly after); at most 100 reads 20 ms apart.
async fn stored_until(store: &Store, done: impl Fn(&Snapshot) -> bool) -> Snapshot {
    for _ in 0..100 {
        let snapshot = store.load().expect("load");
        if done(&snapshot) {
            return snapshot;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    store.load().expect("load")
}

#[tokio::test]
async fn connect_is_answered_with_what_the_broker_grants() {
    let broker = Broker::new(BrokerConfig::default());
    let mut client = Client::start(&broker);
    let ack = client.connect("c1", 0, None).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    assert!(!ack.session_present);
    let config = broker.config();
    assert_eq!(ack.properties.receive_maximum, Some(config.max_inflight));
    assert_eq!(ack.properties.maximum_packet_size, Some(64 * 1024));
    assert_eq!(ack.properties.retain_available, Some(1));
    // Keepalive 0 is capped at the broker's maximum, and the client is told.
    assert_eq!(ack.properties.server_keep_alive, Some(config.max_keepalive));
    assert_eq!(broker.stats.snapshot().connected, 1);

    client.send(Packet::PingReq).await;
    assert_eq!(client.expect().await, Packet::PingResp);
    client
        .send(Packet::Disconnect(moat_protocol::Disconnect {
            reason: ReasonCode::Success,
            properties: Properties::default(),
        }))
        .await;
    assert_eq!(client.next().await, None);
    tokio::time::timeout(ANSWER, client.task)
        .await
        .expect("ends")
        .expect("no panic");
    assert_eq!(broker.stats.snapshot().connected, 0);
}

#[tokio::test]
async fn qos_0_1_and_2_make_their_round_trips() {
    let broker = Broker::new(BrokerConfig::default());
    let mut subscriber = Client::start(&broker);
    subscriber.connect("sub", 60, None).await;
    assert_eq!(
        subscriber.subscribe("a/#", QoS::ExactlyOnce).await,
        vec![ReasonCode::GrantedQoS2]
    );
    let mut publisher = Client::start(&broker);
    publisher.connect("pub", 60, None).await;

    publisher
        .send(publish("a/0", QoS::AtMostOnce, 0, b"zero"))
        .await;
    let got = received(subscriber.expect().await);
    assert_eq!((&*got.topic, got.qos), ("a/0", QoS::AtMostOnce));
    assert_eq!(&got.payload[..], b"zero");

    assert_eq!(
        publisher
            .ask(publish("a/1", QoS::AtLeastOnce, 7, b"one"))
            .await,
        Packet::PubAck(Ack::new(7, ReasonCode::Success))
    );
    let got = received(subscriber.expect().await);
    assert_eq!((&*got.topic, got.qos), ("a/1", QoS::AtLeastOnce));
    subscriber
        .send(Packet::PubAck(Ack::new(got.packet_id, ReasonCode::Success)))
        .await;

    assert_eq!(
        publisher
            .ask(publish("a/2", QoS::ExactlyOnce, 9, b"two"))
            .await,
        Packet::PubRec(Ack::new(9, ReasonCode::Success))
    );
    // A resend before PUBREL is acknowledged again, not routed twice.
    assert_eq!(
        publisher
            .ask(publish("a/2", QoS::ExactlyOnce, 9, b"two"))
            .await,
        Packet::PubRec(Ack::new(9, ReasonCode::Success))
    );
    assert_eq!(
        publisher
            .ask(Packet::PubRel(Ack::new(9, ReasonCode::Success)))
            .await,
        Packet::PubComp(Ack::new(9, ReasonCode::Success))
    );
    // PUBREL for an id nobody waits for.
    assert_eq!(
        publisher
            .ask(Packet::PubRel(Ack::new(9, ReasonCode::Success)))
            .await,
        Packet::PubComp(Ack::new(9, ReasonCode::PacketIdentifierNotFound))
    );

    let got = received(subscriber.expect().await);
    assert_eq!((&*got.topic, got.qos), ("a/2", QoS::ExactlyOnce));
    assert_eq!(
        subscriber
            .ask(Packet::PubRec(Ack::new(got.packet_id, ReasonCode::Success)))
            .await,
        Packet::PubRel(Ack::new(got.packet_id, ReasonCode::Success))
    );
    subscriber
        .send(Packet::PubComp(Ack::new(
            got.packet_id,
            ReasonCode::Success,
        )))
        .await;
    // Only the one copy of the QoS 2 message arrived.
    subscriber.send(Packet::PingReq).await;
    assert_eq!(subscriber.expect().await, Packet::PingResp);
    let stats = broker.stats.snapshot();
    assert_eq!(stats.messages_received, 3);
    assert_eq!(stats.messages_sent, 3);
}

/// A subscriber answers what it was sent in one write: QoS 1 and 2
/// acknowledgements, unknown packet ids, a refusing PUBREC, the same PUBREC twice,
/// an acknowledgement with properties among them (the handler's), a PUBREL nobody
/// waits for, then a PINGREQ. The answers, the window's state and its refill are
/// the same whether the acknowledgements are settled in a batch (a session that
/// is not persistent) or one by one through the handler (a persistent one, each
/// journaled); a malformed acknowledgement after them still closes the
/// connection, after the answers to those before it.
async fn a_batch_of_acknowledgements(persistent: bool) {
    let (broker, store) = memory_broker();
    let broker = if persistent {
        broker
    } else {
        Broker::new(BrokerConfig::default())
    };
    let mut subscriber = Client::start(&broker);
    let connect = Connect {
        protocol: ProtocolVersion::V5,
        clean_start: true,
        keep_alive: 60,
        client_id: "sub".to_owned(),
        will: None,
        username: Some("tester".to_owned()),
        password: None,
        properties: Properties {
            session_expiry_interval: persistent.then_some(3600),
            receive_maximum: Some(4),
            ..Properties::default()
        },
    };
    assert!(matches!(
        subscriber.ask(Packet::Connect(Box::new(connect))).await,
        Packet::ConnAck(_)
    ));
    assert_eq!(
        subscriber.subscribe("a/#", QoS::ExactlyOnce).await,
        vec![ReasonCode::GrantedQoS2]
    );
    let mut publisher = Client::start(&broker);
    publisher.connect("pub", 60, None).await;
    let qos = [
        QoS::AtLeastOnce,
        QoS::ExactlyOnce,
        QoS::ExactlyOnce,
        QoS::AtLeastOnce,
        QoS::AtLeastOnce,
    ];
    for (i, qos) in qos.into_iter().enumerate() {
        let packet_id = i as u16 + 1;
        publisher
            .send(publish(&format!("a/{packet_id}"), qos, packet_id, b"m"))
            .await;
        assert!(matches!(
            publisher.expect().await,
            Packet::PubAck(_) | Packet::PubRec(_)
        ));
    }
    // A window of 4: the fifth waits.
    let mut ids = Vec::new();
    for n in 1..=4 {
        let got = received(subscriber.expect().await);
        assert_eq!(&*got.topic, format!("a/{n}"));
        ids.push(got.packet_id);
    }
    let [p1, p2, p3, p4] = ids[..] else {
        panic!("four packet ids");
    };
    let mut with_properties = Ack::new(p4, ReasonCode::Success);
    with_properties.properties.reason_string = Some("fine".to_owned());
    let mut wire = BytesMut::new();
    let mut codec = Codec::new(Role::Client, 1 << 20);
    codec.set_version(ProtocolVersion::V5);
    for packet in [
        Packet::PubAck(Ack::new(p1, ReasonCode::Success)),
        Packet::PubRec(Ack::new(p2, ReasonCode::Success)),
        Packet::PubRec(Ack::new(999, ReasonCode::Success)),
        Packet::PubAck(Ack::new(998, ReasonCode::Success)),
        Packet::PubRec(Ack::new(p3, ReasonCode::UnspecifiedError)),
        Packet::PubAck(with_properties),
        Packet::PubRec(Ack::new(p2, ReasonCode::Success)),
        Packet::PubComp(Ack::new(997, ReasonCode::Success)),
        Packet::PubRel(Ack::new(777, ReasonCode::Success)),
        Packet::PingReq,
    ] {
        codec.encode(&packet, &mut wire).expect("encodes");
    }
    subscriber.send_raw(&wire).await;
    assert_eq!(
        subscriber.expect().await,
        Packet::PubRel(Ack::new(p2, ReasonCode::Success))
    );
    assert_eq!(
        subscriber.expect().await,
        Packet::PubRel(Ack::new(999, ReasonCode::PacketIdentifierNotFound))
    );
    assert_eq!(
        subscriber.expect().await,
        Packet::PubRel(Ack::new(p2, ReasonCode::Success))
    );
    assert_eq!(
        subscriber.expect().await,
        Packet::PubComp(Ack::new(777, ReasonCode::PacketIdentifierNotFound))
    );
    assert_eq!(subscriber.expect().await, Packet::PingResp);
    // Three of the four left the window: the fifth message takes a slot.
    let fifth = received(subscriber.expect().await);
    assert_eq!(&*fifth.topic, "a/5");
    let session = Arc::clone(
        &broker
            .state
            .lock()
            .expect("broker lock")
            .sessions
            .get("sub")
            .expect("the session")
            .link,
    );
    assert_eq!(session.mailbox.depth(), (0, 0, 2), "p2 released, a/5 sent");
    assert!(session.mailbox.is_in_flight(p2));
    if persistent {
        let stored = stored_until(&store, |s| s.inflight_out.len() == 1).await;
        assert!(matches!(
            stored.inflight_out.as_slice(),
            [entry] if entry.packet_id == p2 && entry.state == InflightOut::Released
        ));
    }
    // PUBCOMP, then a PUBACK with packet id 0: the answers so far, then the close.
    let mut wire = BytesMut::new();
    codec
        .encode(
            &Packet::PubComp(Ack::new(p2, ReasonCode::Success)),
            &mut wire,
        )
        .expect("encodes");
    codec
        .encode(
            &Packet::PubRec(Ack::new(fifth.packet_id, ReasonCode::UnspecifiedError)),
            &mut wire,
        )
        .expect("encodes");
    wire.extend_from_slice(&[0x50, 0x02, 0x12, 0x34, 0x40, 0x02, 0x00, 0x00]);
    subscriber.send_raw(&wire).await;
    assert_eq!(
        subscriber.expect().await,
        Packet::PubRel(Ack::new(0x1234, ReasonCode::PacketIdentifierNotFound))
    );
    subscriber
        .expect_closed_with(ReasonCode::MalformedPacket)
        .await;
    assert_eq!(session.mailbox.depth(), (0, 0, 0));
}

#[tokio::test]
async fn a_batch_of_acknowledgements_is_settled_as_one_by_one() {
    a_batch_of_acknowledgements(false).await;
}

#[tokio::test]
async fn a_persistent_sessions_acknowledgements_go_one_by_one_to_the_same_end() {
    a_batch_of_acknowledgements(true).await;
}

#[tokio::test]
async fn a_persistent_sessions_qos_2_flow_is_journaled_step_by_step() {
    let (broker, store) = memory_broker();
    let mut subscriber = Client::start(&broker);
    subscriber.connect("keeper", 60, Some(3600)).await;
    assert_eq!(
        subscriber.subscribe("a/+", QoS::ExactlyOnce).await,
        vec![ReasonCode::GrantedQoS2]
    );
    let stored = store.load().expect("load");
    assert_eq!(stored.sessions.len(), 1, "CONNACK waited for the session");
    assert_eq!(
        stored.subscriptions.len(),
        1,
        "SUBACK waited for the subscription"
    );

    let mut publisher = Client::start(&broker);
    publisher.connect("pub", 60, None).await;
    assert_eq!(
        publisher
            .ask(publish("a/x", QoS::ExactlyOnce, 3, b"m"))
            .await,
        Packet::PubRec(Ack::new(3, ReasonCode::Success))
    );

    // Sent to the persistent session: recorded in flight under its packet id
    // before it was written, and no longer queued.
    let got = received(subscriber.expect().await);
    let stored = store.load().expect("load");
    assert!(stored.queued.is_empty(), "{:?}", stored.queued);
    assert!(matches!(
        stored.inflight_out.as_slice(),
        [entry] if entry.packet_id == got.packet_id
            && matches!(&entry.state, InflightOut::Published(m) if m.topic == "a/x")
    ));

    // PUBREC: PUBREL comes only once "released" is stored.
    assert_eq!(
        subscriber
            .ask(Packet::PubRec(Ack::new(got.packet_id, ReasonCode::Success)))
            .await,
        Packet::PubRel(Ack::new(got.packet_id, ReasonCode::Success))
    );
    let stored = store.load().expect("load");
    assert!(matches!(
        stored.inflight_out.as_slice(),
        [entry] if entry.state == InflightOut::Released
    ));

    // PUBCOMP: the flow leaves the store.
    subscriber
        .send(Packet::PubComp(Ack::new(
            got.packet_id,
            ReasonCode::Success,
        )))
        .await;
    let stored = stored_until(&store, |s| s.inflight_out.is_empty()).await;
    assert!(stored.inflight_out.is_empty(), "{:?}", stored.inflight_out);
    assert_eq!(stored.sessions.len(), 1);
}

/// Room in the store's write queue that a QoS 1 message did not use is kept for
/// the next packet read with it; one that recorded its message took the room, and
/// the next reserves again. Either way every copy for a persistent session is
/// stored before its PUBACK.
#[tokio::test]
async fn messages_read_together_share_reserved_room_and_each_is_stored() {
    let (broker, store) = memory_broker();
    let mut keeper = Client::start(&broker);
    keeper.connect("keeper", 60, Some(3600)).await;
    assert_eq!(
        keeper.subscribe("a/+", QoS::AtLeastOnce).await,
        vec![ReasonCode::GrantedQoS1]
    );
    keeper.vanish().await;

    let mut publisher = Client::start(&broker);
    publisher.connect("pub", 60, None).await;
    // One write: the broker reads and handles them in one turn.
    let mut together = BytesMut::new();
    for (id, topic) in [
        (1, "a/x/y"),
        (2, "a/1"),
        (3, "a/2"),
        (4, "a/y/z"),
        (5, "a/3"),
    ] {
        publisher
            .codec
            .encode(&publish(topic, QoS::AtLeastOnce, id, b"m"), &mut together)
            .expect("test packet encodes");
    }
    publisher.send_raw(&together).await;
    for (id, reason) in [
        (1, ReasonCode::NoMatchingSubscribers),
        (2, ReasonCode::Success),
        (3, ReasonCode::Success),
        (4, ReasonCode::NoMatchingSubscribers),
        (5, ReasonCode::Success),
    ] {
        assert_eq!(
            publisher.expect().await,
            Packet::PubAck(Ack::new(id, reason))
        );
    }
    // Durability `Full`: each PUBACK waited for its commit.
    let queued: Vec<String> = store
        .load()
        .expect("load")
        .queued
        .into_iter()
        .map(|q| q.message.topic)
        .collect();
    assert_eq!(queued, ["a/1", "a/2", "a/3"]);
}

#[tokio::test]
async fn one_unsubscribe_removes_every_stored_filter_it_names() {
    let (broker, store) = memory_broker();
    let mut client = Client::start(&broker);
    client.connect("keeper", 60, Some(3600)).await;
    client.subscribe("a/1", QoS::AtLeastOnce).await;
    client.subscribe("a/2", QoS::AtLeastOnce).await;
    assert_eq!(store.load().expect("load").subscriptions.len(), 2);

    client
        .send(Packet::Unsubscribe(Unsubscribe {
            packet_id: 4,
            filters: vec!["a/none".into(), "a/1".into(), "a/2".into()],
            properties: Properties::default(),
        }))
        .await;
    match client.expect().await {
        Packet::UnsubAck(ack) => assert_eq!(
            ack.reasons,
            vec![
                ReasonCode::NoSubscriptionExisted,
                ReasonCode::Success,
                ReasonCode::Success
            ]
        ),
        other => panic!("expected UNSUBACK, got {other:?}"),
    }
    // UNSUBACK waited for the deletions.
    assert!(store.load().expect("load").subscriptions.is_empty());
}

#[tokio::test]
async fn refusals_are_answered_with_their_reason_codes() {
    let broker = Broker::new(BrokerConfig::default());
    let mut client = Client::start(&broker);
    client.connect("c", 60, None).await;
    assert_eq!(
        client.subscribe("b/#", QoS::AtLeastOnce).await,
        vec![ReasonCode::NotAuthorized]
    );
    assert_eq!(
        client.ask(publish("b/x", QoS::AtLeastOnce, 5, b"no")).await,
        Packet::PubAck(Ack::new(5, ReasonCode::NotAuthorized))
    );
    // Clients never publish to `$` topics.
    assert_eq!(
        client
            .ask(publish("$SYS/x", QoS::AtLeastOnce, 6, b"no"))
            .await,
        Packet::PubAck(Ack::new(6, ReasonCode::NotAuthorized))
    );
    assert_eq!(
        client
            .ask(publish("a/x", QoS::AtLeastOnce, 8, b"yes"))
            .await,
        Packet::PubAck(Ack::new(8, ReasonCode::NoMatchingSubscribers))
    );
    let denials = broker.stats.denials.snapshot();
    assert_eq!(denials.total, 3, "{:?}", denials.entries);
}

#[tokio::test]
async fn a_malformed_packet_closes_with_malformed_packet() {
    let broker = Broker::new(BrokerConfig::default());
    let mut client = Client::start(&broker);
    client.connect("c", 60, None).await;
    // PUBLISH with QoS 3, which no packet may carry.
    client
        .send_raw(&[0x36, 0x05, 0x00, 0x01, b'a', 0x00, 0x01])
        .await;
    client.expect_closed_with(ReasonCode::MalformedPacket).await;
    assert_eq!(broker.stats.snapshot().connected, 0);
}

#[tokio::test]
async fn protocol_violations_close_with_their_reason_codes() {
    let broker = Broker::new(BrokerConfig::default());

    let mut client = Client::start(&broker);
    client.connect("alias", 60, None).await;
    let mut aliased = Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: "a/x".into(),
        packet_id: 0,
        payload: Bytes::from_static(b"x"),
        properties: Properties::default(),
    };
    aliased.properties.topic_alias = Some(broker.config().topic_alias_maximum + 1);
    client.send(Packet::Publish(aliased)).await;
    client
        .expect_closed_with(ReasonCode::TopicAliasInvalid)
        .await;

    let mut client = Client::start(&broker);
    client.connect("twice", 60, None).await;
    // A second CONNECT: encoded by hand, our client codec refuses to.
    client
        .send_raw(&[
            0x10, 0x0d, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x05, 0x02, 0x00, 0x3c, 0x00, 0x00,
            0x00,
        ])
        .await;
    client.expect_closed_with(ReasonCode::ProtocolError).await;
}

#[tokio::test]
async fn a_silent_client_is_closed_at_one_and_a_half_keepalives() {
    let broker = Broker::new(BrokerConfig::default());
    let mut client = Client::start(&broker);
    client.connect("quiet", 1, None).await;
    let started = Instant::now();
    client
        .expect_closed_with(ReasonCode::KeepAliveTimeout)
        .await;
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1400) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
}

/// A client subscribed to `a/will`.
async fn will_watcher(broker: &Arc<Broker>) -> Client {
    let mut watcher = Client::start(broker);
    watcher.connect("watcher", 60, None).await;
    watcher.subscribe("a/will", QoS::AtLeastOnce).await;
    watcher
}

fn will(topic: &str) -> Will {
    Will {
        topic: topic.to_owned(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Properties::default(),
    }
}

#[tokio::test]
async fn a_second_connection_takes_the_session_over() {
    let broker = Broker::new(BrokerConfig::default());
    let mut first = Client::start(&broker);
    first.connect("same", 60, None).await;
    let mut second = Client::start(&broker);
    let ack = second.connect("same", 60, None).await;
    assert_eq!(ack.reason, ReasonCode::Success);
    first.expect_closed_with(ReasonCode::SessionTakenOver).await;
    second.send(Packet::PingReq).await;
    assert_eq!(second.expect().await, Packet::PingResp);
    assert_eq!(broker.stats.snapshot().connected, 1);
}

#[tokio::test]
async fn a_will_is_published_when_the_client_vanishes_and_refused_when_not_allowed() {
    let broker = Broker::new(BrokerConfig::default());
    let mut watcher = will_watcher(&broker).await;

    // A will outside the identity's rights is refused at CONNECT, and counted.
    let mut refused = Client::start(&broker);
    let ack = refused
        .connect_with_will("refused", 60, None, Some(will("b/will")))
        .await;
    assert_eq!(ack.reason, ReasonCode::NotAuthorized);
    assert_eq!(refused.next().await, None);
    let denials = broker.stats.denials.snapshot();
    assert!(
        matches!(denials.entries.as_slice(), [e] if e.kind == DenialKind::Will && e.count == 1),
        "{:?}",
        denials.entries
    );

    let mut leaving = Client::start(&broker);
    let ack = leaving
        .connect_with_will("leaving", 60, None, Some(will("a/will")))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);
    // The stream closes without DISCONNECT: the will goes out.
    leaving.vanish().await;
    let got = received(watcher.expect().await);
    assert_eq!(&*got.topic, "a/will");
    assert_eq!(&got.payload[..], b"gone");
}

#[tokio::test]
async fn a_will_is_checked_again_when_due_retain_right_included() {
    let broker = Broker::new(BrokerConfig::default());
    let mut watcher = will_watcher(&broker).await;
    let mut leaving = Client::start(&broker);
    let retained_will = Will {
        retain: true,
        ..will("a/will")
    };
    let ack = leaving
        .connect_with_will("leaving", 60, None, Some(retained_will))
        .await;
    assert_eq!(ack.reason, ReasonCode::Success);

    // A reload takes the retain right away while the client is connected.
    let (removed, dropped, _) = broker.reauthorize(
        Arc::new(|_: &str| Some(Arc::new(UnderANoRetain) as Arc<dyn Permissions>)),
        Reservation::NONE,
    );
    assert_eq!((removed, dropped), (0, 0));
    leaving.vanish().await;
    // The will was refused, and counted: the watcher's next packet is its PINGRESP.
    assert_eq!(watcher.ask(Packet::PingReq).await, Packet::PingResp);
    let kinds: Vec<DenialKind> = broker
        .stats
        .denials
        .snapshot()
        .entries
        .iter()
        .map(|e| e.kind)
        .collect();
    assert_eq!(kinds, vec![DenialKind::Retain]);
}

/// What an idle connection's task holds is mostly this future: 600 bytes over a
/// duplex stream here (616 before the packet loop moved into a plain `fn`, 608
/// before the codec kept its last topic, 920 before the
/// keepalive sweeper, 1 328 before that), 664 over a `TcpStream` in the release
/// build. tokio rounds a task up to 128 bytes (x86_64, aarch64) with ~104 of its
/// own, so 664 is the edge of a 768-byte task (BENCHMARKS.md, "Idle memory per
/// connection"): not one byte more. An `Arc<str>` inline in the codec (624 here)
/// measured 1.98 KiB per idle plain connection against 1.86.
#[tokio::test]
async fn the_connection_future_stays_small() {
    let (broker, _store) = memory_broker();
    let (_client, server_side) = tokio::io::duplex(64);
    let peer = PeerInfo {
        addr: SocketAddr::from(([127, 0, 0, 1], 40000)),
        listener: ListenerKind::Plain,
        certificate_name: None,
    };
    let future = super::run(
        server_side,
        peer,
        broker,
        Arc::new(AdmitAll),
        Instant::now() + Duration::from_secs(10),
        (),
    );
    let size = std::mem::size_of_val(&future);
    assert!(size <= 600, "the connection's future is {size} bytes");
}
