//! The state file's byte layout: sections, their encoding, and the checked
//! decoding that turns any malformed input into an [`Error`].

use std::collections::HashSet;

use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::{Error, Result};

/// The first eight bytes of every state file.
pub const MAGIC: [u8; 8] = *b"EMBERSNP";
/// The layout version this crate writes and reads.
pub const FORMAT_VERSION: u16 = 1;
/// Architecture code of x86_64 hosts and guests.
pub const ARCH_X86_64: u16 = 0x8664;
/// Architecture code of aarch64 hosts and guests.
pub const ARCH_AARCH64: u16 = 0xaa64;
/// Architecture code of the host this crate is built for.
#[cfg(target_arch = "x86_64")]
pub const HOST_ARCH: u16 = ARCH_X86_64;
/// Architecture code of the host this crate is built for.
#[cfg(target_arch = "aarch64")]
pub const HOST_ARCH: u16 = ARCH_AARCH64;
/// Longest section id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Section flag: a reader that does not know the section must refuse the file.
const SECTION_REQUIRED: u16 = 1;
/// Magic, format version, architecture, flags, section count.
const HEADER_LEN: usize = 8 + 2 + 2 + 4 + 4;
/// The CRC-32 after the last section.
const CHECKSUM_LEN: usize = 4;
/// The smallest section: a one-byte id, its length, version, flags, payload length.
const MIN_SECTION_LEN: usize = 1 + 1 + 2 + 2 + 8;

/// One named, versioned piece of saved state.
///
/// # Example
///
/// ```
/// use ember_snapshot::{Error, Section};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// struct Serial {
///     divisor: u16,
/// }
///
/// let section = Section::json("device.serial", 2, &Serial { divisor: 12 })?;
/// assert!(section.required);
/// assert_eq!(section.payload, br#"{"divisor":12}"#);
/// assert_eq!(section.decode::<Serial>()?, Serial { divisor: 12 });
/// // A payload that does not match the type is an error naming the section.
/// let err = section.decode::<Vec<u8>>().unwrap_err();
/// assert!(matches!(err, Error::Decode { ref id, version: 2, .. } if id == "device.serial"));
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Section {
    /// Name: 1 to 64 of `A-Z a-z 0-9 . _ -` (for example `vm`, `vcpu.0`).
    pub id: String,
    /// Version of the payload's schema, owned by whoever writes the section.
    pub version: u16,
    /// Whether a reader that does not know `id` must refuse the file (when
    /// false it skips the section).
    pub required: bool,
    /// The payload's bytes (JSON for sections made by [`Section::json`]).
    pub payload: Vec<u8>,
}

impl Section {
    /// A required section whose payload is `value` as JSON.
    pub fn json<T: Serialize + ?Sized>(
        id: impl Into<String>,
        version: u16,
        value: &T,
    ) -> Result<Section> {
        let id = id.into();
        let payload = serde_json::to_vec(value).map_err(|source| Error::Encode {
            id: id.clone(),
            source,
        })?;
        Ok(Section {
            id,
            version,
            required: true,
            payload,
        })
    }

    /// The payload decoded from JSON.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T> {
        serde_json::from_slice(&self.payload).map_err(|source| Error::Decode {
            id: self.id.clone(),
            version: self.version,
            source,
        })
    }
}

/// A state file: its sections, in file order.
///
/// # Example
///
/// ```
/// use ember_snapshot::{Error, Section, StateFile};
///
/// let mut state = StateFile::default();
/// state.sections.push(Section::json("vm", 1, &"state of the vm")?);
/// state.sections.push(Section::json("device.new", 1, &7)?);
/// let bytes = state.to_bytes()?;
///
/// // A reader that knows every section gets them back.
/// assert_eq!(StateFile::from_bytes(&bytes, &|_| true)?, state);
/// // One that does not know a required section refuses the file.
/// let err = StateFile::from_bytes(&bytes, &|id| id == "vm").unwrap_err();
/// assert!(matches!(err, Error::UnknownRequiredSection { ref id, .. } if id == "device.new"));
/// // A changed byte is caught by the checksum.
/// let mut corrupted = bytes.clone();
/// corrupted[35] ^= 1; // the first payload byte
/// assert!(StateFile::from_bytes(&corrupted, &|_| true).is_err());
/// # Ok::<(), Error>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StateFile {
    /// The sections; ids are unique.
    pub sections: Vec<Section>,
}

