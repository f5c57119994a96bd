//! The HTTP/1.1 upgrade (RFC 6455 section 4): reading the request within
//! `MAX_REQUEST`, checking it, choosing the `mqtt` subprotocol, and answering 101 (or
//! 400/431 before closing). Frames are `stream`'s.

use std::io;

use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::WsError;
use super::stream::WsStream;

/// Largest upgrade request (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// RFC 6455 section 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// A parsed upgrade request: what the response needs, and what was read past it.
#[derive(Debug, PartialEq, Eq)]
pub struct Upgrade {
    pub path: String,
    /// The subprotocol to answer with: `mqtt`, or `mqttv3.1` for MQTT 3.1 clients.
    pub protocol: &'static str,
    key: String,
    /// Bytes the client sent after the request (its first frames).
    pub leftover: Vec<u8>,
}

/// Reads and answers the HTTP upgrade; on success the returned stream carries MQTT.
/// Any path is accepted, as Mosquitto does (clients default to `/mqtt`, Home
/// Assistant's websockets transport to `/`). The caller bounds the time.
pub async fn accept<S>(mut stream: S) -> Result<(WsStream<S>, String), WsError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut request = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let end = loop {
        let n = stream.read(&mut chunk).await.map_err(|_| WsError::Closed)?;
        if n == 0 {
            return Err(WsError::Closed);
        }
        request.extend_from_slice(&chunk[..n]);
        if let Some(end) = find_end(&request) {
            break end;
        }
        if request.len() > MAX_REQUEST {
            let _ = reject(&mut stream, "431 Request Header Fields Too Large").await;
            return Err(WsError::RequestTooLarge);
        }
    };
    let upgrade = match parse_request(&request[..end], request[end..].to_vec()) {
        Ok(upgrade) => upgrade,
        Err(e) => {
            let _ = reject(&mut stream, "400 Bad Request").await;
            return Err(e);
        }
    };
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {}\r\n\r\n",
        accept_key(&upgrade.key),
        upgrade.protocol
    );
    stream
        .write_all(response.as_bytes())
        .await
        .map_err(|_| WsError::Closed)?;
    stream.flush().await.map_err(|_| WsError::Closed)?;
    Ok((WsStream::new(stream, upgrade.leftover), upgrade.path))
}

async fn reject<S: AsyncWrite + Unpin>(stream: &mut S, status: &str) -> io::Result<()> {
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The end of the header block (just past `\r\n\r\n`).
pub(super) fn find_end(request: &[u8]) -> Option<usize> {
    request
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// `Sec-WebSocket-Accept` for a client key (RFC 6455 section 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    Base64::encode_string(&sha.finalize())
}

/// Checks an upgrade request (RFC 6455 section 4.2.1) and picks the subprotocol.
pub(super) fn parse_request(head: &[u8], leftover: Vec<u8>) -> Result<Upgrade, WsError> {
    let text = std::str::from_utf8(head).map_err(|_| WsError::NotAnUpgrade("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some("GET"), Some(path), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(WsError::NotAnUpgrade(
            "the request is not `GET <path> HTTP/1.1`",
        ));
    };
    if version != "HTTP/1.1" || !path.starts_with('/') {
        return Err(WsError::NotAnUpgrade(
            "the request is not `GET <path> HTTP/1.1`",
        ));
    }
    let (mut upgrade, mut connection, mut key, mut ws_version, mut protocols) =
        (false, false, None, None, Vec::new());
    for line in lines.filter(|l| !l.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(WsError::NotAnUpgrade("a header line without a colon"));
        };
        let value = value.trim();
        let tokens = || value.split(',').map(str::trim);
        match name.trim().to_ascii_lowercase().as_str() {
            "upgrade" => upgrade = tokens().any(|t| t.eq_ignore_ascii_case("websocket")),
            "connection" => connection = tokens().any(|t| t.eq_ignore_ascii_case("upgrade")),
            "sec-websocket-key" => key = Some(value.to_owned()),
            "sec-websocket-version" => ws_version = Some(value.to_owned()),
            "sec-websocket-protocol" => protocols.extend(tokens().map(str::to_owned)),
            _ => {}
        }
    }
    if !upgrade || !connection {
        return Err(WsError::NotAnUpgrade(
            "no `Upgrade: websocket` and `Connection: Upgrade`",
        ));
    }
    if ws_version.as_deref() != Some("13") {
        return Err(WsError::NotAnUpgrade("Sec-WebSocket-Version is not 13"));
    }
    let key = key.ok_or(WsError::NotAnUpgrade("no Sec-WebSocket-Key"))?;
    if Base64::decode_vec(&key).map_or(true, |k| k.len() != 16) {
        return Err(WsError::NotAnUpgrade(
            "Sec-WebSocket-Key is not 16 bytes of base64",
        ));
    }
    let protocol = if protocols.iter().any(|p| p == "mqtt") {
        "mqtt"
    } else if protocols.iter().any(|p| p == "mqttv3.1") {
        "mqttv3.1"
    } else {
        return Err(WsError::NoMqttSubprotocol);
    };
    Ok(Upgrade {
        path: path.to_owned(),
        protocol,
        key,
        leftover,
    })
}
