//! Snapshot files for microVMs: a versioned, checksummed container for saved
//! state, and guest memory files laid out as Firecracker lays them out.
//!
//! The crate knows nothing of any VMM: state is whatever the caller puts in
//! named [`Section`]s (JSON through serde with [`Section::json`] and
//! [`Section::decode`]), and memory is anything implementing vm-memory's
//! [`GuestMemoryBackend`](vm_memory::GuestMemoryBackend).
//!
//! # State file layout
//!
//! All integers are little endian.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 8 | magic, `EMBERSNP` ([`MAGIC`]) |
//! | 8 | 2 | format version, 1 ([`FORMAT_VERSION`]) |
//! | 10 | 2 | architecture: `0x8664` x86_64 ([`ARCH_X86_64`]), `0xaa64` aarch64 |
//! | 12 | 4 | file flags, 0 (a reader refuses any other value) |
//! | 16 | 4 | section count |
//! | 20 | ... | the sections, back to back |
//! | end − 4 | 4 | CRC-32 (IEEE 802.3, as zlib) of every byte before it |
//!
//! Each section:
//!
//! | size | field |
//! | --- | --- |
//! | 1 | id length, 1 to 64 |
//! | id length | id: `A-Z a-z 0-9 . _ -` (for example `vm`, `vcpu.0`, `device.block.rootfs`) |
//! | 2 | section version (the payload's schema version) |
//! | 2 | section flags: bit 0 = required; a reader refuses other bits |
//! | 8 | payload length |
//! | payload length | payload |
//!
//! Ids are unique in a file. A reader given a section it does not know
//! refuses the file when the section is required and skips it otherwise.
//! Anything else a reader does not expect (wrong magic or architecture,
//! another format version, a checksum mismatch, lengths past the end, bytes
//! after the last section) refuses the file with a one-line [`Error`].
//!
//! # Memory files
//!
//! [`write_full_memory`] writes every region of guest memory back to back in
//! guest-address order, as a sparse file (all-zero pages are holes);
//! [`write_diff_memory`] overwrites only the pages a dirty bitmap marks.
//!
//! # Example
//!
//! ```
//! use ember_snapshot::{read_state_file, write_atomic, Section, StateFile};
//!
//! #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
//! struct VmState {
//!     vcpus: u8,
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut state = StateFile::default();
//! state.sections.push(Section::json("vm", 1, &VmState { vcpus: 2 })?);
//! let mut extra = Section::json("device.rng", 1, &[1, 2, 3])?;
//! extra.required = false;
//! state.sections.push(extra);
//!
//! let dir = tempfile::tempdir()?;
//! let path = dir.path().join("vm.state");
//! write_atomic(&path, &state.to_bytes()?)?;
//!
//! // This reader knows "vm" only: the optional "device.rng" is skipped.
//! let bytes = read_state_file(&path)?;
//! let read = StateFile::from_bytes(&bytes, &|id| id == "vm")?;
//! assert_eq!(read.sections.len(), 1);
//! let vm: VmState = read.section("vm").ok_or("no vm section")?.decode()?;
//! assert_eq!(vm, VmState { vcpus: 2 });
//! println!("{}", ember_snapshot::describe(&bytes)?);
//! # Ok(())
//! # }
//! ```

mod describe;
mod file;
mod format;
mod memory;

use std::io;
use std::path::PathBuf;

pub use describe::describe;
pub use file::{read_state_file, write_atomic, PendingFile, MAX_STATE_FILE_SIZE};
pub use format::{
    arch_name, format_version, Section, StateFile, ARCH_AARCH64, ARCH_X86_64, FORMAT_VERSION,
    HOST_ARCH, MAGIC, MAX_ID_LEN,
};
pub use memory::{write_diff_memory, write_full_memory, PAGE_SIZE};

