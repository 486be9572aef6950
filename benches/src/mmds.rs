//! The MMDS's guest side: the frame path virtio-net detours a guest's MMDS
//! frames to (`ember_mmds::net::MmdsStack`: smoltcp TCP, the HTTP
//! answers), driven by a host-side guest that builds its own Ethernet, IPv4
//! and TCP. Figures: `GET` requests per second over one keep-alive
//! connection, and the heap the stack holds for 1000 opened connections
//! (it keeps at most [`MAX_CONNECTIONS`], dropping the oldest).

use std::sync::{Arc, Mutex};
use std::time::Instant;

use ember_mmds::net::{MmdsStack, CONN_RX_BUF, CONN_TX_BUF, MAX_CONNECTIONS, MMDS_MAC};
use ember_mmds::{Mmds, DEFAULT_IPV4_ADDRESS};

use crate::report::Figure;
use crate::stats::{median, per_second, Better};
use crate::{Error, Result};

/// The group name in reports.
pub const GROUP: &str = "mmds";

const GUEST_MAC: [u8; 6] = [0x06, 0, 0xac, 0x10, 0, 2];
const GUEST_IP: [u8; 4] = [172, 16, 0, 2];
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const PSH_ACK: u8 = 0x18;
const REQUEST: &[u8] = b"GET /latest/meta-data/ami-id HTTP/1.1\r\nHost: 169.254.169.254\r\n\r\n";
/// Connections opened for the memory figure.
const OPENED: u16 = 1000;

/// How much to measure.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Measured rounds.
    pub rounds: usize,
    /// Requests per round.
    pub requests: usize,
}

impl Options {
    /// The options of a full or a quick run.
    pub fn new(quick: bool) -> Options {
        if quick {
            Options {
                rounds: 3,
                requests: 500,
            }
        } else {
            Options {
                rounds: 7,
                requests: 5000,
            }
        }
    }
}

/// One's-complement sum of 16-bit big-endian words.
fn checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !u16::try_from(sum).unwrap_or(u16::MAX)
}

/// A TCP segment from the guest's `port` to the MMDS's port 80.
fn segment(port: u16, seq: u32, ack: u32, flags: u8, payload: &[u8]) -> Vec<u8> {
    let total = u16::try_from(40 + payload.len()).unwrap_or(u16::MAX);
    let mut f = MMDS_MAC.to_vec();
    f.extend_from_slice(&GUEST_MAC);
    f.extend_from_slice(&[0x08, 0x00, 0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 0, 0x40, 0, 64, 6, 0, 0]);
    f.extend_from_slice(&GUEST_IP);
    f.extend_from_slice(&DEFAULT_IPV4_ADDRESS.octets());
    let sum = checksum(&f[14..34]);
    f[24..26].copy_from_slice(&sum.to_be_bytes());
    f.extend_from_slice(&port.to_be_bytes());
    f.extend_from_slice(&80u16.to_be_bytes());
    f.extend_from_slice(&seq.to_be_bytes());
    f.extend_from_slice(&ack.to_be_bytes());
    f.extend_from_slice(&[0x50, flags, 0xff, 0xff, 0, 0, 0, 0]);
    f.extend_from_slice(payload);
    f
}

/// A reply's TCP sequence number, flags and payload (`None` if not TCP).
fn parse(frame: &[u8]) -> Option<(u32, u8, &[u8])> {
    let ip = frame.get(14..)?;
    if frame.get(12..14)? != [0x08, 0x00] || *ip.get(9)? != 6 {
        return None;
    }
    let ihl = usize::from(ip[0] & 15) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    let tcp = ip.get(ihl..total)?;
    let seq = u32::from_be_bytes(tcp.get(4..8)?.try_into().ok()?);
    let offset = usize::from(tcp.get(12)? >> 4) * 4;
    Some((seq, *tcp.get(13)?, tcp.get(offset..)?))
}

/// The guest's side of one connection.
struct Connection {
    port: u16,
    seq: u32,
    ack: u32,
}

/// Opens a connection from `port` (SYN, SYN-ACK, ACK).
fn connect(stack: &mut MmdsStack, port: u16) -> Result<Connection> {
    stack.detour(&segment(port, 1000, 0, SYN, &[]));
    let mut ack = None;
    while let Some(reply) = stack.next_reply() {
        if let Some((seq, flags, _)) = parse(&reply) {
            if flags & (SYN | ACK) == SYN | ACK {
                ack = Some(seq.wrapping_add(1));
            }
        }
    }
    let ack = ack.ok_or_else(|| Error::Unexpected(format!("no SYN-ACK for port {port}")))?;
    stack.detour(&segment(port, 1001, ack, ACK, &[]));
    Ok(Connection {
        port,
        seq: 1001,
        ack,
    })
}

