//! Tiny freestanding x86_64 test guests for Ember's KVM tests.
//!
//! Linux cannot boot in the instruction-emulated KVM this project is tested
//! on, so the VMM's tests boot these guests instead. They are built by this
//! crate's build script from the C and assembly sources in `guest/` and share
//! one C core that prints `key=value` lines on COM1 (see the crate README for
//! the command-line protocol, the scenarios and the exact output format).
//!
//! Three images are produced:
//!
//! - [`ELF64_PATH`]: an ELF64 `ET_EXEC` loaded at 1 MiB, entered through the
//!   Linux 64-bit boot protocol at `e_entry` (RSI = `boot_params`).
//! - [`PVH_PATH`]: the same ELF plus a Xen PVH note (`XEN_ELFNOTE_PHYS32_ENTRY`)
//!   pointing at a 32-bit entry stub (EBX = `hvm_start_info`).
//! - [`BZIMAGE_PATH`]: a bzImage whose payload is loaded at 1 MiB and entered
//!   in 64-bit mode at payload offset `0x200`.

/// Absolute path of the ELF64 image (Linux 64-bit boot protocol, no PVH note).
pub const ELF64_PATH: &str = concat!(env!("OUT_DIR"), "/guest-elf64");

/// Absolute path of the ELF64 image carrying a Xen PVH entry note.
pub const PVH_PATH: &str = concat!(env!("OUT_DIR"), "/guest-pvh");

/// Absolute path of the bzImage (Linux x86 boot protocol 2.15, 64-bit entry).
pub const BZIMAGE_PATH: &str = concat!(env!("OUT_DIR"), "/guest-bzimage");

