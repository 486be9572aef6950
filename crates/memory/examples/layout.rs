//! Prints the guest-physical layout and e820 map Ember gives a guest of the
//! size given in MiB (default 4096), and maps it to show that untouched
//! guest memory costs nothing.
//!
//! `cargo run -p ember-memory --example layout -- 6144`

use ember_memory::layout::{MMIO_GAP_END, MMIO_GAP_START};
use ember_memory::{create_guest_memory, E820Kind, MemoryLayout};

/// A guest-physical address width every x86_64 host has (many have more).
const PHYS_BITS: u8 = 39;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mib: u64 = match std::env::args().nth(1) {
        Some(arg) => arg.parse()?,
        None => 4096,
    };
    let layout = MemoryLayout::with_mib(mib, PHYS_BITS)?;
    println!("{mib} MiB of guest RAM, ending at {:#x}", layout.end());
    println!("MMIO gap: {MMIO_GAP_START:#x}..{MMIO_GAP_END:#x}");
    for (start, len) in layout.ranges() {
        println!("RAM range: {:#014x}..{:#014x}", start.0, start.0 + len);
    }
    println!("e820 map:");
    for entry in layout.e820_entries() {
        let kind = match entry.kind {
            E820Kind::Ram => "RAM",
            E820Kind::Reserved => "reserved",
        };
        println!(
            "  {:#014x}..{:#014x} {kind}",
            entry.addr,
            entry.addr + entry.size
        );
    }
    let mem = create_guest_memory(&layout)?;
    println!(
        "mapped as {} region(s); pages are allocated when first touched",
        vm_memory::GuestMemoryBackend::num_regions(&mem)
    );
    Ok(())
}
