//! Vectored I/O straight between guest memory and host descriptors: guest
//! buffers, checked once and turned into host slices by vm-memory
//! ([`VolatileSlice`]s from `get_slices`, or bounds-checked subslices of a
//! region mapped once per batch by [`GuestRegions`]), gathered into an iovec
//! list that one `preadv`, `pwritev`, `readv`, `writev` or `sendmsg` takes
//! as is (`pread`, `pwrite`, `read`, `write` or `send` for a single buffer,
//! which the kernel handles with less work), with no copy through a host
//! buffer and no allocation per request (the list's storage, an
//! [`IoVecBuf`], stays with the device).
//!
//! Soundness rests on one rule: a [`GuestIoVecs`] only takes slices that
//! live at least as long as its lifetime `'m` (the borrow of the guest
//! memory they came from), so every address in it stays mapped for as long
//! as the list can be used. The list keeps track of where its last
//! device-readable buffer is, and the calls that make the kernel (or the
//! device) write guest memory refuse a list that still holds one: only
//! buffers from device-writable descriptors are ever written.

use std::fmt;
use std::io;
use std::marker::PhantomData;
use std::os::fd::AsRawFd;

use vm_memory::bitmap::{BitmapSlice, BS};
use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryBackend, GuestMemoryRegion, Permissions, VolatileSlice,
};

/// Most buffers one vectored system call takes (`UIO_MAXIOV`).
pub(crate) const IOV_MAX: usize = 1024;

// A `VolatileSlice`'s address stays valid for the slice's whole lifetime
// because vm-memory is built without its `xen` feature, where slices are
// mapped only while a `PtrGuard` lives: the guard is then a bare address
// and length. Fail the build if that ever changes.
const _: () = assert!(
    std::mem::size_of::<vm_memory::volatile_memory::PtrGuard>() == 2 * std::mem::size_of::<usize>()
);

/// Regions mapped by a [`GuestRegions`]; memory with more regions is still
/// reached (through vm-memory's lookup) beyond these.
const MAPPED_REGIONS: usize = 4;

/// A guest memory slice, with the memory's dirty bitmap.
pub(crate) type GuestSlice<'m, M> = VolatileSlice<'m, BS<'m, <M as GuestMemory>::Bitmap>>;

/// Guest memory for one batch of requests, each of its regions looked up
/// once as a host slice: a buffer inside a region is then a bounds-checked
/// subslice of it, with no region lookup. Buffers that cross regions, and
/// memory that is not plain physical memory (behind an IOMMU), go through
/// vm-memory's lookup.
pub(crate) struct GuestRegions<'m, M: GuestMemory> {
    mem: &'m M,
    regions: [Option<(GuestAddress, GuestSlice<'m, M>)>; MAPPED_REGIONS],
}

impl<M: GuestMemory> fmt::Debug for GuestRegions<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mapped: Vec<_> = self
            .regions
            .iter()
            .flatten()
            .map(|(start, slice)| (start.0, slice.len()))
            .collect();
        f.debug_struct("GuestRegions")
            .field("mapped", &mapped)
            .finish()
    }
}

impl<'m, M: GuestMemory> GuestRegions<'m, M> {
    /// Maps the first regions of `mem`.
    pub(crate) fn new(mem: &'m M) -> Self {
        let mut regions = [None, None, None, None];
        if let Some(physical) = mem.physical_memory() {
            let mapped = physical.iter().filter_map(|region| {
                let start = region.start_addr();
                let len = usize::try_from(region.len()).ok()?;
                // Plain physical memory: the access mode is not checked.
                let mut slices = mem.get_slices(start, len, Permissions::ReadWrite).ok()?;
                let slice = slices.next()?.ok()?;
                (slice.len() == len).then_some((start, slice))
            });
            for (slot, region) in regions.iter_mut().zip(mapped) {
                *slot = Some(region);
            }
        }
        GuestRegions { mem, regions }
    }

    /// The memory.
    pub(crate) fn memory(&self) -> &'m M {
        self.mem
    }

    /// The `len` bytes at `addr`, if they lie in one mapped region.
    fn slice(&self, addr: GuestAddress, len: usize) -> Option<GuestSlice<'m, M>> {
        for (start, region) in self.regions.iter().flatten() {
            let Some(offset) = addr.0.checked_sub(start.0) else {
                continue;
            };
            let Ok(offset) = usize::try_from(offset) else {
                continue;
            };
            if offset < region.len() {
                return region.subslice(offset, len).ok();
            }
        }
        None
    }
}

