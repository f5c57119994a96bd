//! MQTT over WebSocket, the client's side (RFC 6455; MQTT 5.0 section 6): the HTTP/1.1
//! upgrade asking for the `mqtt` subprotocol, then a byte stream carried in binary
//! frames. Every frame we send is masked with a fresh random key (RFC 6455 section
//! 5.3: a client MUST mask); server frames must not be (section 5.1). Pings are
//! answered, a close is echoed and ends the stream. It knows nothing of MQTT.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use base64ct::{Base64, Encoding};
use sha1::{Digest, Sha1};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::ClientError;

/// Longest upgrade response (status line and headers) read.
const MAX_RESPONSE: usize = 8 * 1024;
/// RFC 6455 section 1.3: appended to the key before hashing.
const ACCEPT_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
const READ_SIZE: usize = 16 * 1024;
/// Payload framed per `poll_write`, so a frame's buffer stays small.
const WRITE_CHUNK: usize = 64 * 1024;
const MAX_CONTROL: u64 = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// Sends the upgrade for `path` on `host` and checks the answer: status 101, the
/// accept hash of our key, and the `mqtt` subprotocol. The caller bounds the time.
pub(crate) async fn upgrade<S>(
    mut stream: S,
    host: &str,
    path: &str,
) -> Result<WsStream<S>, ClientError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).map_err(|e| ClientError::WebSocket(format!("random key: {e}")))?;
    let key = Base64::encode_string(&nonce);
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::with_capacity(1024);
    let head_len = loop {
        if let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if response.len() > MAX_RESPONSE {
            return Err(ClientError::WebSocket(format!(
                "the upgrade response is longer than {MAX_RESPONSE} bytes"
            )));
        }
        let mut chunk = [0u8; 1024];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(ClientError::WebSocket(
                "the server closed the connection during the upgrade".into(),
            ));
        }
        response.extend_from_slice(&chunk[..n]);
    };
    check_response(&response[..head_len], &key)?;
    let mut ws = WsStream::new(stream);
    // Frames the server sent right behind its answer.
    ws.incoming = response[head_len..].to_vec();
    Ok(ws)
}

/// `Sec-WebSocket-Accept` for a key (RFC 6455 section 4.2.2).
fn accept_key(key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(key.as_bytes());
    sha.update(ACCEPT_GUID.as_bytes());
    Base64::encode_string(&sha.finalize())
}

fn check_response(head: &[u8], key: &str) -> Result<(), ClientError> {
    let refuse = |why: String| Err(ClientError::WebSocket(why));
    let text = String::from_utf8_lossy(head);
    let mut lines = text.split("\r\n");
    let status = lines.next().unwrap_or_default();
    if status.split_whitespace().nth(1) != Some("101") {
        return refuse(format!("the server answered {status:?}, not 101"));
    }
    let (mut accept, mut protocol) = (None, None);
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "sec-websocket-accept" => accept = Some(value.to_owned()),
            "sec-websocket-protocol" => protocol = Some(value.to_owned()),
            _ => {}
        }
    }
    if accept.as_deref() != Some(accept_key(key).as_str()) {
        return refuse("Sec-WebSocket-Accept does not match our key".into());
    }
    if protocol.as_deref() != Some("mqtt") {
        return refuse(format!(
            "the server chose subprotocol {protocol:?}, not \"mqtt\" (MQTT 5.0 section 6)"
        ));
    }
    Ok(())
}

fn frame_error(why: &'static str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("WebSocket frame: {why}"),
    )
}

/// Where the reader is within the server's frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ReadState {
    Header,
    /// Inside a data frame with this many payload bytes to come.
    Payload(u64),
    /// The server closed (its close frame is answered), or the stream ended.
    Closed,
}

