//! Boots a kernel with ember-vmm alone: serial on this terminal, the VM's
//! end on the last line. Needs `/dev/kvm`.
//!
//! `cargo run -p ember-vmm --example boot -- VMLINUX [MEM_MIB [CMDLINE]]`

use std::process::ExitCode;

use ember_vmm::signals::TerminationSignals;
use ember_vmm::{build, error_chain, VmConfig};

/// The command line when none is given: serial console, reboot ends the VM.
const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 pci=off";

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let Some(kernel) = args.next() else {
        eprintln!("usage: boot VMLINUX [MEM_MIB [CMDLINE]]");
        return ExitCode::from(2);
    };
    let mem_size_mib = match args.next().map(|mib| mib.parse()) {
        None => 128,
        Some(Ok(mib)) => mib,
        Some(Err(e)) => {
            eprintln!("boot: MEM_MIB: {e}");
            return ExitCode::from(2);
        }
    };
    let cmdline = args.next().unwrap_or_else(|| DEFAULT_CMDLINE.to_owned());
    let mut config = VmConfig::new(kernel, cmdline);
    config.mem_size_mib = mem_size_mib;
    let run = TerminationSignals::install().and_then(|signals| build(config)?.run(Some(&signals)));
    match run {
        Ok(reason) => {
            eprintln!("boot: the VM ended: {reason:?}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("boot: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}
