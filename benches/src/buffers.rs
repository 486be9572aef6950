//! Page-aligned buffers for the baselines, used in turn like a guest's
//! buffers: both sides of a comparison then copy into the same amount of
//! memory with the same alignment (a destination 16 bytes off a page
//! boundary, as `malloc` hands out for large blocks, makes the kernel's
//! copies measurably slower).

/// One page.
#[derive(Clone, Copy)]
#[repr(C, align(4096))]
struct Page([u8; PAGE]);

const PAGE: usize = 4096;

/// `slots` buffers of `slot_len` bytes (rounded up to whole pages), each
/// starting on a page boundary.
pub struct PageBuffers {
    pages: Vec<Page>,
    pages_per_slot: usize,
    slots: usize,
}

impl std::fmt::Debug for PageBuffers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PageBuffers")
            .field("slots", &self.slots)
            .field("slot_len", &(self.pages_per_slot * PAGE))
            .finish()
    }
}

impl PageBuffers {
    /// Allocates and touches the buffers (at least one slot of one page).
    pub fn new(slots: usize, slot_len: usize) -> PageBuffers {
        let pages_per_slot = slot_len.div_ceil(PAGE).max(1);
        let slots = slots.max(1);
        PageBuffers {
            pages: vec![Page([1; PAGE]); slots * pages_per_slot],
            pages_per_slot,
            slots,
        }
    }

    /// Buffer `i % slots`, `len` bytes long (at most the slot's length).
    pub fn slot(&mut self, i: usize, len: usize) -> &mut [u8] {
        let first = (i % self.slots) * self.pages_per_slot;
        let pages = &mut self.pages[first..first + self.pages_per_slot];
        let slot_len = pages.len() * PAGE;
        // SAFETY: `Page` is a `repr(C)` array of bytes with no padding (its
        // size, 4096, is a multiple of its alignment), so the pages of a
        // slot are `slot_len` contiguous, initialised bytes; the slice
        // borrows them mutably for as long as the returned slice lives.
        let bytes =
            unsafe { std::slice::from_raw_parts_mut(pages.as_mut_ptr().cast::<u8>(), slot_len) };
        &mut bytes[..len.min(slot_len)]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_aligned_separate_and_wrap() {
        let mut bufs = PageBuffers::new(3, 5000);
        let a = bufs.slot(0, 5000).as_ptr() as usize;
        let b = bufs.slot(1, 5000).as_ptr() as usize;
        assert_eq!(a % PAGE, 0);
        assert_eq!(b - a, 2 * PAGE, "5000 bytes take two pages");
        assert_eq!(bufs.slot(3, 10).as_ptr() as usize, a, "slot 3 is slot 0");
        bufs.slot(2, 8192).fill(7);
        assert_eq!(bufs.slot(2, 100_000).len(), 8192, "clamped to the slot");
        assert!(bufs.slot(1, 8192).iter().all(|&x| x == 1), "untouched");
        assert!(bufs.slot(2, 8192).iter().all(|&x| x == 7));
        assert_eq!(PageBuffers::new(0, 0).slot(5, 1).len(), 1);
    }
}
