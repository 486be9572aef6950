//! Prints the CPUID the first vCPU of a one-vCPU microVM would see on this
//! host: what KVM supports, normalized by ember-cpu. Needs `/dev/kvm`.
//!
//! `cargo run -p ember-cpu --example host_cpuid`

use std::process::ExitCode;

use ember_cpu::cpuid::{host_brand_string, normalize, Topology};
use kvm_bindings::KVM_MAX_CPUID_ENTRIES;
use kvm_ioctls::Kvm;

fn main() -> ExitCode {
    let kvm = match Kvm::new() {
        Ok(kvm) => kvm,
        Err(e) => {
            eprintln!("host_cpuid: cannot open /dev/kvm: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut cpuid = match kvm.get_supported_cpuid(KVM_MAX_CPUID_ENTRIES) {
        Ok(cpuid) => cpuid,
        Err(e) => {
            eprintln!("host_cpuid: KVM_GET_SUPPORTED_CPUID failed: {e}");
            return ExitCode::FAILURE;
        }
    };
    let topology = Topology {
        vcpu_index: 0,
        vcpu_count: 1,
        threads_per_core: 1,
    };
    if let Err(e) = normalize(&mut cpuid, topology, &host_brand_string()) {
        eprintln!("host_cpuid: {e}");
        return ExitCode::FAILURE;
    }
    println!("function   index    eax      ebx      ecx      edx");
    for e in cpuid.as_slice() {
        println!(
            "{:#010x} {:<8} {:08x} {:08x} {:08x} {:08x}",
            e.function, e.index, e.eax, e.ebx, e.ecx, e.edx
        );
    }
    ExitCode::SUCCESS
}
