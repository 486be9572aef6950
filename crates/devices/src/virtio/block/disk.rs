//! The backing store of a virtio-block device: a regular file or host block
//! device, read and written with positional vectored I/O (`preadv`,
//! `pwritev`) straight into and out of guest memory.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::Error;
use super::SECTOR_SIZE;
use crate::host_files::{open_input, InputKind};
use crate::virtio::iov::GuestIoVecs;

/// What a FLUSH request does, as Firecracker's `cache_type`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum CacheType {
    /// FLUSH is offered and acknowledged without syncing anything: data reaches
    /// the host's page cache, and the host decides when it reaches the disk.
    #[default]
    Unsafe,
    /// FLUSH syncs the backing file's data (`fdatasync`) before completing.
    Writeback,
}

/// Opens the backing file at `path` as a block device opens it: a regular
/// file or a block device, for writing too unless `read_only`, never
/// blocking (see [`open_input`]).
pub fn open_disk(path: &Path, read_only: bool) -> io::Result<File> {
    open_input(path, InputKind::RegularFileOrBlockDevice, !read_only)
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
    /// Opens `path` read-only or read-write; it must be a regular file or a
    /// block device (anything else is refused without blocking, see
    /// [`open_input`]). The capacity is the size (from seeking to the end,
    /// which also works for block devices) rounded down to whole sectors.
    pub(crate) fn open(path: &Path, read_only: bool) -> Result<Disk, Error> {
        let file = open_disk(path, read_only).map_err(|error| Error::BackingFile {
            path: path.to_path_buf(),
            error,
        })?;
        Disk::from_file(file, path, read_only)
    }

    /// A disk on `file`, already opened from `path` as [`Disk::open`] opens
    /// it (see [`open_disk`](crate::virtio::block::open_disk)).
    pub(crate) fn from_file(file: File, path: &Path, read_only: bool) -> Result<Disk, Error> {
        let fail = |error| Error::BackingFile {
            path: path.to_path_buf(),
            error,
        };
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

    /// Fills the guest buffers `data` with the disk's bytes from `offset`
    /// (consuming the list).
    pub(crate) fn read_to(&self, data: &mut GuestIoVecs<'_, '_>, offset: u64) -> io::Result<()> {
        data.read_exact_at(&self.file, offset)
    }

    /// Writes the guest buffers `data` to the disk from `offset` (consuming
    /// the list).
    pub(crate) fn write_from(&self, data: &mut GuestIoVecs<'_, '_>, offset: u64) -> io::Result<()> {
        data.write_all_at(&self.file, offset)
    }

    /// Syncs the file's data to the storage (`fdatasync`).
    pub(crate) fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::Write;

    use vm_memory::{Bytes, GuestAddress};

    use super::*;
    use crate::virtio::iov::IoVecBuf;
    use crate::virtio::test_utils::{memory, Mem};

    fn disk_with(contents: &[u8], read_only: bool) -> (tempfile::NamedTempFile, Disk) {
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(contents).unwrap();
        let disk = Disk::open(file.path(), read_only).unwrap();
        (file, disk)
    }

    /// Reads (or writes) the guest buffers `segs` (address, length) from
    /// `offset`.
    fn io(
        disk: &Disk,
        mem: &Mem,
        segs: &[(u64, usize)],
        offset: u64,
        write: bool,
    ) -> io::Result<()> {
        let mut buf = IoVecBuf::default();
        let mut data = buf.start();
        for &(addr, len) in segs {
            data.push_guest(
                &crate::virtio::iov::GuestRegions::new(mem),
                GuestAddress(addr),
                len,
                !write,
            )
            .ok_or_else(|| io::Error::other("outside guest memory"))?;
        }
        if write {
            disk.write_from(&mut data, offset)
        } else {
            disk.read_to(&mut data, offset)
        }
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
    fn directories_and_character_devices_are_not_disks() {
        let dir = tempfile::tempdir().unwrap();
        for (path, what) in [
            (dir.path(), "a directory"),
            (Path::new("/dev/zero"), "a character device"),
        ] {
            let err = Disk::open(path, false).unwrap_err().to_string();
            assert!(
                err.contains(&format!("{}: it is {what}", path.display())),
                "{err}"
            );
        }
    }

    #[test]
    fn scattered_buffers_read_and_write_at_an_offset() {
        let contents: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        let (file, disk) = disk_with(&contents, false);
        let mem = memory(&[(0, 0x10000)]);
        let segs = [(0x1000, 100), (0x3000, 412)];
        io(&disk, &mem, &segs, 512, false).unwrap();
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got[..100], GuestAddress(0x1000))
            .unwrap();
        mem.read_slice(&mut got[100..], GuestAddress(0x3000))
            .unwrap();
        assert_eq!(got, contents[512..1024]);

        io(&disk, &mem, &segs, 1536, true).unwrap();
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
        let seg = [(0xe00, 1024)];
        io(&disk, &mem, &seg, 0, false).unwrap();
        let mut got = vec![0u8; 1024];
        mem.read_slice(&mut got, GuestAddress(0xe00)).unwrap();
        assert_eq!(got, contents);
        mem.write_slice(&[0x11; 1024], GuestAddress(0xe00)).unwrap();
        io(&disk, &mem, &seg, 0, true).unwrap();
        assert_eq!(std::fs::read(file.path()).unwrap(), [0x11; 1024]);
    }

    #[test]
    fn reading_past_the_end_of_the_file_fails() {
        let (_f, disk) = disk_with(&[7u8; 512], false);
        let mem = memory(&[(0, 0x10000)]);
        assert!(io(&disk, &mem, &[(0, 1024)], 0, false).is_err());
    }

    #[test]
    fn read_only_disk_cannot_be_written() {
        let (file, disk) = disk_with(&[7u8; 512], true);
        let mem = memory(&[(0, 0x10000)]);
        assert!(io(&disk, &mem, &[(0, 512)], 0, true).is_err());
        assert_eq!(std::fs::read(file.path()).unwrap(), [7u8; 512]);
    }

    #[test]
    fn buffers_outside_guest_memory_fail() {
        let (_f, disk) = disk_with(&[7u8; 1024], false);
        let mem = memory(&[(0, 0x1000)]);
        assert!(io(&disk, &mem, &[(0xe00, 1024)], 0, false).is_err());
    }
}