/// The storage of a device's iovec lists, kept across requests so that a
/// warm device allocates nothing to build one.
#[derive(Default)]
pub(crate) struct IoVecBuf {
    iovs: Vec<libc::iovec>,
}

// SAFETY: the raw pointers in `iovs` are only ever used through a
// `GuestIoVecs`, which borrows this buffer mutably, clears it when it is
// created and when it is dropped, and cannot be sent to another thread
// while it holds the borrow: outside that borrow the vector holds no
// element (or, after a leaked list, addresses that are never used again:
// the next list clears them first), so there is nothing thread-bound to
// move.
unsafe impl Send for IoVecBuf {}

impl fmt::Debug for IoVecBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IoVecBuf")
            .field("capacity", &self.iovs.capacity())
            .finish()
    }
}

impl IoVecBuf {
    /// Starts an empty list of guest buffers that live for `'m`.
    pub(crate) fn start<'m>(&mut self) -> GuestIoVecs<'_, 'm> {
        self.iovs.clear();
        GuestIoVecs {
            iovs: &mut self.iovs,
            first: 0,
            bytes: 0,
            readable_end: 0,
            _mem: PhantomData,
        }
    }
}

/// A list of guest buffers, as host slices, for vectored I/O. The buffers
/// are a byte stream in the order they were pushed.
pub(crate) struct GuestIoVecs<'b, 'm> {
    iovs: &'b mut Vec<libc::iovec>,
    /// Entries before this one were consumed by [`GuestIoVecs::advance`].
    first: usize,
    /// Bytes in the entries from `first` on.
    bytes: usize,
    /// Entries before this one may be device-readable buffers (the ones
    /// from it on are all device-writable).
    readable_end: usize,
    _mem: PhantomData<&'m ()>,
}

impl fmt::Debug for GuestIoVecs<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GuestIoVecs")
            .field("buffers", &self.count())
            .field("bytes", &self.bytes)
            .field("writable", &self.writable())
            .finish()
    }
}

impl Drop for GuestIoVecs<'_, '_> {
    fn drop(&mut self) {
        self.iovs.clear();
    }
}

