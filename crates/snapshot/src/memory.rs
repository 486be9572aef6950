//! Guest memory files: every region back to back in guest-address order (as
//! Firecracker lays them out), written sparsely in full or page by page from
//! a dirty bitmap.

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

use crate::{Error, Result};

/// Granularity of holes and of dirty bitmaps: one bit per page of this size.
pub const PAGE_SIZE: usize = 4096;
/// Bytes copied out of guest memory at a time.
const CHUNK_SIZE: usize = 512 * PAGE_SIZE;

/// Writes all of `memory` into `file` (replacing its content), region after
/// region in guest-address order. All-zero pages are left as holes, runs of
/// other pages are written with one `pwrite` each (per 2 MiB chunk), and the
/// file ends exactly at the end of the last region. Returns the bytes written.
///
/// # Example
///
/// ```
/// use std::os::unix::fs::FileExt;
///
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// // Two regions with a hole between them, as above and below an MMIO gap.
/// let memory = GuestMemoryMmap::<()>::from_ranges(&[
///     (GuestAddress(0), 0x10_0000),
///     (GuestAddress(0x100_0000), 0x10_0000),
/// ])?;
/// memory.write_obj(0xabu8, GuestAddress(0x100_0000))?;
/// let file = tempfile::tempfile()?;
/// // One page is not zero: only it is written, the rest are holes.
/// assert_eq!(ember_snapshot::write_full_memory(&memory, &file)?, 4096);
/// assert_eq!(file.metadata()?.len(), 0x20_0000);
/// // The second region follows the first in the file.
/// let mut byte = [0u8];
/// file.read_exact_at(&mut byte, 0x10_0000)?;
/// assert_eq!(byte, [0xab]);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_full_memory<M: GuestMemoryBackend>(memory: &M, file: &File) -> Result<u64> {
    file.set_len(0).map_err(memory_file("truncate"))?;
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let mut region_offset = 0u64;
    let mut written = 0u64;
    for (index, region) in memory.iter().enumerate() {
        let len = region.len();
        let mut pos = 0u64;
        while pos < len {
            let chunk = read_chunk(region, index, pos, &mut buffer)?;
            for run in non_zero_page_runs(chunk) {
                let at = region_offset + pos + run.start as u64;
                file.write_all_at(&chunk[run.clone()], at)
                    .map_err(memory_file("write"))?;
                written += run.len() as u64;
            }
            pos += chunk.len() as u64;
        }
        region_offset += len;
    }
    file.set_len(region_offset)
        .map_err(memory_file("set the length of"))?;
    Ok(written)
}

/// Writes the pages `dirty` marks into an existing memory file laid out as
/// [`write_full_memory`] lays it out, leaving every other byte (and the
/// file's length, unless it was shorter) as it was. `dirty` has one bitmap
/// per region, in guest-address order: bit `i % 64` of word `i / 64` marks
/// the region's page `i` (KVM's dirty log format). Returns the bytes written.
///
/// # Example
///
/// ```
/// use std::os::unix::fs::FileExt;
///
/// use ember_snapshot::{write_diff_memory, write_full_memory, PAGE_SIZE};
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 64 * PAGE_SIZE)])?;
/// let file = tempfile::tempfile()?;
/// write_full_memory(&memory, &file)?;
///
/// // The guest then writes pages 3 and 4; only they go to the file.
/// memory.write_slice(&[1u8; 2 * PAGE_SIZE], GuestAddress(3 * PAGE_SIZE as u64))?;
/// let dirty = vec![vec![0b11000]];
/// assert_eq!(write_diff_memory(&memory, &dirty, &file)?, 2 * PAGE_SIZE as u64);
/// let mut byte = [0u8];
/// file.read_exact_at(&mut byte, 4 * PAGE_SIZE as u64)?;
/// assert_eq!(byte, [1]);
/// // One bitmap per region, of the region's length.
/// assert!(write_diff_memory(&memory, &[], &file).is_err());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write_diff_memory<M: GuestMemoryBackend>(
    memory: &M,
    dirty: &[Vec<u64>],
    file: &File,
) -> Result<u64> {
    if dirty.len() != memory.num_regions() {
        return Err(Error::DirtyBitmapCount {
            bitmaps: dirty.len(),
            regions: memory.num_regions(),
        });
    }
    let mut buffer = vec![0u8; CHUNK_SIZE];
    let mut region_offset = 0u64;
    let mut written = 0u64;
    for (index, (region, bitmap)) in memory.iter().zip(dirty).enumerate() {
        let len = region.len();
        let pages = len.div_ceil(PAGE_SIZE as u64);
        let expected = pages.div_ceil(64);
        if bitmap.len() as u64 != expected {
            return Err(Error::DirtyBitmapLength {
                region: index,
                words: bitmap.len(),
                pages,
                expected,
            });
        }
        for run in dirty_page_runs(bitmap, pages) {
            let mut pos = run.start * PAGE_SIZE as u64;
            let end = (run.end * PAGE_SIZE as u64).min(len);
            while pos < end {
                let limit = usize::try_from(end - pos).map_or(CHUNK_SIZE, |n| n.min(CHUNK_SIZE));
                let chunk = read_chunk(region, index, pos, &mut buffer[..limit])?;
                file.write_all_at(chunk, region_offset + pos)
                    .map_err(memory_file("write"))?;
                written += chunk.len() as u64;
                pos += chunk.len() as u64;
            }
        }
        region_offset += len;
    }
    Ok(written)
}

