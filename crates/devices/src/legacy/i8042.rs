//! The i8042 keyboard controller, as much as a microVM needs: the CPU reset
//! command (0xFE on port 0x64) ends the VM, the controller commands a Linux
//! driver issues during probing are answered, and key sequences (Ctrl-Alt-Del)
//! can be injected into the output buffer with an IRQ 1 for the guest to read.
//!
//! vm-superio's i8042 only implements the reset, so this device replaces it;
//! like vm-superio's devices, it raises its lines through any
//! [`vm_superio::Trigger`] ([`EventTrigger`], an eventfd, by default).

use std::collections::VecDeque;
use std::fmt;

use vm_superio::Trigger;

use crate::bus::ByteRegisters;
use crate::trigger::EventTrigger;

/// Data port offset (port 0x60).
const DATA: u8 = 0;
/// Status (read) and command (write) port offset (port 0x64).
const COMMAND: u8 = 4;

/// Status: output buffer full.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Status: system flag, set once the self test passed.
const STATUS_SYSTEM: u8 = 0x04;
/// Status: last write was a command.
const STATUS_LAST_WAS_COMMAND: u8 = 0x08;
/// Status: keyboard not inhibited.
const STATUS_UNLOCKED: u8 = 0x10;

/// Command byte: raise IRQ 1 when the output buffer fills.
const CONTROL_KBD_INTERRUPT: u8 = 0x01;
/// Command byte: keyboard clock disabled.
const CONTROL_KBD_DISABLED: u8 = 0x10;
/// Command byte after reset: interrupts on, system flag, translation on.
const CONTROL_DEFAULT: u8 = 0x45;

const CMD_READ_CONTROL: u8 = 0x20;
const CMD_WRITE_CONTROL: u8 = 0x60;
const CMD_DISABLE_AUX: u8 = 0xa7;
const CMD_ENABLE_AUX: u8 = 0xa8;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_INTERFACE_TEST: u8 = 0xab;
const CMD_DISABLE_KBD: u8 = 0xad;
const CMD_ENABLE_KBD: u8 = 0xae;
const CMD_READ_INPUT_PORT: u8 = 0xc0;
const CMD_READ_OUTPUT_PORT: u8 = 0xd0;
const CMD_WRITE_OUTPUT_PORT: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

const SELF_TEST_PASSED: u8 = 0x55;
const KBD_ACK: u8 = 0xfa;
const KBD_SELF_TEST_PASSED: u8 = 0xaa;
const KBD_CMD_SET_LEDS: u8 = 0xed;
const KBD_CMD_SCANCODE_SET: u8 = 0xf0;
const KBD_CMD_IDENTIFY: u8 = 0xf2;
const KBD_CMD_TYPEMATIC: u8 = 0xf3;
const KBD_CMD_RESET: u8 = 0xff;
/// Keyboard identification bytes of an MF2 keyboard.
const KBD_ID: [u8; 2] = [0xab, 0x83];

/// Ctrl-Alt-Del in scancode set 2, as Firecracker sends it: the three make
/// codes (Ctrl, Alt, the extended Delete) and no break codes. Linux's atkbd
/// acts on the make codes, so the guest reboots without seeing the keys released.
pub const CTRL_ALT_DEL: [u8; 4] = [0x14, 0x11, 0xe0, 0x71];

/// Bytes the output buffer holds; further bytes are refused, not dropped.
pub const OUTPUT_BUFFER_SIZE: usize = 16;

/// Why a key sequence could not be injected.
#[derive(Debug, PartialEq, Eq)]
pub struct BufferFull;

impl fmt::Display for BufferFull {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("the i8042 output buffer is full; the guest is not reading its keyboard")
    }
}

impl std::error::Error for BufferFull {}

/// What the controller remembers, as plain data: what [`I8042::state`]
/// gives and [`I8042::from_state`] rebuilds the controller from.
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct I8042State {
    /// Status register.
    pub status: u8,
    /// Command ("control") byte.
    pub control: u8,
    /// Bytes waiting for the guest on the data port.
    pub output: VecDeque<u8>,
    /// A controller command waiting for its data byte (0x60, 0xD1).
    pub pending_command: Option<u8>,
    /// A keyboard command waiting for its parameter (0xED, 0xF0, 0xF3).
    pub pending_keyboard_command: Option<u8>,
    /// Last byte read from the data port, returned again when the buffer is empty.
    pub last_output: u8,
    /// The counters.
    pub counters: I8042Counters,
}

impl Default for I8042State {
    fn default() -> Self {
        I8042State {
            status: STATUS_UNLOCKED,
            control: CONTROL_DEFAULT,
            output: VecDeque::with_capacity(OUTPUT_BUFFER_SIZE),
            pending_command: None,
            pending_keyboard_command: None,
            last_output: 0,
            counters: I8042Counters::default(),
        }
    }
}

