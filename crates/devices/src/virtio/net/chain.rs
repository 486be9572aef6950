//! Descriptor chains as lists of guest buffers, trusting nothing in them:
//! a transmit chain is device-readable buffers holding a header and a frame,
//! a receive chain device-writable buffers for them. Every buffer is checked
//! against guest memory before it is used, and goes into an iovec list as
//! host slices: the frame is then written to, or copied into, the guest's
//! buffers without looking them up again.

use virtio_queue::desc::split::Descriptor;
use vm_memory::GuestMemory;

use crate::virtio::iov::{GuestIoVecs, GuestRegions};

/// Which way the data goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Direction {
    /// The device reads the buffers (transmit).
    Readable,
    /// The device writes the buffers (receive).
    Writable,
}

/// Why a chain cannot be used.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ChainError {
    /// The chain does not end: it loops, is longer than the queue or its
    /// indirect table, runs past 4 GiB in total, or a descriptor cannot be read.
    Unterminated,
    /// A buffer is not (entirely) in guest memory.
    OutOfMemory,
    /// A buffer goes the wrong way.
    WrongDirection,
    /// The buffers add up to more than the limit.
    TooLong,
    /// The buffers add up to less than the minimum (checked by the caller).
    TooShort,
}

/// Collects the non-empty buffers of `chain` into `out` (empty at first)
/// and returns their total length. All must go `direction`, lie in guest
/// memory and add up to at most `limit` bytes; the first violation is
/// returned.
pub(crate) fn collect<'m, M: GuestMemory>(
    mem: &GuestRegions<'m, M>,
    chain: impl Iterator<Item = Descriptor>,
    direction: Direction,
    limit: u64,
    out: &mut GuestIoVecs<'_, 'm>,
) -> Result<u64, ChainError> {
    let want_writable = direction == Direction::Writable;
    let mut total = 0u64;
    let mut terminated = false;
    for desc in chain {
        terminated = !desc.has_next();
        if desc.is_write_only() != want_writable {
            return Err(ChainError::WrongDirection);
        }
        if desc.len() == 0 {
            continue;
        }
        total += u64::from(desc.len());
        if total > limit {
            return Err(ChainError::TooLong);
        }
        out.push_guest(mem, desc.addr(), desc.len() as usize, want_writable)
            .ok_or(ChainError::OutOfMemory)?;
    }
    // virtio-queue ends the iteration early, without an error, on loops,
    // over-long chains and unreadable descriptors: the last descriptor then
    // still says another one follows (or there was none at all).
    if !terminated {
        return Err(ChainError::Unterminated);
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use virtio_queue::QueueT;
    use vm_memory::{GuestAddress, GuestMemoryBackend};

    use super::*;
    use crate::virtio::iov::IoVecBuf;
    use crate::virtio::test_utils::{memory, GuestQueue, Mem, NEXT, WRITE};

    /// A guest buffer: address and length.
    type Segment = (GuestAddress, usize);

    /// The buffers of `out` as guest buffers (`mem` has one region at 0).
    fn guest_buffers(mem: &Mem, out: &GuestIoVecs<'_, '_>) -> Vec<Segment> {
        let base = mem.get_host_address(GuestAddress(0)).unwrap() as usize;
        out.host_buffers()
            .into_iter()
            .map(|(host, len)| (GuestAddress((host - base) as u64), len))
            .collect()
    }

    fn collect_descs(
        mem: &Mem,
        descs: &[(u64, u32, u16)],
        direction: Direction,
        limit: u64,
    ) -> Result<(u64, Vec<Segment>), ChainError> {
        let mut gq = GuestQueue::new(mem, 0, 16);
        gq.add_chain(0, descs);
        let mut q = gq.device_queue(16);
        let chain = q.pop_descriptor_chain(mem).unwrap();
        let mut buf = IoVecBuf::default();
        let mut out = buf.start();
        collect(&GuestRegions::new(mem), chain, direction, limit, &mut out)
            .map(|total| (total, guest_buffers(mem, &out)))
    }

    fn seg(addr: u64, len: usize) -> Segment {
        (GuestAddress(addr), len)
    }

    #[test]
    fn readable_and_writable_chains() {
        let mem = memory(&[(0, 0x10000)]);
        let (total, segs) = collect_descs(
            &mem,
            &[(0x1000, 12, 0), (0x2000, 0, 0), (0x3000, 100, 0)],
            Direction::Readable,
            1000,
        )
        .unwrap();
        assert_eq!(total, 112);
        assert_eq!(
            segs,
            [seg(0x1000, 12), seg(0x3000, 100)],
            "empty ones skipped"
        );
        let (total, _) = collect_descs(
            &mem,
            &[(0x1000, 2048, WRITE), (0x3000, 10, WRITE)],
            Direction::Writable,
            u64::MAX,
        )
        .unwrap();
        assert_eq!(total, 2058);
    }

    #[test]
    fn bad_chains() {
        let mem = memory(&[(0, 0x10000)]);
        type Case<'a> = (&'a [(u64, u32, u16)], Direction, ChainError);
        let cases: &[Case] = &[
            (
                &[(0x1000, 12, 0), (0x2000, 10, WRITE)],
                Direction::Readable,
                ChainError::WrongDirection,
            ),
            (
                &[(0x1000, 12, WRITE), (0x2000, 10, 0)],
                Direction::Writable,
                ChainError::WrongDirection,
            ),
            (
                &[(0x1000, 12, 0), (0xfff0, 0x20, 0)],
                Direction::Readable,
                ChainError::OutOfMemory,
            ),
            (
                &[(u64::MAX - 4, 12, WRITE)],
                Direction::Writable,
                ChainError::OutOfMemory,
            ),
            (
                &[(0x1000, 600, 0), (0x2000, 500, 0)],
                Direction::Readable,
                ChainError::TooLong,
            ),
        ];
        for (i, (descs, direction, error)) in cases.iter().enumerate() {
            assert_eq!(
                collect_descs(&mem, descs, *direction, 1000).map(|r| r.0),
                Err(*error),
                "case {i}"
            );
        }
        // More than 4 GiB in total: virtio-queue stops the chain.
        assert_eq!(
            collect_descs(
                &mem,
                &[(0x1000, 0x10, 0), (0x1000, 0xffff_fff8, 0)],
                Direction::Readable,
                u64::MAX
            )
            .map(|r| r.0),
            Err(ChainError::Unterminated)
        );
    }

    #[test]
    fn loops_and_bogus_heads_are_unterminated() {
        let mem = memory(&[(0, 0x10000)]);
        let mut gq = GuestQueue::new(&mem, 0, 16);
        gq.set_desc(0, (0x1000, 12, NEXT, 1));
        gq.set_desc(1, (0x2000, 12, NEXT, 0));
        gq.publish(0);
        gq.publish(99);
        let mut q = gq.device_queue(16);
        let mut buf = IoVecBuf::default();
        for _ in 0..2 {
            let chain = q.pop_descriptor_chain(&mem).unwrap();
            assert_eq!(
                collect(
                    &GuestRegions::new(&mem),
                    chain,
                    Direction::Readable,
                    u64::MAX,
                    &mut buf.start()
                ),
                Err(ChainError::Unterminated)
            );
        }
        assert_eq!(q.next_avail(), 2);
    }

    #[test]
    fn buffers_across_two_regions_are_copied_whole() {
        let mem = memory(&[(0, 0x2000), (0x2000, 0x2000)]);
        let data: Vec<u8> = (0..300u32).map(|i| (i % 251) as u8).collect();
        let mut gq = GuestQueue::new(&mem, 0, 16);
        // The second buffer spans two memory regions.
        gq.add_chain(0, &[(0x100, 100, WRITE), (0x1f80, 200, WRITE)]);
        let mut q = gq.device_queue(16);
        let chain = q.pop_descriptor_chain(&mem).unwrap();
        let mut buf = IoVecBuf::default();
        let mut out = buf.start();
        let total = collect(
            &GuestRegions::new(&mem),
            chain,
            Direction::Writable,
            u64::MAX,
            &mut out,
        )
        .unwrap();
        assert_eq!((total, out.count()), (300, 3));
        assert_eq!(out.copy_from(0, &data), 300);
        let mut back = [0u8; 400];
        assert_eq!(out.copy_to(0, &mut back), 300);
        assert_eq!(back[..300], data[..]);
        assert_eq!(
            crate::virtio::test_utils::guest_bytes(&mem, 0x1f80, 200),
            data[100..]
        );
    }
}
