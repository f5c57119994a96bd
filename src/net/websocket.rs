//! MQTT over WebSocket (RFC 6455, MQTT 5.0 section 6): the HTTP/1.1 upgrade and a
//! byte stream over binary frames, for browser dashboards, Node-RED and Home
//! Assistant's "websockets" transport. It owns the upgrade (bounded header size;
//! the caller bounds the time) and the framing; the stream it returns carries MQTT
//! bytes exactly as a TCP or TLS stream does, so the broker's connection driver
//! runs unchanged on top. Like `tls_stream`, its buffers are allocated only while
//! they hold data. It knows nothing of MQTT or of the broker.
//!
//! What it refuses, closing the connection: a request that is not a WebSocket
//! upgrade (400), one that does not offer the `mqtt` subprotocol (400), headers over
//! `MAX_REQUEST`, a client frame without a mask, text frames (MQTT 5.0 [MQTT-6.0.0-1]:
//! only binary frames carry MQTT), reserved opcodes or bits, and control frames that
//! are fragmented or longer than 125 bytes. A frame's declared length is never
//! allocated: payload is unmasked as it streams through.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Largest upgrade request (request line and headers) accepted.
pub const MAX_REQUEST: usize = 8 * 1024;
/// RFC 6455 section 1.3: appended to the client's key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Bytes asked of the inner stream per read.
const READ_SIZE: usize = 4096;
/// Payload framed per `poll_write`, so the outgoing buffer stays small.
const WRITE_CHUNK: usize = 16 * 1024;
/// Longest control frame payload (RFC 6455 section 5.5).
const MAX_CONTROL: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Why an upgrade or a frame was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WsError {
    #[error("the upgrade request is larger than {MAX_REQUEST} bytes")]
    RequestTooLarge,
    #[error("the connection closed during the upgrade")]
    Closed,
    #[error("not a WebSocket upgrade: {0}")]
    NotAnUpgrade(&'static str),
    #[error("the client offers no `mqtt` subprotocol (Sec-WebSocket-Protocol)")]
    NoMqttSubprotocol,
    #[error("invalid frame: {0}")]
    Frame(&'static str),
}

impl From<WsError> for io::Error {
    fn from(e: WsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

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
    let mut ws = WsStream::new(stream);
    ws.incoming = upgrade.leftover;
    Ok((ws, upgrade.path))
}

async fn reject<S: AsyncWrite + Unpin>(stream: &mut S, status: &str) -> io::Result<()> {
    let response = format!("HTTP/1.1 {status}\r\nConnection: close\r\nContent-Length: 0\r\n\r\n");
    stream.write_all(response.as_bytes()).await?;
    stream.shutdown().await
}

/// The end of the header block (just past `\r\n\r\n`).
fn find_end(request: &[u8]) -> Option<usize> {
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
fn parse_request(head: &[u8], leftover: Vec<u8>) -> Result<Upgrade, WsError> {
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

/// Where the reader is within the client's frames.
#[derive(Debug, Clone, Copy)]
enum ReadState {
    /// Between frames: the next bytes are a frame header.
    Header,
    /// Inside a data frame: `remaining` payload bytes, unmasked with `mask` from
    /// payload offset `offset`.
    Payload {
        remaining: u64,
        mask: [u8; 4],
        offset: usize,
    },
    /// The client sent a close frame (answered), or the stream ended.
    Closed,
}

/// A WebSocket server stream: reads give the payload of binary frames, writes send
/// binary frames. See the module documentation.
pub struct WsStream<S> {
    inner: S,
    /// Bytes read from the inner stream and not yet consumed.
    incoming: Vec<u8>,
    consumed: usize,
    /// Frames for the client (data, pong, close), written from `sent` on.
    outgoing: Vec<u8>,
    sent: usize,
    state: ReadState,
    /// A data message is being continued (the last data frame had no FIN).
    fragmented: bool,
    close_queued: bool,
}

impl<S> WsStream<S> {
    fn new(inner: S) -> WsStream<S> {
        WsStream {
            inner,
            incoming: Vec::new(),
            consumed: 0,
            outgoing: Vec::new(),
            sent: 0,
            state: ReadState::Header,
            fragmented: false,
            close_queued: false,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.incoming[self.consumed..]
    }

    fn consume(&mut self, n: usize) {
        self.consumed += n;
        if self.consumed == self.incoming.len() {
            // Idle connections keep no buffer.
            self.incoming = Vec::new();
            self.consumed = 0;
        }
    }

    /// Queues a frame for the client (server frames are not masked).
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) {
        self.outgoing.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.outgoing.push(n as u8),
            n if n <= usize::from(u16::MAX) => {
                self.outgoing.push(126);
                self.outgoing.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.outgoing.push(127);
                self.outgoing.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.outgoing.extend_from_slice(payload);
    }

    /// Parses one frame header from the unread bytes: `None` until it is complete.
    /// Control frames are taken whole (header and payload) and answered here.
    fn parse_header(&mut self) -> Result<Option<ReadState>, WsError> {
        let buf = self.unread();
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(WsError::Frame("reserved bits set"));
        }
        if b1 & 0x80 == 0 {
            return Err(WsError::Frame("client frames must be masked"));
        }
        let (len, mut at) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        if buf.len() < at + 4 {
            return Ok(None);
        }
        let mut mask = [0u8; 4];
        mask.copy_from_slice(&buf[at..at + 4]);
        at += 4;
        match opcode {
            OP_BINARY | OP_CONTINUATION => {
                if (opcode == OP_CONTINUATION) != self.fragmented {
                    return Err(WsError::Frame("continuation out of sequence"));
                }
                self.fragmented = !fin;
                self.consume(at);
                Ok(Some(ReadState::Payload {
                    remaining: len,
                    mask,
                    offset: 0,
                }))
            }
            OP_TEXT => Err(WsError::Frame("text frame (MQTT travels in binary frames)")),
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL as u64 {
                    return Err(WsError::Frame("fragmented or oversized control frame"));
                }
                let len = len as usize;
                if buf.len() < at + len {
                    return Ok(None);
                }
                let payload: Vec<u8> = buf[at..at + len]
                    .iter()
                    .enumerate()
                    .map(|(i, b)| b ^ mask[i % 4])
                    .collect();
                self.consume(at + len);
                Ok(Some(self.control(opcode, &payload)))
            }
            _ => Err(WsError::Frame("reserved opcode")),
        }
    }

    /// Answers a control frame; returns the state to read on in.
    fn control(&mut self, opcode: u8, payload: &[u8]) -> ReadState {
        match opcode {
            OP_PING => {
                self.queue_frame(OP_PONG, payload);
                ReadState::Header
            }
            OP_CLOSE => {
                if !self.close_queued {
                    self.close_queued = true;
                    // Echo the status code (RFC 6455 section 5.5.1).
                    let status = payload.get(..2).unwrap_or(&[0x03, 0xE8]).to_vec();
                    self.queue_frame(OP_CLOSE, &status);
                }
                ReadState::Closed
            }
            _ => ReadState::Header,
        }
    }
}

impl<S: AsyncWrite + Unpin> WsStream<S> {
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.outgoing.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.outgoing[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.outgoing = Vec::new();
        self.sent = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            // Pongs and the close answer go out as soon as the socket takes them.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
            match this.state {
                ReadState::Closed => return Poll::Ready(Ok(())),
                ReadState::Payload { remaining: 0, .. } => {
                    // The next frame may already be buffered: parse before reading.
                    this.state = ReadState::Header;
                    continue;
                }
                ReadState::Payload {
                    remaining,
                    mask,
                    offset,
                } if !this.unread().is_empty() => {
                    let n = this
                        .unread()
                        .len()
                        .min(buf.remaining())
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    let start = this.consumed;
                    let unmasked: Vec<u8> = this.incoming[start..start + n]
                        .iter()
                        .enumerate()
                        .map(|(i, b)| b ^ mask[(offset + i) % 4])
                        .collect();
                    buf.put_slice(&unmasked);
                    this.consume(n);
                    this.state = ReadState::Payload {
                        remaining: remaining - n as u64,
                        mask,
                        offset: (offset + n) % 4,
                    };
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header => {
                    if let Some(next) = this.parse_header()? {
                        this.state = next;
                        continue;
                    }
                }
                ReadState::Payload { .. } => {}
            }
            // More bytes are needed.
            let mut chunk = [0u8; READ_SIZE];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                this.state = ReadState::Closed;
                return Poll::Ready(Ok(()));
            }
            this.incoming.extend_from_slice(read.filled());
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if buf.is_empty() {
            return Poll::Ready(Ok(0));
        }
        if this.close_queued {
            return Poll::Ready(Err(io::ErrorKind::BrokenPipe.into()));
        }
        // One frame at a time: earlier frames leave before more are made.
        ready!(this.poll_send(cx))?;
        let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
        this.queue_frame(OP_BINARY, chunk);
        // Start sending now; what the socket does not take waits for the next
        // write or flush.
        if let Poll::Ready(Err(e)) = this.poll_send(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(chunk.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.close_queued {
            this.close_queued = true;
            this.queue_frame(OP_CLOSE, &1000u16.to_be_bytes());
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream, duplex};

    /// RFC 6455 section 1.3's worked example.
    #[test]
    fn accept_key_matches_the_rfc() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn request(protocol: &str) -> String {
        format!(
            "GET /mqtt HTTP/1.1\r\nHost: moat\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
        )
    }

    #[test]
    fn requests_are_checked() {
        let ok = request("Sec-WebSocket-Protocol: mqtt\r\n");
        let up = parse_request(ok.as_bytes(), Vec::new()).unwrap();
        assert_eq!((up.path.as_str(), up.protocol), ("/mqtt", "mqtt"));
        let v31 = request("Sec-WebSocket-Protocol: mqttv3.1\r\n");
        assert_eq!(
            parse_request(v31.as_bytes(), Vec::new()).unwrap().protocol,
            "mqttv3.1"
        );
        assert_eq!(
            parse_request(request("").as_bytes(), Vec::new()),
            Err(WsError::NoMqttSubprotocol)
        );
        let post = ok.replacen("GET", "POST", 1);
        assert!(parse_request(post.as_bytes(), Vec::new()).is_err());
        let v8 = ok.replace("Version: 13", "Version: 8");
        assert!(parse_request(v8.as_bytes(), Vec::new()).is_err());
        let no_upgrade = ok.replace("Upgrade: websocket\r\n", "");
        assert!(parse_request(no_upgrade.as_bytes(), Vec::new()).is_err());
    }

    /// A client frame, masked as clients must.
    fn client_frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = vec![(u8::from(fin) << 7) | opcode];
        match payload.len() {
            n if n < 126 => f.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&mask);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        f
    }

    async fn upgraded(
        protocol: &str,
    ) -> (
        Result<(WsStream<DuplexStream>, String), WsError>,
        DuplexStream,
    ) {
        let (server, mut client) = duplex(64 * 1024);
        client
            .write_all(request(protocol).as_bytes())
            .await
            .unwrap();
        (accept(server).await, client)
    }

    #[tokio::test]
    async fn upgrade_then_frames_carry_bytes_both_ways() {
        let (server, mut client) = duplex(256 * 1024);
        let mut bytes = request("Sec-WebSocket-Protocol: mqtt\r\n").into_bytes();
        // The first frame arrives in the same write as the request, and a message
        // is split across a binary frame and a continuation, with a ping between.
        bytes.extend(client_frame(OP_BINARY, false, b"hello "));
        bytes.extend(client_frame(OP_PING, true, b"p"));
        bytes.extend(client_frame(OP_CONTINUATION, true, &vec![7u8; 70_000]));
        client.write_all(&bytes).await.unwrap();
        let (mut ws, path) = accept(server).await.unwrap();
        assert_eq!(path, "/mqtt");

        let mut got = vec![0u8; 6 + 70_000];
        ws.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..6], b"hello ");
        assert!(got[6..].iter().all(|&b| b == 7));

        ws.write_all(b"\x20\x02\x00\x00").await.unwrap();
        ws.flush().await.unwrap();
        let mut response = vec![0u8; 4096];
        let n = client.read(&mut response).await.unwrap();
        let text = String::from_utf8_lossy(&response[..n]).to_string();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        assert!(text.contains("Sec-WebSocket-Protocol: mqtt\r\n"));
        let end = find_end(&response[..n]).unwrap();
        let mut frames = response[end..n].to_vec();
        while frames.len() < 3 + 6 {
            let m = client.read(&mut response).await.unwrap();
            frames.extend_from_slice(&response[..m]);
        }
        // The pong (echoing "p"), then our binary frame, unmasked.
        assert_eq!(&frames[..3], &[0x80 | OP_PONG, 1, b'p']);
        assert_eq!(
            &frames[3..9],
            &[0x80 | OP_BINARY, 4, 0x20, 0x02, 0x00, 0x00]
        );
    }

    /// Two frames in one write: the second must be read from the buffer without
    /// waiting for more input (a SUBSCRIBE behind a CONNECT once waited forever).
    #[tokio::test]
    async fn a_buffered_second_frame_needs_no_more_input() {
        let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
        let (mut ws, _) = result.unwrap();
        let mut both = client_frame(OP_BINARY, true, b"one");
        both.extend(client_frame(OP_BINARY, true, b"two"));
        client.write_all(&both).await.unwrap();
        let mut got = [0u8; 6];
        tokio::time::timeout(std::time::Duration::from_secs(5), ws.read_exact(&mut got))
            .await
            .expect("the second frame was buffered")
            .unwrap();
        assert_eq!(&got, b"onetwo");
    }

    #[tokio::test]
    async fn close_is_answered_and_ends_the_stream() {
        let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
        let (mut ws, _) = result.unwrap();
        client
            .write_all(&client_frame(OP_CLOSE, true, &1001u16.to_be_bytes()))
            .await
            .unwrap();
        let mut buf = [0u8; 16];
        assert_eq!(ws.read(&mut buf).await.unwrap(), 0);
        assert!(ws.write_all(b"x").await.is_err());
    }

    #[tokio::test]
    async fn hostile_frames_are_errors() {
        for bad in [
            client_frame(OP_TEXT, true, b"{}"),
            client_frame(0x3, true, b""),
            client_frame(OP_PING, false, b""),
            client_frame(OP_PING, true, &[0u8; 126]),
            client_frame(OP_CONTINUATION, true, b"x"),
            // Unmasked.
            vec![0x82, 0x01, 0x00],
        ] {
            let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
            let (mut ws, _) = result.unwrap();
            client.write_all(&bad).await.unwrap();
            let mut buf = [0u8; 16];
            assert!(ws.read(&mut buf).await.is_err(), "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_huge_declared_length_is_streamed_not_allocated() {
        let (result, mut client) = upgraded("Sec-WebSocket-Protocol: mqtt\r\n").await;
        let (mut ws, _) = result.unwrap();
        let mut header = vec![0x82, 0x80 | 127];
        header.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        header.extend_from_slice(&[0, 0, 0, 0]);
        header.extend_from_slice(b"abc");
        client.write_all(&header).await.unwrap();
        let mut buf = [0u8; 16];
        let n = ws.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"abc");
        assert!(ws.incoming.capacity() == 0);
    }

    #[tokio::test]
    async fn refusals_answer_http_errors() {
        let (result, mut client) = upgraded("").await;
        assert_eq!(result.err(), Some(WsError::NoMqttSubprotocol));
        let mut response = String::new();
        client.read_to_string(&mut response).await.unwrap();
        assert!(response.starts_with("HTTP/1.1 400 "), "{response}");

        let (server, mut client) = duplex(64 * 1024);
        let flood = format!("GET / HTTP/1.1\r\nX: {}\r\n", "a".repeat(MAX_REQUEST));
        client.write_all(flood.as_bytes()).await.unwrap();
        assert_eq!(accept(server).await.err(), Some(WsError::RequestTooLarge));
    }
}
