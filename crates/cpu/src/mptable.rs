//! The Intel MultiProcessor Specification 1.4 table: one processor entry per
//! vCPU, an ISA bus, the IOAPIC, its 24 interrupt assignments and the two local
//! interrupt lines. Linux reads it to find the application processors.

use ember_memory::layout::{APIC_START, IOAPIC_START, MPTABLE_END, MPTABLE_START};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result, MAX_VCPUS};

const FLOATING_POINTER_SIZE: usize = 16;
const CONFIG_HEADER_SIZE: usize = 44;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const IOAPIC_PINS: u8 = 24;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
/// CPU signature (family 6) and feature flags (FPU, APIC) reported per processor.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = 0x201;
const ALL_LOCAL_APICS: u8 = 0xff;

/// IOAPIC and local APIC addresses as the table's 32-bit fields.
const IOAPIC_ADDR: [u8; 4] = address32(IOAPIC_START);
const LAPIC_ADDR: [u8; 4] = address32(APIC_START);

/// A below-4-GiB address as a little-endian 32-bit field (checked at compile time).
#[allow(clippy::cast_possible_truncation)] // asserted to fit first
const fn address32(addr: u64) -> [u8; 4] {
    assert!(addr <= u32::MAX as u64);
    (addr as u32).to_le_bytes()
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Size in bytes of the table for `vcpus` processors.
pub fn table_size(vcpus: u8) -> usize {
    FLOATING_POINTER_SIZE
        + CONFIG_HEADER_SIZE
        + 20 * usize::from(vcpus)
        + 8 // bus
        + 8 // IOAPIC
        + 8 * usize::from(IOAPIC_PINS)
        + 8 * 2 // LINT0, LINT1
}

fn entries(vcpus: u8) -> (Vec<u8>, u16) {
    let ioapic_id = vcpus;
    let mut out = Vec::new();
    let mut count = 0u16;
    for cpu in 0..vcpus {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        out.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        out.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        out.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        out.extend_from_slice(&[0; 8]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_BUS, 0]);
    out.extend_from_slice(b"ISA   ");
    out.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    out.extend_from_slice(&IOAPIC_ADDR);
    count += 2;
    for pin in 0..IOAPIC_PINS {
        let kind = if pin == 0 {
            INT_TYPE_EXTINT
        } else {
            INT_TYPE_INT
        };
        // type, irq type, flags (conforming, 2 bytes), source bus, source irq, IOAPIC, pin
        out.extend_from_slice(&[ENTRY_IO_INTERRUPT, kind, 0, 0, 0, pin, ioapic_id, pin]);
        count += 1;
    }
    out.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    out.extend_from_slice(&[
        ENTRY_LOCAL_INTERRUPT,
        INT_TYPE_NMI,
        0,
        0,
        0,
        0,
        ALL_LOCAL_APICS,
        1,
    ]);
    count += 2;
    (out, count)
}

/// The whole table (floating pointer first) as it is placed at `base`.
///
/// # Example
///
/// ```
/// let table = ember_cpu::mptable::build(4, 0x9fc00)?;
/// assert_eq!(&table[..4], b"_MP_");
/// assert_eq!(table.len(), ember_cpu::mptable::table_size(4));
/// # Ok::<(), ember_cpu::Error>(())
/// ```
pub fn build(vcpus: u8, base: u64) -> Result<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return Err(Error::VcpuCount {
            count: usize::from(vcpus),
            max: usize::from(MAX_VCPUS),
        });
    }
    let config_addr = base + FLOATING_POINTER_SIZE as u64;
    let config_addr =
        u32::try_from(config_addr).map_err(|_| Error::MpTableTooLarge(usize::from(vcpus)))?;

    let (body, count) = entries(vcpus);
    let config_len = u16::try_from(CONFIG_HEADER_SIZE + body.len())
        .map_err(|_| Error::MpTableTooLarge(usize::from(vcpus)))?;
    let mut config = Vec::with_capacity(usize::from(config_len));
    config.extend_from_slice(b"PCMP");
    config.extend_from_slice(&config_len.to_le_bytes());
    config.extend_from_slice(&[SPEC_REVISION, 0]); // checksum patched below
    config.extend_from_slice(b"EMBER   "); // OEM ID
    config.extend_from_slice(b"MICROVM     "); // product ID
    config.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    config.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    config.extend_from_slice(&count.to_le_bytes());
    config.extend_from_slice(&LAPIC_ADDR);
    config.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    config.extend_from_slice(&body);
    config[7] = checksum(&config);

    let mut table = Vec::with_capacity(FLOATING_POINTER_SIZE + config.len());
    table.extend_from_slice(b"_MP_");
    table.extend_from_slice(&config_addr.to_le_bytes());
    table.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    table[10] = checksum(&table);
    table.extend_from_slice(&config);
    Ok(table)
}