/// What decoding found, before the caller's checks on architecture and
/// unknown sections.
#[derive(Debug)]
pub(crate) struct Decoded {
    /// The architecture code of the header.
    pub arch: u16,
    /// Every section, in file order.
    pub sections: Vec<Section>,
}

impl StateFile {
    /// The section named `id`, if there is one.
    pub fn section(&self, id: &str) -> Option<&Section> {
        self.sections.iter().find(|s| s.id == id)
    }

    /// The file's bytes for this host's architecture (layout in the crate docs).
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let count = u32::try_from(self.sections.len())
            .map_err(|_| Error::TooManySectionsToWrite(self.sections.len()))?;
        let payloads: usize = self.sections.iter().map(|s| s.payload.len()).sum();
        let mut out = Vec::with_capacity(
            HEADER_LEN
                + CHECKSUM_LEN
                + payloads
                + self.sections.len() * (MIN_SECTION_LEN + MAX_ID_LEN),
        );
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        out.extend_from_slice(&HOST_ARCH.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes());
        out.extend_from_slice(&count.to_le_bytes());
        let mut seen = HashSet::new();
        for section in &self.sections {
            check_id(section.id.as_bytes()).map_err(|reason| Error::BadSectionIdToWrite {
                id: section.id.clone(),
                reason,
            })?;
            if !seen.insert(section.id.as_str()) {
                return Err(Error::DuplicateSection(section.id.clone()));
            }
            // `check_id` bounds the length to MAX_ID_LEN, which fits in a byte.
            out.push(u8::try_from(section.id.len()).unwrap_or(u8::MAX));
            out.extend_from_slice(section.id.as_bytes());
            out.extend_from_slice(&section.version.to_le_bytes());
            let flags = if section.required {
                SECTION_REQUIRED
            } else {
                0
            };
            out.extend_from_slice(&flags.to_le_bytes());
            out.extend_from_slice(&(section.payload.len() as u64).to_le_bytes());
            out.extend_from_slice(&section.payload);
        }
        let checksum = crc32fast::hash(&out);
        out.extend_from_slice(&checksum.to_le_bytes());
        Ok(out)
    }

    /// Parses a state file written for this host's architecture. Sections
    /// for which `known` is false are skipped when optional and make the
    /// file refused when required.
    pub fn from_bytes(bytes: &[u8], known: &dyn Fn(&str) -> bool) -> Result<StateFile> {
        let decoded = decode(bytes)?;
        if decoded.arch != HOST_ARCH {
            return Err(Error::OtherArchitecture {
                found: arch_name(decoded.arch),
                host: arch_name(HOST_ARCH),
            });
        }
        let mut sections = Vec::with_capacity(decoded.sections.len());
        for section in decoded.sections {
            if known(&section.id) {
                sections.push(section);
            } else if section.required {
                return Err(Error::UnknownRequiredSection {
                    id: section.id,
                    version: section.version,
                });
            }
        }
        Ok(StateFile { sections })
    }
}

/// A readable name for an architecture code.
pub fn arch_name(code: u16) -> String {
    match code {
        ARCH_X86_64 => "x86_64".to_owned(),
        ARCH_AARCH64 => "aarch64".to_owned(),
        other => format!("unknown ({other:#06x})"),
    }
}

/// Checks that `id` is a valid section id; the reason when it is not.
fn check_id(id: &[u8]) -> std::result::Result<(), &'static str> {
    if id.is_empty() {
        return Err("it is empty");
    }
    if id.len() > MAX_ID_LEN {
        return Err("it is longer than 64 bytes");
    }
    if !id.is_ascii() {
        return Err("it is not ASCII");
    }
    if !id
        .iter()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err("it has characters other than A-Z a-z 0-9 . _ -");
    }
    Ok(())
}

/// The format version a state file says it has, whatever that version is
/// (nothing after the version is checked): what `--describe-snapshot` prints.
pub fn format_version(bytes: &[u8]) -> Result<u16> {
    check_magic(bytes)?;
    Reader::new(bytes, MAGIC.len()).u16("format version")
}

