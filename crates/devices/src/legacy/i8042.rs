//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset
//! command (0xFE written to port 0x64) fires an event that ends the VM.

use std::fmt;

use vm_superio::I8042Device;

use crate::bus::ByteRegisters;
use crate::trigger::EventTrigger;

/// The i8042 on ports 0x60-0x64.
pub struct I8042 {
    controller: I8042Device<EventTrigger>,
}

impl fmt::Debug for I8042 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("I8042").finish_non_exhaustive()
    }
}

impl I8042 {
    /// A controller that fires `reset` when the guest resets the CPU through it.
    pub fn new(reset: EventTrigger) -> I8042 {
        I8042 {
            controller: I8042Device::new(reset),
        }
    }
}

impl ByteRegisters for I8042 {
    fn read_register(&mut self, offset: u8) -> u8 {
        self.controller.read(offset)
    }

    fn write_register(&mut self, offset: u8, value: u8) {
        if let Err(e) = self.controller.write(offset, value) {
            log::error!("i8042: cannot signal the reset: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusDevice;

    #[test]
    fn reset_command_fires_the_event() {
        let reset = EventTrigger::new().unwrap();
        let mut dev = I8042::new(reset.try_clone().unwrap());
        dev.write(4, &[0x01]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]);
        assert!(reset.event_fd().read().is_err(), "no reset yet");
        dev.write(4, &[0xfe]);
        assert_eq!(reset.event_fd().read().unwrap(), 1);
        let mut status = [0u8];
        dev.read(4, &mut status);
        let mut wide = [0u8; 2];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0xff, 0xff]);
    }
}
