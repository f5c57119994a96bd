//! Just enough HTTP/1.1 for a scraper: read one request head (bounded to
//! [`MAX_REQUEST_BYTES`]; the caller puts a deadline on it), decide the answer, write
//! it with `Connection: close`. No keep-alive, no body, no chunking: Prometheus sends
//! a plain `GET /metrics` with an `Authorization` header when one is configured, and
//! a scrape per connection costs nothing at a scrape interval of seconds. A full HTTP
//! stack (hyper) would add more code than it serves here.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::token::Token;

/// Largest request head read: a scraper's is a few hundred bytes.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;

/// The one path served.
pub const PATH: &str = "/metrics";

/// What was read of a request.
#[derive(Debug, PartialEq, Eq)]
pub struct Request {
    pub method: String,
    /// The path without its query string.
    pub path: String,
    pub authorization: Option<Vec<u8>>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("request head larger than {MAX_REQUEST_BYTES} bytes")]
    TooLarge,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("connection closed before the request head ended")]
    Closed,
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Reads one request head; any body is left unread (the connection closes after
/// the answer).
pub async fn read_request<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Request, ReadError> {
    let mut buf = vec![0u8; MAX_REQUEST_BYTES];
    let mut filled = 0;
    loop {
        if let Some(end) = find_head_end(&buf[..filled]) {
            return parse_head(&buf[..end]);
        }
        if filled == buf.len() {
            return Err(ReadError::TooLarge);
        }
        let n = stream.read(&mut buf[filled..]).await?;
        if n == 0 {
            return Err(ReadError::Closed);
        }
        filled += n;
    }
}

fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n")
}

/// Parses the request line and headers (the head without its final blank line).
pub fn parse_head(head: &[u8]) -> Result<Request, ReadError> {
    let text = std::str::from_utf8(head).map_err(|_| ReadError::Malformed("not UTF-8"))?;
    let mut lines = text.split("\r\n");
    let request_line = lines.next().unwrap_or_default();
    let mut parts = request_line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReadError::Malformed("request line"));
    };
    if version != "HTTP/1.1" && version != "HTTP/1.0" {
        return Err(ReadError::Malformed("HTTP version"));
    }
    if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
        return Err(ReadError::Malformed("method"));
    }
    if !target.starts_with('/') {
        return Err(ReadError::Malformed("request target"));
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let mut authorization = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            return Err(ReadError::Malformed("header line"));
        };
        if name.eq_ignore_ascii_case("authorization") {
            if authorization.is_some() {
                return Err(ReadError::Malformed("two Authorization headers"));
            }
            authorization = Some(value.trim().as_bytes().to_vec());
        }
    }
    Ok(Request {
        method: method.to_owned(),
        path: path.to_owned(),
        authorization,
    })
}

/// An answer: status, reason phrase, extra header, body.
#[derive(Debug, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub reason: &'static str,
    pub content_type: &'static str,
    /// One extra header line (without CRLF), if any.
    pub header: Option<&'static str>,
    pub body: String,
}

impl Response {
    pub fn text(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            header: None,
            body: format!("{body}\n"),
        }
    }

    /// The answer to a request that could not be read.
    pub fn for_read_error(error: &ReadError) -> Option<Response> {
        match error {
            ReadError::TooLarge => Some(Response::text(
                431,
                "Request Header Fields Too Large",
                "request head too large",
            )),
            ReadError::Malformed(what) => Some(Response::text(
                400,
                "Bad Request",
                &format!("malformed request ({what})"),
            )),
            ReadError::Closed | ReadError::Io(_) => None,
        }
    }
}