/// Whether `response` holds its headers and all of its body.
fn complete(response: &[u8]) -> bool {
    let text = String::from_utf8_lossy(response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    head.lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|n| n.trim().parse::<usize>().ok())
        .is_some_and(|n| body.len() >= n)
}

/// One `GET` on `c`, acknowledging the answer; returns the response.
fn get(stack: &mut MmdsStack, c: &mut Connection, response: &mut Vec<u8>) -> Result<()> {
    response.clear();
    stack.detour(&segment(c.port, c.seq, c.ack, PSH_ACK, REQUEST));
    c.seq = c
        .seq
        .wrapping_add(u32::try_from(REQUEST.len()).unwrap_or(0));
    for _ in 0..64 {
        while let Some(reply) = stack.next_reply() {
            if let Some((seq, _, payload)) = parse(&reply) {
                if seq == c.ack && !payload.is_empty() {
                    response.extend_from_slice(payload);
                    c.ack = c
                        .ack
                        .wrapping_add(u32::try_from(payload.len()).unwrap_or(0));
                }
            }
        }
        stack.detour(&segment(c.port, c.seq, c.ack, ACK, &[]));
        if complete(response) {
            return Ok(());
        }
    }
    Err(Error::Unexpected(format!(
        "incomplete answer: {:?}",
        String::from_utf8_lossy(response)
    )))
}

fn store() -> Result<Arc<Mutex<Mmds>>> {
    let mut mmds = Mmds::default();
    mmds.put(serde_json::json!({"latest": {"meta-data": {"ami-id": "ami-12345678"}}}))
        .map_err(|e| Error::Unexpected(format!("the MMDS store: {e}")))?;
    Ok(Arc::new(Mutex::new(mmds)))
}

/// Bytes the C heap holds in use (glibc's `mallinfo2`).
fn heap_in_use() -> usize {
    // SAFETY: mallinfo2 only reads the allocator's statistics.
    unsafe { libc::mallinfo2() }.uordblks
}

/// Runs the group.
pub fn run(options: Options) -> Result<Vec<Figure>> {
    let mut stack = MmdsStack::with_seed(store()?, DEFAULT_IPV4_ADDRESS, 1);
    let mut conn = connect(&mut stack, 40000)?;
    let mut response = Vec::new();
    get(&mut stack, &mut conn, &mut response)?;
    if !response.ends_with(b"ami-12345678") {
        return Err(Error::Unexpected(format!(
            "unexpected answer: {:?}",
            String::from_utf8_lossy(&response)
        )));
    }
    let mut rates = Vec::new();
    for _ in 0..options.rounds {
        let start = Instant::now();
        for _ in 0..options.requests {
            get(&mut stack, &mut conn, &mut response)?;
        }
        rates.push(per_second(options.requests as f64, start.elapsed()));
    }
    drop(stack);

    let mut stack = MmdsStack::with_seed(store()?, DEFAULT_IPV4_ADDRESS, 2);
    // The listener and the neighbour cache first, so that only connections
    // count.
    connect(&mut stack, 1)?;
    let before = heap_in_use();
    let start = Instant::now();
    for port in 0..OPENED {
        connect(&mut stack, 2 + port)?;
    }
    let opening = start.elapsed();
    let held = stack.connections();
    let grown = heap_in_use().saturating_sub(before) as f64 / 1024.0;
    let bound = (CONN_RX_BUF + CONN_TX_BUF) as f64 / 1024.0;
    let per_held = grown / held.max(1) as f64;
    Ok(vec![
        Figure::new(
            GROUP,
            "GET requests, one keep-alive connection",
            median(&rates).unwrap_or(0.0),
            "req/s",
            Better::Higher,
        )
        .note("the frame path only (no virtqueue, no TAP); each answer acknowledged"),
        Figure::new(
            GROUP,
            "heap after opening 1000 connections",
            grown,
            "KiB",
            Better::Lower,
        )
        .note(&format!(
            "{held} held (cap {MAX_CONNECTIONS}, oldest dropped); {:.1} KiB each, \
             buffers {bound:.0} KiB; opened in {:.1} ms",
            per_held,
            opening.as_secs_f64() * 1e3
        )),
        Figure::new(
            GROUP,
            "heap per held connection",
            per_held,
            "KiB",
            Better::Lower,
        ),
    ])
}
