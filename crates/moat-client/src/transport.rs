//! Where and how to reach a broker: the address, plain TCP or TLS, optionally
//! WebSocket on top (path configurable, `/mqtt` by default), the local source address
//! and an optional read counter. [`Endpoint::open`] returns a byte stream ready for
//! MQTT; it knows nothing of MQTT packets.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpSocket, TcpStream};

use crate::ClientError;
use crate::tls::TlsConfig;
use crate::websocket;
use crate::wire::{Counted, WireCount};

/// The path most MQTT-over-WebSocket clients and brokers use.
pub const DEFAULT_WEBSOCKET_PATH: &str = "/mqtt";

/// Any byte stream a client can run over.
pub trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// The four ways to carry MQTT, for display and for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    WebSocket,
    WebSocketTls,
}

/// A broker's address and transport, cheap to clone (the TLS config is shared).
#[derive(Debug, Clone)]
pub struct Endpoint {
    addr: SocketAddr,
    tls: Option<TlsConfig>,
    websocket_path: Option<String>,
    source: Option<IpAddr>,
    read_count: Option<Arc<WireCount>>,
}

impl Endpoint {
    /// Plain MQTT over TCP.
    pub fn tcp(addr: SocketAddr) -> Endpoint {
        Endpoint {
            addr,
            tls: None,
            websocket_path: None,
            source: None,
            read_count: None,
        }
    }

    /// TLS over the TCP connection (under the WebSocket, if any).
    pub fn with_tls(self, tls: TlsConfig) -> Endpoint {
        Endpoint {
            tls: Some(tls),
            ..self
        }
    }

    /// WebSocket framing on top, upgrading at `path` (see [`DEFAULT_WEBSOCKET_PATH`]).
    pub fn with_websocket(self, path: impl Into<String>) -> Endpoint {
        Endpoint {
            websocket_path: Some(path.into()),
            ..self
        }
    }

    /// Binds the local end to `source` (port 0) before connecting.
    pub fn with_source(self, source: IpAddr) -> Endpoint {
        Endpoint {
            source: Some(source),
            ..self
        }
    }

    /// Every connection opened adds what it reads from its socket to `count`.
    pub fn with_read_count(self, count: Arc<WireCount>) -> Endpoint {
        Endpoint {
            read_count: Some(count),
            ..self
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn transport(&self) -> Transport {
        match (self.tls.is_some(), self.websocket_path.is_some()) {
            (false, false) => Transport::Tcp,
            (true, false) => Transport::Tls,
            (false, true) => Transport::WebSocket,
            (true, true) => Transport::WebSocketTls,
        }
    }

    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Connects (TCP_NODELAY on), then TLS, then the WebSocket upgrade, as configured.
    /// The caller bounds the time.
    pub async fn open(&self) -> Result<Box<dyn Stream>, ClientError> {
        let addr = self.addr;
        let connect = async {
            let socket = if addr.is_ipv4() {
                TcpSocket::new_v4()?
            } else {
                TcpSocket::new_v6()?
            };
            if let Some(source) = self.source {
                socket.bind(SocketAddr::new(source, 0))?;
            }
            let tcp: TcpStream = socket.connect(addr).await?;
            tcp.set_nodelay(true)?;
            Ok(tcp)
        };
        let tcp = connect
            .await
            .map_err(|source| ClientError::Connect { addr, source })?;
        match &self.read_count {
            Some(count) => {
                self.secure(Counted::new(tcp, Arc::clone(count), self.is_tls()))
                    .await
            }
            None => self.secure(tcp).await,
        }
    }

    async fn secure<S: Stream + 'static>(&self, tcp: S) -> Result<Box<dyn Stream>, ClientError> {
        match &self.tls {
            Some(tls) => {
                let addr = self.addr;
                let stream = tls
                    .connector
                    .connect(tls.server_name.clone(), tcp)
                    .await
                    .map_err(|source| ClientError::TlsHandshake { addr, source })?;
                self.frame(stream).await
            }
            None => self.frame(tcp).await,
        }
    }

    async fn frame<S: Stream + 'static>(&self, stream: S) -> Result<Box<dyn Stream>, ClientError> {
        match &self.websocket_path {
            Some(path) => {
                let host = match &self.tls {
                    Some(tls) => tls.server_name.to_str().into_owned(),
                    None => self.addr.to_string(),
                };
                Ok(Box::new(websocket::upgrade(stream, &host, path).await?))
            }
            None => Ok(Box::new(stream)),
        }
    }
}
