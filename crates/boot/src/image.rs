//! Recognising kernel images and checking them before they are loaded: which
//! format a file is, where it wants to live in guest memory, and whether the
//! file is as long as its headers claim.

use std::fmt;
use std::io::{Read, Seek, SeekFrom};

use crate::{Error, Result};

const ELF_MAGIC: [u8; 4] = [0x7f, b'E', b'L', b'F'];
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
const EM_X86_64: u16 = 62;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const ELF64_HEADER_SIZE: usize = 64;
const ELF64_PHDR_SIZE: usize = 56;
/// Most program headers accepted (a real vmlinux has about five).
const MAX_PHDRS: usize = 64;
/// The PVH entry note: name "Xen", type XEN_ELFNOTE_PHYS32_ENTRY.
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

/// Offset of the bzImage setup header in the file.
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// End (exclusive) of the setup header fields this crate reads.
const SETUP_HEADER_END: usize = 0x26c;
const HDRS_MAGIC: u32 = 0x5372_6448;
const LOADED_HIGH: u8 = 1;
/// `xloadflags` bit: the kernel has a 64-bit entry point at load address + 0x200.
pub const XLF_KERNEL_64: u16 = 1;
/// First boot protocol version with `xloadflags`.
const MIN_BZIMAGE_VERSION: u16 = 0x020c;

/// The kernel image formats Ember boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Uncompressed ELF `vmlinux`, entered in 64-bit mode.
    Elf,
    /// ELF with a PVH entry note, entered in 32-bit protected mode.
    ElfPvh,
    /// Compressed `bzImage`, entered through the 64-bit boot protocol.
    BzImage,
}

impl fmt::Display for ImageFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ImageFormat::Elf => "ELF",
            ImageFormat::ElfPvh => "ELF (PVH)",
            ImageFormat::BzImage => "bzImage",
        })
    }
}