/// Errors from encoding, decoding, reading and writing snapshot files.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The input ends inside a field.
    #[error(
        "state file truncated: {what} at offset {offset} needs {needed} bytes, {available} left"
    )]
    Truncated {
        /// The field being read.
        what: &'static str,
        /// Where it starts.
        offset: usize,
        /// Bytes it needs.
        needed: u64,
        /// Bytes left in the input.
        available: usize,
    },
    /// The input does not start with [`MAGIC`].
    #[error("not an Ember state file (wrong magic)")]
    BadMagic,
    /// The format version is not [`FORMAT_VERSION`].
    #[error("state file format version {0} is not supported (this reader knows version {FORMAT_VERSION})")]
    UnsupportedVersion(u16),
    /// The checksum does not match the content.
    #[error("state file corrupted or truncated: checksum {stored:#010x} does not match the content's {computed:#010x}")]
    Checksum {
        /// The checksum stored in the file.
        stored: u32,
        /// The checksum of the file's content.
        computed: u32,
    },
    /// The file was written on another architecture.
    #[error("state file is for {found}, this host is {host}")]
    OtherArchitecture {
        /// The file's architecture.
        found: String,
        /// This host's architecture.
        host: String,
    },
    /// The header has flags this reader does not know.
    #[error("state file has unknown flags {0:#x}")]
    UnknownFileFlags(u32),
    /// The section count cannot fit in the bytes that follow.
    #[error("state file claims {count} sections but only {bytes} bytes follow the header")]
    TooManySections {
        /// The count in the header.
        count: u32,
        /// Bytes between the header and the checksum.
        bytes: usize,
    },
    /// A section id in the input is invalid.
    #[error("state file section at offset {offset} has an invalid id: {reason}")]
    BadSectionId {
        /// Where the section starts.
        offset: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// A section has flags this reader does not know.
    #[error("state file section {id:?} has unknown flags {flags:#x}")]
    UnknownSectionFlags {
        /// The section's id.
        id: String,
        /// Its flags.
        flags: u16,
    },
    /// Two sections have the same id.
    #[error("state file has two sections {0:?}")]
    DuplicateSection(String),
    /// Bytes remain between the last section and the checksum.
    #[error("state file has {count} unexpected bytes at offset {offset}, after its last section")]
    TrailingBytes {
        /// Where they start.
        offset: usize,
        /// How many.
        count: usize,
    },
    /// A required section is not known to the reader.
    #[error(
        "state file has a required section {id:?} (version {version}) this reader does not know"
    )]
    UnknownRequiredSection {
        /// The section's id.
        id: String,
        /// Its version.
        version: u16,
    },
    /// A section to write has an invalid id.
    #[error("cannot write section {id:?}: invalid id, {reason}")]
    BadSectionIdToWrite {
        /// The id.
        id: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// More sections than the format can count.
    #[error("cannot write {0} sections in one state file")]
    TooManySectionsToWrite(usize),
    /// A value could not be serialized to JSON.
    #[error("cannot encode section {id:?} as JSON")]
    Encode {
        /// The section's id.
        id: String,
        /// What serde_json reported.
        source: serde_json::Error,
    },
    /// A payload is not the JSON the caller expects.
    #[error("cannot decode section {id:?} (version {version})")]
    Decode {
        /// The section's id.
        id: String,
        /// Its version.
        version: u16,
        /// What serde_json reported.
        source: serde_json::Error,
    },
    /// A file system operation on a path failed.
    #[error("cannot {action} {}", path.display())]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// A state file path is not a regular file.
    #[error("{} is a {kind}, not a regular file", path.display())]
    NotRegularFile {
        /// The path.
        path: PathBuf,
        /// What it is.
        kind: &'static str,
    },
    /// A state file is larger than [`MAX_STATE_FILE_SIZE`].
    #[error("{} is {size} bytes, more than the {MAX_STATE_FILE_SIZE} a state file may have", path.display())]
    StateFileTooLarge {
        /// The path.
        path: PathBuf,
        /// Its size.
        size: u64,
    },
    /// Writing a memory file failed.
    #[error("cannot {action} the memory file")]
    MemoryFile {
        /// What was being done.
        action: &'static str,
        /// The error.
        source: io::Error,
    },
    /// Guest memory could not be read.
    #[error("cannot read guest memory region {region} at offset {offset:#x}")]
    GuestMemory {
        /// Index of the region.
        region: usize,
        /// Offset in the region.
        offset: u64,
        /// What vm-memory reported.
        source: vm_memory::GuestMemoryError,
    },
    /// The dirty bitmaps do not match the memory's regions.
    #[error("{bitmaps} dirty bitmaps for {regions} memory regions")]
    DirtyBitmapCount {
        /// Bitmaps given.
        bitmaps: usize,
        /// Regions in the memory.
        regions: usize,
    },
    /// A dirty bitmap's length does not match its region's pages.
    #[error(
        "dirty bitmap of region {region} has {words} words, its {pages} pages need {expected}"
    )]
    DirtyBitmapLength {
        /// Index of the region.
        region: usize,
        /// Words given.
        words: usize,
        /// Pages in the region.
        pages: u64,
        /// Words needed.
        expected: u64,
    },
}

/// Result alias for this crate.
pub type Result<T> = std::result::Result<T, Error>;
