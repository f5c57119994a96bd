//! Binding listeners, and the accept loops: one per listener. Each accepted socket
//! is admitted (network, caps) before any byte is read, then TLS (for TLS
//! listeners), the WebSocket upgrade (for WebSocket listeners) and the MQTT
//! connection driver run in their own task, TLS and upgrade under the CONNECT
//! deadline.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;

use crate::broker::stats::RefusalReason;
use crate::broker::{Broker, Gatekeeper, ListenerKind, PeerInfo, connection};

use super::admission::{Admission, Refusal, canonical_ip};
use super::tls::{TlsSettings, handshake};
use super::tls_stream::TlsStream;
use super::websocket::{self, WsStream};

/// A bound listener and what it serves.
pub struct Listener {
    pub socket: TcpListener,
    /// TLS or plaintext: what the broker's login rules care about.
    pub kind: ListenerKind,
    /// MQTT travels in WebSocket frames (after an HTTP upgrade).
    pub websocket: bool,
}

/// The backlog tokio's `TcpListener::bind` uses too.
const BACKLOG: i32 = 1024;

impl Listener {
    /// Binds `addr`. The IPv6 wildcard `::` takes both families (IPV6_V6ONLY off,
    /// whatever `net.ipv6.bindv6only` says; IPv4 peers appear as `::ffff:a.b.c.d`,
    /// which admission judges as IPv4). On a host without IPv6 it falls back to
    /// `0.0.0.0`, and says so.
    pub async fn bind(
        addr: SocketAddr,
        kind: ListenerKind,
        websocket: bool,
    ) -> std::io::Result<Listener> {
        let socket = if addr.ip() == IpAddr::V6(Ipv6Addr::UNSPECIFIED) {
            match bind_dual_stack(addr) {
                Ok(socket) => socket,
                Err(e) if ipv6_unavailable(&e) => {
                    let v4 = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), addr.port());
                    tracing::warn!(address = %addr, error = %e, fallback = %v4,
                        "IPv6 is not available on this host; listening on IPv4 only");
                    TcpListener::bind(v4).await?
                }
                Err(e) => return Err(e),
            }
        } else {
            TcpListener::bind(addr).await?
        };
        Ok(Listener {
            socket,
            kind,
            websocket,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.socket.local_addr()
    }
}

/// An IPv6 socket bound to `addr` that also accepts IPv4, set up as tokio's own
/// `bind` would (SO_REUSEADDR, non-blocking, the same backlog).
fn bind_dual_stack(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::IPV6, Type::STREAM, Some(Protocol::TCP))?;
    socket.set_only_v6(false)?;
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    TcpListener::from_std(socket.into())
}