/// Refuses bytes that do not start with [`MAGIC`].
fn check_magic(bytes: &[u8]) -> Result<()> {
    if !bytes.starts_with(&MAGIC) {
        return Err(if MAGIC.starts_with(bytes) {
            Error::Truncated {
                what: "magic",
                offset: 0,
                needed: MAGIC.len() as u64,
                available: bytes.len(),
            }
        } else {
            Error::BadMagic
        });
    }
    Ok(())
}

/// Decodes the whole layout, checking everything but the architecture and
/// whether the sections are known.
pub(crate) fn decode(bytes: &[u8]) -> Result<Decoded> {
    check_magic(bytes)?;
    let mut header = Reader::new(bytes, MAGIC.len());
    let version = header.u16("format version")?;
    if version != FORMAT_VERSION {
        return Err(Error::UnsupportedVersion(version));
    }
    let Some(body_end) = bytes.len().checked_sub(CHECKSUM_LEN) else {
        return Err(header.truncated("checksum", CHECKSUM_LEN as u64));
    };
    if body_end < HEADER_LEN {
        return Err(header.truncated("header", (HEADER_LEN + CHECKSUM_LEN) as u64));
    }
    let (body, stored) = bytes.split_at(body_end);
    let mut stored_le = [0u8; CHECKSUM_LEN];
    stored_le.copy_from_slice(stored);
    let stored = u32::from_le_bytes(stored_le);
    let computed = crc32fast::hash(body);
    if stored != computed {
        return Err(Error::Checksum { stored, computed });
    }
    let mut reader = Reader::new(body, header.pos);
    let arch = reader.u16("architecture")?;
    let flags = reader.u32("flags")?;
    if flags != 0 {
        return Err(Error::UnknownFileFlags(flags));
    }
    let count = reader.u32("section count")?;
    let room = reader.remaining() / MIN_SECTION_LEN;
    if usize::try_from(count).map_or(true, |count| count > room) {
        return Err(Error::TooManySections {
            count,
            bytes: reader.remaining(),
        });
    }
    let mut sections = Vec::new();
    let mut seen = HashSet::new();
    for _ in 0..count {
        let section = reader.section()?;
        if !seen.insert(section.id.clone()) {
            return Err(Error::DuplicateSection(section.id));
        }
        sections.push(section);
    }
    if reader.remaining() != 0 {
        return Err(Error::TrailingBytes {
            offset: reader.pos,
            count: reader.remaining(),
        });
    }
    Ok(Decoded { arch, sections })
}

/// Reads little-endian fields from a byte slice, failing on truncation.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn new(bytes: &'a [u8], pos: usize) -> Self {
        Reader { bytes, pos }
    }

    fn remaining(&self) -> usize {
        self.bytes.len().saturating_sub(self.pos)
    }

    fn truncated(&self, what: &'static str, needed: u64) -> Error {
        Error::Truncated {
            what,
            offset: self.pos,
            needed,
            available: self.remaining(),
        }
    }

    fn take(&mut self, len: u64, what: &'static str) -> Result<&'a [u8]> {
        let fits = usize::try_from(len).ok().filter(|&n| n <= self.remaining());
        let Some(n) = fits else {
            return Err(self.truncated(what, len));
        };
        let taken = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(taken)
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N as u64, what)?);
        Ok(out)
    }

    fn u16(&mut self, what: &'static str) -> Result<u16> {
        self.array(what).map(u16::from_le_bytes)
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        self.array(what).map(u64::from_le_bytes)
    }

    fn section(&mut self) -> Result<Section> {
        let offset = self.pos;
        let [id_len] = self.array("section id length")?;
        let id = self.take(u64::from(id_len), "section id")?;
        check_id(id).map_err(|reason| Error::BadSectionId { offset, reason })?;
        // `check_id` accepted only ASCII.
        let id = String::from_utf8_lossy(id).into_owned();
        let version = self.u16("section version")?;
        let flags = self.u16("section flags")?;
        if flags & !SECTION_REQUIRED != 0 {
            return Err(Error::UnknownSectionFlags { id, flags });
        }
        let len = self.u64("section payload length")?;
        let payload = self.take(len, "section payload")?.to_vec();
        Ok(Section {
            id,
            version,
            required: flags & SECTION_REQUIRED != 0,
            payload,
        })
    }
}

#[cfg(test)]
mod tests;