/// Counters for metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct I8042Counters {
    /// Reset requests from the guest.
    pub resets: u64,
    /// Keys injected by the host.
    pub keys_injected: u64,
    /// Interrupts that could not be raised.
    pub missed_interrupts: u64,
}

/// The i8042 on ports 0x60-0x64, raising its reset and interrupt lines
/// through `T`.
///
/// # Example
///
/// The guest resets the CPU through the controller (command 0xFE on port
/// 0x64), and the host injects Ctrl-Alt-Del for the guest to read; the
/// lines here are plain counters:
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::sync::Arc;
///
/// use ember_devices::legacy::i8042::CTRL_ALT_DEL;
/// use ember_devices::legacy::I8042;
/// use ember_devices::trigger::Trigger;
/// use ember_devices::ByteRegisters;
///
/// /// A line that counts how often it was raised.
/// #[derive(Clone, Default)]
/// struct Counter(Arc<AtomicU32>);
///
/// impl Trigger for Counter {
///     type E = ();
///     fn trigger(&self) -> Result<(), ()> {
///         self.0.fetch_add(1, Ordering::Relaxed);
///         Ok(())
///     }
/// }
///
/// let (reset, irq1) = (Counter::default(), Counter::default());
/// let mut i8042 = I8042::new(reset.clone(), irq1.clone());
/// i8042.write_register(4, 0xfe);
/// assert_eq!(reset.0.load(Ordering::Relaxed), 1);
///
/// i8042.send_ctrl_alt_del().unwrap();
/// assert!(irq1.0.load(Ordering::Relaxed) > 0);
/// let keys: Vec<u8> = CTRL_ALT_DEL.iter().map(|_| i8042.read_register(0)).collect();
/// assert_eq!(keys, CTRL_ALT_DEL);
/// ```
pub struct I8042<T = EventTrigger> {
    reset: T,
    interrupt: T,
    state: I8042State,
}

impl<T> fmt::Debug for I8042<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl<T: Trigger> I8042<T> {
    /// A controller that fires `reset` when the guest resets the CPU through it
    /// and `interrupt` (IRQ 1) when keyboard data is waiting.
    pub fn new(reset: T, interrupt: T) -> I8042<T> {
        I8042::from_state(&I8042State::default(), reset, interrupt)
    }

    /// A controller in the saved `state` (bytes past [`OUTPUT_BUFFER_SIZE`]
    /// in its output buffer are dropped), with the host's `reset` and
    /// `interrupt` lines as [`I8042::new`]. No interrupt is raised: one
    /// pending for waiting bytes is in the interrupt controller's state.
    pub fn from_state(state: &I8042State, reset: T, interrupt: T) -> I8042<T> {
        let mut state = state.clone();
        state.output.truncate(OUTPUT_BUFFER_SIZE);
        if state.output.is_empty() {
            state.status &= !STATUS_OUTPUT_FULL;
        } else {
            state.status |= STATUS_OUTPUT_FULL;
        }
        I8042 {
            reset,
            interrupt,
            state,
        }
    }

    /// The controller's state.
    pub fn state(&self) -> &I8042State {
        &self.state
    }

    /// The counters.
    pub fn counters(&self) -> I8042Counters {
        self.state.counters
    }

    /// Queues Ctrl-Alt-Del for the guest.
    pub fn send_ctrl_alt_del(&mut self) -> Result<(), BufferFull> {
        self.inject_keys(&CTRL_ALT_DEL)
    }

    /// Queues scancodes for the guest, all or none.
    pub fn inject_keys(&mut self, scancodes: &[u8]) -> Result<(), BufferFull> {
        if self.state.output.len() + scancodes.len() > OUTPUT_BUFFER_SIZE {
            return Err(BufferFull);
        }
        for code in scancodes {
            self.push_output(*code);
        }
        self.state.counters.keys_injected += scancodes.len() as u64;
        Ok(())
    }

    fn push_output(&mut self, byte: u8) {
        if self.state.output.len() >= OUTPUT_BUFFER_SIZE {
            return;
        }
        self.state.output.push_back(byte);
        self.state.status |= STATUS_OUTPUT_FULL;
        self.raise_interrupt();
    }

    fn raise_interrupt(&mut self) {
        if self.state.control & CONTROL_KBD_INTERRUPT != 0 && self.interrupt.trigger().is_err() {
            self.state.counters.missed_interrupts += 1;
        }
    }

    fn read_data(&mut self) -> u8 {
        if let Some(byte) = self.state.output.pop_front() {
            self.state.last_output = byte;
        }
        if self.state.output.is_empty() {
            self.state.status &= !STATUS_OUTPUT_FULL;
        } else {
            self.raise_interrupt();
        }
        self.state.last_output
    }

