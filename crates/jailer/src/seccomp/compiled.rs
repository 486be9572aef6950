//! Firecracker's compiled filter format: what `seccompiler-bin` writes and
//! `firecracker --seccomp-filter` reads (Firecracker 1.15 and later). It is a
//! map from thread name to BPF program, `BTreeMap<String, Vec<u64>>`
//! serialized with `bitcode` 0.6 through serde, each `u64` holding one
//! `sock_filter` in memory order (`code`, `jt`, `jf`, `k`, little-endian).
//!
//! bitcode writes one buffer per type position, in the order the types were
//! first met: the map's length, the keys (string lengths, then their bytes),
//! the values' lengths, then every instruction. Lengths are bytes (255 means
//! "large", with the large values following as integers); byte columns and
//! integer columns start with a packing byte (see [`unpack_bytes`] and
//! [`unpack_u64s`]). This decoder is written from that description: every
//! count is checked against the bytes left before anything is allocated, and
//! trailing bytes are refused.

use seccompiler::{sock_filter, BpfProgram};

/// Largest file accepted, as Firecracker's own limit.
pub const MAX_FILE_BYTES: usize = 100_000;
/// The kernel's limit on a seccomp program's length.
pub const MAX_INSTRUCTIONS: usize = 4096;
/// More threads than any filter file names.
const MAX_THREADS: usize = 16;
/// Longest thread name accepted.
const MAX_NAME: usize = 64;

/// Why bytes are not a compiled filter file; the message says where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError(pub String);

type Result<T> = std::result::Result<T, FormatError>;

fn fail<T>(what: impl Into<String>) -> Result<T> {
    Err(FormatError(what.into()))
}

/// The bytes not decoded yet.
struct Input<'a> {
    bytes: &'a [u8],
}

impl<'a> Input<'a> {
    fn take(&mut self, count: usize, what: &str) -> Result<&'a [u8]> {
        if count > self.bytes.len() {
            return fail(format!(
                "{what}: needs {count} bytes, {} left",
                self.bytes.len()
            ));
        }
        let (head, tail) = self.bytes.split_at(count);
        self.bytes = tail;
        Ok(head)
    }

    fn byte(&mut self, what: &str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        let mut word = [0u8; 8];
        word.copy_from_slice(self.take(8, what)?);
        Ok(u64::from_le_bytes(word))
    }
}

/// Values per packed byte for each number of states a byte column uses.
fn digits_per_byte(states: u8) -> usize {
    match states {
        2 => 8,
        3 => 5,
        4 => 4,
        6 => 3,
        _ => 2, // 16 states
    }
}

/// `count` values below `states`, packed several to a byte, lowest first.
fn unpack_digits(input: &mut Input<'_>, count: usize, states: u8, what: &str) -> Result<Vec<u8>> {
    let per_byte = digits_per_byte(states);
    let packed = input.take(count.div_ceil(per_byte), what)?;
    let mut out = Vec::with_capacity(count);
    for &byte in packed {
        let mut rest = byte;
        for _ in 0..per_byte {
            if out.len() == count {
                break;
            }
            out.push(rest % states);
            rest /= states;
        }
    }
    Ok(out)
}

/// A byte column of `count` values: up to 2 values are stored as they are;
/// otherwise a packing byte `2p - o` (p: 0 for plain bytes, then 16, 6, 4, 3
/// and 2 states per value; o: 1 when an offset byte follows, added to each).
fn unpack_bytes(input: &mut Input<'_>, count: usize, what: &str) -> Result<Vec<u8>> {
    if count <= 2 {
        return Ok(input.take(count, what)?.to_vec());
    }
    let header = input.byte(what)?;
    let with_min = header & 1 != 0;
    let states = match header.div_ceil(2) {
        0 => return Ok(input.take(count, what)?.to_vec()),
        1 => 16,
        2 => 6,
        3 => 4,
        4 => 3,
        5 => 2,
        _ => return fail(format!("{what}: unknown byte packing {header}")),
    };
    let min = if with_min { input.byte(what)? } else { 0 };
    let mut values = unpack_digits(input, count, states, what)?;
    for value in &mut values {
        *value = value.wrapping_add(min);
    }
    Ok(values)
}

