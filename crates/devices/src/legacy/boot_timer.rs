//! The boot-timer device: the guest writes 123 at offset 0 when it reaches init,
//! and the device logs the wall and CPU time since the start request on a line
//! containing `guest-boot-time-us=N` (Firecracker's convention).

use std::time::Instant;

use crate::bus::BusDevice;

/// The value that marks "init reached".
pub const BOOT_SIGNAL: u8 = 123;

/// CPU time this process has used, in microseconds.
pub fn process_cpu_time_us() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec and the clock id is a constant
    // the kernel always supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    let secs = u64::try_from(ts.tv_sec).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec).unwrap_or(0);
    secs * 1_000_000 + nanos / 1_000
}

/// When the start request arrived, in wall time and process CPU time.
#[derive(Clone, Copy, Debug)]
pub struct StartTime {
    wall: Instant,
    cpu_us: u64,
}

impl StartTime {
    /// Now.
    pub fn now() -> StartTime {
        StartTime {
            wall: Instant::now(),
            cpu_us: process_cpu_time_us(),
        }
    }

    /// Time elapsed since this start.
    pub fn elapsed(&self) -> BootTime {
        BootTime {
            wall_us: u64::try_from(self.wall.elapsed().as_micros()).unwrap_or(u64::MAX),
            cpu_us: process_cpu_time_us().saturating_sub(self.cpu_us),
        }
    }
}

/// How long the guest took to reach init.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTime {
    /// Wall-clock microseconds.
    pub wall_us: u64,
    /// Microseconds of this process's CPU time.
    pub cpu_us: u64,
}

/// The device at 0xC000_0000. Only the first signal is logged (a guest that
/// keeps writing cannot flood the log); later ones are counted.
#[derive(Debug)]
pub struct BootTimer {
    start: StartTime,
    signalled: Option<BootTime>,
    repeated_signals: u64,
}

impl BootTimer {
    /// A timer measuring from `start`.
    pub fn new(start: StartTime) -> BootTimer {
        BootTimer {
            start,
            signalled: None,
            repeated_signals: 0,
        }
    }

    /// Signals after the first one.
    pub fn repeated_signals(&self) -> u64 {
        self.repeated_signals
    }

    /// The time of the first signal, if the guest has signalled.
    pub fn boot_time(&self) -> Option<BootTime> {
        self.signalled
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data.first() != Some(&BOOT_SIGNAL) {
            return;
        }
        if self.signalled.is_some() {
            self.repeated_signals += 1;
            return;
        }
        let time = self.start.elapsed();
        log::info!(
            "guest-boot-time-us={} guest-boot-time-ms={} guest-boot-cpu-us={}",
            time.wall_us,
            time.wall_us / 1000,
            time.cpu_us
        );
        self.signalled = Some(time);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_magic_write_at_offset_0_counts() {
        let mut timer = BootTimer::new(StartTime::now());
        timer.write(1, &[BOOT_SIGNAL]);
        timer.write(0, &[122]);
        timer.write(0, &[]);
        assert_eq!(timer.boot_time(), None);
        std::thread::sleep(std::time::Duration::from_millis(2));
        timer.write(0, &[BOOT_SIGNAL]);
        let first = timer.boot_time().unwrap();
        assert!(first.wall_us >= 2000, "{first:?}");
        timer.write(0, &[BOOT_SIGNAL, 0, 0, 0]);
        timer.write(0, &[BOOT_SIGNAL]);
        assert_eq!(timer.boot_time(), Some(first), "first signal kept");
        assert_eq!(
            timer.repeated_signals(),
            2,
            "later ones counted, not logged"
        );
        let mut data = [0xaa; 4];
        timer.read(0, &mut data);
        assert_eq!(data, [0; 4]);
    }

    #[test]
    fn cpu_time_moves_forward() {
        let a = process_cpu_time_us();
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        assert!(x > 0);
        assert!(process_cpu_time_us() >= a);
    }
}