    fn write_command(&mut self, command: u8) {
        self.state.status |= STATUS_LAST_WAS_COMMAND;
        self.state.pending_command = None;
        match command {
            CMD_READ_CONTROL => self.push_output(self.state.control),
            CMD_WRITE_CONTROL | CMD_WRITE_OUTPUT_PORT => self.state.pending_command = Some(command),
            CMD_SELF_TEST => {
                self.state.status |= STATUS_SYSTEM;
                self.push_output(SELF_TEST_PASSED);
            }
            CMD_INTERFACE_TEST | CMD_READ_INPUT_PORT => self.push_output(0),
            CMD_READ_OUTPUT_PORT => self.push_output(0x01),
            CMD_DISABLE_KBD => self.state.control |= CONTROL_KBD_DISABLED,
            CMD_ENABLE_KBD => self.state.control &= !CONTROL_KBD_DISABLED,
            CMD_DISABLE_AUX | CMD_ENABLE_AUX => {}
            CMD_RESET_CPU => {
                self.state.counters.resets += 1;
                if let Err(e) = self.reset.trigger() {
                    log::error!("i8042: cannot signal the reset: {e:?}");
                }
            }
            other => log::debug!("i8042: ignoring command {other:#x}"),
        }
    }

    fn write_data(&mut self, value: u8) {
        self.state.status &= !STATUS_LAST_WAS_COMMAND;
        match self.state.pending_command.take() {
            Some(CMD_WRITE_CONTROL) => {
                self.state.control = value;
                return;
            }
            Some(CMD_WRITE_OUTPUT_PORT) => {
                // Bit 0 of the output port is the CPU reset line (active low).
                if value & 1 == 0 {
                    self.write_command(CMD_RESET_CPU);
                }
                return;
            }
            _ => {}
        }
        if self.state.pending_keyboard_command.take().is_some() {
            self.push_output(KBD_ACK);
            return;
        }
        match value {
            KBD_CMD_RESET => {
                self.state.output.clear();
                self.push_output(KBD_ACK);
                self.push_output(KBD_SELF_TEST_PASSED);
            }
            KBD_CMD_IDENTIFY => {
                self.push_output(KBD_ACK);
                KBD_ID.iter().for_each(|b| self.push_output(*b));
            }
            KBD_CMD_SET_LEDS | KBD_CMD_SCANCODE_SET | KBD_CMD_TYPEMATIC => {
                self.state.pending_keyboard_command = Some(value);
                self.push_output(KBD_ACK);
            }
            _ => self.push_output(KBD_ACK),
        }
    }
}