/// An integer column of `count` values: a packing byte `2(w - 1) - o` (w: 1
/// for 8-byte values, 2, 3, 4 for 4, 2 and 1 byte; o: 1 when an 8-byte
/// offset follows, added to each), then the values; 1-byte values are a
/// byte column of their own. An empty column has no packing byte.
fn unpack_u64s(input: &mut Input<'_>, count: usize, what: &str) -> Result<Vec<u64>> {
    if count == 0 {
        return Ok(Vec::new());
    }
    let header = input.byte(what)?;
    let with_min = header & 1 != 0;
    let width = match header.div_ceil(2) {
        0 => 8,
        1 => 4,
        2 => 2,
        3 => 1,
        _ => return fail(format!("{what}: unknown integer packing {header}")),
    };
    let min = if with_min { input.u64(what)? } else { 0 };
    let values: Vec<u64> = if width == 1 {
        unpack_bytes(input, count, what)?
            .into_iter()
            .map(u64::from)
            .collect()
    } else {
        let total = count
            .checked_mul(width)
            .ok_or_else(|| FormatError(format!("{what}: {count} values overflow")))?;
        input
            .take(total, what)?
            .chunks_exact(width)
            .map(|chunk| {
                let mut word = [0u8; 8];
                word[..width].copy_from_slice(chunk);
                u64::from_le_bytes(word)
            })
            .collect()
    };
    Ok(values.into_iter().map(|v| v.wrapping_add(min)).collect())
}

/// A length column of `count` lengths: a byte column where 255 stands for a
/// large length, then the large lengths as an integer column.
fn lengths(input: &mut Input<'_>, count: usize, what: &str) -> Result<Vec<usize>> {
    let small = unpack_bytes(input, count, what)?;
    let sum: usize = small.iter().map(|&b| usize::from(b)).sum();
    if sum < 255 {
        return Ok(small.into_iter().map(usize::from).collect());
    }
    let large_count = small.iter().filter(|&&b| b == 255).count();
    let mut large = unpack_u64s(input, large_count, what)?.into_iter();
    small
        .into_iter()
        .map(|b| match b {
            255 => large
                .next()
                .and_then(|v| usize::try_from(v).ok())
                .ok_or_else(|| FormatError(format!("{what}: bad large length"))),
            b => Ok(usize::from(b)),
        })
        .collect()
}

/// Sums lengths, refusing a total beyond `max`.
fn total(lengths: &[usize], max: usize, what: &str) -> Result<usize> {
    let sum = lengths
        .iter()
        .try_fold(0usize, |acc, &n| acc.checked_add(n))
        .filter(|&sum| sum <= max);
    sum.ok_or_else(|| FormatError(format!("{what}: more than {max} in all")))
}

/// The thread names, in file order.
fn names(input: &mut Input<'_>, threads: usize) -> Result<Vec<String>> {
    let sizes = lengths(input, threads, "thread name lengths")?;
    if let Some(&long) = sizes.iter().find(|&&n| n > MAX_NAME) {
        return fail(format!("a thread name of {long} bytes"));
    }
    let mut names = Vec::with_capacity(threads);
    for size in sizes {
        let bytes = input.take(size, "thread names")?;
        let name = std::str::from_utf8(bytes)
            .map_err(|_| FormatError("a thread name is not UTF-8".to_owned()))?;
        names.push(name.to_owned());
    }
    Ok(names)
}

fn instruction(word: u64) -> sock_filter {
    let bytes = word.to_le_bytes();
    sock_filter {
        code: u16::from_le_bytes([bytes[0], bytes[1]]),
        jt: bytes[2],
        jf: bytes[3],
        k: u32::from_le_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]),
    }
}

/// Decodes a compiled filter file into (thread name, program) pairs, in the
/// file's order. Names are lowercased, as Firecracker does.
pub fn decode(bytes: &[u8]) -> Result<Vec<(String, BpfProgram)>> {
    if bytes.len() > MAX_FILE_BYTES {
        return fail(format!(
            "{} bytes, more than the {MAX_FILE_BYTES} accepted",
            bytes.len()
        ));
    }
    let mut input = Input { bytes };
    let threads = lengths(&mut input, 1, "thread count")?[0];
    if threads > MAX_THREADS {
        return fail(format!("{threads} threads"));
    }
    let names = if threads == 0 {
        Vec::new()
    } else {
        names(&mut input, threads)?
    };
    let sizes = if threads == 0 {
        Vec::new()
    } else {
        lengths(&mut input, threads, "program lengths")?
    };
    if let Some(&long) = sizes.iter().find(|&&n| n > MAX_INSTRUCTIONS) {
        return fail(format!(
            "a program of {long} instructions (at most {MAX_INSTRUCTIONS})"
        ));
    }
    let count = total(&sizes, threads * MAX_INSTRUCTIONS, "instructions")?;
    let words = unpack_u64s(&mut input, count, "instructions")?;
    if !input.bytes.is_empty() {
        return fail(format!("{} bytes after the end", input.bytes.len()));
    }
    let mut words = words.into_iter();
    Ok(names
        .into_iter()
        .zip(sizes)
        .map(|(name, size)| {
            let program = words.by_ref().take(size).map(instruction).collect();
            (name.to_lowercase(), program)
        })
        .collect())
}

#[cfg(test)]
mod tests;
