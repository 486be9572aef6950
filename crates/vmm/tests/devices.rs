//! Whole-VM device tests on KVM: serial output and input, the boot timer, the
//! i8042 reset, an instruction KVM cannot emulate, and stopping a parked guest.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::cast_possible_truncation,
    missing_docs
)]

mod common;

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use common::{run_vm, Capture, Guest};
use ember_test_guests::{ELF64_PATH, PVH_PATH};
use ember_vmm::{build, ExitReason, SerialInput};

#[test]
fn serial_input_round_trips() {
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    host.write_all(b"hello from the host\n").unwrap();
    let run = Guest::new(ELF64_PATH, "echo")
        .input(SerialInput::Reader(Box::new(guest_end)))
        .run();
    run.assert_clean_reset();
    assert!(run.output.contains("echo: ready"), "{}", run.output);
    assert_eq!(
        run.lines("echo=").first().copied(),
        Some("echo=hello from the host")
    );
}

#[test]
fn serial_input_longer_than_the_fifo_is_not_lost() {
    let (mut host, guest_end) = UnixStream::pair().unwrap();
    let line: String = (0..150)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    host.write_all(format!("{line}\n").as_bytes()).unwrap();
    let run = Guest::new(PVH_PATH, "echo")
        .input(SerialInput::Reader(Box::new(guest_end)))
        .run();
    run.assert_clean_reset();
    assert_eq!(
        run.lines("echo=").first().copied(),
        Some(format!("echo={line}").as_str())
    );
}

#[test]
fn boot_timer_reports_the_signal() {
    let run = Guest::new(ELF64_PATH, "boottimer").run();
    run.assert_clean_reset();
    assert!(run.output.contains("boottimer: signalled"));
    let time = run.boot_time.expect("the boot timer saw the signal");
    assert!(time.wall_us > 0);
}

#[test]
fn i8042_reset_ends_the_vm() {
    let run = Guest::new(PVH_PATH, "reset").run();
    assert!(
        matches!(run.result, Ok(ExitReason::Reset)),
        "{:?}",
        run.result
    );
    assert_eq!(ExitReason::Reset.exit_code(), 0);
    assert!(run.output.contains("reset: now"));
}

#[test]
fn unsupported_instruction_is_an_internal_error_with_rip() {
    let run = Guest::new(ELF64_PATH, "badinsn").run();
    let err = run.result.expect_err("the VM must fail");
    let message = err.to_string();
    assert!(message.contains("KVM internal error"), "{message}");
    let rip = match err {
        ember_vmm::Error::Cpu(ember_cpu::Error::InternalError { rip, vcpu, .. }) => {
            assert_eq!(vcpu, 0);
            rip
        }
        other => panic!("unexpected error {other}"),
    };
    assert!(message.contains(&format!("{rip:#x}")), "{message}");
    assert!(
        (0x10_0000..0x11_0000).contains(&rip),
        "RIP {rip:#x} is in the guest image"
    );
    assert!(run.output.contains("badinsn: now"));
    assert!(!run.output.contains("survived"));
}

#[test]
fn parked_guest_is_stopped_on_request() {
    let capture = Capture::default();
    let vm = build(Guest::new(ELF64_PATH, "hlt").vcpus(2).config(&capture)).unwrap();
    let run = run_vm(vm, &capture, Duration::from_secs(2));
    assert!(
        matches!(run.result, Ok(ExitReason::Stopped)),
        "{:?}",
        run.result
    );
    assert!(run.output.contains("hlt: parked"), "{}", run.output);
}

#[test]
fn unknown_scenario_still_resets() {
    let run = Guest::new(ELF64_PATH, "no-such-thing").run();
    assert!(matches!(run.result, Ok(ExitReason::Reset)));
    assert!(run.output.contains("guest: unknown scenario no-such-thing"));
}