/// Lists every image as `(name, absolute path)`.
///
/// The names (`guest-elf64`, `guest-pvh`, `guest-bzimage`) are also the file
/// names of the images.
pub fn all() -> [(&'static str, &'static str); 3] {
    [
        ("guest-elf64", ELF64_PATH),
        ("guest-pvh", PVH_PATH),
        ("guest-bzimage", BZIMAGE_PATH),
    ]
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;

    const LOAD_ADDR: u64 = 0x10_0000;
    const PT_LOAD: u32 = 1;
    const PT_NOTE: u32 = 4;
    const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;

    fn read(path: &str) -> Vec<u8> {
        std::fs::read(path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"))
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    /// (p_type, p_offset, p_vaddr, p_paddr, p_filesz, p_memsz)
    fn phdrs(elf: &[u8]) -> Vec<(u32, usize, u64, u64, usize, u64)> {
        let phoff = usize::try_from(u64_at(elf, 0x20)).unwrap();
        let phentsize = usize::from(u16_at(elf, 0x36));
        assert_eq!(phentsize, 56);
        (0..usize::from(u16_at(elf, 0x38)))
            .map(|i| {
                let ph = phoff + i * phentsize;
                (
                    u32_at(elf, ph),
                    usize::try_from(u64_at(elf, ph + 8)).unwrap(),
                    u64_at(elf, ph + 0x10),
                    u64_at(elf, ph + 0x18),
                    usize::try_from(u64_at(elf, ph + 0x20)).unwrap(),
                    u64_at(elf, ph + 0x28),
                )
            })
            .collect()
    }

    /// Returns the PVH 32-bit entry from the image's PT_NOTE segments, if any.
    fn pvh_entry(elf: &[u8]) -> Option<u64> {
        for (ty, off, _, _, filesz, _) in phdrs(elf) {
            if ty != PT_NOTE {
                continue;
            }
            let mut p = off;
            while p + 12 <= off + filesz {
                let namesz = usize::try_from(u32_at(elf, p)).unwrap();
                let descsz = usize::try_from(u32_at(elf, p + 4)).unwrap();
                let ntype = u32_at(elf, p + 8);
                let name = &elf[p + 12..p + 12 + namesz];
                let desc = p + 12 + namesz.next_multiple_of(4);
                if name == b"Xen\0" && ntype == XEN_ELFNOTE_PHYS32_ENTRY {
                    return Some(if descsz >= 8 {
                        u64_at(elf, desc)
                    } else {
                        u64::from(u32_at(elf, desc))
                    });
                }
                p = desc + descsz.next_multiple_of(4);
            }
        }
        None
    }

    fn check_elf(elf: &[u8]) {
        assert_eq!(&elf[..4], b"\x7fELF");
        assert_eq!(elf[4], 2, "ELFCLASS64");
        assert_eq!(elf[5], 1, "little endian");
        assert_eq!(u16_at(elf, 0x10), 2, "ET_EXEC");
        assert_eq!(u16_at(elf, 0x12), 62, "EM_X86_64");
        assert_eq!(u64_at(elf, 0x18), LOAD_ADDR + 0x200, "e_entry");
        let loads: Vec<_> = phdrs(elf).into_iter().filter(|p| p.0 == PT_LOAD).collect();
        assert!(!loads.is_empty());
        for (_, _, vaddr, paddr, filesz, memsz) in loads {
            assert_eq!(vaddr, paddr);
            assert!(paddr >= LOAD_ADDR);
            assert!(memsz >= u64::try_from(filesz).unwrap());
        }
    }

    #[test]
    fn all_lists_existing_images() {
        for (name, path) in all() {
            assert!(path.ends_with(name), "{path} does not end with {name}");
            assert!(std::path::Path::new(path).is_absolute());
            assert!(!read(path).is_empty());
        }
    }

    #[test]
    fn elf64_has_no_pvh_note() {
        let elf = read(ELF64_PATH);
        check_elf(&elf);
        assert!(phdrs(&elf).iter().all(|p| p.0 != PT_NOTE));
        assert_eq!(pvh_entry(&elf), None);
    }

    #[test]
    fn pvh_has_pvh_note() {
        let elf = read(PVH_PATH);
        check_elf(&elf);
        let entry = pvh_entry(&elf).expect("no PVH note");
        // The 32-bit entry lies inside the loaded image, after the 64-bit entry.
        assert!(entry > LOAD_ADDR + 0x200 && entry < LOAD_ADDR + 0x10_0000);
        let (_, off, _, paddr, filesz, _) =
            phdrs(&elf).into_iter().find(|p| p.0 == PT_LOAD).unwrap();
        let at = off + usize::try_from(entry - paddr).unwrap();
        assert!(at < off + filesz);
        assert_eq!(elf[at], 0xFA, "32-bit entry starts with cli");
    }

    #[test]
    fn bzimage_header() {
        let img = read(BZIMAGE_PATH);
        assert_eq!(u16_at(&img, 0x1FE), 0xAA55);
        assert_eq!(&img[0x202..0x206], b"HdrS");
        assert_eq!(u16_at(&img, 0x206), 0x020F);
        assert_eq!(img[0x211] & 0x01, 0x01, "LOADED_HIGH");
        assert_eq!(u32_at(&img, 0x214), 0x10_0000, "code32_start");
        assert_eq!(u16_at(&img, 0x236) & 0x1, 0x1, "XLF_KERNEL_64");
        assert_eq!(u64_at(&img, 0x258), 0x10_0000, "pref_address");
        let setup_sects = usize::from(img[0x1F1]);
        assert!(setup_sects > 0);
        let payload = &img[(setup_sects + 1) * 512..];
        let syssize = usize::try_from(u32_at(&img, 0x1F4)).unwrap();
        assert_eq!(syssize, payload.len().div_ceil(16));
        let init_size = usize::try_from(u32_at(&img, 0x260)).unwrap();
        assert!(init_size >= payload.len());
        assert_eq!(init_size % 4096, 0);
        // Offset 0: hlt loop (cli; hlt). Offset 0x200: 64-bit entry (cli; cld).
        assert_eq!(&payload[..2], &[0xFA, 0xF4]);
        assert_eq!(&payload[0x200..0x202], &[0xFA, 0xFC]);
    }

    /// Asserts that every image contains each string NUL-terminated.
    fn assert_images_contain(names: &[&str]) {
        for (_, path) in all() {
            let img = read(path);
            for name in names {
                let needle = format!("{name}\0");
                assert!(
                    img.windows(needle.len()).any(|w| w == needle.as_bytes()),
                    "{path} lacks the string {name:?}"
                );
            }
        }
    }

    #[test]
    fn images_contain_blk_scenarios() {
        assert_images_contain(&[
            "blk-info",
            "blk-write",
            "blk-read",
            "blk-roundtrip",
            "blk-flush",
            "blk-id",
            "blk-past-end",
            "blk-reset",
            "blk-rescan",
            "blk.repeat=",
            "blk-multi",
            "virtio_mmio.device=",
        ]);
    }

    #[test]
    fn images_contain_net_scenarios() {
        assert_images_contain(&[
            "net-info",
            "net-send",
            "net-recv",
            "net-echo",
            "net-inject",
            "net.frame=",
            "net.dev=",
            "net.len=",
            "net.repeat=",
            "net.count=",
            "net.wait=",
            "net-recv: ready\n",
            "net-echo: ready\n",
            "ember-net-test",
        ]);
    }

    #[test]
    fn images_contain_core_scenarios() {
        assert_images_contain(&[
            "bootinfo",
            "echo",
            "boottimer",
            "hlt",
            "reset",
            "badinsn",
            "count",
            "count.n=",
            "count.delay=",
            "spin",
            "spin: running\n",
        ]);
    }

    #[test]
    fn images_contain_io_scenarios() {
        assert_images_contain(&[
            "keys",
            "keys.max=",
            "keys.idle=",
            "keys.wait=",
            "keys: ready\n",
            "i8042-selftest",
            "ioprobe",
        ]);
    }

    #[test]
    fn images_contain_vsock_scenarios() {
        assert_images_contain(&[
            "vsock-info",
            "vsock-connect",
            "vsock-listen",
            "vsock.port=",
            "vsock.msg=",
            "vsock.len=",
            "vsock.wait=",
            "vsock.linger=",
            "vsock.src=",
            "vsock.dev=",
            "hello from the guest\n",
        ]);
    }

    #[test]
    fn images_contain_snapshot_scenarios() {
        assert_images_contain(&[
            "ticks",
            "ticks.count=",
            "ticks.every=",
            "ticks.lines=",
            "smp",
            "smp.cpus=",
            "smp.start=",
            "smp.every=",
            "snapcount",
            "snap.base=",
            "snap.pages=",
            "snap.dirty=",
        ]);
    }

    #[test]
    fn bzimage_payload_matches_elf64() {
        let img = read(BZIMAGE_PATH);
        let elf = read(ELF64_PATH);
        let payload = &img[(usize::from(img[0x1F1]) + 1) * 512..];
        for (ty, off, _, paddr, filesz, _) in phdrs(&elf) {
            if ty == PT_LOAD {
                let start = usize::try_from(paddr - LOAD_ADDR).unwrap();
                assert_eq!(&payload[start..start + filesz], &elf[off..off + filesz]);
            }
        }
    }
}
