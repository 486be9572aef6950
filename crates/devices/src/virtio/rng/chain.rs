//! Turning a descriptor chain into the guest buffers to fill, trusting
//! nothing in it: every descriptor must be device-writable and entirely in
//! guest memory, and the chain must end.

use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemory;

use crate::virtio::iov::{GuestIoVecs, GuestRegions};

/// Why a chain cannot be filled.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The chain does not end: it loops, is longer than the queue, runs past
    /// 4 GiB in total, or a descriptor cannot be read.
    Unterminated,
    /// A descriptor is device-readable.
    ReadOnly,
    /// A buffer is not (entirely) in guest memory.
    OutOfMemory,
}

/// Collects the buffers of `chain` (in `mem`) into `data` (empty at first);
/// returns their total length, or why the chain is refused (`data` is then
/// not to be used). Empty descriptors are skipped.
pub(crate) fn parse<'m, M: GuestMemory>(
    mem: &GuestRegions<'m, M>,
    chain: impl Iterator<Item = Descriptor>,
    data: &mut GuestIoVecs<'_, 'm>,
) -> Result<u64, ChainError> {
    let mut terminated = false;
    let mut total = 0u64;
    for desc in chain {
        terminated = !desc.has_next();
        if !desc.is_write_only() {
            return Err(ChainError::ReadOnly);
        }
        let len = desc.len();
        if len == 0 {
            continue;
        }
        if data
            .push_guest(mem, desc.addr(), len as usize, true)
            .is_none()
        {
            return Err(ChainError::OutOfMemory);
        }
        total += u64::from(len);
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows.
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    Ok(total)
}
