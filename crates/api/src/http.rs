//! HTTP/1.x framing for the API server: finding a request's head in the bytes
//! a client has sent so far (parsed with httparse), the limits that bound a
//! request, and the bytes of a response. Nothing here does I/O; the
//! [`connection`](crate::connection) module feeds it.

use crate::routes::Method;

/// Bounds on one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HttpLimits {
    /// Largest request line plus headers, in bytes.
    pub max_header_bytes: usize,
    /// Largest body, in bytes (Firecracker's `--http-api-max-payload-size`).
    pub max_payload_bytes: usize,
}

/// Largest request body by default, as Firecracker's.
pub const DEFAULT_MAX_PAYLOAD_BYTES: usize = 51_200;

/// Largest request head by default: Firecracker's clients send a few hundred
/// bytes; common servers allow 8 to 16 KiB.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 16 * 1024;

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_header_bytes: DEFAULT_MAX_HEADER_BYTES,
            max_payload_bytes: DEFAULT_MAX_PAYLOAD_BYTES,
        }
    }
}

/// Most headers one request may carry.
const MAX_HEADERS: usize = 64;

/// The value of the `Server` header.
pub const SERVER_NAME: &str = "Ember API";

/// The interim answer to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// A request line and headers, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Head {
    /// The method, when it is one the API serves.
    pub method: Option<Method>,
    /// The method as the client spelled it (for error messages).
    pub method_name: String,
    /// The path, without scheme, authority, query or fragment.
    pub path: String,
    /// Body length from `Content-Length` (0 without one).
    pub content_length: usize,
    /// The client sent `Expect: 100-continue`.
    pub expects_continue: bool,
    /// The connection stays open after the response.
    pub keep_alive: bool,
    /// Bytes of the head, blank line included.
    pub len: usize,
}

/// A request the framing layer refuses. Its answer is sent, then the
/// connection is closed, since the rest of the stream cannot be trusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FramingError {
    /// The HTTP status to answer with.
    pub status: u16,
    /// The `fault_message`.
    pub message: String,
}

fn refuse(message: String) -> FramingError {
    FramingError {
        status: 400,
        message,
    }
}

/// Where the head ends (the index past its blank line) in `buf`, searching
/// from `from` (bytes before it were searched already). Accepts `\n\n` as well
/// as `\r\n\r\n`, as httparse does.
pub fn find_head_end(buf: &[u8], from: usize) -> Option<usize> {
    let start = from.saturating_sub(2);
    let tail = buf.get(start..)?;
    tail.iter().enumerate().find_map(|(i, &byte)| {
        if byte != b'\n' {
            return None;
        }
        let after = tail.get(i + 1..).unwrap_or_default();
        if after.first() == Some(&b'\n') {
            Some(start + i + 2)
        } else if after.starts_with(b"\r\n") {
            Some(start + i + 3)
        } else {
            None
        }
    })
}

/// Strips an absolute-form URI to its path, and any query or fragment.
fn request_path(target: &str) -> &str {
    let path = match target.split_once("://") {
        Some((_, rest)) => rest.find('/').map_or("/", |slash| &rest[slash..]),
        None => target,
    };
    let end = path.find(['?', '#']).unwrap_or(path.len());
    &path[..end]
}

fn method(name: &str) -> Option<Method> {
    match name {
        "GET" => Some(Method::Get),
        "PUT" => Some(Method::Put),
        "PATCH" => Some(Method::Patch),
        _ => None,
    }
}

/// Parses the head `buf[..end]`, where `end` came from [`find_head_end`].
pub fn parse_head(buf: &[u8], end: usize, limits: &HttpLimits) -> Result<Head, FramingError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head = buf.get(..end).unwrap_or(buf);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(refuse("incomplete HTTP request head".into())),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(refuse(format!(
                "too many HTTP headers: at most {MAX_HEADERS} are accepted"
            )))
        }
        Err(e) => return Err(refuse(format!("malformed HTTP request: {e}"))),
    }
    let method_name = request.method.unwrap_or_default().to_owned();
    let version = request.version.unwrap_or(1);
    let mut content_length: Option<usize> = None;
    let mut expects_continue = false;
    let mut keep_alive = version >= 1;
    for header in request.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            // Digits only (RFC 9110, 8.6): no sign, no spaces inside.
            let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
            let length = value
                .parse::<usize>()
                .ok()
                .filter(|_| digits)
                .ok_or_else(|| {
                    let shown = String::from_utf8_lossy(header.value);
                    refuse(format!("invalid Content-Length `{}`", shown.trim()))
                })?;
            if content_length.is_some_and(|earlier| earlier != length) {
                return Err(refuse("conflicting Content-Length headers".into()));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(FramingError {
                status: 501,
                message: format!(
                    "Transfer-Encoding `{value}` is not supported: send the body with a Content-Length"
                ),
            });
        } else if header.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        } else if header.name.eq_ignore_ascii_case("connection") {
            for token in value.split(',').map(str::trim) {
                if token.eq_ignore_ascii_case("close") {
                    keep_alive = false;
                } else if token.eq_ignore_ascii_case("keep-alive") {
                    keep_alive = true;
                }
            }
        }
    }
    let content_length = content_length.unwrap_or(0);
    if content_length > limits.max_payload_bytes {
        return Err(refuse(format!(
            "Request payload with size {content_length} is larger than the limit of {} allowed by server.",
            limits.max_payload_bytes
        )));
    }
    Ok(Head {
        method: method(&method_name),
        path: request_path(request.path.unwrap_or("/")).to_owned(),
        method_name,
        content_length,
        expects_continue,
        keep_alive,
        len: end,
    })
}

