//! The backing store of a virtio-block device: a regular file or host block
//! device, read and written with positional I/O straight into guest memory.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::bitmap::BS;
use vm_memory::{
    GuestAddress, GuestMemory, Permissions, ReadVolatile, VolatileMemoryError, VolatileSlice,
    WriteVolatile,
};

use super::SECTOR_SIZE;
use crate::{Error, Result};

/// What a FLUSH request does, as Firecracker's `cache_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// FLUSH is offered and acknowledged without syncing anything: data reaches
    /// the host's page cache, and the host decides when it reaches the disk.
    #[default]
    Unsafe,
    /// FLUSH syncs the backing file's data (`fdatasync`) before completing.
    Writeback,
}

/// A guest buffer: `len` bytes at `addr`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Segment {
    pub(crate) addr: GuestAddress,
    pub(crate) len: u32,
}

/// An open backing file and its size in sectors.
#[derive(Debug)]
pub(crate) struct Disk {
    file: File,
    path: PathBuf,
    read_only: bool,
    sectors: u64,
}

impl Disk {
    /// Opens `path` read-only or read-write. The capacity is the size (from
    /// seeking to the end, which also works for block devices) rounded down to
    /// whole sectors.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Disk> {
        let fail = |error| Error::BackingFile {
            path: path.to_path_buf(),
            error,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(fail)?;
        let size = (&file).seek(SeekFrom::End(0)).map_err(fail)?;
        if !size.is_multiple_of(SECTOR_SIZE) {
            log::warn!(
                "block: {} is {size} bytes, not a whole number of sectors; the last {} bytes are not visible",
                path.display(),
                size % SECTOR_SIZE
            );
        }
        Ok(Disk {
            file,
            path: path.to_path_buf(),
            read_only,
            sectors: size / SECTOR_SIZE,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn read_only(&self) -> bool {
        self.read_only
    }

    /// Capacity in 512-byte sectors.
    pub(crate) fn sectors(&self) -> u64 {
        self.sectors
    }

    /// Fills the guest buffers `segments` with the disk's bytes from `offset`.
    pub(crate) fn read_to<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        segments: &[Segment],
    ) -> io::Result<()> {
        let mut src = FileAt::new(&self.file, offset);
        for seg in segments {
            for slice in guest_slices(mem, seg, Permissions::Write)? {
                src.read_exact_volatile(&mut slice?)
                    .map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Writes the guest buffers `segments` to the disk from `offset`.
    pub(crate) fn write_from<M: GuestMemory>(
        &self,
        mem: &M,
        offset: u64,
        segments: &[Segment],
    ) -> io::Result<()> {
        let mut dst = FileAt::new(&self.file, offset);
        for seg in segments {
            for slice in guest_slices(mem, seg, Permissions::Read)? {
                dst.write_all_volatile(&slice?).map_err(io::Error::other)?;
            }
        }
        Ok(())
    }

    /// Syncs the file's data to the storage (`fdatasync`).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// The host mappings behind a guest buffer (several if it spans regions).
/// Short reads and writes on them are retried until complete.
fn guest_slices<'m, M: GuestMemory>(
    mem: &'m M,
    seg: &Segment,
    access: Permissions,
) -> io::Result<impl Iterator<Item = io::Result<VolatileSlice<'m, BS<'m, M::Bitmap>>>>> {
    let slices = mem
        .get_slices(seg.addr, seg.len as usize, access)
        .map_err(io::Error::other)?;
    Ok(slices.map(|slice| slice.map_err(io::Error::other)))
}

/// A file seen from a moving position, with `pread`/`pwrite` so the file's
/// own offset is never used (or shared).
struct FileAt<'a> {
    file: &'a File,
    offset: u64,
}

impl<'a> FileAt<'a> {
    fn new(file: &'a File, offset: u64) -> FileAt<'a> {
        FileAt { file, offset }
    }

    fn position(&self) -> std::result::Result<libc::off_t, VolatileMemoryError> {
        libc::off_t::try_from(self.offset)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::from(io::ErrorKind::InvalidInput)))
    }

    /// Turns a `pread`/`pwrite` return value into a byte count and advances.
    fn advance(&mut self, ret: isize) -> std::result::Result<usize, VolatileMemoryError> {
        let done = usize::try_from(ret)
            .map_err(|_| VolatileMemoryError::IOError(io::Error::last_os_error()))?;
        self.offset += done as u64;
        Ok(done)
    }
}

impl ReadVolatile for FileAt<'_> {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> std::result::Result<usize, VolatileMemoryError> {
        let offset = self.position()?;
        let guard = buf.ptr_guard_mut();
        // SAFETY: the fd is open for the borrow of `self.file`; the pointer is
        // valid for writes of `buf.len()` bytes by the invariants of
        // `VolatileSlice`, and `guard` keeps the mapping alive during the call.
        let ret = unsafe {
            libc::pread(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        let done = self.advance(ret);
        // A failed read may still have written part of the buffer.
        buf.bitmap()
            .mark_dirty(0, done.as_ref().map_or(buf.len(), |&n| n));
        done
    }
}

impl WriteVolatile for FileAt<'_> {
    fn write_volatile<B: BitmapSlice>(
        &mut self,
        buf: &VolatileSlice<B>,
    ) -> std::result::Result<usize, VolatileMemoryError> {
        let offset = self.position()?;
        let guard = buf.ptr_guard();
        // SAFETY: the fd is open for the borrow of `self.file`; the pointer is
        // valid for reads of `buf.len()` bytes by the invariants of
        // `VolatileSlice`, and `guard` keeps the mapping alive during the call.
        let ret = unsafe {
            libc::pwrite(
                self.file.as_raw_fd(),
                guard.as_ptr().cast(),
                buf.len(),
                offset,
            )
        };
        self.advance(ret)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use vm_memory::Bytes;

    use super::*;
    use crate::virtio::test_utils::memory;

    fn disk_with(contents: &[u8], read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents).unwrap();
        let disk = Disk::open(file.path(), read_only).unwrap();
        (file, disk)
    }

    #[test]
    fn capacity_rounds_down_to_whole_sectors() {
        let (_f, disk) = disk_with(&[0u8; 1536 + 100], true);
        assert_eq!(disk.sectors(), 3);
        assert!(disk.read_only());
        let missing = Disk::open(Path::new("/nonexistent/ember-disk"), true);
        assert!(matches!(missing, Err(Error::BackingFile { .. })));
    }

    #[test]
    fn scattered_buffers_read_and_write_at_an_offset() {
        let contents: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        let (file, disk) = disk_with(&contents, false);
        let mem = memory(&[(0, 0x10000)]);
        let segs = [
            Segment {
                addr: GuestAddress(0x1000),
                len: 100,
            },
            Segment {
                addr: GuestAddress(0x3000),
                len: 412,
            },
        ];
        disk.read_to(&mem, 512, &segs).unwrap();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got[..100], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x3000))
            .unwrap();
        assert_eq!(got, contents[512..1024]);

        disk.write_from(&mem, 1536, &segs).unwrap();
        disk.sync().unwrap();
        let on_disk = std::fs::read(file.path()).unwrap();
        assert_eq!(on_disk[1536..], contents[512..1024]);
        assert_eq!(on_disk[..1536], contents[..1536]);
    }