/// What the endpoint answers `request`: 404 for another path, 405 for another
/// method, 401 without the right token, else the exposition `render` makes.
pub fn answer(
    request: &Request,
    token: Option<&Token>,
    render: impl FnOnce() -> Result<String, std::fmt::Error>,
) -> Response {
    if request.path != PATH {
        return Response::text(404, "Not Found", "not found: the metrics are at /metrics");
    }
    if request.method != "GET" {
        return Response {
            header: Some("Allow: GET"),
            ..Response::text(405, "Method Not Allowed", "only GET is served")
        };
    }
    if let Some(token) = token
        && !token.admits(request.authorization.as_deref())
    {
        return Response {
            header: Some("WWW-Authenticate: Bearer realm=\"moat\""),
            ..Response::text(
                401,
                "Unauthorized",
                "a bearer token is required (the one in broker.metrics.token_file)",
            )
        };
    }
    match render() {
        Ok(body) => Response {
            status: 200,
            reason: "OK",
            content_type: prometheus_client::encoding::prometheus_text::CONTENT_TYPE,
            header: None,
            body,
        },
        Err(_) => Response::text(500, "Internal Server Error", "encoding the metrics failed"),
    }
}

/// Writes `response` and closes the sending side.
pub async fn write_response<S: AsyncWrite + Unpin>(
    stream: &mut S,
    response: &Response,
) -> std::io::Result<()> {
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\nCache-Control: no-store\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if let Some(header) = response.header {
        head.push_str(header);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(response.body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(text: &str) -> Result<Request, ReadError> {
        let bytes = text.as_bytes().to_vec();
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_request(&mut bytes.as_slice()))
    }

    #[test]
    fn a_scrape_request_is_read_with_its_authorization() {
        let r = request("GET /metrics?x=1 HTTP/1.1\r\nHost: moat\r\nauthorization:  Bearer abc \r\nAccept: */*\r\n\r\n").unwrap();
        assert_eq!(r.method, "GET");
        assert_eq!(r.path, "/metrics");
        assert_eq!(r.authorization.as_deref(), Some(&b"Bearer abc"[..]));
    }

    #[test]
    fn oversized_truncated_and_malformed_requests_are_refused() {
        let long = format!("GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
        assert!(matches!(request(&long), Err(ReadError::TooLarge)));
        assert!(matches!(
            request("GET /metrics HTTP/1.1\r\n"),
            Err(ReadError::Closed)
        ));
        for bad in [
            "GET /metrics\r\n\r\n",
            "GET /metrics HTTP/2\r\n\r\n",
            "get /metrics HTTP/1.1\r\n\r\n",
            "GET metrics HTTP/1.1\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nno colon\r\n\r\n",
            "GET /metrics HTTP/1.1\r\nAuthorization: a\r\nAuthorization: b\r\n\r\n",
        ] {
            assert!(
                matches!(request(bad), Err(ReadError::Malformed(_))),
                "{bad:?}"
            );
        }
        assert_eq!(
            Response::for_read_error(&ReadError::TooLarge).map(|r| r.status),
            Some(431)
        );
    }

    #[test]
    fn answers_follow_path_then_method_then_token() {
        let get = |path: &str, auth: Option<&str>| Request {
            method: "GET".into(),
            path: path.into(),
            authorization: auth.map(|a| a.as_bytes().to_vec()),
        };
        let body = || Ok("moat_up 1\n".to_string());
        assert_eq!(answer(&get("/", None), None, body).status, 404);
        let post = Request {
            method: "POST".into(),
            ..get(PATH, None)
        };
        let refused = answer(&post, None, body);
        assert_eq!((refused.status, refused.header), (405, Some("Allow: GET")));
        let ok = answer(&get(PATH, None), None, body);
        assert_eq!((ok.status, ok.body.as_str()), (200, "moat_up 1\n"));

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("token");
        std::fs::write(&path, "t0ken").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        let token = Token::read(&path).unwrap();
        assert_eq!(answer(&get(PATH, None), Some(&token), body).status, 401);
        assert_eq!(
            answer(&get(PATH, Some("Bearer nope")), Some(&token), body).status,
            401
        );
        assert_eq!(
            answer(&get(PATH, Some("Bearer t0ken")), Some(&token), body).status,
            200
        );
    }
}
