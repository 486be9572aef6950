//! Finding an executable's ELF interpreter (`PT_INTERP`), so that the jailer
//! can refuse a dynamically linked program, which cannot start in a jail that
//! holds no shared libraries, before it creates anything.

use std::ffi::OsString;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

/// `\x7fELF`.
const MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
/// `EI_CLASS` value of a 64-bit ELF file.
const CLASS_64: u8 = 2;
/// `EI_DATA` value of a little-endian ELF file.
const DATA_LSB: u8 = 1;
/// Program header type of the interpreter path.
const PT_INTERP: u32 = 3;
/// Size of an ELF64 file header.
const HEADER_SIZE: usize = 64;
/// Size of an ELF64 program header.
const PHDR_SIZE: usize = 56;
/// More program headers than any real executable has.
const MAX_PHDRS: u16 = 256;
/// Longest interpreter path accepted (`PATH_MAX`).
const MAX_INTERP: u64 = 4096;

/// What an executable file is, as far as the jail cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecKind {
    /// Not a 64-bit little-endian ELF file (a script, or another format):
    /// left to `execve` to judge.
    NotElf64,
    /// An ELF file without an interpreter: statically linked.
    Static,
    /// A dynamically linked ELF file and the interpreter it names.
    Dynamic(PathBuf),
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed ELF file: {what}"),
    )
}

fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut word = [0u8; 4];
    word.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(word)
}

fn u64_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
}

/// Reads as many bytes as `buf` holds, or fewer at the end of the file.
fn read_up_to(file: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// Classifies `file`: not a 64-bit ELF, static, or dynamic with the path of
/// its interpreter. Every offset and size is checked before use.
pub fn classify<F: Read + Seek>(file: &mut F) -> io::Result<ExecKind> {
    let mut header = [0u8; HEADER_SIZE];
    let len = read_up_to(file, &mut header)?;
    if len < HEADER_SIZE || header[..4] != MAGIC || header[4] != CLASS_64 || header[5] != DATA_LSB {
        return Ok(ExecKind::NotElf64);
    }
    let phoff = u64_at(&header, 0x20);
    let entry_size = u16_at(&header, 0x36);
    let phentsize = usize::from(entry_size);
    let phnum = u16_at(&header, 0x38);
    if phnum == 0 {
        return Ok(ExecKind::Static);
    }
    if phentsize < PHDR_SIZE || phnum > MAX_PHDRS {
        return Err(invalid("implausible program header table"));
    }
    let mut phdr = vec![0u8; phentsize];
    for index in 0..u64::from(phnum) {
        let at = index
            .checked_mul(u64::from(entry_size))
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(|| invalid("program header offset overflows"))?;
        file.seek(SeekFrom::Start(at))?;
        if read_up_to(file, &mut phdr)? < phentsize {
            return Err(invalid("program header table beyond the end of the file"));
        }
        if u32_at(&phdr, 0) == PT_INTERP {
            return read_interp(file, u64_at(&phdr, 8), u64_at(&phdr, 32)).map(ExecKind::Dynamic);
        }
    }
    Ok(ExecKind::Static)
}

fn read_interp<F: Read + Seek>(file: &mut F, offset: u64, size: u64) -> io::Result<PathBuf> {
    if size == 0 || size > MAX_INTERP {
        return Err(invalid("implausible interpreter path size"));
    }
    file.seek(SeekFrom::Start(offset))?;
    let mut path = vec![0u8; usize::try_from(size).map_err(|_| invalid("interpreter size"))?];
    if read_up_to(file, &mut path)? < path.len() {
        return Err(invalid("interpreter path beyond the end of the file"));
    }
    let end = path.iter().position(|&b| b == 0).unwrap_or(path.len());
    path.truncate(end);
    if path.is_empty() {
        return Err(invalid("empty interpreter path"));
    }
    Ok(PathBuf::from(OsString::from_vec(path)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal ELF64 image: header, `phnum` program headers, then
    /// `interp` at offset 0x200 if given (as the first header's PT_INTERP).
    fn image(interp: Option<&[u8]>, phnum: u16) -> Vec<u8> {
        let mut bytes = vec![0u8; 0x400];
        bytes[..4].copy_from_slice(&MAGIC);
        bytes[4] = CLASS_64;
        bytes[5] = DATA_LSB;
        bytes[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        bytes[0x36..0x38].copy_from_slice(&u16::try_from(PHDR_SIZE).unwrap().to_le_bytes());
        bytes[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        for i in 0..usize::from(phnum) {
            let at = 64 + i * PHDR_SIZE;
            bytes[at..at + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        }
        if let Some(path) = interp {
            let at = 64 + PHDR_SIZE; // the second header
            bytes[at..at + 4].copy_from_slice(&PT_INTERP.to_le_bytes());
            bytes[at + 8..at + 16].copy_from_slice(&0x200u64.to_le_bytes());
            bytes[at + 32..at + 40]
                .copy_from_slice(&(u64::try_from(path.len()).unwrap() + 1).to_le_bytes());
            bytes[0x200..0x200 + path.len()].copy_from_slice(path);
        }
        bytes
    }

    fn kind(bytes: Vec<u8>) -> io::Result<ExecKind> {
        classify(&mut Cursor::new(bytes))
    }

    #[test]
    fn static_dynamic_and_other_files() {
        assert_eq!(kind(image(None, 3)).unwrap(), ExecKind::Static);
        assert_eq!(
            kind(image(Some(b"/lib64/ld-linux-x86-64.so.2"), 3)).unwrap(),
            ExecKind::Dynamic(PathBuf::from("/lib64/ld-linux-x86-64.so.2"))
        );
        assert_eq!(kind(b"#!/bin/sh\n".to_vec()).unwrap(), ExecKind::NotElf64);
        assert_eq!(kind(Vec::new()).unwrap(), ExecKind::NotElf64);
        let mut elf32 = image(None, 1);
        elf32[4] = 1;
        assert_eq!(kind(elf32).unwrap(), ExecKind::NotElf64);
    }

    #[test]
    fn the_running_test_binary_is_classified() {
        // Whatever the build, the answer must be one of the ELF kinds.
        let exe = std::env::current_exe().unwrap();
        let mut file = std::fs::File::open(exe).unwrap();
        let kind = classify(&mut file).unwrap();
        assert_ne!(kind, ExecKind::NotElf64);
        if let ExecKind::Dynamic(interp) = kind {
            assert!(interp.is_absolute(), "{interp:?}");
        }
    }

    #[test]
    fn malformed_headers_are_errors_not_panics() {
        let mut truncated = image(Some(b"/ld.so"), 3);
        truncated.truncate(100);
        assert!(kind(truncated).is_err());
        let mut huge = image(None, 3);
        huge[0x20..0x28].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(kind(huge).is_err());
        let mut small = image(None, 3);
        small[0x36..0x38].copy_from_slice(&8u16.to_le_bytes());
        assert!(kind(small).is_err());
        let mut beyond = image(Some(b"/ld.so"), 3);
        let at = 64 + PHDR_SIZE + 8;
        beyond[at..at + 8].copy_from_slice(&0x10_0000u64.to_le_bytes());
        assert!(kind(beyond).is_err());
        let mut long = image(Some(b"/ld.so"), 3);
        let at = 64 + PHDR_SIZE + 32;
        long[at..at + 8].copy_from_slice(&(MAX_INTERP + 1).to_le_bytes());
        assert!(kind(long).is_err());
        let mut empty = image(Some(b""), 3);
        empty[0x200] = 0;
        assert!(kind(empty).is_err());
    }
}
