//! The kernel command line: validated against the boot protocol's limit and
//! written NUL-terminated into guest memory.

use ember_memory::layout::CMDLINE_MAX_SIZE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result};

/// Checks that `cmdline` fits in `max_size` bytes including the NUL and has no NUL.
/// `max_size` is capped at the boot protocol's 2048 bytes.
///
/// # Example
///
/// ```
/// use ember_boot::{cmdline, Error};
///
/// assert!(cmdline::validate("console=ttyS0 reboot=k", 256).is_ok());
/// assert!(matches!(
///     cmdline::validate(&"x".repeat(256), 256),
///     Err(Error::CmdlineTooLong { len: 256, max: 255 })
/// ));
/// assert!(matches!(cmdline::validate("a\0b", 256), Err(Error::CmdlineNul)));
/// ```
pub fn validate(cmdline: &str, max_size: usize) -> Result<()> {
    if cmdline.as_bytes().contains(&0) {
        return Err(Error::CmdlineNul);
    }
    let max = max_size.min(CMDLINE_MAX_SIZE) - 1;
    if cmdline.len() > max {
        return Err(Error::CmdlineTooLong {
            len: cmdline.len(),
            max,
        });
    }
    Ok(())
}

/// Writes `cmdline` and its NUL at `addr`, after checking it against the
/// boot protocol's limit.
///
/// # Example
///
/// ```
/// use ember_boot::cmdline;
/// use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
///
/// let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)])?;
/// cmdline::write(&mem, GuestAddress(0x2_0000), "panic=1")?;
/// let mut back = [0u8; 8];
/// mem.read_slice(&mut back, GuestAddress(0x2_0000))?;
/// assert_eq!(&back, b"panic=1\0");
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub fn write<M: GuestMemoryBackend>(mem: &M, addr: GuestAddress, cmdline: &str) -> Result<()> {
    validate(cmdline, CMDLINE_MAX_SIZE)?;
    let mut bytes = Vec::with_capacity(cmdline.len() + 1);
    bytes.extend_from_slice(cmdline.as_bytes());
    bytes.push(0);
    mem.write_slice(&bytes, addr)
        .map_err(|source| Error::GuestMemory {
            what: "kernel command line",
            addr: addr.0,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    #[test]
    fn limits() {
        assert!(validate(&"a".repeat(2047), CMDLINE_MAX_SIZE).is_ok());
        assert!(matches!(
            validate(&"a".repeat(2048), CMDLINE_MAX_SIZE),
            Err(Error::CmdlineTooLong {
                len: 2048,
                max: 2047
            })
        ));
        assert!(matches!(
            validate(&"a".repeat(300), 256),
            Err(Error::CmdlineTooLong { max: 255, .. })
        ));
        assert!(matches!(validate("a\0b", 100), Err(Error::CmdlineNul)));
    }

    #[test]
    fn written_with_nul() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10000)]).unwrap();
        mem.write_slice(&[0xff; 16], GuestAddress(0x100)).unwrap();
        write(&mem, GuestAddress(0x100), "console=ttyS0").unwrap();
        let mut buf = [0u8; 14];
        mem.read_slice(&mut buf, GuestAddress(0x100)).unwrap();
        assert_eq!(&buf, b"console=ttyS0\0");
    }
}