/// The kernel has no IPv6 (booted with `ipv6.disable=1`, or built without it).
fn ipv6_unavailable(e: &std::io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        [
            Errno::EAFNOSUPPORT,
            Errno::EADDRNOTAVAIL,
            Errno::EPROTONOSUPPORT,
        ]
        .iter()
        .any(|errno| *errno as i32 == code)
    })
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
        // An IPv4 peer of the dual-stack socket is logged and judged as IPv4.
        let addr = SocketAddr::new(canonical_ip(addr.ip()), addr.port());
        let slot = match admission.admit(addr.ip()) {
            Ok(slot) => slot,
            Err(refusal) => {
                broker.stats.refused_for(refusal_reason(refusal));
                tracing::info!(target: "moat::audit", peer = %addr, ?refusal, "connection refused before TLS");
                drop(tcp);
                continue;
            }
        };
        broker.stats.accepted();
        let _ = tcp.set_nodelay(true);
        let deadline = Instant::now() + broker.config().connect_timeout;
        let (broker, gate) = (Arc::clone(&broker), Arc::clone(&gate));
        // One task per connection, sized for its transport's stream and the steady
        // state alone: a plaintext connection's task must not carry room for a TLS
        // stream, and a TLS connection's must not keep room for the handshake.
        let peer = PeerInfo {
            addr,
            listener: listener.kind,
            certificate_name: None,
        };
        match (listener.kind, listener.websocket) {
            (ListenerKind::Plain, false) => {
                tokio::spawn(connection::run(tcp, peer, broker, gate, deadline, slot));
            }
            (ListenerKind::Plain, true) => {
                tokio::spawn(async move {
                    let Some(ws) = upgrade(tcp, deadline, addr).await else {
                        broker.stats.refused_for(RefusalReason::WebSocketUpgrade);
                        return;
                    };
                    tokio::spawn(serve_websocket(ws, peer, broker, gate, deadline, slot));
                });
            }
            (ListenerKind::Tls, websocket) => {
                let tls = Arc::clone(&tls);
                tokio::spawn(async move {
                    let Some((stream, certificate_name)) =
                        tls_handshake(&tls, tcp, deadline, addr).await
                    else {
                        broker.stats.refused_for(RefusalReason::TlsHandshake);
                        return;
                    };
                    let peer = PeerInfo {
                        certificate_name,
                        ..peer
                    };
                    // The handshake's task ends here; the connection gets its own.
                    if !websocket {
                        tokio::spawn(connection::run(stream, peer, broker, gate, deadline, slot));
                    } else if let Some(ws) = upgrade(stream, deadline, addr).await {
                        tokio::spawn(serve_websocket(ws, peer, broker, gate, deadline, slot));
                    } else {
                        broker.stats.refused_for(RefusalReason::WebSocketUpgrade);
                    }
                });
            }
        }
    }
}

/// The broker's name for an admission refusal.
fn refusal_reason(refusal: Refusal) -> RefusalReason {
    match refusal {
        Refusal::NetworkNotAllowed => RefusalReason::Network,
        Refusal::TooManyConnections => RefusalReason::MaxConnections,
        Refusal::TooManyFromAddress => RefusalReason::MaxPerAddress,
    }
}

/// The MQTT connection over a WebSocket, then the closing handshake. The driver
/// drops its stream after a client's DISCONNECT without shutting it down, which
/// for a WebSocket would skip the Close frames and reset a client still sending
/// its own (RFC 6455 section 7.1.1); the connection slot is held until then.
async fn serve_websocket<S, H>(
    mut ws: WsStream<S>,
    peer: PeerInfo,
    broker: Arc<Broker>,
    gate: Arc<dyn Gatekeeper>,
    deadline: Instant,
    slot: H,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send,
    H: Send,
{
    connection::run(&mut ws, peer, broker, gate, deadline, ()).await;
    // Our Close waits at most CLOSE_WAIT for the client's; the rest bounds a
    // client that does not read.
    let _ = tokio::time::timeout(2 * websocket::CLOSE_WAIT, ws.shutdown()).await;
    drop(slot);
}

/// The TLS handshake under the CONNECT deadline; failures are logged (debug: a
/// port scan is not news) and end the connection.
async fn tls_handshake(
    tls: &ArcSwap<TlsSettings>,
    tcp: tokio::net::TcpStream,
    deadline: Instant,
    addr: SocketAddr,
) -> Option<(TlsStream, Option<String>)> {
    match tokio::time::timeout_at(deadline.into(), handshake(tls, tcp)).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            tracing::debug!(peer = %addr, error = %e, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!(peer = %addr, "TLS handshake deadline passed");
            None
        }
    }
}

/// The WebSocket upgrade under the CONNECT deadline. A refusal is logged with its
/// reason: a dashboard that cannot connect should find why in the log.
async fn upgrade<S>(stream: S, deadline: Instant, addr: SocketAddr) -> Option<WsStream<S>>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout_at(deadline.into(), websocket::accept(stream)).await {
        Ok(Ok((ws, path))) => {
            tracing::debug!(peer = %addr, path = %path, "WebSocket upgrade");
            Some(ws)
        }
        Ok(Err(e)) => {
            tracing::info!(peer = %addr, error = %e, "WebSocket upgrade refused");
            None
        }
        Err(_) => {
            tracing::info!(peer = %addr, "WebSocket upgrade deadline passed");
            None
        }
    }
}
