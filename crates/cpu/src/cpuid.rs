//! CPUID as a microVM presents it: what the host's KVM supports, with the
//! hypervisor bit set, a topology of one package holding N vCPUs as cores of
//! one or (with SMT) two threads, no performance monitoring, and the host's
//! brand string.

use kvm_bindings::{kvm_cpuid_entry2, CpuId, KVM_CPUID_FLAG_SIGNIFCANT_INDEX};

use crate::{Error, Result};

/// Leaf 1 ECX: running under a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: more than one logical processor per package.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Leaf 0x80000001 ECX (AMD): core multi-processing legacy mode.
const EXT1_ECX_CMP_LEGACY: u32 = 1 << 1;
/// Leaf 0xB level types.
const LEVEL_TYPE_SMT: u32 = 1;
const LEVEL_TYPE_CORE: u32 = 2;
/// The three brand-string leaves.
const BRAND_LEAVES: [u32; 3] = [0x8000_0002, 0x8000_0003, 0x8000_0004];
/// Brand used when the host reports none.
const FALLBACK_BRAND: &str = "Ember Virtual CPU";

/// CPU vendor, which decides the topology leaves to fill in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Vendor {
    /// "GenuineIntel".
    Intel,
    /// "AuthenticAMD" (and Hygon).
    Amd,
    /// Anything else: only vendor-neutral leaves are touched.
    Other,
}

