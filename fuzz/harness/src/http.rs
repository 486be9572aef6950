//! `api_http`: arbitrary bytes, cut into arbitrary pieces, through one API
//! server connection (`ember_api::connection::Connection` over a real Unix
//! socket pair), with small limits so they are reached.
//!
//! Invariants: nothing panics; the connection never buffers more than one
//! request's worth of bytes; every request taken has a body of at most the
//! payload limit and was complete; once a request is refused the connection
//! takes no other; the bytes the client reads back are a sequence of
//! well-formed responses, one final answer per request taken or refused
//! (plus at most one `100 Continue` before each), each refusal's body a JSON
//! object with a `fault_message`.
//!
//! Input format: pieces, each a length byte (the piece is that many bytes,
//! or the rest of the input if shorter) then the bytes.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Instant;

use ember_api::connection::Connection;
use ember_api::http::HttpLimits;

/// Limits small enough for short inputs to reach.
pub const LIMITS: HttpLimits = HttpLimits {
    max_header_bytes: 256,
    max_payload_bytes: 128,
};

/// Encodes `pieces` as an input.
pub fn encode(pieces: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for piece in pieces {
        for chunk in piece.chunks(255) {
            out.push(u8::try_from(chunk.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(chunk);
        }
    }
    out
}

/// What the connection answered, as the harness counted it.
#[derive(Default)]
struct Answers {
    taken: usize,
    refused: bool,
}

/// Feeds one piece and handles every request it completes.
fn feed(conn: &mut Connection, client: &mut UnixStream, piece: &[u8], answers: &mut Answers) {
    if client.write_all(piece).is_err() {
        return;
    }
    let _ = conn.receive(&LIMITS, Instant::now());
    assert!(
        conn.buffered_bytes() <= LIMITS.max_header_bytes + LIMITS.max_payload_bytes,
        "{} bytes buffered",
        conn.buffered_bytes()
    );
    while let Some(taken) = conn.take_request(&LIMITS) {
        assert!(!answers.refused, "a request taken after a refusal");
        match taken {
            Ok(request) => {
                assert!(request.body.len() <= LIMITS.max_payload_bytes);
                answers.taken += 1;
                conn.respond(204, None, true);
            }
            Err(refused) => {
                let fault = serde_json::json!({ "fault_message": refused.message }).to_string();
                conn.respond(refused.status, Some(&fault), false);
                answers.refused = true;
            }
        }
        let _ = conn.send_pending(Instant::now());
    }
    let _ = conn.send_pending(Instant::now());
}

/// Splits `answer` into responses; returns (final answers, interim ones).
fn count_responses(answer: &[u8]) -> (usize, usize) {
    let (mut finals, mut interims, mut rest) = (0, 0, answer);
    while !rest.is_empty() {
        let mut headers = [httparse::EMPTY_HEADER; 16];
        let mut response = httparse::Response::new(&mut headers);
        let head = match response.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            other => panic!(
                "malformed response {other:?}: {:?}",
                String::from_utf8_lossy(rest)
            ),
        };
        let code = response.code.unwrap_or(0);
        let length: usize = response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case("content-length"))
            .and_then(|h| std::str::from_utf8(h.value).ok()?.parse().ok())
            .unwrap_or(0);
        let body = rest.get(head..head + length).expect("the whole body");
        if code == 100 {
            interims += 1;
        } else {
            finals += 1;
        }
        if code >= 400 {
            let value: serde_json::Value = serde_json::from_slice(body).expect("a JSON fault");
            assert!(value["fault_message"].is_string());
        }
        rest = &rest[head + length..];
    }
    (finals, interims)
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let Ok((server, mut client)) = UnixStream::pair() else {
        return;
    };
    if server.set_nonblocking(true).is_err() || client.set_nonblocking(true).is_err() {
        return;
    }
    let mut conn = Connection::new(server, Instant::now());
    let mut answers = Answers::default();
    let mut rest = data;
    while let Some((&len, tail)) = rest.split_first() {
        let take = usize::from(len).min(tail.len());
        feed(&mut conn, &mut client, &tail[..take], &mut answers);
        rest = &tail[take..];
    }
    let mut answer = Vec::new();
    let _ = client.read_to_end(&mut answer);
    let (finals, interims) = count_responses(&answer);
    assert_eq!(finals, answers.taken + usize::from(answers.refused));
    assert!(
        interims <= finals + 1,
        "{interims} interim answers for {finals}"
    );
}
