//! rumqttc (a Rust client, v3.1.1 and v5) over TLS with the CA and a password:
//! QoS 1 and 2 round trips.

mod common;

use std::sync::Arc;
use std::time::Duration;

use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

use common::Moat;

const BODY: &str = r##"users:
  rust:
    password_hash: "{HASH}"
    publish: ["rust/#"]
    subscribe: ["rust/#"]
"##;

fn tls_config(moat: &Moat) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_file(moat.ca()).unwrap())
        .unwrap();
    Arc::new(
        rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v311_qos1_and_qos2() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
    let moat = Moat::start(BODY);
    let mut options = MqttOptions::new("rumqttc-311", "127.0.0.1", moat.tls_port);
    options.set_credentials("rust", common::PASSWORD);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_config(&moat),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe("rust/#", QoS::ExactlyOnce).await.unwrap();
    let mut received = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let mut published = false;
    while received.len() < 2 {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("in time")
            .expect("no error");
        match event {
            Event::Incoming(Packet::SubAck(_)) if !published => {
                client
                    .publish("rust/q1", QoS::AtLeastOnce, false, "one")
                    .await
                    .unwrap();
                client
                    .publish("rust/q2", QoS::ExactlyOnce, false, "two")
                    .await
                    .unwrap();
                published = true;
            }
            Event::Incoming(Packet::Publish(p)) => {
                received.push((p.topic.clone(), p.payload.to_vec()))
            }
            _ => {}
        }
    }
    received.sort();
    assert_eq!(
        received,
        vec![
            ("rust/q1".to_string(), b"one".to_vec()),
            ("rust/q2".to_string(), b"two".to_vec())
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rumqttc_v5_qos1() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};
    use rumqttc::{TlsConfiguration, Transport};
    let moat = Moat::start(BODY);
    let mut options = MqttOptions::new("rumqttc-5", "127.0.0.1", moat.tls_port);
    options.set_credentials("rust", common::PASSWORD);
    options.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
        tls_config(&moat),
    )));
    let (client, mut events) = AsyncClient::new(options, 16);
    client.subscribe("rust/v5", QoS::AtLeastOnce).await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        let event = tokio::time::timeout_at(deadline, events.poll())
            .await
            .expect("in time")
            .expect("no error");
        match event {
            Event::Incoming(Packet::SubAck(_)) => {
                client
                    .publish("rust/v5", QoS::AtLeastOnce, false, "five")
                    .await
                    .unwrap();
            }
            Event::Incoming(Packet::Publish(p)) => {
                assert_eq!(&p.payload[..], b"five");
                break;
            }
            _ => {}
        }
    }
}
