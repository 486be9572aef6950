//! COM1's state as plain data: the UART's registers and receive FIFO (this
//! crate's mirror of vm-superio's `SerialState`, which has no serde), and the
//! counters.

use vm_superio::serial::SerialState as SuperioState;

use super::serial::SerialCounters;

/// The 16550A's registers and receive FIFO: the fields of vm-superio's
/// `SerialState`, converted to and from it with [`From`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct UartState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Bytes in the receive FIFO, oldest first (at most 64).
    pub in_buffer: Vec<u8>,
}

impl Default for UartState {
    /// The UART after power-on.
    fn default() -> UartState {
        UartState::from(SuperioState::default())
    }
}

impl From<SuperioState> for UartState {
    fn from(s: SuperioState) -> UartState {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

impl From<UartState> for SuperioState {
    fn from(s: UartState) -> SuperioState {
        SuperioState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

/// COM1 as plain data: what [`super::Serial::state`] gives and
/// [`super::Serial::from_state`] rebuilds the device from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SerialState {
    /// The UART's registers and receive FIFO.
    pub uart: UartState,
    /// The counters.
    pub counters: SerialCounters,
}