    #[test]
    fn a_buffer_spanning_two_memory_regions() {
        let contents: Vec<u8> = (0..1024u32).map(|i| (i % 253) as u8).collect();
        let (file, disk) = disk_with(&contents, false);
        // Two adjacent regions: one guest buffer maps to two host slices.
        let mem = memory(&[(0, 0x1000), (0x1000, 0x1000)]);
        let seg = [Segment {
            addr: GuestAddress(0xe00),
            len: 1024,
        }];
        disk.read_to(&mem, 0, &seg).unwrap();
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0xe00)).unwrap();
        assert_eq!(got, contents);
        mem.write_slice(&[0x11; 1024], GuestAddress(0xe00)).unwrap();
        disk.write_from(&mem, 0, &seg).unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), [0x11; 1024]);
    }

    #[test]
    fn reading_past_the_end_of_the_file_fails() {
        let (_f, disk) = disk_with(&[7u8; 512], false);
        let mem = memory(&[(0, 0x10000)]);
        let seg = [Segment {
            addr: GuestAddress(0),
            len: 1024,
        }];
        assert!(disk.read_to(&mem, 0, &seg).is_err());
    }

    #[test]
    fn read_only_disk_cannot_be_written() {
        let (file, disk) = disk_with(&[7u8; 512], true);
        let mem = memory(&[(0, 0x10000)]);
        let seg = [Segment {
            addr: GuestAddress(0),
            len: 512,
        }];
        assert!(disk.write_from(&mem, 0, &seg).is_err());
        assert_eq!(std::fs::read(file.path()).unwrap(), [7u8; 512]);
    }

    #[test]
    fn buffers_outside_guest_memory_fail() {
        let (_f, disk) = disk_with(&[7u8; 1024], false);
        let mem = memory(&[(0, 0x1000)]);
        let seg = [Segment {
            addr: GuestAddress(0xe00),
            len: 1024,
        }];
        assert!(disk.read_to(&mem, 0, &seg).is_err());
    }
}