/// The reason phrase of the statuses the API sends.
fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        503 => "Service Unavailable",
        _ => "Unknown",
    }
}

/// A response to write: status, optional JSON body and extra headers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Answer<'a> {
    /// The HTTP status.
    pub status: u16,
    /// The JSON body.
    pub body: Option<&'a str>,
    /// Headers besides `Server`, `Connection` and the body's, as
    /// (name, value); names and values must be plain tokens.
    pub headers: &'a [(&'a str, &'a str)],
}

/// Appends `answer` to `out`.
pub fn write_response(out: &mut Vec<u8>, answer: Answer<'_>, keep_alive: bool) {
    let Answer {
        status,
        body,
        headers,
    } = answer;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut head = format!(
        "HTTP/1.1 {status} {}\r\nServer: {SERVER_NAME}\r\nConnection: {connection}\r\n",
        reason(status)
    );
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    out.extend_from_slice(head.as_bytes());
    match body {
        Some(body) => {
            let headers = format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            out.extend_from_slice(headers.as_bytes());
            out.extend_from_slice(body.as_bytes());
        }
        // A 204 carries no Content-Length (RFC 9110, 8.6); others say 0.
        None if status == 204 => out.extend_from_slice(b"\r\n"),
        None => out.extend_from_slice(b"Content-Length: 0\r\n\r\n"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Result<Head, FramingError> {
        let end = find_head_end(text.as_bytes(), 0).expect("a complete head");
        parse_head(text.as_bytes(), end, &HttpLimits::default())
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        let text = b"GET / HTTP/1.1\r\nHost: x\r\n\r\nbody";
        assert_eq!(find_head_end(text, 0), Some(text.len() - 4));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
        assert_eq!(find_head_end(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), None);
        // Searching again from where the last search stopped still finds a
        // terminator split across two reads.
        let text = b"GET / HTTP/1.1\r\n\r\n";
        for from in 0..text.len() {
            assert_eq!(find_head_end(text, from), Some(text.len()), "from {from}");
        }
    }

    #[test]
    fn methods_paths_and_headers() {
        let parsed = head(
            "PUT http://localhost/drives/root?x=1 HTTP/1.1\r\nContent-Length: 12\r\n\
             Expect: 100-Continue\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        assert_eq!(parsed.method, Some(Method::Put));
        assert_eq!(parsed.path, "/drives/root");
        assert_eq!(parsed.content_length, 12);
        assert!(parsed.expects_continue);
        assert!(!parsed.keep_alive);

        let parsed = head("DELETE / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n").unwrap();
        assert_eq!(
            (parsed.method, parsed.method_name.as_str()),
            (None, "DELETE")
        );
        assert!(parsed.keep_alive, "HTTP/1.0 with keep-alive");
        assert!(!head("GET / HTTP/1.0\r\n\r\n").unwrap().keep_alive);
        assert!(head("GET / HTTP/1.1\r\n\r\n").unwrap().keep_alive);
    }

    #[test]
    fn bad_heads_are_refused_with_a_reason() {
        let cases = [
            (
                "GET / HTTP/1.1\r\nContent-Length: x\r\n\r\n",
                400,
                "Content-Length",
            ),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
                400,
                "conflicting",
            ),
            (
                "PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
                501,
                "chunked",
            ),
            (
                "PUT / HTTP/1.1\r\nContent-Length: 51201\r\n\r\n",
                400,
                "51201",
            ),
            ("GET / HTTP/1.1\r\nContent-Length: +2\r\n\r\n", 400, "`+2`"),
            (
                "GET / HTTP/1.1\r\nContent-Length: 1 2\r\n\r\n",
                400,
                "`1 2`",
            ),
            ("GET / HTTP/2.0\r\n\r\n", 400, "malformed"),
            ("\x00\x01\r\n\r\n", 400, "malformed"),
        ];
        for (text, status, needle) in cases {
            let err = head(text).unwrap_err();
            assert_eq!(err.status, status, "{text:?}");
            assert!(err.message.contains(needle), "{text:?}: {}", err.message);
        }
        let many: String = (0..100).map(|i| format!("X-{i}: y\r\n")).collect();
        let err = head(&format!("GET / HTTP/1.1\r\n{many}\r\n")).unwrap_err();
        assert!(err.message.contains("too many"), "{}", err.message);
    }

    #[test]
    fn responses_are_well_formed() {
        let mut out = Vec::new();
        let fault = Answer {
            status: 400,
            body: Some("{\"fault_message\":\"x\"}"),
            headers: &[],
        };
        write_response(&mut out, fault, true);
        let text = String::from_utf8(out).unwrap();
        assert!(text.starts_with("HTTP/1.1 400 Bad Request\r\nServer: Ember API\r\n"));
        assert!(text.contains("Content-Length: 21\r\n\r\n{\"fault_message\":\"x\"}"));

        let mut out = Vec::new();
        let deprecated = Answer {
            status: 204,
            body: None,
            headers: &[("Deprecation", "true")],
        };
        write_response(&mut out, deprecated, false);
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.contains("Connection: close\r\nDeprecation: true\r\n\r\n"),
            "{text}"
        );
        assert!(!text.contains("Content-Length"), "{text}");
    }
}
