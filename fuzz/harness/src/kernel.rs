//! `kernel_image`: arbitrary bytes as a kernel file, through
//! `ember_boot::image::inspect` and `ember_boot::load_kernel` into a small
//! guest memory that tracks which pages were written.
//!
//! Invariants: nothing panics and every error can be displayed; `inspect` is
//! deterministic; when loading succeeds, `inspect` succeeded with the same
//! format (or plain ELF for a PVH note the loader cannot use), its load range
//! lies in RAM above 1 MiB and below the end of low RAM, every page the loader
//! wrote lies inside that range, the kernel's end is that range's end, and the
//! kernel is entered through PVH exactly when it is reported as a PVH image.

use std::io::Cursor;

use ember_boot::image::{inspect, ImageFormat};
use ember_boot::{load_kernel, BootProtocol};
use ember_memory::layout::HIMEM_START;
use vm_memory::bitmap::{AtomicBitmap, Bitmap};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Guest RAM of the target (the whole of it is "low RAM").
pub const MEM_SIZE: u64 = 4 << 20;
const PAGE: u64 = 4096;

/// Runs one input.
pub fn run(data: &[u8]) {
    let info = inspect(&mut Cursor::new(data));
    let again = inspect(&mut Cursor::new(data));
    match (&info, &again) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "inspect is deterministic"),
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("inspect is not deterministic"),
    }

    let mem: GuestMemoryMmap<AtomicBitmap> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE as usize)])
            .expect("guest memory");
    let himem = GuestAddress(HIMEM_START);
    let loaded = match load_kernel(&mem, &mut Cursor::new(data), himem, MEM_SIZE) {
        Ok(loaded) => loaded,
        Err(e) => {
            let _ = e.to_string();
            return;
        }
    };
    let info = info.expect("a kernel that loads passes inspect");
    // An ELF kernel is entered through PVH only with a note `inspect` found.
    let expected_formats: &[ImageFormat] = match info.format {
        ImageFormat::ElfPvh => &[ImageFormat::ElfPvh, ImageFormat::Elf],
        other => &[other],
    };
    assert!(
        expected_formats.contains(&loaded.format),
        "{:?} image loaded as {:?}",
        info.format,
        loaded.format
    );
    assert!(
        HIMEM_START <= info.load_start
            && info.load_start <= info.load_end
            && info.load_end <= MEM_SIZE,
        "load range {:#x}..{:#x} outside low RAM above 1 MiB",
        info.load_start,
        info.load_end
    );
    assert_eq!(loaded.end, info.load_end, "the kernel's end");
    let pvh = loaded.protocol == BootProtocol::Pvh;
    assert_eq!(
        pvh,
        loaded.format == ImageFormat::ElfPvh,
        "{:?} image entered through {:?}",
        loaded.format,
        loaded.protocol
    );

    let first = info.load_start / PAGE * PAGE;
    let end = info.load_end.div_ceil(PAGE) * PAGE;
    for region in mem.iter() {
        let base = region.start_addr().0;
        for offset in (0..region.len()).step_by(PAGE as usize) {
            let page = base + offset;
            if region.bitmap().dirty_at(offset as usize) {
                assert!(
                    (first..end).contains(&page),
                    "the loader wrote page {page:#x}, outside inspect's range {:#x}..{:#x} ({:?})",
                    info.load_start,
                    info.load_end,
                    info.format
                );
            }
        }
    }
}
