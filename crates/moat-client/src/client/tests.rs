//! The driver against a scripted broker at the other end of an in-memory pipe (the
//! server-role codec of `moat-protocol`): the QoS 2 duplicate rule, the broker's
//! receive maximum, refusals and keep-alive, each step bounded in time.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use moat_protocol::{Codec, ConnAck, Packet, Properties, Role};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::transport::Endpoint;

/// Longer than any timer of the driver, so with paused time its timers fire first.
const STEP: Duration = Duration::from_secs(30);

/// The broker's end: reads the client's packets, writes its own.
struct Broker {
    stream: DuplexStream,
    codec: Codec,
    buffer: BytesMut,
}

impl Broker {
    async fn recv(&mut self) -> Packet {
        loop {
            if let Some(packet) = self.codec.decode(&mut self.buffer).unwrap() {
                return packet;
            }
            let n = tokio::time::timeout(STEP, self.stream.read_buf(&mut self.buffer))
                .await
                .expect("a packet from the client in time")
                .unwrap();
            assert!(n > 0, "the client closed");
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        self.codec.encode(&packet, &mut out).unwrap();
        self.stream.write_all(&out).await.unwrap();
    }
}

/// A client logged in to a scripted broker whose CONNACK carries `connack_props`.
async fn connected(keep_alive: u16, connack_props: Properties) -> (Client, Incoming, Broker) {
    let (near, far) = tokio::io::duplex(64 * 1024);
    let mut broker = Broker {
        stream: far,
        codec: Codec::new(Role::Server, 1024 * 1024),
        buffer: BytesMut::new(),
    };
    let mut options =
        ConnectOptions::new(Endpoint::tcp("127.0.0.1:1".parse().unwrap()), "driver-test");
    options.keep_alive = keep_alive;
    let login = tokio::spawn(async move {
        Connection::login_over(Box::new(near), &options)
            .await
            .map(|c| (c, options.keep_alive))
    });
    assert!(matches!(broker.recv().await, Packet::Connect(_)));
    broker
        .send(Packet::ConnAck(ConnAck {
            session_present: false,
            reason: ReasonCode::Success,
            properties: connack_props,
        }))
        .await;
    let (connection, keep_alive) = login.await.unwrap().unwrap();
    let (client, incoming) = Client::start(connection, keep_alive);
    (client, incoming, broker)
}

fn publish(topic: &str, qos: QoS, packet_id: u16, dup: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos,
        retain: false,
        topic: topic.into(),
        packet_id,
        payload: Bytes::from_static(b"m"),
        properties: Properties::default(),
    })
}

#[tokio::test]
async fn a_resent_qos2_message_is_delivered_once() {
    let (_client, mut incoming, mut broker) = connected(0, Properties::default()).await;
    broker.send(publish("a", QoS::ExactlyOnce, 9, false)).await;
    assert!(matches!(broker.recv().await, Packet::PubRec(a) if a.packet_id == 9));
    // The broker did not see our PUBREC (say) and resends; then releases.
    broker.send(publish("a", QoS::ExactlyOnce, 9, true)).await;
    assert!(matches!(broker.recv().await, Packet::PubRec(a) if a.packet_id == 9));
    broker
        .send(Packet::PubRel(Ack::new(9, ReasonCode::Success)))
        .await;
    assert!(matches!(broker.recv().await, Packet::PubComp(a) if a.packet_id == 9));
    // After the release the id is free again: a new message with it is new.
    broker.send(publish("b", QoS::ExactlyOnce, 9, false)).await;
    assert!(matches!(broker.recv().await, Packet::PubRec(_)));
    assert_eq!(&*incoming.recv().await.unwrap().topic, "a");
    assert_eq!(&*incoming.recv().await.unwrap().topic, "b");
    assert!(incoming.messages.try_recv().is_err(), "delivered twice");
}

#[tokio::test]
async fn publications_wait_for_the_brokers_receive_maximum() {
    let props = Properties {
        receive_maximum: Some(1),
        ..Properties::default()
    };
    let (client, _incoming, mut broker) = connected(0, props).await;
    let first = tokio::spawn({
        let client = client.clone();
        async move { client.publish("t", "1", QoS::AtLeastOnce, false).await }
    });
    let first_id = match broker.recv().await {
        Packet::Publish(p) => p.packet_id,
        other => panic!("{other:?}"),
    };
    let second = tokio::spawn({
        let client = client.clone();
        async move { client.publish("t", "2", QoS::ExactlyOnce, false).await }
    });
    // Nothing more may come while the first is unacknowledged.
    let early = tokio::time::timeout(Duration::from_millis(200), broker.recv()).await;
    assert!(
        early.is_err(),
        "a second QoS 1/2 PUBLISH beyond receive maximum 1"
    );
    broker
        .send(Packet::PubAck(Ack::new(
            first_id,
            ReasonCode::NoMatchingSubscribers,
        )))
        .await;
    assert_eq!(
        first.await.unwrap().unwrap(),
        ReasonCode::NoMatchingSubscribers
    );
    let second_id = match broker.recv().await {
        Packet::Publish(p) => p.packet_id,
        other => panic!("{other:?}"),
    };
    broker
        .send(Packet::PubRec(Ack::new(second_id, ReasonCode::Success)))
        .await;
    assert!(matches!(broker.recv().await, Packet::PubRel(a) if a.packet_id == second_id));
    broker
        .send(Packet::PubComp(Ack::new(second_id, ReasonCode::Success)))
        .await;
    assert_eq!(second.await.unwrap().unwrap(), ReasonCode::Success);
}

#[tokio::test]
async fn refusals_and_a_disconnect_reach_the_caller() {
    let (client, mut incoming, mut broker) = connected(0, Properties::default()).await;
    let refused = tokio::spawn({
        let client = client.clone();
        async move { client.publish("t", "x", QoS::AtLeastOnce, false).await }
    });
    let Packet::Publish(p) = broker.recv().await else {
        panic!("expected PUBLISH")
    };
    broker
        .send(Packet::PubAck(Ack::new(
            p.packet_id,
            ReasonCode::NotAuthorized,
        )))
        .await;
    assert!(matches!(
        refused.await.unwrap(),
        Err(ClientError::Rejected(ReasonCode::NotAuthorized))
    ));
    broker
        .send(Packet::Disconnect(Disconnect {
            reason: ReasonCode::SessionTakenOver,
            properties: Properties::default(),
        }))
        .await;
    assert!(matches!(
        incoming.recv().await,
        Err(ClientError::Disconnected(ReasonCode::SessionTakenOver))
    ));
    assert!(matches!(
        client.publish("t", "x", QoS::AtMostOnce, false).await,
        Err(ClientError::Stopped)
    ));
}

#[tokio::test(start_paused = true)]
async fn keep_alive_pings_and_a_silent_broker_ends_the_connection() {
    let (_client, mut incoming, mut broker) = connected(10, Properties::default()).await;
    // Half the keep-alive: a PINGREQ; answered, the connection lives on.
    assert!(matches!(broker.recv().await, Packet::PingReq));
    broker.send(Packet::PingResp).await;
    assert!(matches!(broker.recv().await, Packet::PingReq));
    // Unanswered: at the next tick the client gives up.
    let ended = tokio::time::timeout(Duration::from_secs(60), incoming.recv())
        .await
        .expect("the client ends a connection whose PINGREQ is not answered");
    assert!(matches!(ended, Err(ClientError::Timeout("PINGRESP"))));
}