fn memory_file(action: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::MemoryFile { action, source }
}

/// Copies the region's bytes from `pos` into `buffer` (as many as fit and
/// the region has); returns the filled part.
fn read_chunk<'b, R: GuestMemoryRegion>(
    region: &R,
    index: usize,
    pos: u64,
    buffer: &'b mut [u8],
) -> Result<&'b [u8]> {
    let rest = region.len() - pos;
    let len = usize::try_from(rest).map_or(buffer.len(), |rest| rest.min(buffer.len()));
    let chunk = &mut buffer[..len];
    region
        .read_slice(chunk, MemoryRegionAddress(pos))
        .map_err(|source| Error::GuestMemory {
            region: index,
            offset: pos,
            source,
        })?;
    Ok(chunk)
}

/// Byte ranges of `chunk` made of consecutive pages that are not all zero
/// (the last page may be short).
fn non_zero_page_runs(chunk: &[u8]) -> Vec<Range<usize>> {
    let mut runs: Vec<Range<usize>> = Vec::new();
    for (page_index, page) in chunk.chunks(PAGE_SIZE).enumerate() {
        if is_zero(page) {
            continue;
        }
        let start = page_index * PAGE_SIZE;
        let end = start + page.len();
        match runs.last_mut() {
            Some(run) if run.end == start => run.end = end,
            _ => runs.push(start..end),
        }
    }
    runs
}

/// Whether every byte of `page` is zero: 16 bytes at a time, OR-ed without
/// an early exit so the compiler vectorises it (a byte-by-byte check made
/// the zero scan most of a full snapshot's time: ~0.9 s per GiB).
fn is_zero(page: &[u8]) -> bool {
    let (words, tail) = page.as_chunks::<16>();
    words
        .iter()
        .fold(0u128, |acc, word| acc | u128::from_ne_bytes(*word))
        == 0
        && tail.iter().all(|&b| b == 0)
}

/// Page ranges of the first `pages` pages whose bits are set in `bitmap`.
fn dirty_page_runs(bitmap: &[u64], pages: u64) -> Vec<Range<u64>> {
    let mut runs: Vec<Range<u64>> = Vec::new();
    for (word_index, &word) in bitmap.iter().enumerate() {
        let mut bits = word;
        while bits != 0 {
            let page = word_index as u64 * 64 + u64::from(bits.trailing_zeros());
            bits &= bits - 1;
            if page >= pages {
                break;
            }
            match runs.last_mut() {
                Some(run) if run.end == page => run.end = page + 1,
                _ => runs.push(page..page + 1),
            }
        }
    }
    runs
}

#[cfg(test)]
mod tests;