impl Vendor {
    /// The vendor named by leaf 0 of `cpuid`.
    pub fn of(cpuid: &CpuId) -> Vendor {
        let Some(leaf0) = find(cpuid, 0, 0) else {
            return Vendor::Other;
        };
        let mut sig = [0u8; 12];
        sig[..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
        sig[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
        sig[8..].copy_from_slice(&leaf0.ecx.to_le_bytes());
        match &sig {
            b"GenuineIntel" => Vendor::Intel,
            b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
            _ => Vendor::Other,
        }
    }
}

/// Number of APIC-ID bits needed to number `count` logical processors.
fn id_bits(count: u8) -> u32 {
    let count = u32::from(count.max(1));
    u32::BITS - (count - 1).leading_zeros()
}

fn find(cpuid: &CpuId, function: u32, index: u32) -> Option<&kvm_cpuid_entry2> {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == function && e.index == index)
}

fn max_leaf(cpuid: &CpuId, base: u32) -> u32 {
    find(cpuid, base, 0).map_or(0, |e| e.eax)
}

/// Sets the registers of (function, index), adding the entry if it is missing.
fn upsert(cpuid: &mut CpuId, entry: kvm_cpuid_entry2) -> Result<()> {
    if let Some(existing) = cpuid
        .as_mut_slice()
        .iter_mut()
        .find(|e| e.function == entry.function && e.index == entry.index)
    {
        *existing = entry;
        return Ok(());
    }
    cpuid.push(entry).map_err(|_| Error::FamList("CPUID"))
}

/// The host's processor brand string (48 bytes, NUL padded), or Ember's own when
/// the host has none.
pub fn host_brand_string() -> [u8; 48] {
    let mut brand = [0u8; 48];
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext >= 0x8000_0004 {
        for (i, leaf) in BRAND_LEAVES.iter().enumerate() {
            let r = std::arch::x86_64::__cpuid(*leaf);
            for (j, reg) in [r.eax, r.ebx, r.ecx, r.edx].iter().enumerate() {
                let at = i * 16 + j * 4;
                brand[at..at + 4].copy_from_slice(&reg.to_le_bytes());
            }
        }
    }
    if brand.iter().all(|b| *b == 0 || *b == b' ') {
        brand = [0u8; 48];
        brand[..FALLBACK_BRAND.len()].copy_from_slice(FALLBACK_BRAND.as_bytes());
    }
    brand
}

/// Guest-physical address width of the host, from CPUID leaf 0x80000008.
pub fn host_phys_addr_bits() -> u8 {
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < 0x8000_0008 {
        return 36;
    }
    let eax = std::arch::x86_64::__cpuid(0x8000_0008).eax;
    (eax & 0xff) as u8
}

/// What the guest should see about its place in the VM.
#[derive(Clone, Copy, Debug)]
pub struct Topology {
    /// This vCPU's index, which is also its APIC ID.
    pub vcpu_index: u8,
    /// vCPUs in the VM.
    pub vcpu_count: u8,
    /// Threads per core: 2 with SMT, else 1 (the APIC ID's low bit is then
    /// the thread).
    pub threads_per_core: u8,
}

impl Topology {
    /// Threads per core as the guest sees them: never more than the vCPUs.
    fn threads(&self) -> u32 {
        u32::from(self.threads_per_core.clamp(1, self.vcpu_count.max(1)))
    }
}

/// Turns the CPUID KVM supports into the CPUID of one vCPU: hypervisor bit,
/// APIC ID and topology for `topology`, no PMU, and `brand` as the brand string.
pub fn normalize(cpuid: &mut CpuId, topology: Topology, brand: &[u8; 48]) -> Result<()> {
    let shape = Shape::of(topology);
    let vendor = Vendor::of(cpuid);
    for entry in cpuid.as_mut_slice() {
        match vendor {
            Vendor::Amd => normalize_amd_leaf(entry, &shape),
            Vendor::Intel => normalize_intel_leaf(entry, &shape),
            Vendor::Other => {}
        }
        normalize_common_leaf(entry, &shape);
    }
    if max_leaf(cpuid, 0) >= 0xb {
        write_topology_leaves(cpuid, &shape)?;
    }
    if max_leaf(cpuid, 0x8000_0000) >= 0x8000_0004 {
        write_brand(cpuid, brand)?;
    }
    Ok(())
}

/// The numbers a [`Topology`] puts in CPUID.
struct Shape {
    /// This vCPU's APIC ID.
    apic_id: u32,
    /// vCPUs in the VM (at least 1).
    count: u32,
    /// Threads per core as the guest sees them.
    threads: u32,
    /// APIC ID bits that number the threads of a core.
    thread_bits: u32,
    /// APIC ID bits that number the vCPUs of the package.
    package_bits: u32,
}

impl Shape {
    fn of(topology: Topology) -> Shape {
        let threads = topology.threads();
        Shape {
            apic_id: u32::from(topology.vcpu_index),
            count: u32::from(topology.vcpu_count.max(1)),
            threads,
            thread_bits: id_bits(u8::try_from(threads).unwrap_or(1)),
            package_bits: id_bits(topology.vcpu_count),
        }
    }
}

/// Leaves every vendor's vCPU gets the same way: leaf 1's APIC ID, count and
/// hypervisor bit; no thermal/power management and no performance monitoring.
fn normalize_common_leaf(entry: &mut kvm_cpuid_entry2, shape: &Shape) {
    match entry.function {
        1 => {
            entry.ebx =
                (entry.ebx & 0x0000_ffff) | (shape.apic_id << 24) | (shape.count.min(255) << 16);
            entry.ecx |= LEAF1_ECX_HYPERVISOR;
            if shape.count > 1 {
                entry.edx |= LEAF1_EDX_HTT;
            } else {
                entry.edx &= !LEAF1_EDX_HTT;
            }
        }
        6 => {
            entry.eax &= 1 << 2; // keep ARAT: the APIC timer runs in all states
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        0xa => {
            entry.eax = 0;
            entry.ebx = 0;
            entry.ecx = 0;
            entry.edx = 0;
        }
        _ => {}
    }
}

/// Intel's deterministic cache parameters (leaf 4): the sharing of each cache.
fn normalize_intel_leaf(entry: &mut kvm_cpuid_entry2, shape: &Shape) {
    if entry.function != 4 || entry.eax & 0x1f == 0 {
        return;
    }
    let cache_level = (entry.eax >> 5) & 0x7;
    let sharing = if cache_level >= 3 {
        shape.count
    } else {
        shape.threads
    };
    let cores = shape.count.div_ceil(shape.threads);
    entry.eax =
        (entry.eax & 0x3fff) | ((cores - 1).min(63) << 26) | (((sharing - 1) & 0xfff) << 14);
}

/// AMD's legacy core count, package size and compute-unit leaves.
fn normalize_amd_leaf(entry: &mut kvm_cpuid_entry2, shape: &Shape) {
    match entry.function {
        0x8000_0001 => {
            if shape.count > 1 {
                entry.ecx |= EXT1_ECX_CMP_LEGACY;
            } else {
                entry.ecx &= !EXT1_ECX_CMP_LEGACY;
            }
        }
        0x8000_0008 => {
            entry.ecx = (entry.ecx & !0xf0ff) | (shape.package_bits << 12) | (shape.count - 1);
        }
        0x8000_001e => {
            entry.eax = shape.apic_id;
            // Compute unit = core, with its threads.
            entry.ebx = ((shape.threads - 1) << 8) | ((shape.apic_id >> shape.thread_bits) & 0xff);
            entry.ecx = 0; // one node
            entry.edx = 0;
        }
        _ => {}
    }
}

/// The extended topology leaf (0xb): the SMT and core levels.
fn write_topology_leaves(cpuid: &mut CpuId, shape: &Shape) -> Result<()> {
    let level = |index: u32, shift: u32, procs: u32, kind: u32| kvm_cpuid_entry2 {
        function: 0xb,
        index,
        flags: KVM_CPUID_FLAG_SIGNIFCANT_INDEX,
        eax: shift,
        ebx: procs,
        ecx: (kind << 8) | index,
        edx: shape.apic_id,
        ..Default::default()
    };
    upsert(
        cpuid,
        level(0, shape.thread_bits, shape.threads, LEVEL_TYPE_SMT),
    )?;
    upsert(
        cpuid,
        level(1, shape.package_bits, shape.count, LEVEL_TYPE_CORE),
    )?;
    upsert(cpuid, level(2, 0, 0, 0))
}

/// The brand string leaves (0x8000_0002 to 0x8000_0004).
fn write_brand(cpuid: &mut CpuId, brand: &[u8; 48]) -> Result<()> {
    for (i, function) in BRAND_LEAVES.iter().enumerate() {
        let reg = |j: usize| {
            let at = i * 16 + j * 4;
            u32::from_le_bytes([brand[at], brand[at + 1], brand[at + 2], brand[at + 3]])
        };
        upsert(
            cpuid,
            kvm_cpuid_entry2 {
                function: *function,
                index: 0,
                eax: reg(0),
                ebx: reg(1),
                ecx: reg(2),
                edx: reg(3),
                ..Default::default()
            },
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32, regs: [u32; 4]) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: regs[0],
            ebx: regs[1],
            ecx: regs[2],
            edx: regs[3],
            ..Default::default()
        }
    }

    fn amd_like() -> CpuId {
        // "AuthenticAMD" = ebx "Auth", edx "enti", ecx "cAMD".
        CpuId::from_entries(&[
            entry(0, 0, [0x1c, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, [0x00a1_0f11, 0x0002_0800, 0x0120_2000, 0x078b_fbff]),
            entry(6, 0, [0x4, 0x1, 0x1, 0x1]),
            entry(0xa, 0, [0x7, 0x7, 0x7, 0x7]),
            entry(0xb, 0, [0; 4]),
            entry(0x8000_0000, 0, [0x8000_0021, 0, 0, 0]),
            entry(0x8000_0001, 0, [0, 0, 0x0040_0393, 0]),
            entry(0x8000_0008, 0, [0x3030, 0, 0x7001, 0]),
        ])
        .unwrap()
    }

    fn regs(cpuid: &CpuId, function: u32, index: u32) -> [u32; 4] {
        let e = find(cpuid, function, index).expect("leaf present");
        [e.eax, e.ebx, e.ecx, e.edx]
    }

    #[test]
    fn vendor_is_read_from_leaf0() {
        assert_eq!(Vendor::of(&amd_like()), Vendor::Amd);
        assert_eq!(Vendor::of(&CpuId::new(0).unwrap()), Vendor::Other);
    }

    #[test]
    fn topology_and_hypervisor_bit() {
        let mut cpuid = amd_like();
        let brand = host_brand_string();
        normalize(
            &mut cpuid,
            Topology {
                vcpu_index: 3,
                vcpu_count: 4,
                threads_per_core: 1,
            },
            &brand,
        )
        .unwrap();
        let [_, ebx, ecx, edx] = regs(&cpuid, 1, 0);
        assert_eq!(ebx >> 24, 3, "APIC ID");
        assert_eq!((ebx >> 16) & 0xff, 4, "logical processors");
        assert_eq!(ebx & 0xffff, 0x0800, "CLFLUSH size kept");
        assert_ne!(ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(edx & LEAF1_EDX_HTT, 0);
        assert_eq!(regs(&cpuid, 0xb, 0), [0, 1, 0x100, 3]);
        assert_eq!(regs(&cpuid, 0xb, 1), [2, 4, 0x201, 3]);
        assert_eq!(regs(&cpuid, 0xb, 2), [0, 0, 2, 3]);
        assert_eq!(regs(&cpuid, 0xa, 0), [0; 4]);
        assert_eq!(regs(&cpuid, 6, 0), [4, 0, 0, 0]);
        assert_eq!(regs(&cpuid, 0x8000_0008, 0)[2] & 0xf0ff, (2 << 12) | 3);
        assert_ne!(regs(&cpuid, 0x8000_0001, 0)[2] & EXT1_ECX_CMP_LEGACY, 0);
    }

    #[test]
    fn smt_makes_pairs_of_threads() {
        let mut cpuid = CpuId::from_entries(&[
            entry(0, 0, [0x1c, 0x6874_7541, 0x444d_4163, 0x6974_6e65]),
            entry(1, 0, [0, 0, 0, 0]),
            entry(0xb, 0, [0; 4]),
            entry(0x8000_0000, 0, [0x8000_001e, 0, 0, 0]),
            entry(0x8000_001e, 0, [0; 4]),
        ])
        .unwrap();
        normalize(
            &mut cpuid,
            Topology {
                vcpu_index: 3,
                vcpu_count: 4,
                threads_per_core: 2,
            },
            &host_brand_string(),
        )
        .unwrap();
        assert_eq!(regs(&cpuid, 0xb, 0), [1, 2, 0x100, 3], "two threads a core");
        assert_eq!(
            regs(&cpuid, 0xb, 1),
            [2, 4, 0x201, 3],
            "four in the package"
        );
        assert_eq!(
            regs(&cpuid, 0x8000_001e, 0)[..2],
            [3, 0x101],
            "core 1, 2 threads"
        );
    }

    #[test]
    fn intel_caches_are_shared_by_the_threads_of_a_core() {
        // "GenuineIntel" = ebx "Genu", edx "ineI", ecx "ntel".
        let vendor = entry(0, 0, [0xb, 0x756e_6547, 0x6c65_746e, 0x4965_6e69]);
        let l1 = entry(4, 0, [0x21, 0, 0, 0]);
        let l3 = entry(4, 3, [0x63, 0, 0, 0]);
        let mut cpuid = CpuId::from_entries(&[vendor, l1, l3]).unwrap();
        let topology = Topology {
            vcpu_index: 0,
            vcpu_count: 4,
            threads_per_core: 2,
        };
        normalize(&mut cpuid, topology, &host_brand_string()).unwrap();
        let [l1_eax, ..] = regs(&cpuid, 4, 0);
        assert_eq!((l1_eax >> 14) & 0xfff, 1, "L1 shared by 2 threads");
        assert_eq!(l1_eax >> 26, 1, "2 cores");
        assert_eq!(
            (regs(&cpuid, 4, 3)[0] >> 14) & 0xfff,
            3,
            "L3 shared by all 4"
        );
    }

    #[test]
    fn single_vcpu_has_no_htt() {
        let mut cpuid = amd_like();
        normalize(
            &mut cpuid,
            Topology {
                vcpu_index: 0,
                vcpu_count: 1,
                threads_per_core: 2,
            },
            &host_brand_string(),
        )
        .unwrap();
        assert_eq!(regs(&cpuid, 1, 0)[3] & LEAF1_EDX_HTT, 0);
        assert_eq!(regs(&cpuid, 0xb, 1), [0, 1, 0x201, 0]);
    }

    #[test]
    fn brand_string_is_written() {
        let mut cpuid = amd_like();
        let mut brand = [0u8; 48];
        brand[..9].copy_from_slice(b"Test CPU!");
        normalize(
            &mut cpuid,
            Topology {
                vcpu_index: 0,
                vcpu_count: 1,
                threads_per_core: 2,
            },
            &brand,
        )
        .unwrap();
        let first = regs(&cpuid, 0x8000_0002, 0);
        assert_eq!(first[0].to_le_bytes(), *b"Test");
        assert_eq!(first[1].to_le_bytes(), *b" CPU");
        assert_eq!(regs(&cpuid, 0x8000_0004, 0), [0; 4]);
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(id_bits(1), 0);
        assert_eq!(id_bits(2), 1);
        assert_eq!(id_bits(3), 2);
        assert_eq!(id_bits(4), 2);
        assert_eq!(id_bits(5), 3);
        assert_eq!(id_bits(254), 8);
    }

    #[test]
    fn host_helpers_return_sane_values() {
        let bits = host_phys_addr_bits();
        assert!((32..=64).contains(&bits), "{bits}");
        assert!(host_brand_string().iter().any(|b| *b != 0));
    }
}
