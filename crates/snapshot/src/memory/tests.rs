use std::os::unix::fs::MetadataExt;

use ember_memory::{create_guest_memory, create_guest_memory_from_file, MemoryLayout};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::*;

const PAGE: u64 = PAGE_SIZE as u64;

/// Every byte of `memory`, regions back to back.
fn contents<M: GuestMemoryBackend>(memory: &M) -> Vec<u8> {
    let mut out = Vec::new();
    for region in memory.iter() {
        let mut bytes = vec![0u8; usize::try_from(region.len()).unwrap()];
        region
            .read_slice(&mut bytes, MemoryRegionAddress(0))
            .unwrap();
        out.extend(bytes);
    }
    out
}

fn file_contents(file: &File) -> Vec<u8> {
    let mut bytes = vec![0u8; usize::try_from(file.metadata().unwrap().len()).unwrap()];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

#[test]
fn full_memory_is_sparse_and_reads_back() {
    let layout = MemoryLayout::new(64 << 20).unwrap();
    let memory = create_guest_memory(&layout).unwrap();
    // Five pages hold data: 0, 100 to 102 (one run) and the last one.
    memory.write_obj(1u8, GuestAddress(0)).unwrap();
    memory
        .write_slice(&[0xab; 3 * PAGE_SIZE], GuestAddress(100 * PAGE))
        .unwrap();
    memory
        .write_obj(u64::MAX, GuestAddress((64 << 20) - 8))
        .unwrap();
    // Junk from an earlier write must not survive in the holes.
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(&[0xee; 2 * PAGE_SIZE], 50 * PAGE)
        .unwrap();

    let written = write_full_memory(&memory, &file).unwrap();
    assert_eq!(written, 5 * PAGE);
    let metadata = file.metadata().unwrap();
    assert_eq!(metadata.len(), 64 << 20);
    let allocated = metadata.blocks() * 512;
    assert!(
        (5 * PAGE..=5 * PAGE + (1 << 20)).contains(&allocated),
        "{allocated} bytes allocated for 5 pages"
    );
    assert_eq!(file_contents(&file), contents(&memory));
    let restored = create_guest_memory_from_file(&layout, &file).unwrap();
    assert_eq!(contents(&restored), contents(&memory));
}

#[test]
fn regions_are_written_back_to_back_in_address_order() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 4 * PAGE_SIZE),
        (GuestAddress(1 << 32), 2 * PAGE_SIZE + 100),
    ])
    .unwrap();
    memory.write_obj(0x11u8, GuestAddress(3 * PAGE)).unwrap();
    memory
        .write_obj(0x22u8, GuestAddress((1 << 32) + 2 * PAGE + 99))
        .unwrap();
    let file = tempfile::tempfile().unwrap();
    // The short last page is written whole: 100 bytes.
    assert_eq!(write_full_memory(&memory, &file).unwrap(), PAGE + 100);
    let bytes = file_contents(&file);
    assert_eq!(bytes.len(), 6 * PAGE_SIZE + 100);
    assert_eq!(bytes[3 * PAGE_SIZE], 0x11);
    assert_eq!(bytes[6 * PAGE_SIZE + 99], 0x22);
    assert_eq!(bytes.iter().filter(|&&b| b != 0).count(), 2);
}

#[test]
fn diff_writes_exactly_the_marked_pages() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 130 * PAGE_SIZE),
        (GuestAddress(1 << 32), 8 * PAGE_SIZE),
    ])
    .unwrap();
    let file = tempfile::tempfile().unwrap();
    let old = vec![0x5a; 138 * PAGE_SIZE];
    file.write_all_at(&old, 0).unwrap();
    // Every page of memory differs from the file; pages 3, 4, 65 and 129
    // of region 0 and page 7 of region 1 are marked (page 65 and region 1's
    // page 7 are all zeroes, which a diff must write too).
    memory
        .write_slice(&vec![1u8; 130 * PAGE_SIZE], GuestAddress(0))
        .unwrap();
    memory
        .write_slice(&[0u8; PAGE_SIZE], GuestAddress(65 * PAGE))
        .unwrap();
    memory
        .write_slice(&[2u8; 7 * PAGE_SIZE], GuestAddress(1 << 32))
        .unwrap();
    let dirty = vec![vec![(1 << 3) | (1 << 4), 1 << 1, 1 << 1], vec![1 << 7]];
    let written = write_diff_memory(&memory, &dirty, &file).unwrap();
    assert_eq!(written, 5 * PAGE);

    let mut expected = old;
    let memory_bytes = contents(&memory);
    for page in [3, 4, 65, 129, 130 + 7] {
        let range = page * PAGE_SIZE..(page + 1) * PAGE_SIZE;
        expected[range.clone()].copy_from_slice(&memory_bytes[range]);
    }
    assert_eq!(file_contents(&file), expected);
}

#[test]
fn bitmaps_that_do_not_fit_the_memory_are_refused() {
    let memory = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 65 * PAGE_SIZE)]).unwrap();
    let file = tempfile::tempfile().unwrap();
    let err = write_diff_memory(&memory, &[], &file).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DirtyBitmapCount {
                bitmaps: 0,
                regions: 1
            }
        ),
        "{err}"
    );
    let err = write_diff_memory(&memory, &[vec![1]], &file).unwrap_err();
    assert!(
        matches!(
            err,
            Error::DirtyBitmapLength {
                words: 1,
                expected: 2,
                ..
            }
        ),
        "{err}"
    );
    // Bits past the last page are ignored.
    assert_eq!(
        write_diff_memory(&memory, &[vec![0, !0]], &file).unwrap(),
        PAGE
    );
}

#[test]
fn a_page_is_zero_only_if_every_byte_is() {
    assert!(is_zero(&[0u8; PAGE_SIZE]));
    assert!(is_zero(&[]));
    assert!(is_zero(&[0u8; 17]));
    for at in [0, 15, 16, 4000, PAGE_SIZE - 1] {
        let mut page = vec![0u8; PAGE_SIZE];
        page[at] = 0x80;
        assert!(!is_zero(&page), "byte {at}");
    }
    let mut short = [0u8; 17];
    short[16] = 1;
    assert!(!is_zero(&short));
}

#[test]
fn runs_merge_adjacent_pages_only() {
    let mut chunk = vec![0u8; 5 * PAGE_SIZE + 10];
    chunk[0] = 1;
    chunk[PAGE_SIZE + 5] = 1;
    chunk[3 * PAGE_SIZE] = 1;
    chunk[5 * PAGE_SIZE + 9] = 1;
    assert_eq!(
        non_zero_page_runs(&chunk),
        vec![
            0..2 * PAGE_SIZE,
            3 * PAGE_SIZE..4 * PAGE_SIZE,
            5 * PAGE_SIZE..5 * PAGE_SIZE + 10
        ]
    );
    assert_eq!(
        dirty_page_runs(&[0b1011 | (1 << 63), 1], 66),
        vec![0..2, 3..4, 63..65]
    );
}
