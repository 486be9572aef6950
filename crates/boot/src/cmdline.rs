//! The kernel command line: validated against the boot protocol's limit and
//! written NUL-terminated into guest memory.

use ember_memory::layout::CMDLINE_MAX_SIZE;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

use crate::{Error, Result};

/// Checks that `cmdline` fits in `max_size` bytes including the NUL and has no NUL.
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

/// Writes `cmdline` and its NUL at `addr`.
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