impl<'m> GuestIoVecs<'_, 'm> {
    fn push<B: BitmapSlice>(&mut self, slice: &VolatileSlice<'m, B>) {
        if slice.is_empty() {
            return;
        }
        let base = slice.ptr_guard_mut().as_ptr();
        self.iovs.push(libc::iovec {
            iov_base: base.cast(),
            iov_len: slice.len(),
        });
        self.bytes += slice.len();
    }

    /// Appends a guest buffer the device only reads.
    pub(crate) fn push_readable<B: BitmapSlice>(&mut self, slice: &VolatileSlice<'m, B>) {
        self.push(slice);
        self.readable_end = self.iovs.len();
    }

    /// Whether the device may write every buffer left in the list.
    fn writable(&self) -> bool {
        self.readable_end <= self.first
    }

    /// Forgets entries from `len` on.
    fn shorten(&mut self, len: usize) {
        self.iovs.truncate(len);
        // Conservative: the entries left may still all be readable ones.
        self.readable_end = self.readable_end.min(len);
    }

    /// Appends a guest buffer the device may write. It is marked dirty in
    /// the guest memory's bitmap now, whether or not it gets written.
    pub(crate) fn push_writable<B: BitmapSlice>(&mut self, slice: &VolatileSlice<'m, B>) {
        slice.bitmap().mark_dirty(0, slice.len());
        self.push(slice);
    }

    /// Appends the guest buffer of `len` bytes at `addr` in `mem` (one
    /// host slice, or several if it spans memory regions), device-writable
    /// or not. Returns its last host slice, or `None` (and appends nothing)
    /// if the buffer is not entirely in guest memory or is empty.
    pub(crate) fn push_guest<M: GuestMemory>(
        &mut self,
        mem: &GuestRegions<'m, M>,
        addr: GuestAddress,
        len: usize,
        writable: bool,
    ) -> Option<GuestSlice<'m, M>> {
        if len > 0 {
            if let Some(slice) = mem.slice(addr, len) {
                if writable {
                    self.push_writable(&slice);
                } else {
                    self.push_readable(&slice);
                }
                return Some(slice);
            }
        }
        let access = if writable {
            Permissions::Write
        } else {
            Permissions::Read
        };
        let slices = mem.memory().get_slices(addr, len, access).ok()?;
        let (entries, bytes, readable_end) = (self.iovs.len(), self.bytes, self.readable_end);
        let mut last = None;
        for slice in slices {
            let Ok(slice) = slice else {
                // Part of the buffer is outside guest memory: none of it
                // is used.
                self.iovs.truncate(entries);
                self.bytes = bytes;
                self.readable_end = readable_end;
                return None;
            };
            if writable {
                self.push_writable(&slice);
            } else {
                self.push_readable(&slice);
            }
            last = Some(slice);
        }
        last
    }

    /// Bytes in the list.
    pub(crate) fn len(&self) -> usize {
        self.bytes
    }

    /// Number of host buffers in the list.
    pub(crate) fn count(&self) -> usize {
        self.iovs.len() - self.first
    }

    fn entries(&self) -> &[libc::iovec] {
        &self.iovs[self.first..]
    }

    /// Drops the last byte of the stream (it is not part of the data).
    pub(crate) fn pop_last_byte(&mut self) {
        let Some(last) = self.iovs[self.first..].last_mut() else {
            return;
        };
        last.iov_len -= 1;
        self.bytes -= 1;
        if last.iov_len == 0 {
            self.shorten(self.iovs.len() - 1);
        }
    }

    /// Keeps only the first `len` bytes of the stream.
    pub(crate) fn truncate(&mut self, len: usize) {
        if len >= self.bytes {
            return;
        }
        let mut kept = 0;
        let mut end = self.first;
        while kept < len {
            let entry = &mut self.iovs[end];
            entry.iov_len = entry.iov_len.min(len - kept);
            kept += entry.iov_len;
            end += 1;
        }
        self.shorten(end);
        self.bytes = len;
    }

    /// Consumes the first `n` bytes of the stream (at most all of it).
    pub(crate) fn advance(&mut self, mut n: usize) {
        n = n.min(self.bytes);
        self.bytes -= n;
        while n > 0 {
            let entry = &mut self.iovs[self.first];
            if n < entry.iov_len {
                entry.iov_base = entry.iov_base.cast::<u8>().wrapping_add(n).cast();
                entry.iov_len -= n;
                return;
            }
            n -= entry.iov_len;
            self.first += 1;
        }
    }

    /// The buffers as slices without a bitmap (writes through them are
    /// marked already, by [`GuestIoVecs::push_writable`]).
    fn slices(&self) -> impl Iterator<Item = VolatileSlice<'_, ()>> + '_ {
        self.entries().iter().map(|entry| {
            // SAFETY: each entry is the address and length of a
            // `VolatileSlice<'m, _>` (possibly shortened, or advanced within
            // it): valid for `iov_len` bytes for `'m`, which outlives this
            // borrow of `self`, and only ever accessed volatilely or by the
            // kernel.
            unsafe { VolatileSlice::new(entry.iov_base.cast(), entry.iov_len) }
        })
    }

    /// Copies `src` into the stream from byte `at` on, as far as the stream
    /// goes; returns the bytes copied. Nothing is copied unless the device
    /// may write every buffer.
    pub(crate) fn copy_from(&self, at: usize, src: &[u8]) -> usize {
        if !self.writable() {
            return 0;
        }
        let mut skip = at;
        let mut done = 0;
        for slice in self.slices() {
            if done == src.len() {
                break;
            }
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            let n = (slice.len() - skip).min(src.len() - done);
            if let Ok(dst) = slice.subslice(skip, n) {
                dst.copy_from(&src[done..done + n]);
            }
            done += n;
            skip = 0;
        }
        done
    }

    /// Copies the stream from byte `at` on into `dst`, as far as either
    /// goes; returns the bytes copied.
    pub(crate) fn copy_to(&self, at: usize, dst: &mut [u8]) -> usize {
        let mut skip = at;
        let mut done = 0;
        for slice in self.slices() {
            if done == dst.len() {
                break;
            }
            if skip >= slice.len() {
                skip -= slice.len();
                continue;
            }
            let n = (slice.len() - skip).min(dst.len() - done);
            if let Ok(src) = slice.subslice(skip, n) {
                src.copy_to(&mut dst[done..done + n]);
            }
            done += n;
            skip = 0;
        }
        done
    }

    /// The host buffers (address, length), for tests to check.
    #[cfg(test)]
    pub(crate) fn host_buffers(&self) -> Vec<(usize, usize)> {
        self.entries()
            .iter()
            .map(|e| (e.iov_base as usize, e.iov_len))
            .collect()
    }

    /// The first [`IOV_MAX`] entries, for one system call.
    fn call_entries(&self) -> (*const libc::iovec, libc::c_int) {
        let entries = self.entries();
        let count = entries.len().min(IOV_MAX);
        // At most IOV_MAX: fits.
        (entries.as_ptr(), libc::c_int::try_from(count).unwrap_or(0))
    }

    fn refuse_unless_writable(&self) -> io::Result<()> {
        if self.writable() {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a guest buffer the device may not write",
            ))
        }
    }

    /// One `readv` from `fd` into the buffers (the first [`IOV_MAX`]); a
    /// plain `read` for one buffer.
    #[cfg(test)]
    pub(crate) fn readv(&self, fd: &impl AsRawFd) -> io::Result<usize> {
        self.refuse_unless_writable()?;
        read_into(fd, self.entries())
    }

    /// One `readv` from `fd` into at most `max` bytes of the stream from
    /// byte `at` on (the list itself is unchanged).
    pub(crate) fn readv_at(
        &mut self,
        fd: &impl AsRawFd,
        at: usize,
        max: usize,
    ) -> io::Result<usize> {
        self.refuse_unless_writable()?;
        // The entries for the range go after the list's own, for the call.
        let end = self.iovs.len();
        let (mut skip, mut left) = (at, max);
        for i in self.first..end {
            if left == 0 {
                break;
            }
            let entry = self.iovs[i];
            if skip >= entry.iov_len {
                skip -= entry.iov_len;
                continue;
            }
            let n = (entry.iov_len - skip).min(left);
            self.iovs.push(libc::iovec {
                iov_base: entry.iov_base.cast::<u8>().wrapping_add(skip).cast(),
                iov_len: n,
            });
            left -= n;
            skip = 0;
        }
        // Each entry of the range is a part of an entry of the list: it
        // may be written (checked above).
        let ret = read_into(fd, &self.iovs[end..]);
        self.iovs.truncate(end);
        ret
    }

    /// One `writev` of the buffers (the first [`IOV_MAX`]) to `fd`; a
    /// plain `write` for one buffer.
    pub(crate) fn writev(&self, fd: &(impl AsRawFd + ?Sized)) -> io::Result<usize> {
        let ret = if let [one] = self.entries() {
            // SAFETY: `one` describes guest memory that stays mapped for
            // `'m`; the kernel only reads it. The fd is open for the borrow
            // of `fd`.
            unsafe { libc::write(fd.as_raw_fd(), one.iov_base, one.iov_len) }
        } else {
            let (iov, count) = self.call_entries();
            // SAFETY: `iov` points at `count` iovecs describing guest
            // memory that stays mapped for `'m`; the kernel only reads it.
            // The fd is open for the borrow of `fd`.
            unsafe { libc::writev(fd.as_raw_fd(), iov, count) }
        };
        byte_count(ret)
    }

    /// One `sendmsg` of the buffers (the first [`IOV_MAX`]) on the socket
    /// `fd`, with `flags` (`MSG_*`).
    pub(crate) fn sendmsg(&self, fd: &impl AsRawFd, flags: libc::c_int) -> io::Result<usize> {
        if let [one] = self.entries() {
            // SAFETY: `one` describes guest memory that stays mapped for
            // `'m`; the kernel only reads it. The fd is open for the borrow
            // of `fd`.
            let ret = unsafe { libc::send(fd.as_raw_fd(), one.iov_base, one.iov_len, flags) };
            return byte_count(ret);
        }
        let (iov, count) = self.call_entries();
        // SAFETY: msghdr is plain old data; all zeroes (no address, no
        // control data) is a valid value.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = iov.cast_mut();
        // The field's type differs between C libraries; the count is at
        // most IOV_MAX.
        msg.msg_iovlen = count.try_into().unwrap_or(0);
        // SAFETY: `msg` names `count` iovecs describing guest memory that
        // stays mapped for `'m`; the kernel only reads them and the
        // memory. The fd is open for the borrow of `fd`.
        let ret = unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, flags) };
        byte_count(ret)
    }

    /// One `preadv` from `file` at `offset` into the buffers (the first
    /// [`IOV_MAX`]); a plain `pread` for one buffer, which the kernel
    /// handles with less work.
    fn preadv(&self, file: &impl AsRawFd, offset: u64) -> io::Result<usize> {
        self.refuse_unless_writable()?;
        let offset = file_offset(offset)?;
        let ret = if let [one] = self.entries() {
            // SAFETY: `one` describes guest memory that stays mapped for
            // `'m` (see `slices`) and that the device may write; the kernel
            // writes at most `iov_len` bytes there. The fd is open for the
            // borrow of `file`.
            unsafe { libc::pread(file.as_raw_fd(), one.iov_base, one.iov_len, offset) }
        } else {
            let (iov, count) = self.call_entries();
            // SAFETY: as for `readv`.
            unsafe { libc::preadv(file.as_raw_fd(), iov, count, offset) }
        };
        byte_count(ret)
    }

    /// One `pwritev` of the buffers (the first [`IOV_MAX`]) to `file` at
    /// `offset`; a plain `pwrite` for one buffer.
    fn pwritev(&self, file: &impl AsRawFd, offset: u64) -> io::Result<usize> {
        let offset = file_offset(offset)?;
        let ret = if let [one] = self.entries() {
            // SAFETY: `one` describes guest memory that stays mapped for
            // `'m`; the kernel only reads it. The fd is open for the borrow
            // of `file`.
            unsafe { libc::pwrite(file.as_raw_fd(), one.iov_base, one.iov_len, offset) }
        } else {
            let (iov, count) = self.call_entries();
            // SAFETY: as for `writev`.
            unsafe { libc::pwritev(file.as_raw_fd(), iov, count, offset) }
        };
        byte_count(ret)
    }

    /// Fills every buffer with `file`'s bytes from `offset` on (`preadv`,
    /// repeated after short reads); the list is consumed. Reaching the end
    /// of the file first is an error.
    pub(crate) fn read_exact_at(&mut self, file: &impl AsRawFd, mut offset: u64) -> io::Result<()> {
        while self.bytes > 0 {
            match self.preadv(file, offset) {
                Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(n) => {
                    self.advance(n);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Writes every buffer to `file` from `offset` on (`pwritev`, repeated
    /// after short writes); the list is consumed.
    pub(crate) fn write_all_at(&mut self, file: &impl AsRawFd, mut offset: u64) -> io::Result<()> {
        while self.bytes > 0 {
            match self.pwritev(file, offset) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.advance(n);
                    offset += n as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

/// One `readv` (or `read` for one entry) from `fd` into `entries` (the
/// first [`IOV_MAX`]), which describe guest memory of a list that stays
/// mapped for as long as the borrow of `entries` and that the device may
/// write.
fn read_into(fd: &impl AsRawFd, entries: &[libc::iovec]) -> io::Result<usize> {
    let ret = if let [one] = entries {
        // SAFETY: `one` describes writable guest memory that stays mapped
        // during the call (see above); the kernel writes at most `iov_len`
        // bytes there. The fd is open for the borrow of `fd`.
        unsafe { libc::read(fd.as_raw_fd(), one.iov_base, one.iov_len) }
    } else {
        let count = libc::c_int::try_from(entries.len().min(IOV_MAX)).unwrap_or(0);
        // SAFETY: `entries` holds `count` or more iovecs describing writable
        // guest memory that stays mapped during the call; the kernel writes
        // at most `iov_len` bytes to each. The fd is open for the borrow of
        // `fd`.
        unsafe { libc::readv(fd.as_raw_fd(), entries.as_ptr(), count) }
    };
    byte_count(ret)
}

fn file_offset(offset: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(offset).map_err(|_| io::ErrorKind::InvalidInput.into())
}

/// A system call's byte count, or the error it reported.
fn byte_count(ret: isize) -> io::Result<usize> {
    usize::try_from(ret).map_err(|_| io::Error::last_os_error())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::io::{Read, Write};
    use std::os::unix::fs::FileExt;
    use std::os::unix::net::UnixStream;

    use vm_memory::Bytes;

    use super::*;
    use crate::virtio::test_utils::{memory, Mem};

    fn push<'m>(
        iovs: &mut GuestIoVecs<'_, 'm>,
        mem: &'m Mem,
        addr: u64,
        len: usize,
        writable: bool,
    ) {
        iovs.push_guest(&GuestRegions::new(mem), GuestAddress(addr), len, writable)
            .unwrap();
    }

    #[test]
    fn streams_cross_buffers_and_regions() {
        // The second buffer spans two regions: two host slices.
        let mem = memory(&[(0, 0x2000), (0x2000, 0x2000)]);
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0x100, 10, true);
        push(&mut iovs, &mem, 0x1ff0, 0x20, true);
        assert_eq!((iovs.len(), iovs.count()), (0x2a, 3));
        let data: Vec<u8> = (0..0x2au8).collect();
        assert_eq!(iovs.copy_from(0, &data), 0x2a);
        let mut back = [0u8; 0x30];
        assert_eq!(iovs.copy_to(0, &mut back), 0x2a);
        assert_eq!(back[..0x2a], data[..]);
        assert_eq!(iovs.copy_to(12, &mut back[..4]), 4);
        assert_eq!(back[..4], data[12..16]);
        let mut guest = [0u8; 0x20];
        mem.read_slice(&mut guest, GuestAddress(0x1ff0)).unwrap();
        assert_eq!(guest[..], data[10..]);

        iovs.pop_last_byte();
        assert_eq!(iovs.len(), 0x29);
        iovs.advance(12);
        assert_eq!((iovs.len(), iovs.count()), (0x1d, 2));
        assert_eq!(iovs.copy_to(0, &mut back[..3]), 3);
        assert_eq!(back[..3], data[12..15]);
        iovs.truncate(5);
        assert_eq!((iovs.len(), iovs.count()), (5, 1));
        iovs.advance(100);
        assert_eq!((iovs.len(), iovs.count()), (0, 0));
        drop(iovs);
        assert_eq!(buf.start().count(), 0, "a new list starts empty");
    }

    #[test]
    fn readable_buffers_are_never_written() {
        let mem = memory(&[(0, 0x1000)]);
        mem.write_slice(&[7; 16], GuestAddress(0)).unwrap();
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0, 16, false);
        assert_eq!(iovs.copy_from(0, &[1; 16]), 0);
        let (mut a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[2; 16]).unwrap();
        assert_eq!(
            iovs.readv(&a).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let mut got = [0u8; 16];
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, [2; 16], "left in the socket");
        let file = tempfile::tempfile().unwrap();
        assert!(iovs.read_exact_at(&file, 0).is_err());
        assert_eq!(crate::virtio::test_utils::guest_bytes(&mem, 0, 16), [7; 16]);
        // Reading them is fine.
        assert_eq!(iovs.writev(&a).unwrap(), 16);
        b.read_exact(&mut got).unwrap();
        assert_eq!(got, [7; 16]);
        assert_eq!(iovs.sendmsg(&b, libc::MSG_NOSIGNAL).unwrap(), 16);
        a.read_exact(&mut got).unwrap();
        assert_eq!(got, [7; 16]);
    }

    #[test]
    fn positional_and_stream_io() {
        let mem = memory(&[(0, 0x2000), (0x2000, 0x2000)]);
        let file = tempfile::tempfile().unwrap();
        let contents: Vec<u8> = (0..600u32).map(|i| (i % 251) as u8).collect();
        file.write_all_at(&contents, 0).unwrap();
        let mut buf = IoVecBuf::default();
        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0x1f00, 0x200, true);
        push(&mut iovs, &mem, 0x100, 0x40, true);
        iovs.read_exact_at(&file, 8).unwrap();
        assert_eq!(iovs.len(), 0);
        drop(iovs);
        let mut got = crate::virtio::test_utils::guest_bytes(&mem, 0x1f00, 0x200);
        got.extend(crate::virtio::test_utils::guest_bytes(&mem, 0x100, 0x40));
        assert_eq!(got, contents[8..8 + 0x240]);

        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0x1f00, 0x200, false);
        iovs.write_all_at(&file, 1000).unwrap();
        drop(iovs);
        let mut back = vec![0u8; 0x200];
        file.read_exact_at(&mut back, 1000).unwrap();
        assert_eq!(back, contents[8..8 + 0x200]);

        // Past the end of the file: an error, not a hang.
        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0, 0x400, true);
        assert_eq!(
            iovs.read_exact_at(&file, 1000).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );

        drop(iovs);
        let (a, mut b) = UnixStream::pair().unwrap();
        b.write_all(&[9; 8]).unwrap();
        let mut iovs = buf.start();
        push(&mut iovs, &mem, 0x3000, 4, true);
        push(&mut iovs, &mem, 0x3100, 4, true);
        assert_eq!(iovs.readv(&a).unwrap(), 8);
        assert_eq!(
            crate::virtio::test_utils::guest_bytes(&mem, 0x3100, 4),
            [9; 4]
        );
    }
}