/// Writes the MP table for `vcpus` processors at [`MPTABLE_START`].
///
/// # Example
///
/// ```
/// use ember_cpu::mptable::setup_mptable;
/// use ember_memory::layout::MPTABLE_START;
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
/// setup_mptable(&mem, 2)?;
/// let mut signature = [0u8; 4];
/// mem.read_slice(&mut signature, GuestAddress(MPTABLE_START)).unwrap();
/// assert_eq!(&signature, b"_MP_");
/// assert!(setup_mptable(&mem, 0).is_err());
/// # Ok::<(), ember_cpu::Error>(())
/// ```
pub fn setup_mptable<M: GuestMemoryBackend>(mem: &M, vcpus: u8) -> Result<()> {
    let table = build(vcpus, MPTABLE_START)?;
    if MPTABLE_START + table.len() as u64 > MPTABLE_END {
        return Err(Error::MpTableTooLarge(usize::from(vcpus)));
    }
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .map_err(|source| Error::GuestMemory {
            what: "MP table",
            addr: MPTABLE_START,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    /// Parses the table the way a guest does and returns (enabled CPUs, BSP APIC ID).
    fn parse(table: &[u8], base: u64) -> (u8, u8) {
        assert_eq!(&table[..4], b"_MP_");
        assert_eq!(sum(&table[..16]), 0, "floating pointer checksum");
        let config_at = u32::from_le_bytes(table[4..8].try_into().unwrap()) as u64;
        let config = &table[usize::try_from(config_at - base).unwrap()..];
        assert_eq!(&config[..4], b"PCMP");
        let len = u16::from_le_bytes([config[4], config[5]]) as usize;
        assert_eq!(sum(&config[..len]), 0, "config table checksum");
        let count = u16::from_le_bytes([config[0x22], config[0x23]]);
        let (mut at, mut cpus, mut bsp) = (CONFIG_HEADER_SIZE, 0, 0xff);
        for _ in 0..count {
            match config[at] {
                ENTRY_PROCESSOR => {
                    if config[at + 3] & CPU_ENABLED != 0 {
                        cpus += 1;
                    }
                    if config[at + 3] & CPU_BOOT_PROCESSOR != 0 {
                        bsp = config[at + 1];
                    }
                    at += 20;
                }
                1..=4 => at += 8,
                other => panic!("unknown entry type {other}"),
            }
        }
        assert_eq!(at, len);
        (cpus, bsp)
    }

    #[test]
    fn every_vcpu_is_listed() {
        for vcpus in [1u8, 2, 4, 32, MAX_VCPUS] {
            let table = build(vcpus, MPTABLE_START).unwrap();
            assert_eq!(table.len(), table_size(vcpus));
            assert_eq!(parse(&table, MPTABLE_START), (vcpus, 0));
        }
    }

    #[test]
    fn bad_counts_are_rejected() {
        assert!(matches!(
            build(0, MPTABLE_START),
            Err(Error::VcpuCount { .. })
        ));
        assert!(matches!(
            build(255, MPTABLE_START),
            Err(Error::VcpuCount { .. })
        ));
    }

    #[test]
    fn written_to_guest_memory() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        setup_mptable(&mem, 4).unwrap();
        let mut table = vec![0u8; table_size(4)];
        mem.read_slice(&mut table, GuestAddress(MPTABLE_START))
            .unwrap();
        assert_eq!(parse(&table, MPTABLE_START), (4, 0));

        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        assert!(matches!(
            setup_mptable(&small, 1),
            Err(Error::GuestMemory { .. })
        ));
    }
}
