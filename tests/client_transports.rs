//! `moat-client` (the client of `moat-bench`, `moat doctor --probe` and bridges)
//! against the real `moat serve` over all four transports: plain TCP, TLS, WebSocket
//! and WebSocket over TLS, checked against moat's own CA. Logins, ACLs and the
//! plaintext rule are moat's as for any client; QoS 0, 1 and 2 round-trip.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::{Moat, PASSWORD, start_all_transports};
use moat_client::{
    Client, ClientError, ConnectOptions, DEFAULT_WEBSOCKET_PATH, Endpoint, Roots, TlsConfig,
    TlsOptions, Transport,
};
use moat_protocol::{QoS, ReasonCode};

const WAIT: Duration = Duration::from_secs(10);

struct Listeners {
    moat: Moat,
    plain: u16,
    ws: u16,
    wss: u16,
}

fn start() -> Listeners {
    let (moat, [plain, ws, wss]) = start_all_transports(
        r#"  bridge:
    password_hash: "{hash}"
    plaintext: true
    publish: ["ct/#"]
    subscribe: ["ct/#"]
"#,
    );
    Listeners {
        moat,
        plain,
        ws,
        wss,
    }
}

impl Listeners {
    fn endpoint(&self, transport: Transport) -> Endpoint {
        let at = |port: u16| Endpoint::tcp(SocketAddr::from(([127, 0, 0, 1], port)));
        let tls =
            || TlsConfig::new(TlsOptions::new(Roots::CaFile(self.moat.ca()), "moat.test")).unwrap();
        match transport {
            Transport::Tcp => at(self.plain),
            Transport::Tls => at(self.moat.tls_port).with_tls(tls()),
            Transport::WebSocket => at(self.ws).with_websocket(DEFAULT_WEBSOCKET_PATH),
            Transport::WebSocketTls => at(self.wss)
                .with_tls(tls())
                .with_websocket(DEFAULT_WEBSOCKET_PATH),
        }
    }

    fn login(&self, transport: Transport, client_id: &str) -> ConnectOptions {
        ConnectOptions::new(self.endpoint(transport), client_id)
            .with_credentials("bridge", PASSWORD)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_at_every_qos_over_every_transport() {
    let moat = start();
    for transport in [
        Transport::Tcp,
        Transport::Tls,
        Transport::WebSocket,
        Transport::WebSocketTls,
    ] {
        let (sub, mut incoming) = Client::connect(&moat.login(transport, "ct-sub"))
            .await
            .unwrap_or_else(|e| panic!("{transport:?}: {e}"));
        let granted = sub.subscribe("ct/#", QoS::ExactlyOnce).await.unwrap();
        assert_eq!(granted as u8, 2);
        let (publisher, _) = Client::connect(&moat.login(transport, "ct-pub"))
            .await
            .unwrap();
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let payload = format!("{transport:?} {qos:?}");
            let reason = publisher
                .publish("ct/x", payload.clone(), qos, false)
                .await
                .unwrap();
            assert_eq!(reason, ReasonCode::Success);
            let message = tokio::time::timeout(WAIT, incoming.recv())
                .await
                .expect("delivery within the deadline")
                .unwrap();
            assert_eq!(
                (message.payload.as_ref(), message.qos),
                (payload.as_bytes(), qos)
            );
        }
        // Outside the grant: refused with moat's reason, the connection lives on.
        assert!(matches!(
            publisher
                .publish("elsewhere", "x", QoS::AtLeastOnce, false)
                .await,
            Err(ClientError::Rejected(ReasonCode::NotAuthorized))
        ));
        publisher
            .publish("ct/y", "after", QoS::AtLeastOnce, false)
            .await
            .unwrap();
        assert_eq!(
            tokio::time::timeout(WAIT, incoming.recv())
                .await
                .unwrap()
                .unwrap()
                .payload,
            &b"after"[..]
        );
        publisher.disconnect().await.unwrap();
        sub.disconnect().await.unwrap();
    }
}

#[tokio::test]
async fn anonymous_and_wrong_password_logins_are_refused() {
    let moat = start();
    for transport in [Transport::Tls, Transport::WebSocketTls] {
        let anonymous = ConnectOptions::new(moat.endpoint(transport), "ct-anon");
        match Client::connect(&anonymous).await {
            Err(ClientError::Refused(reason)) => assert!(reason.is_error()),
            Err(other) => panic!("{transport:?}: expected a refusal, got {other}"),
            Ok(_) => panic!("{transport:?}: an anonymous login was accepted"),
        }
        let wrong = ConnectOptions::new(moat.endpoint(transport), "ct-wrong")
            .with_credentials("bridge", "not the password");
        assert!(matches!(
            Client::connect(&wrong).await,
            Err(ClientError::Refused(
                ReasonCode::BadUserNameOrPassword | ReasonCode::NotAuthorized
            ))
        ));
    }
}
