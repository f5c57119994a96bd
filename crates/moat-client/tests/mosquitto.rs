//! The client against a real broker: Debian's `mosquitto` binary, started by the test
//! with four listeners (plain TCP; TLS demanding a client certificate; WebSocket;
//! WebSocket over TLS) and certificates made here. Mosquitto 2.0 cannot start with
//! only WebSocket listeners (eclipse-mosquitto/mosquitto#2284), so the plain one is
//! also the readiness check.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moat_client::{
    Client, ClientCertificate, ClientError, ConnectOptions, Connection, DEFAULT_WEBSOCKET_PATH,
    Endpoint, Roots, TlsConfig, TlsOptions, Transport,
};
use moat_protocol::{Packet, ProtocolVersion, Publish, QoS};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};

const WAIT: Duration = Duration::from_secs(10);

struct Mosquitto {
    child: Child,
    dir: tempfile::TempDir,
    plain: u16,
    tls: u16,
    ws: u16,
    wss: u16,
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A CA, a server certificate for 127.0.0.1 and localhost, and a client certificate.
fn make_certificates(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    for (name, names, usage) in [
        (
            "server",
            vec!["127.0.0.1".to_owned(), "localhost".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "client",
            vec!["client".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let cert = params.signed_by(&key, &issuer).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

fn start() -> Mosquitto {
    let dir = tempfile::tempdir().unwrap();
    make_certificates(dir.path());
    let mut ports = Vec::new();
    while ports.len() < 4 {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let (plain, tls, ws, wss) = (ports[0], ports[1], ports[2], ports[3]);
    let d = dir.path().display();
    let config = format!(
        "allow_anonymous true\n\
         listener {plain} 127.0.0.1\n\
         listener {tls} 127.0.0.1\n\
         cafile {d}/ca.pem\ncertfile {d}/server.pem\nkeyfile {d}/server.key\nrequire_certificate true\n\
         listener {ws} 127.0.0.1\nprotocol websockets\n\
         listener {wss} 127.0.0.1\nprotocol websockets\n\
         certfile {d}/server.pem\nkeyfile {d}/server.key\n"
    );
    std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
    let child = Command::new("mosquitto")
        .arg("-c")
        .arg(dir.path().join("mosquitto.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("the mosquitto binary (Debian: apt-get install mosquitto)");
    let broker = Mosquitto {
        child,
        dir,
        plain,
        tls,
        ws,
        wss,
    };
    let deadline = Instant::now() + WAIT;
    for port in [plain, tls, ws, wss] {
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen on {port}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    broker
}

impl Mosquitto {
    fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }

    fn tls(&self, client_certificate: bool) -> TlsConfig {
        let mut options = TlsOptions::new(Roots::CaFile(self.path("ca.pem")), "localhost");
        if client_certificate {
            options.client_certificate = Some(
                ClientCertificate::from_pem_files(
                    &self.path("client.pem"),
                    &self.path("client.key"),
                )
                .unwrap(),
            );
        }
        TlsConfig::new(options).unwrap()
    }

    fn endpoint(&self, transport: Transport) -> Endpoint {
        let at = |port: u16| Endpoint::tcp(SocketAddr::from(([127, 0, 0, 1], port)));
        match transport {
            Transport::Tcp => at(self.plain),
            Transport::Tls => at(self.tls).with_tls(self.tls(true)),
            Transport::WebSocket => at(self.ws).with_websocket(DEFAULT_WEBSOCKET_PATH),
            Transport::WebSocketTls => at(self.wss)
                .with_tls(self.tls(false))
                .with_websocket(DEFAULT_WEBSOCKET_PATH),
        }
    }
}

async fn next_message(incoming: &mut moat_client::Incoming) -> Publish {
    tokio::time::timeout(WAIT, incoming.recv())
        .await
        .expect("a message within the deadline")
        .expect("a message, not the end of the connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_at_every_qos_over_every_transport() {
    let broker = start();
    for transport in [
        Transport::Tcp,
        Transport::Tls,
        Transport::WebSocket,
        Transport::WebSocketTls,
    ] {
        let endpoint = broker.endpoint(transport);
        assert_eq!(endpoint.transport(), transport);
        let topic = format!("rt/{transport:?}");
        let (sub, mut incoming) = Client::connect(&ConnectOptions::new(
            endpoint.clone(),
            format!("sub-{transport:?}"),
        ))
        .await
        .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        assert_eq!(
            sub.subscribe(format!("{topic}/#"), QoS::ExactlyOnce)
                .await
                .unwrap() as u8,
            2
        );
        let (publisher, _) =
            Client::connect(&ConnectOptions::new(endpoint, format!("pub-{transport:?}")))
                .await
                .unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{transport:?} at {qos:?}");
            let reason = publisher
                .publish(
                    format!("{topic}/{}", qos as u8),
                    payload.clone(),
                    qos,
                    false,
                )
                .await
                .unwrap();
            assert!(!reason.is_error());
            let message = next_message(&mut incoming).await;
            assert_eq!(&*message.topic, format!("{topic}/{}", qos as u8));
            assert_eq!(message.payload, payload.as_bytes());
            assert_eq!(message.qos, qos);
        }
        // A payload larger than one WebSocket frame and one TLS record.
        let big = vec![0x5a_u8; 200_000];
        publisher
            .publish(format!("{topic}/big"), big.clone(), QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(next_message(&mut incoming).await.payload, big);
        publisher.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
        assert!(matches!(incoming.recv().await, Err(ClientError::Stopped)));
    }
}

#[tokio::test]
async fn a_packet_level_connection_speaks_3_1_1_over_websocket() {
    let broker = start();
    let mut options = ConnectOptions::new(broker.endpoint(Transport::WebSocket), "raw-311");
    options.protocol = ProtocolVersion::V311;
    let mut connection = Connection::open(&options).await.unwrap();
    assert_eq!(connection.protocol(), ProtocolVersion::V311);
    let filter = moat_protocol::SubscribeFilter {
        filter: "raw/#".into(),
        options: moat_protocol::SubscriptionOptions {
            qos: QoS::AtLeastOnce,
            no_local: false,
            retain_as_published: false,
            retain_handling: moat_protocol::RetainHandling::SendAtSubscribe,
        },
    };
    let granted = connection.subscribe(vec![filter], WAIT).await.unwrap();
    assert_eq!(granted.len(), 1);
    assert_eq!(granted[0] as u8, 1);
    connection
        .send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "raw/a".into(),
            packet_id: 7,
            payload: bytes::Bytes::from_static(b"hello"),
            properties: Default::default(),
        }))
        .await
        .unwrap();
    // Our PUBACK from the broker and the message itself, in either order.
    let (mut acked, mut delivered) = (false, false);
    while !(acked && delivered) {
        let packet = tokio::time::timeout(WAIT, connection.recv())
            .await
            .unwrap()
            .unwrap()
            .expect("a packet");
        match packet {
            Packet::PubAck(ack) if ack.packet_id == 7 => acked = true,
            Packet::Publish(p) => {
                assert_eq!(p.payload, &b"hello"[..]);
                connection
                    .send(&Packet::PubAck(moat_protocol::Ack::new(
                        p.packet_id,
                        moat_protocol::ReasonCode::Success,
                    )))
                    .await
                    .unwrap();
                delivered = true;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    connection.disconnect().await.unwrap();
}

#[tokio::test]
async fn tls_is_checked_both_ways() {
    let broker = start();
    let addr = SocketAddr::from(([127, 0, 0, 1], broker.tls));
    // The listener demands a client certificate.
    let without = Endpoint::tcp(addr).with_tls(broker.tls(false));
    let refused = Connection::open(&ConnectOptions::new(without, "no-cert")).await;
    assert!(refused.is_err(), "a login without a client certificate");
    // The system's roots do not know this test's CA.
    let system = TlsOptions::new(Roots::System, "localhost");
    let endpoint = Endpoint::tcp(addr).with_tls(TlsConfig::new(system).unwrap());
    match Connection::open(&ConnectOptions::new(endpoint, "system-roots")).await {
        Err(ClientError::TlsHandshake { source, .. }) => {
            assert!(source.to_string().contains("UnknownIssuer"), "{source}")
        }
        Err(other) => panic!("expected a handshake failure, got {other}"),
        Ok(_) => panic!("a certificate from an unknown CA was accepted"),
    }
    // A name the certificate does not carry.
    let wrong = TlsOptions::new(Roots::CaFile(broker.path("ca.pem")), "other.example");
    let endpoint = Endpoint::tcp(SocketAddr::from(([127, 0, 0, 1], broker.wss)))
        .with_tls(TlsConfig::new(wrong).unwrap())
        .with_websocket("/mqtt");
    assert!(matches!(
        Connection::open(&ConnectOptions::new(endpoint, "wrong-name")).await,
        Err(ClientError::TlsHandshake { .. })
    ));
}

#[tokio::test]
async fn keep_alive_holds_an_idle_connection() {
    let broker = start();
    let mut options = ConnectOptions::new(broker.endpoint(Transport::WebSocket), "idle");
    options.keep_alive = 1;
    let (client, mut incoming) = Client::connect(&options).await.unwrap();
    // Mosquitto drops a client silent for 1.5 keep-alives; three pass here.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    client.subscribe("idle/#", QoS::AtLeastOnce).await.unwrap();
    client
        .publish("idle/x", "still here", QoS::AtLeastOnce, false)
        .await
        .unwrap();
    assert_eq!(
        next_message(&mut incoming).await.payload,
        &b"still here"[..]
    );
    client.disconnect().await.unwrap();
}
