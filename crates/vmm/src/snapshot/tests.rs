#![allow(clippy::unwrap_used)]

use ember_memory::{map_guest_memory, Backing, DirtyPageTracking, MemoryLayout};

use vm_memory::GuestMemoryRegion;

use super::*;

#[test]
fn pages_of_a_failed_diff_are_dirty_again() {
    let page = ember_snapshot::PAGE_SIZE;
    let layout = MemoryLayout::new(256 * page as u64).unwrap();
    let memory = map_guest_memory(&layout, Backing::Anonymous, DirtyPageTracking::On).unwrap();
    // Pages 0, 3 and 65 of the first region.
    let mut dirty: Vec<Vec<u64>> = memory
        .iter()
        .map(|region| {
            let words = region.len().div_ceil(page as u64).div_ceil(64);
            vec![0; usize::try_from(words).unwrap()]
        })
        .collect();
    dirty[0][0] = 0b1001;
    dirty[0][1] = 0b10;
    mark_dirty_again(&memory, &dirty);
    let region = memory.iter().next().unwrap();
    let mapping = region.get_mmap();
    let bitmap = mapping.bitmap().as_ref().unwrap();
    let marked: Vec<usize> = (0..256)
        .filter(|&index| bitmap.is_addr_set(index * page))
        .collect();
    assert_eq!(marked, vec![0, 3, 65]);
}