/// What the headers of a kernel image say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageInfo {
    /// The format.
    pub format: ImageFormat,
    /// Lowest guest-physical address the kernel occupies.
    pub load_start: u64,
    /// First guest-physical address past what the kernel occupies (including
    /// .bss, or the decompression area of a bzImage).
    pub load_end: u64,
}

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn read_at<F: Read + Seek>(file: &mut F, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut filled = 0;
    while filled < buf.len() {
        match file.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

fn read_err(source: std::io::Error) -> Error {
    Error::Read {
        what: "kernel image",
        source,
    }
}

/// Reads the headers of `file` and checks the image is complete.
///
/// # Example
///
/// ```
/// use std::io::Cursor;
///
/// use ember_boot::{image, Error};
///
/// let mut not_a_kernel = Cursor::new(b"#!/bin/sh\necho hello\n".to_vec());
/// assert!(matches!(image::inspect(&mut not_a_kernel), Err(Error::UnknownFormat)));
/// // An ELF header cut short.
/// let mut cut = Cursor::new(vec![0x7f, b'E', b'L', b'F', 2, 1]);
/// assert!(matches!(image::inspect(&mut cut), Err(Error::Truncated { needed: 64, .. })));
/// ```
pub fn inspect<F: Read + Seek>(file: &mut F) -> Result<ImageInfo> {
    let file_len = file.seek(SeekFrom::End(0)).map_err(read_err)?;
    let mut magic = [0u8; 4];
    let n = read_at(file, 0, &mut magic).map_err(read_err)?;
    if n == 4 && magic == ELF_MAGIC {
        return inspect_elf(file, file_len);
    }
    let mut hdr = [0u8; SETUP_HEADER_END - SETUP_HEADER_OFFSET];
    let n = read_at(file, SETUP_HEADER_OFFSET as u64, &mut hdr).map_err(read_err)?;
    if n >= 0x15 && u32_at(&hdr, 0x202 - 0x1f1) == HDRS_MAGIC {
        if n < hdr.len() {
            return Err(Error::Truncated {
                format: ImageFormat::BzImage,
                needed: SETUP_HEADER_END as u64,
                actual: file_len,
            });
        }
        return inspect_bzimage(&hdr, file_len);
    }
    Err(Error::UnknownFormat)
}

fn inspect_elf<F: Read + Seek>(file: &mut F, file_len: u64) -> Result<ImageInfo> {
    let table = read_program_headers(file, file_len)?;
    let span = loaded_span(file, &table, file_len)?;
    if span.end == 0 {
        return Err(Error::BadElf("no loadable segment".into()));
    }
    Ok(ImageInfo {
        format: if span.pvh {
            ImageFormat::ElfPvh
        } else {
            ImageFormat::Elf
        },
        load_start: span.start,
        load_end: span.end,
    })
}

/// An ELF image that claims more bytes than `file_len`.
fn truncated_elf(needed: u64, file_len: u64) -> Error {
    Error::Truncated {
        format: ImageFormat::Elf,
        needed,
        actual: file_len,
    }
}

/// Checks the ELF header (64-bit, little endian, x86_64) and returns the
/// program header table.
fn read_program_headers<F: Read + Seek>(file: &mut F, file_len: u64) -> Result<Vec<u8>> {
    let mut eh = [0u8; ELF64_HEADER_SIZE];
    if read_at(file, 0, &mut eh).map_err(read_err)? < ELF64_HEADER_SIZE {
        return Err(truncated_elf(ELF64_HEADER_SIZE as u64, file_len));
    }
    if eh[4] != ELFCLASS64 || eh[5] != ELFDATA2LSB {
        return Err(Error::BadElf("not a 64-bit little-endian ELF file".into()));
    }
    if u16_at(&eh, 0x12) != EM_X86_64 {
        return Err(Error::BadElf("not built for x86_64".into()));
    }
    let phoff = u64_at(&eh, 0x20);
    let phentsize = usize::from(u16_at(&eh, 0x36));
    let phnum = usize::from(u16_at(&eh, 0x38));
    if phentsize != ELF64_PHDR_SIZE {
        return Err(Error::BadElf(format!(
            "program header size {phentsize}, expected {ELF64_PHDR_SIZE}"
        )));
    }
    if phnum == 0 || phnum > MAX_PHDRS {
        return Err(Error::BadElf(format!("{phnum} program headers")));
    }
    let table_len = (phnum * ELF64_PHDR_SIZE) as u64;
    let table_end = phoff
        .checked_add(table_len)
        .ok_or_else(|| truncated_elf(u64::MAX, file_len))?;
    let mut table = vec![0u8; phnum * ELF64_PHDR_SIZE];
    if read_at(file, phoff, &mut table).map_err(read_err)? < table.len() {
        return Err(truncated_elf(table_end, file_len));
    }
    Ok(table)
}

/// Where an ELF kernel's loadable segments lie, and whether it has a PVH note.
struct LoadedSpan {
    /// Lowest address of a loadable segment (`u64::MAX` when there is none).
    start: u64,
    /// First address past the loadable segments (0 when there is none).
    end: u64,
    /// Whether a note segment holds the PVH entry note.
    pvh: bool,
}

/// Walks the program header `table`, checking every segment lies in the file.
fn loaded_span<F: Read + Seek>(file: &mut F, table: &[u8], file_len: u64) -> Result<LoadedSpan> {
    let mut span = LoadedSpan {
        start: u64::MAX,
        end: 0,
        pvh: false,
    };
    for ph in table.chunks_exact(ELF64_PHDR_SIZE) {
        let (p_type, offset, paddr) = (u32_at(ph, 0), u64_at(ph, 8), u64_at(ph, 0x18));
        let (filesz, memsz) = (u64_at(ph, 0x20), u64_at(ph, 0x28));
        let file_end = offset
            .checked_add(filesz)
            .ok_or_else(|| Error::BadElf("segment offset overflows".into()))?;
        if file_end > file_len {
            return Err(truncated_elf(file_end, file_len));
        }
        match p_type {
            // linux-loader copies `filesz` bytes even when `memsz` is 0.
            PT_LOAD if memsz > 0 || filesz > 0 => {
                let seg_end = paddr
                    .checked_add(memsz.max(filesz))
                    .ok_or_else(|| Error::BadElf("segment address overflows".into()))?;
                span.start = span.start.min(paddr);
                span.end = span.end.max(seg_end);
            }
            PT_NOTE => span.pvh |= has_pvh_note(file, offset, filesz)?,
            _ => {}
        }
    }
    Ok(span)
}

/// Whether the note segment at `offset` holds a "Xen" PHYS32_ENTRY note.
fn has_pvh_note<F: Read + Seek>(file: &mut F, offset: u64, size: u64) -> Result<bool> {
    let size = usize::try_from(size.min(4096)).unwrap_or(4096);
    let mut notes = vec![0u8; size];
    let n = read_at(file, offset, &mut notes).map_err(read_err)?;
    let notes = &notes[..n];
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = u32_at(notes, at) as usize;
        let descsz = u32_at(notes, at + 4) as usize;
        let kind = u32_at(notes, at + 8);
        let name_start = at + 12;
        let name = notes.get(name_start..name_start.saturating_add(namesz));
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.is_some_and(|n| n.starts_with(b"Xen")) {
            return Ok(true);
        }
        let align4 = |v: usize| v.saturating_add(3) & !3;
        at = name_start
            .saturating_add(align4(namesz))
            .saturating_add(align4(descsz));
    }
    Ok(false)
}

fn inspect_bzimage(hdr: &[u8], file_len: u64) -> Result<ImageInfo> {
    // `hdr` starts at file offset 0x1f1.
    let field = |offset: usize| offset - SETUP_HEADER_OFFSET;
    let setup_sects = match hdr[field(0x1f1)] {
        0 => 4,
        n => u64::from(n),
    };
    let syssize = u64::from(u32_at(hdr, field(0x1f4)));
    let version = u16_at(hdr, field(0x206));
    let loadflags = hdr[field(0x211)];
    let code32_start = u64::from(u32_at(hdr, field(0x214)));
    let xloadflags = u16_at(hdr, field(0x236));
    let init_size = u64::from(u32_at(hdr, field(0x260)));

    if version < MIN_BZIMAGE_VERSION {
        return Err(Error::BadBzImage(format!(
            "boot protocol {}.{:02} is too old (2.12 or later needed)",
            version >> 8,
            version & 0xff
        )));
    }
    if loadflags & LOADED_HIGH == 0 {
        return Err(Error::BadBzImage("the kernel does not load high".into()));
    }
    if xloadflags & XLF_KERNEL_64 == 0 {
        return Err(Error::BadBzImage(
            "no 64-bit entry point (XLF_KERNEL_64 is not set)".into(),
        ));
    }
    let payload_offset = (setup_sects + 1) * 512;
    let needed = payload_offset + syssize * 16;
    if syssize == 0 || file_len < needed {
        return Err(Error::Truncated {
            format: ImageFormat::BzImage,
            needed,
            actual: file_len,
        });
    }
    let payload_len = file_len - payload_offset;
    Ok(ImageInfo {
        format: ImageFormat::BzImage,
        load_start: code32_start,
        load_end: code32_start + payload_len.max(init_size),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Cursor;

    /// A minimal ELF64 x86_64 image: one PT_LOAD of `payload` at `paddr` with
    /// `memsz`, and optionally a PVH note.
    pub(crate) fn elf(
        payload: &[u8],
        paddr: u64,
        memsz: u64,
        entry: u64,
        pvh_entry: Option<u32>,
    ) -> Vec<u8> {
        let phnum: u16 = if pvh_entry.is_some() { 2 } else { 1 };
        let data_off = (ELF64_HEADER_SIZE + ELF64_PHDR_SIZE * usize::from(phnum)) as u64;
        let mut note = Vec::new();
        if let Some(e) = pvh_entry {
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&4u32.to_le_bytes());
            note.extend_from_slice(&XEN_ELFNOTE_PHYS32_ENTRY.to_le_bytes());
            note.extend_from_slice(b"Xen\0");
            note.extend_from_slice(&e.to_le_bytes());
        }
        let mut f = vec![0u8; ELF64_HEADER_SIZE];
        f[..4].copy_from_slice(&ELF_MAGIC);
        f[4] = ELFCLASS64;
        f[5] = ELFDATA2LSB;
        f[6] = 1;
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&EM_X86_64.to_le_bytes());
        f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&entry.to_le_bytes());
        f[0x20..0x28].copy_from_slice(&(ELF64_HEADER_SIZE as u64).to_le_bytes());
        f[0x34..0x36].copy_from_slice(&u16::try_from(ELF64_HEADER_SIZE).unwrap().to_le_bytes());
        f[0x36..0x38].copy_from_slice(&u16::try_from(ELF64_PHDR_SIZE).unwrap().to_le_bytes());
        f[0x38..0x3a].copy_from_slice(&phnum.to_le_bytes());
        let mut phdr = |p_type: u32, offset: u64, addr: u64, filesz: u64, memsz: u64| {
            let mut ph = vec![0u8; ELF64_PHDR_SIZE];
            ph[0..4].copy_from_slice(&p_type.to_le_bytes());
            ph[8..16].copy_from_slice(&offset.to_le_bytes());
            ph[16..24].copy_from_slice(&addr.to_le_bytes());
            ph[24..32].copy_from_slice(&addr.to_le_bytes());
            ph[32..40].copy_from_slice(&filesz.to_le_bytes());
            ph[40..48].copy_from_slice(&memsz.to_le_bytes());
            f.extend_from_slice(&ph);
        };
        phdr(PT_LOAD, data_off, paddr, payload.len() as u64, memsz);
        if pvh_entry.is_some() {
            phdr(
                PT_NOTE,
                data_off + payload.len() as u64,
                0,
                note.len() as u64,
                0,
            );
        }
        f.extend_from_slice(payload);
        f.extend_from_slice(&note);
        f
    }

    /// A minimal bzImage with one setup sector and `payload`.
    pub(crate) fn bzimage(payload: &[u8], xloadflags: u16, init_size: u32) -> Vec<u8> {
        let mut f = vec![0u8; 1024];
        f[0x1f1] = 1;
        let syssize = u32::try_from(payload.len().div_ceil(16)).unwrap();
        f[0x1f4..0x1f8].copy_from_slice(&syssize.to_le_bytes());
        f[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        f[0x202..0x206].copy_from_slice(&HDRS_MAGIC.to_le_bytes());
        f[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        f[0x211] = LOADED_HIGH;
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes());
        f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes());
        f[0x260..0x264].copy_from_slice(&init_size.to_le_bytes());
        f.extend_from_slice(payload);
        f.resize(1024 + syssize as usize * 16, 0);
        f
    }

    #[test]
    fn recognises_elf_and_pvh() {
        let plain = elf(&[0x90; 64], 0x10_0000, 0x2000, 0x10_0000, None);
        let info = inspect(&mut Cursor::new(plain)).unwrap();
        assert_eq!(info.format, ImageFormat::Elf);
        assert_eq!((info.load_start, info.load_end), (0x10_0000, 0x10_2000));

        let pvh = elf(&[0x90; 64], 0x10_0000, 64, 0x10_0000, Some(0x10_0010));
        assert_eq!(
            inspect(&mut Cursor::new(pvh)).unwrap().format,
            ImageFormat::ElfPvh
        );
    }

    /// Found by the `kernel_image` fuzz target: a PT_LOAD with file bytes
    /// but `p_memsz` 0 was left out of the load range, yet linux-loader copies
    /// its bytes (here to guest address 0).
    #[test]
    fn load_segments_with_only_file_bytes_count() {
        let mut image = elf(&[0x90; 64], 0x10_0000, 0x2000, 0x10_0000, Some(0x10_0010));
        // Turn the note into a PT_LOAD of its 20 bytes at address 0, memsz 0.
        let ph = ELF64_HEADER_SIZE + ELF64_PHDR_SIZE;
        image[ph..ph + 4].copy_from_slice(&PT_LOAD.to_le_bytes());
        image[ph + 0x18..ph + 0x20].copy_from_slice(&0u64.to_le_bytes());
        image[ph + 0x28..ph + 0x30].copy_from_slice(&0u64.to_le_bytes());
        let info = inspect(&mut Cursor::new(image)).unwrap();
        assert_eq!((info.load_start, info.load_end), (0, 0x10_2000));
    }

    #[test]
    fn recognises_bzimage() {
        let image = bzimage(&[0xf4; 0x300], XLF_KERNEL_64, 0x10_0000);
        let info = inspect(&mut Cursor::new(image)).unwrap();
        assert_eq!(info.format, ImageFormat::BzImage);
        assert_eq!((info.load_start, info.load_end), (0x10_0000, 0x20_0000));
    }

    #[test]
    fn rejects_garbage_and_empty_files() {
        assert!(matches!(
            inspect(&mut Cursor::new(vec![])),
            Err(Error::UnknownFormat)
        ));
        assert!(matches!(
            inspect(&mut Cursor::new(vec![0x42; 4096])),
            Err(Error::UnknownFormat)
        ));
    }

    #[test]
    fn rejects_truncated_elf() {
        let full = elf(&[0x90; 256], 0x10_0000, 256, 0x10_0000, None);
        for len in [10, 64, 100, full.len() - 1] {
            let err = inspect(&mut Cursor::new(full[..len].to_vec())).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Truncated {
                        format: ImageFormat::Elf,
                        ..
                    }
                ),
                "{len}: {err}"
            );
        }
    }

    #[test]
    fn rejects_wrong_elf_kinds() {
        let mut image = elf(&[0x90; 16], 0x10_0000, 16, 0x10_0000, None);
        image[4] = 1; // ELFCLASS32
        assert!(matches!(
            inspect(&mut Cursor::new(image.clone())),
            Err(Error::BadElf(_))
        ));
        image[4] = ELFCLASS64;
        image[0x12] = 40; // EM_ARM
        assert!(matches!(
            inspect(&mut Cursor::new(image)),
            Err(Error::BadElf(_))
        ));
    }

    #[test]
    fn rejects_truncated_and_old_bzimages() {
        let full = bzimage(&[0xf4; 0x300], XLF_KERNEL_64, 0);
        for len in [0x210, 0x300, full.len() - 1] {
            let err = inspect(&mut Cursor::new(full[..len].to_vec())).unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Truncated {
                        format: ImageFormat::BzImage,
                        ..
                    }
                ),
                "{len}: {err}"
            );
        }
        let no64 = bzimage(&[0xf4; 0x300], 0, 0);
        assert!(matches!(
            inspect(&mut Cursor::new(no64)),
            Err(Error::BadBzImage(_))
        ));
        let mut old = bzimage(&[0xf4; 0x300], XLF_KERNEL_64, 0);
        old[0x206..0x208].copy_from_slice(&0x0204u16.to_le_bytes());
        assert!(matches!(
            inspect(&mut Cursor::new(old)),
            Err(Error::BadBzImage(_))
        ));
    }
}