impl<T: Trigger + Send> ByteRegisters for I8042<T> {
    fn read_register(&mut self, offset: u8) -> u8 {
        match offset {
            DATA => self.read_data(),
            COMMAND => self.state.status,
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        match offset {
            DATA => self.write_data(value),
            COMMAND => self.write_command(value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    fn device() -> (I8042, EventTrigger, EventTrigger) {
        let reset = EventTrigger::new().unwrap();
        let irq = EventTrigger::new().unwrap();
        let dev = I8042::new(reset.try_clone().unwrap(), irq.try_clone().unwrap());
        (dev, reset, irq)
    }

    fn drain(dev: &mut I8042) -> Vec<u8> {
        let mut out = Vec::new();
        while dev.read_register(COMMAND) & STATUS_OUTPUT_FULL != 0 {
            out.push(dev.read_register(DATA));
        }
        out
    }

    #[test]
    fn reset_command_fires_the_event() {
        let (mut dev, reset, _irq) = device();
        dev.write(4, &[0x01]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]);
        assert!(reset.event_fd().read().is_err(), "no reset yet");
        dev.write(4, &[CMD_RESET_CPU]);
        assert_eq!(reset.event_fd().read().unwrap(), 1);
        assert_eq!(dev.counters().resets, 1);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }

    #[test]
    fn reset_through_the_output_port() {
        let (mut dev, reset, _irq) = device();
        dev.write_register(COMMAND, CMD_WRITE_OUTPUT_PORT);
        dev.write_register(DATA, 0xfe);
        assert_eq!(reset.event_fd().read().unwrap(), 1);
    }

    #[test]
    fn probe_commands_are_answered() {
        let (mut dev, _reset, _irq) = device();
        dev.write_register(COMMAND, CMD_SELF_TEST);
        assert_eq!(drain(&mut dev), vec![SELF_TEST_PASSED]);
        assert_ne!(dev.read_register(COMMAND) & STATUS_SYSTEM, 0);
        dev.write_register(COMMAND, CMD_WRITE_CONTROL);
        dev.write_register(DATA, 0x47);
        dev.write_register(COMMAND, CMD_READ_CONTROL);
        assert_eq!(drain(&mut dev), vec![0x47]);
        dev.write_register(DATA, KBD_CMD_RESET);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_SELF_TEST_PASSED]);
        dev.write_register(DATA, KBD_CMD_SET_LEDS);
        dev.write_register(DATA, 0x07);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, KBD_ACK]);
        dev.write_register(DATA, KBD_CMD_IDENTIFY);
        assert_eq!(drain(&mut dev), vec![KBD_ACK, 0xab, 0x83]);
        dev.write_register(COMMAND, CMD_DISABLE_KBD);
        assert_ne!(dev.state().control & CONTROL_KBD_DISABLED, 0);
        dev.write_register(COMMAND, CMD_ENABLE_KBD);
        assert_eq!(dev.state().control & CONTROL_KBD_DISABLED, 0);
    }

    #[test]
    fn ctrl_alt_del_is_queued_with_an_interrupt() {
        let (mut dev, _reset, irq) = device();
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.event_fd().read().unwrap() >= 1);
        // Firecracker's 4 bytes: Ctrl, Alt, Delete (extended) make codes.
        assert_eq!(drain(&mut dev), vec![0x14, 0x11, 0xe0, 0x71]);
        assert_eq!(dev.counters().keys_injected, 4);
        // An empty buffer keeps returning the last byte, with OBF clear.
        assert_eq!(dev.read_register(DATA), 0x71);
        assert_eq!(dev.read_register(COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn a_guest_that_never_reads_cannot_grow_the_buffer() {
        let (mut dev, _reset, _irq) = device();
        for _ in 0..OUTPUT_BUFFER_SIZE / CTRL_ALT_DEL.len() {
            dev.send_ctrl_alt_del().unwrap();
        }
        assert_eq!(dev.send_ctrl_alt_del(), Err(BufferFull));
        for _ in 0..100 {
            dev.write_register(DATA, KBD_CMD_RESET);
        }
        assert!(dev.state().output.len() <= OUTPUT_BUFFER_SIZE);
    }

    #[test]
    fn state_round_trips_with_waiting_bytes() {
        let (mut dev, _reset, _irq) = device();
        dev.write_register(COMMAND, CMD_SELF_TEST);
        dev.write_register(DATA, KBD_CMD_SET_LEDS);
        dev.write_register(DATA, 0x02);
        dev.send_ctrl_alt_del().unwrap();
        dev.write_register(DATA, KBD_CMD_SCANCODE_SET);
        dev.write_register(COMMAND, CMD_WRITE_CONTROL);
        let saved = dev.state().clone();
        let json = serde_json::to_string(&saved).unwrap();
        let parsed: I8042State = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, saved);

        let (reset, irq) = (EventTrigger::new().unwrap(), EventTrigger::new().unwrap());
        let mut restored = I8042::from_state(&parsed, reset.try_clone().unwrap(), irq);
        assert_eq!(restored.state(), &saved);
        // The pending controller command takes the next data byte.
        restored.write_register(DATA, 0x47);
        dev.write_register(DATA, 0x47);
        assert_eq!(drain(&mut restored), drain(&mut dev));
        assert_eq!(restored.state(), dev.state());
        // The keyboard command was answered; its parameter is still awaited.
        restored.write_register(DATA, 0x02);
        assert_eq!(drain(&mut restored), vec![KBD_ACK]);
        restored.write_register(COMMAND, CMD_RESET_CPU);
        assert_eq!(reset.event_fd().read().unwrap(), 1);
        assert_eq!(restored.counters().resets, 1);
        assert_eq!(restored.counters().keys_injected, 4);
    }

    #[test]
    fn restored_output_is_bounded_and_status_follows_it() {
        let state = I8042State {
            output: (0..40).collect(),
            ..I8042State::default()
        };
        let (reset, irq) = (EventTrigger::new().unwrap(), EventTrigger::new().unwrap());
        let mut dev = I8042::from_state(&state, reset, irq);
        assert_eq!(dev.state().output.len(), OUTPUT_BUFFER_SIZE);
        assert_eq!(drain(&mut dev), (0..16).collect::<Vec<u8>>());
        let (reset, irq) = (EventTrigger::new().unwrap(), EventTrigger::new().unwrap());
        let full_but_empty = I8042State {
            status: STATUS_OUTPUT_FULL,
            ..I8042State::default()
        };
        let mut dev = I8042::from_state(&full_but_empty, reset, irq);
        assert_eq!(dev.read_register(COMMAND) & STATUS_OUTPUT_FULL, 0);
    }

    #[test]
    fn no_interrupt_when_disabled() {
        let (mut dev, _reset, irq) = device();
        dev.write_register(COMMAND, CMD_WRITE_CONTROL);
        dev.write_register(DATA, 0x44);
        dev.send_ctrl_alt_del().unwrap();
        assert!(irq.event_fd().read().is_err());
    }
}
