//! Accept loops: one per listener. Each accepted socket is admitted (network, caps)
//! before any byte is read, then TLS (for the TLS listener) and the MQTT connection
//! driver run in their own task under one deadline.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::net::TcpListener;

use crate::broker::{Broker, Gatekeeper, ListenerKind, PeerInfo, connection};

use super::admission::Admission;
use super::tls::{TlsSettings, handshake};

/// A bound listener and what it serves.
pub struct Listener {
    pub socket: TcpListener,
    pub kind: ListenerKind,
}

impl Listener {
    pub async fn bind(addr: SocketAddr, kind: ListenerKind) -> std::io::Result<Listener> {
        Ok(Listener {
            socket: TcpListener::bind(addr).await?,
            kind,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// Accepts connections forever.
pub async fn serve_listener(
    listener: Listener,
    admission: Arc<Admission>,
    tls: Arc<ArcSwap<TlsSettings>>,
    broker: Arc<Broker>,
    gate: Arc<dyn Gatekeeper>,
) {
    loop {
        let (tcp, addr) = match listener.socket.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: back off briefly, keep serving.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let slot = match admission.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                broker.stats.refused();
                tracing::info!(target: "moat::audit", peer = %addr, ?refusal, "connection refused before TLS");
                drop(tcp);
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + broker.config().connect_timeout;
        let (broker, gate) = (Arc::clone(&broker), Arc::clone(&gate));
        // One task per connection, sized for its transport's stream and the steady
        // state alone: a plaintext connection's task must not carry room for a TLS
        // stream, and a TLS connection's must not keep room for the handshake.
        match listener.kind {
            ListenerKind::Plain => {
                let peer = PeerInfo {
                    addr,
                    listener: ListenerKind::Plain,
                    certificate_name: None,
                };
                tokio::spawn(connection::run(tcp, peer, broker, gate, deadline, slot));
            }
            ListenerKind::Tls => {
                let tls = Arc::clone(&tls);
                tokio::spawn(async move {
                    let shaken =
                        tokio::time::timeout_at(deadline.into(), handshake(&tls, tcp)).await;
                    let (stream, certificate_name) = match shaken {
                        Ok(Ok(done)) => done,
                        Ok(Err(e)) => {
                            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(peer = %addr, "TLS handshake deadline passed");
                            return;
                        }
                    };
                    let peer = PeerInfo {
                        addr,
                        listener: ListenerKind::Tls,
                        certificate_name,
                    };
                    // The handshake's task ends here; the connection gets its own.
                    tokio::spawn(connection::run(stream, peer, broker, gate, deadline, slot));
                });
            }
        }
    }
}
