//! Whole-VM boot tests on KVM: each boot protocol (ELF 64-bit entry, PVH,
//! bzImage) boots the test guest, which reads back what the VMM told it.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use common::{fnv1a, hex, Guest};
use ember_test_guests::{BZIMAGE_PATH, ELF64_PATH, PVH_PATH};

const MIB: u64 = 1 << 20;
/// RAM the e820 map leaves out below 1 MiB (the EBDA and the legacy hole).
const LEGACY_HOLE: u64 = 0x10_0000 - 0x9_fc00;

fn initrd_file(len: usize) -> (tempfile::TempDir, std::path::PathBuf, Vec<u8>) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("initrd.img");
    let data: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    std::fs::write(&path, &data).unwrap();
    (dir, path, data)
}

/// Boots `kernel` with `mem_mib` of RAM and an initrd, and checks every value
/// the guest reads back from the boot protocol.
fn check_boot_info(kernel: &'static str, protocol: &str, mem_mib: u64) {
    let (_dir, initrd, data) = initrd_file(3000);
    let run = Guest::new(kernel, "bootinfo")
        .mem_mib(mem_mib)
        .initrd(initrd)
        .run();
    run.assert_clean_reset();
    assert_eq!(
        run.field("guest: start", "protocol").as_deref(),
        Some(protocol)
    );
    assert_eq!(
        run.lines("cmdline=").first().copied(),
        Some("cmdline=console=ttyS0 ember.test=bootinfo")
    );

    let total = hex(&run.field("mem_total=", "mem_total").unwrap());
    assert_eq!(total, mem_mib * MIB - LEGACY_HOLE, "{}", run.output);
    let e820 = run.lines("e820 ");
    let expected_entries = if mem_mib > 3072 { 3 } else { 2 };
    assert_eq!(e820.len(), expected_entries, "{}", run.output);
    if mem_mib > 3072 {
        let high = e820[2];
        assert_eq!(
            common::value_of(high, "addr").as_deref(),
            Some("0x100000000")
        );
        assert_eq!(
            hex(&common::value_of(high, "size").unwrap()),
            (mem_mib - 3072) * MIB
        );
    }

    let initrd_addr = hex(&run.field("initrd ", "addr").unwrap());
    assert_eq!(
        hex(&run.field("initrd ", "size").unwrap()),
        data.len() as u64
    );
    assert_eq!(
        hex(&run.field("initrd ", "sum").unwrap()),
        u64::from(fnv1a(&data))
    );
    assert_eq!(initrd_addr % 4096, 0);
    // Highest it may end: the end of low RAM, and for the bzImage also its
    // header's initrd_addr_max (0x7fffffff).
    let mut limit = mem_mib.min(3072) * MIB;
    if kernel == BZIMAGE_PATH {
        limit = limit.min(0x8000_0000);
    }
    assert!(initrd_addr + data.len() as u64 <= limit);
    assert!(
        initrd_addr + 4096 + data.len() as u64 > limit,
        "placed high"
    );

    let loader = run.field("loader ", "type").unwrap();
    let expected_loader = if protocol == "pvh" { "pvh" } else { "0xff" };
    assert_eq!(loader, expected_loader);
}

#[test]
fn elf64_boot_128mib() {
    check_boot_info(ELF64_PATH, "linux64", 128);
}

#[test]
fn elf64_boot_1gib() {
    check_boot_info(ELF64_PATH, "linux64", 1024);
}

#[test]
fn elf64_boot_4gib_crosses_the_mmio_gap() {
    check_boot_info(ELF64_PATH, "linux64", 4096);
}

#[test]
fn pvh_boot_128mib() {
    check_boot_info(PVH_PATH, "pvh", 128);
}

#[test]
fn pvh_boot_1gib() {
    check_boot_info(PVH_PATH, "pvh", 1024);
}

#[test]
fn pvh_boot_4gib_crosses_the_mmio_gap() {
    check_boot_info(PVH_PATH, "pvh", 4096);
}

#[test]
fn bzimage_boot_128mib() {
    check_boot_info(BZIMAGE_PATH, "linux64", 128);
}

#[test]
fn bzimage_boot_1gib() {
    check_boot_info(BZIMAGE_PATH, "linux64", 1024);
}

#[test]
fn bzimage_boot_4gib_crosses_the_mmio_gap() {
    check_boot_info(BZIMAGE_PATH, "linux64", 4096);
}

#[test]
fn boot_without_initrd() {
    let run = Guest::new(ELF64_PATH, "bootinfo").run();
    run.assert_clean_reset();
    assert!(run.output.contains("initrd none"), "{}", run.output);
}

/// The MP table and CPUID describe every vCPU.
fn check_vcpus(kernel: &'static str, vcpus: u8) {
    let run = Guest::new(kernel, "bootinfo").vcpus(vcpus).run();
    run.assert_clean_reset();
    assert_eq!(
        hex(&run.field("mptable ", "cpus").unwrap()),
        u64::from(vcpus),
        "{}",
        run.output
    );
    assert_eq!(run.field("mptable ", "bsp").as_deref(), Some("0x0"));
    assert_eq!(run.field("cpuid ", "hv_bit").as_deref(), Some("0x1"));
    assert_eq!(run.field("cpuid ", "hv_sig").as_deref(), Some("KVMKVMKVM"));
    assert!(hex(&run.field("cpuid ", "hv_max").unwrap()) >= 0x4000_0001);
    let leaf1_ebx = hex(&run.field("cpuid ", "leaf1_ebx").unwrap());
    assert_eq!(
        (leaf1_ebx >> 16) & 0xff,
        u64::from(vcpus),
        "logical processors"
    );
    assert_eq!(leaf1_ebx >> 24, 0, "the BSP has APIC ID 0");
    assert_eq!(
        hex(&run.field("cpuid ", "topo_cpus").unwrap()),
        u64::from(vcpus),
        "leaf 0xB core level"
    );
    let brand = run.lines("brand=")[0].trim_start_matches("brand=");
    let host = ember_cpu::cpuid::host_brand_string();
    let host = String::from_utf8_lossy(&host);
    assert_eq!(brand, host.trim_start().trim_end_matches('\0').trim_end());
}

#[test]
fn one_vcpu() {
    check_vcpus(ELF64_PATH, 1);
}

#[test]
fn two_vcpus() {
    check_vcpus(PVH_PATH, 2);
}

#[test]
fn four_vcpus() {
    check_vcpus(BZIMAGE_PATH, 4);
}
