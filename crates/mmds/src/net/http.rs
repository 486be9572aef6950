//! The guest's HTTP/1.x requests to the MMDS, parsed with httparse, and the
//! answers Firecracker gives them (V1 and V2, session tokens, JSON or IMDS
//! plain text, 400/401/404/405).

use std::fmt::Write as _;

use crate::{Error, Mmds, MmdsVersion, OutputFormat};

/// Largest request (headers and body) a connection buffers.
pub const MAX_REQUEST_LEN: usize = 4096;
/// Most headers a request may carry.
const MAX_HEADERS: usize = 32;
/// Where V2 session tokens are asked for.
const TOKEN_PATH: &str = "/latest/api/token";
const TOKEN_HEADERS: [&str; 2] = ["X-metadata-token", "X-aws-ec2-metadata-token"];
const TTL_HEADERS: [&str; 2] = [
    "X-metadata-token-ttl-seconds",
    "X-aws-ec2-metadata-token-ttl-seconds",
];
const FORWARDED_FOR: &str = "X-Forwarded-For";

/// What a request asked of the token machinery, for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TokenUse {
    /// A `GET` came without a token.
    pub no_token: bool,
    /// A `GET` came with a token that is not (or no longer) valid.
    pub invalid_token: bool,
}

/// One answer, ready to send.
#[derive(Debug, PartialEq, Eq)]
pub struct Answer {
    /// The serialized response.
    pub bytes: Vec<u8>,
    /// Whether the connection closes once it is sent.
    pub close: bool,
    /// Token use, for the metrics.
    pub tokens: TokenUse,
}

/// What the bytes buffered so far hold.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// Not a whole request yet.
    Partial,
    /// A whole request of `consumed` bytes, answered.
    Done {
        /// Bytes of the buffer the request took.
        consumed: usize,
        /// Its answer.
        answer: Answer,
    },
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    extra: Option<(&'static str, String)>,
}

impl Response {
    fn text(status: u16, reason: &'static str, body: String) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain",
            body,
            extra: None,
        }
    }

    fn render(&self, minor: u8, close: bool) -> Vec<u8> {
        let mut head = format!("HTTP/1.{minor} {} {}\r\n", self.status, self.reason);
        let connection = if close { "close" } else { "keep-alive" };
        // Writing to a String cannot fail.
        let _ = write!(
            head,
            "Server: Ember MMDS\r\nConnection: {connection}\r\nContent-Type: {}\r\n\
             Content-Length: {}\r\n",
            self.content_type,
            self.body.len()
        );
        if let Some((name, value)) = &self.extra {
            let _ = write!(head, "{name}: {value}\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(self.body.as_bytes());
        bytes
    }
}

/// Parses the request at the start of `buf` and answers it from `mmds`.
/// A buffer that cannot become a valid request within
/// [`MAX_REQUEST_LEN`] gets a 400 and a close.
pub fn handle(buf: &[u8], mmds: &mut Mmds) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut headers);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() < MAX_REQUEST_LEN => return Parsed::Partial,
        Ok(httparse::Status::Partial) => return bad_request(buf.len(), "Request too large."),
        Err(e) => return bad_request(buf.len(), &format!("Invalid request: {e}.")),
    };
    let body_len = match content_length(request.headers) {
        Some(len) => len,
        None => return bad_request(buf.len(), "Invalid Content-Length."),
    };
    let consumed = head_len.saturating_add(body_len);
    if consumed > MAX_REQUEST_LEN {
        return bad_request(buf.len(), "Request too large.");
    }
    if buf.len() < consumed {
        return Parsed::Partial;
    }
    let minor = request.version.unwrap_or(1);
    let close = wants_close(minor, request.headers);
    let (response, tokens) = respond(&request, mmds);
    Parsed::Done {
        consumed,
        answer: Answer {
            bytes: response.render(minor, close),
            close,
            tokens,
        },
    }
}

