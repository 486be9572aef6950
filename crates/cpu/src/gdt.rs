//! Global descriptor table entries and the KVM segment registers they describe.

use kvm_bindings::kvm_segment;

/// Access and flag bits of a 64-bit code segment (present, DPL 0, code, L=1).
pub const CODE64_FLAGS: u16 = 0xa09b;
/// Access and flag bits of a 32-bit code segment (present, DPL 0, code, D=1, G=1).
pub const CODE32_FLAGS: u16 = 0xc09b;
/// Access and flag bits of a flat data segment (present, DPL 0, read/write, D=1, G=1).
pub const DATA_FLAGS: u16 = 0xc093;
/// Access bits of a busy 64-bit or 32-bit TSS.
pub const TSS_FLAGS: u16 = 0x808b;

/// Builds a GDT descriptor from its flags (access byte in bits 0-7, flags in
/// bits 12-15, as in the `CODE64_FLAGS` constants), base and 20-bit limit.
pub fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let flags = u64::from(flags);
    let base = u64::from(base);
    let limit = u64::from(limit);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The KVM segment register for GDT `entry` loaded from slot `index`.
#[allow(clippy::cast_possible_truncation)] // every field is masked to its width first
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |shift: u32| ((entry >> shift) & 1) as u8;
    let base = (((entry >> 16) & 0x00ff_ffff) | ((entry >> 32) & 0xff00_0000)) as u32;
    let raw_limit = ((entry & 0xffff) | ((entry >> 32) & 0x000f_0000)) as u32;
    let granular = bit(55);
    let limit = if granular == 1 {
        (raw_limit << 12) | 0xfff
    } else {
        raw_limit
    };
    let present = bit(47);
    kvm_segment {
        base: u64::from(base),
        limit,
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present,
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: granular,
        avl: bit(52),
        padding: 0,
        unusable: u8::from(present == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_descriptors() {
        assert_eq!(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 0x00af_9b00_0000_ffff);
        assert_eq!(gdt_entry(DATA_FLAGS, 0, 0xfffff), 0x00cf_9300_0000_ffff);
        assert_eq!(gdt_entry(TSS_FLAGS, 0, 0xfffff), 0x008f_8b00_0000_ffff);
        assert_eq!(
            gdt_entry(DATA_FLAGS, 0x1234_5678, 0xabcde),
            0x12ca_9334_5678_bcde
        );
    }

    #[test]
    fn segments_decode_their_descriptors() {
        let code = segment_from_gdt(gdt_entry(CODE64_FLAGS, 0, 0xfffff), 1);
        assert_eq!(code.selector, 8);
        assert_eq!(code.type_, 0xb);
        assert_eq!(
            (code.present, code.s, code.l, code.db, code.g),
            (1, 1, 1, 0, 1)
        );
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.unusable, 0);

        let data = segment_from_gdt(gdt_entry(DATA_FLAGS, 0x1234_5678, 0xab), 2);
        assert_eq!(data.base, 0x1234_5678);
        assert_eq!(data.limit, 0xab_fff);
        assert_eq!((data.type_, data.db, data.l), (3, 1, 0));

        let tss = segment_from_gdt(gdt_entry(0x008b, 0, 0x67), 3);
        assert_eq!((tss.limit, tss.g, tss.s), (0x67, 0, 0));

        assert_eq!(segment_from_gdt(0, 0).unusable, 1);
    }
}