/// A WebSocket client stream: reads give the payload of binary frames, writes send
/// masked binary frames.
pub(crate) struct WsStream<S> {
    inner: S,
    incoming: Vec<u8>,
    consumed: usize,
    outgoing: Vec<u8>,
    sent: usize,
    state: ReadState,
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
            close_queued: false,
        }
    }

    fn unread(&self) -> &[u8] {
        &self.incoming[self.consumed..]
    }

    fn consume(&mut self, n: usize) {
        self.consumed += n;
        if self.consumed == self.incoming.len() {
            self.incoming.clear();
            self.consumed = 0;
        }
    }

    /// Queues one masked frame.
    fn queue_frame(&mut self, opcode: u8, payload: &[u8]) -> io::Result<()> {
        let mut mask = [0u8; 4];
        getrandom::fill(&mut mask).map_err(|e| io::Error::other(format!("mask: {e}")))?;
        self.outgoing.push(0x80 | opcode);
        match payload.len() {
            n if n < 126 => self.outgoing.push(0x80 | n as u8),
            n if n <= usize::from(u16::MAX) => {
                self.outgoing.push(0x80 | 126);
                self.outgoing.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                self.outgoing.push(0x80 | 127);
                self.outgoing.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        self.outgoing.extend_from_slice(&mask);
        self.outgoing
            .extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        Ok(())
    }

    /// Parses one frame header: `None` until it is complete. Control frames are
    /// taken whole and answered here.
    fn parse_header(&mut self) -> io::Result<Option<ReadState>> {
        let buf = self.unread();
        if buf.len() < 2 {
            return Ok(None);
        }
        let (b0, b1) = (buf[0], buf[1]);
        let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0F);
        if b0 & 0x70 != 0 {
            return Err(frame_error("reserved bits set"));
        }
        if b1 & 0x80 != 0 {
            return Err(frame_error("a server frame is masked"));
        }
        let (len, at) = match b1 & 0x7F {
            126 if buf.len() >= 4 => (u64::from(u16::from_be_bytes([buf[2], buf[3]])), 4),
            127 if buf.len() >= 10 => {
                let mut n = [0u8; 8];
                n.copy_from_slice(&buf[2..10]);
                (u64::from_be_bytes(n), 10)
            }
            126 | 127 => return Ok(None),
            n => (u64::from(n), 2),
        };
        match opcode {
            OP_BINARY | OP_CONTINUATION => {
                self.consume(at);
                Ok(Some(ReadState::Payload(len)))
            }
            OP_TEXT => Err(frame_error("text frame (MQTT travels in binary frames)")),
            OP_CLOSE | OP_PING | OP_PONG => {
                if !fin || len > MAX_CONTROL {
                    return Err(frame_error("fragmented or oversized control frame"));
                }
                let end = at + len as usize;
                if buf.len() < end {
                    return Ok(None);
                }
                let payload = buf[at..end].to_vec();
                self.consume(end);
                match opcode {
                    OP_PING => {
                        self.queue_frame(OP_PONG, &payload)?;
                        Ok(Some(ReadState::Header))
                    }
                    OP_CLOSE => {
                        if !self.close_queued {
                            self.close_queued = true;
                            // Echo the status code (RFC 6455 section 5.5.1).
                            let status = payload.get(..2).unwrap_or(&[0x03, 0xE8]).to_vec();
                            self.queue_frame(OP_CLOSE, &status)?;
                        }
                        Ok(Some(ReadState::Closed))
                    }
                    _ => Ok(Some(ReadState::Header)),
                }
            }
            _ => Err(frame_error("reserved opcode")),
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
        self.outgoing.clear();
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
                ReadState::Payload(0) => {
                    this.state = ReadState::Header;
                    continue;
                }
                ReadState::Payload(remaining) if !this.unread().is_empty() => {
                    let n = this
                        .unread()
                        .len()
                        .min(buf.remaining())
                        .min(usize::try_from(remaining).unwrap_or(usize::MAX));
                    if n == 0 {
                        return Poll::Ready(Ok(()));
                    }
                    buf.put_slice(&this.unread()[..n]);
                    this.consume(n);
                    this.state = ReadState::Payload(remaining - n as u64);
                    return Poll::Ready(Ok(()));
                }
                ReadState::Header => {
                    if let Some(next) = this.parse_header()? {
                        this.state = next;
                        continue;
                    }
                }
                ReadState::Payload(_) => {}
            }
            let mut chunk = [0u8; READ_SIZE];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                if this.state != ReadState::Header || !this.unread().is_empty() {
                    return Poll::Ready(Err(io::ErrorKind::UnexpectedEof.into()));
                }
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
        ready!(this.poll_send(cx))?;
        let chunk = &buf[..buf.len().min(WRITE_CHUNK)];
        this.queue_frame(OP_BINARY, chunk)?;
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
            this.queue_frame(OP_CLOSE, &1000u16.to_be_bytes())?;
        }
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::duplex;

    /// Reads one masked client frame: (opcode, unmasked payload).
    async fn read_client_frame<R: AsyncRead + Unpin>(r: &mut R) -> (u8, Vec<u8>) {
        let mut head = [0u8; 2];
        r.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0x80, "client frames are masked");
        let len = match head[1] & 0x7F {
            126 => u64::from(r.read_u16().await.unwrap()),
            127 => r.read_u64().await.unwrap(),
            n => u64::from(n),
        };
        let mut mask = [0u8; 4];
        r.read_exact(&mut mask).await.unwrap();
        let mut payload = vec![0u8; len as usize];
        r.read_exact(&mut payload).await.unwrap();
        for (i, b) in payload.iter_mut().enumerate() {
            *b ^= mask[i % 4];
        }
        (head[0] & 0x0F, payload)
    }

    #[test]
    fn accept_key_matches_the_rfc() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn responses_are_checked() {
        let key = "dGhlIHNhbXBsZSBub25jZQ==";
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nsec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\nSec-WebSocket-Protocol: mqtt\r\n\r\n";
        assert!(check_response(ok.as_bytes(), key).is_ok());
        let refused = "HTTP/1.1 400 Bad Request\r\n\r\n";
        assert!(check_response(refused.as_bytes(), key).is_err());
        let no_protocol = ok.replace("Sec-WebSocket-Protocol: mqtt\r\n", "");
        assert!(check_response(no_protocol.as_bytes(), key).is_err());
        let wrong_accept = ok.replace("s3pP", "AAAA");
        assert!(check_response(wrong_accept.as_bytes(), key).is_err());
    }

    #[tokio::test]
    async fn frames_are_masked_and_pings_answered() {
        let (near, mut far) = duplex(1 << 20);
        let mut ws = WsStream::new(near);
        let big = vec![7u8; 70_000];
        ws.write_all(b"hello").await.unwrap();
        ws.write_all(&big).await.unwrap();
        ws.flush().await.unwrap();
        assert_eq!(
            read_client_frame(&mut far).await,
            (OP_BINARY, b"hello".to_vec())
        );
        // 70 000 bytes leave in frames of at most WRITE_CHUNK.
        let mut got = Vec::new();
        while got.len() < big.len() {
            let (op, payload) = read_client_frame(&mut far).await;
            assert_eq!(op, OP_BINARY);
            got.extend(payload);
        }
        assert_eq!(got, big);
        // Server: a ping, a fragmented binary message, then a close.
        far.write_all(&[0x89, 2, b'p', b'!']).await.unwrap();
        far.write_all(&[0x02, 3, b'a', b'b', b'c']).await.unwrap();
        far.write_all(&[0x80, 2, b'd', b'e']).await.unwrap();
        far.write_all(&[0x88, 2, 0x03, 0xE8]).await.unwrap();
        let mut read = Vec::new();
        ws.read_to_end(&mut read).await.unwrap();
        assert_eq!(read, b"abcde");
        ws.flush().await.unwrap();
        assert_eq!(read_client_frame(&mut far).await, (OP_PONG, b"p!".to_vec()));
        assert_eq!(
            read_client_frame(&mut far).await,
            (OP_CLOSE, vec![0x03, 0xE8])
        );
    }

    #[tokio::test]
    async fn masked_or_text_server_frames_are_refused() {
        for frame in [&[0x82u8, 0x81, 1, 2, 3, 4, 5][..], &[0x81, 1, b'x'][..]] {
            let (near, mut far) = duplex(1024);
            let mut ws = WsStream::new(near);
            far.write_all(frame).await.unwrap();
            let mut byte = [0u8; 1];
            let err = ws.read(&mut byte).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        }
    }
}