fn bad_request(consumed: usize, why: &str) -> Parsed {
    let response = Response::text(400, "Bad Request", why.to_owned());
    Parsed::Done {
        consumed,
        answer: Answer {
            bytes: response.render(1, true),
            close: true,
            tokens: TokenUse::default(),
        },
    }
}

fn header<'h>(
    headers: &'h [httparse::Header<'_>],
    names: &[&'static str],
) -> Option<(&'static str, &'h str)> {
    headers.iter().find_map(|h| {
        let name = names.iter().find(|n| n.eq_ignore_ascii_case(h.name))?;
        let value = std::str::from_utf8(h.value).unwrap_or("").trim();
        Some((*name, value))
    })
}

/// The body's length (0 without the header), `None` if unreadable.
fn content_length(headers: &[httparse::Header<'_>]) -> Option<usize> {
    match header(headers, &["Content-Length"]) {
        Some((_, value)) => value.parse().ok(),
        None => Some(0),
    }
}

fn wants_close(minor: u8, headers: &[httparse::Header<'_>]) -> bool {
    match header(headers, &["Connection"]) {
        Some((_, value)) if value.eq_ignore_ascii_case("close") => true,
        Some((_, value)) if value.eq_ignore_ascii_case("keep-alive") => false,
        _ => minor == 0,
    }
}

/// The path part of a request target (an absolute URI's host dropped, the
/// query dropped) with `//` collapsed: a JSON pointer for the store.
fn json_path(target: &str) -> String {
    let target = match target.strip_prefix("http://") {
        Some(rest) => rest.find('/').map_or("", |i| &rest[i..]),
        None => target,
    };
    let path = target.split(['?', '#']).next().unwrap_or("");
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

fn respond(request: &httparse::Request<'_, '_>, mmds: &mut Mmds) -> (Response, TokenUse) {
    let target = request.path.unwrap_or("");
    let path = json_path(target);
    if !path.starts_with('/') {
        let body = "Invalid URI.".to_owned();
        return (
            Response::text(400, "Bad Request", body),
            TokenUse::default(),
        );
    }
    match request.method.unwrap_or("") {
        "GET" => get(request.headers, target, &path, mmds),
        "PUT" => (
            put(request.headers, target, &path, mmds),
            TokenUse::default(),
        ),
        _ => {
            let mut response =
                Response::text(405, "Method Not Allowed", "Not allowed HTTP method.".into());
            response.extra = Some(("Allow", "GET, PUT".to_owned()));
            (response, TokenUse::default())
        }
    }
}

fn get(
    headers: &[httparse::Header<'_>],
    target: &str,
    path: &str,
    mmds: &Mmds,
) -> (Response, TokenUse) {
    let token = header(headers, &TOKEN_HEADERS).map(|(_, value)| value);
    let tokens = TokenUse {
        no_token: token.is_none(),
        invalid_token: token.is_some_and(|t| !mmds.is_valid_token(t)),
    };
    if mmds.version() == MmdsVersion::V2 {
        if tokens.no_token {
            let body = "No MMDS token provided. Use `X-metadata-token` or \
                        `X-aws-ec2-metadata-token` header to specify the session token.";
            return (Response::text(401, "Unauthorized", body.into()), tokens);
        }
        if tokens.invalid_token {
            let body = "MMDS token not valid.".to_owned();
            return (Response::text(401, "Unauthorized", body), tokens);
        }
    }
    (value(headers, target, path, mmds), tokens)
}

fn value(headers: &[httparse::Header<'_>], target: &str, path: &str, mmds: &Mmds) -> Response {
    let json = header(headers, &["Accept"]).is_some_and(|(_, v)| v.contains("application/json"));
    let format = if json {
        OutputFormat::Json
    } else {
        OutputFormat::Imds
    };
    match mmds.get(path, format) {
        Ok(body) => {
            let json_out = format == OutputFormat::Json && !mmds.imds_compat();
            Response {
                status: 200,
                reason: "OK",
                content_type: if json_out {
                    "application/json"
                } else {
                    "text/plain"
                },
                body,
                extra: None,
            }
        }
        Err(Error::NotFound) => not_found(target),
        Err(e @ Error::UnsupportedValueType) => {
            Response::text(501, "Not Implemented", e.to_string())
        }
        Err(e) => Response::text(500, "Internal Server Error", e.to_string()),
    }
}

fn not_found(target: &str) -> Response {
    Response::text(404, "Not Found", format!("Resource not found: {target}."))
}

fn put(headers: &[httparse::Header<'_>], target: &str, path: &str, mmds: &mut Mmds) -> Response {
    if let Some((name, _)) = header(headers, &[FORWARDED_FOR]) {
        let body = format!("Invalid header. Reason: Unsupported header name. Key: {name}");
        return Response::text(400, "Bad Request", body);
    }
    if path != TOKEN_PATH {
        return not_found(target);
    }
    let Some((name, value)) = header(headers, &TTL_HEADERS) else {
        let body = "Token time to live value not found. Use `X-metadata-token-ttl-seconds` or \
                    `X-aws-ec2-metadata-token-ttl-seconds` header to specify the token's \
                    lifetime.";
        return Response::text(400, "Bad Request", body.into());
    };
    let Ok(ttl) = value.parse::<u32>() else {
        let body = format!("Invalid header. Reason: Invalid value. Key:{name}; Value:{value}");
        return Response::text(400, "Bad Request", body);
    };
    match mmds.generate_token(ttl) {
        Ok(token) => {
            let mut response = Response::text(200, "OK", token);
            response.extra = Some((name, ttl.to_string()));
            response
        }
        Err(e) => Response::text(400, "Bad Request", e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(version: MmdsVersion) -> Mmds {
        let mut mmds = Mmds::default();
        mmds.set_version(version);
        let data = json!({"latest": {"meta-data": {"ami-id": "ami-1", "nums": [1]}}});
        assert!(mmds.put(data).is_ok());
        mmds
    }

    fn answer(request: &str, mmds: &mut Mmds) -> (String, bool) {
        match handle(request.as_bytes(), mmds) {
            Parsed::Done { consumed, answer } => {
                assert!(consumed <= request.len().max(MAX_REQUEST_LEN));
                (
                    String::from_utf8_lossy(&answer.bytes).into_owned(),
                    answer.close,
                )
            }
            Parsed::Partial => panic!("partial"),
        }
    }

    fn body(response: &str) -> &str {
        response.split("\r\n\r\n").nth(1).unwrap_or("")
    }

    #[test]
    fn v1_get_json_and_imds() {
        let mut mmds = store(MmdsVersion::V1);
        let req = "GET /latest/meta-data/ami-id HTTP/1.1\r\nAccept: application/json\r\n\r\n";
        let (r, close) = answer(req, &mut mmds);
        assert!(r.starts_with("HTTP/1.1 200 OK\r\n"), "{r}");
        assert!(r.contains("Content-Type: application/json"));
        assert_eq!(body(&r), "\"ami-1\"");
        assert!(!close);
        let (r, _) = answer("GET //latest//meta-data/ HTTP/1.1\r\n\r\n", &mut mmds);
        assert_eq!(body(&r), "ami-id\nnums");
        assert!(r.contains("Content-Type: text/plain"));
    }

    #[test]
    fn absolute_targets_and_queries_name_the_same_path() {
        let mut mmds = store(MmdsVersion::V1);
        for target in [
            "http://169.254.169.254/latest/meta-data/ami-id",
            "/latest/meta-data/ami-id?x=1",
            "//latest///meta-data/ami-id/",
        ] {
            let (r, _) = answer(&format!("GET {target} HTTP/1.1\r\n\r\n"), &mut mmds);
            assert_eq!(body(&r), "ami-1", "{target}");
        }
        let (r, _) = answer("GET http://169.254.169.254 HTTP/1.1\r\n\r\n", &mut mmds);
        assert!(r.starts_with("HTTP/1.1 400 "), "{r}");
    }

    #[test]
    fn v2_needs_a_valid_token() {
        let mut mmds = store(MmdsVersion::V2);
        let (r, _) = answer("GET /latest/meta-data/ami-id HTTP/1.1\r\n\r\n", &mut mmds);
        assert!(r.starts_with("HTTP/1.1 401 "), "{r}");
        let req = "GET /latest HTTP/1.1\r\nX-metadata-token: nope\r\n\r\n";
        let (r, _) = answer(req, &mut mmds);
        assert!(r.starts_with("HTTP/1.1 401 ") && body(&r) == "MMDS token not valid.");
        let put = "PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 60\r\n\r\n";
        let (r, _) = answer(put, &mut mmds);
        assert!(r.starts_with("HTTP/1.1 200 "), "{r}");
        assert!(r.contains("X-metadata-token-ttl-seconds: 60\r\n"));
        let token = body(&r).to_owned();
        let req = format!(
            "GET /latest/meta-data/ami-id HTTP/1.1\r\nX-aws-ec2-metadata-token: {token}\r\n\r\n"
        );
        let (r, _) = answer(&req, &mut mmds);
        assert_eq!(body(&r), "ami-1");
    }

    #[test]
    fn token_put_errors() {
        let mut mmds = store(MmdsVersion::V2);
        for (req, status) in [
            ("PUT /latest/api/token HTTP/1.1\r\n\r\n", "400"),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: x\r\n\r\n", "400"),
            ("PUT /latest/api/token HTTP/1.1\r\nX-metadata-token-ttl-seconds: 0\r\n\r\n", "400"),
            ("PUT /latest/api/token HTTP/1.1\r\nX-Forwarded-For: 1.2.3.4\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", "400"),
            ("PUT /other HTTP/1.1\r\nX-metadata-token-ttl-seconds: 5\r\n\r\n", "404"),
            ("PATCH /latest HTTP/1.1\r\n\r\n", "405"),
            ("GET * HTTP/1.1\r\n\r\n", "400"),
        ] {
            let (r, _) = answer(req, &mut mmds);
            assert!(r.starts_with(&format!("HTTP/1.1 {status} ")), "{req:?} -> {r}");
        }
    }

    #[test]
    fn not_found_unsupported_and_http10_closes() {
        let mut mmds = store(MmdsVersion::V1);
        let (r, close) = answer("GET /nope HTTP/1.0\r\n\r\n", &mut mmds);
        assert!(r.starts_with("HTTP/1.0 404 ") && close, "{r}");
        assert_eq!(body(&r), "Resource not found: /nope.");
        let (r, _) = answer("GET /latest/meta-data/nums HTTP/1.1\r\n\r\n", &mut mmds);
        assert!(r.starts_with("HTTP/1.1 501 "), "{r}");
    }

    #[test]
    fn partial_oversized_and_garbage() {
        let mut mmds = store(MmdsVersion::V1);
        assert_eq!(handle(b"GET / HTTP/1.1\r\n", &mut mmds), Parsed::Partial);
        let req = "PUT /latest/api/token HTTP/1.1\r\nContent-Length: 5\r\n\r\nab";
        assert_eq!(handle(req.as_bytes(), &mut mmds), Parsed::Partial);
        let (r, close) = answer("\x00\x01garbage\r\n\r\n", &mut mmds);
        assert!(r.starts_with("HTTP/1.1 400 ") && close);
        let huge = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_REQUEST_LEN));
        let (r, close) = answer(&huge, &mut mmds);
        assert!(r.starts_with("HTTP/1.1 400 ") && close);
        let req = "GET / HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n";
        let (r, _) = answer(req, &mut mmds);
        assert!(r.starts_with("HTTP/1.1 400 "));
    }
}
