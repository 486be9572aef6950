//! The PC devices a microVM keeps: COM1, the i8042 reset line and the
//! boot-timer device, with their conventional addresses.
//!
//! COM1 and the i8042 raise their interrupt (and reset) lines through any
//! vm-superio [`Trigger`](crate::trigger::Trigger), as vm-superio's own
//! devices do; [`EventTrigger`](crate::trigger::EventTrigger), an eventfd a
//! VMM registers as an irqfd, is the default.
//!
//! Snapshots: COM1 ([`SerialState`]) and the i8042 ([`I8042State`]) give
//! their state as plain data and are rebuilt from it with the host's lines.
//! The boot timer has no state worth keeping: it only reports the first
//! boot, which a restored guest is past.

pub mod boot_timer;
pub mod i8042;
pub mod serial;
mod serial_state;

pub use boot_timer::{BootTime, BootTimer, StartTime};
pub use i8042::{I8042Counters, I8042State, I8042};
pub use serial::{Serial, SerialCounters, SerialInput, StdinReader};
pub use serial_state::{SerialState, UartState};

/// COM1 I/O port base.
pub const COM1_PORT: u64 = 0x3f8;
/// Number of COM1 registers.
pub const COM1_PORT_COUNT: u64 = 8;
/// COM1 interrupt line.
pub const COM1_IRQ: u32 = 4;
/// i8042 data port; the command/status port is at offset 4 (0x64).
pub const I8042_PORT: u64 = 0x60;
/// Ports from the data port to the command port, inclusive.
pub const I8042_PORT_COUNT: u64 = 5;
/// i8042 keyboard interrupt line.
pub const I8042_IRQ: u32 = 1;
