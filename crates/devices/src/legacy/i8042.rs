//! The i8042 keyboard controller, reduced to what a microVM needs: the CPU reset
//! command (0xFE written to port 0x64) fires an event that ends the VM.

use std::fmt;

use vm_superio::I8042Device;

use crate::bus::BusDevice;
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

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.controller.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            if let Err(e) = self.controller.write(offset, *byte) {
                log::error!("i8042: cannot signal the reset: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
