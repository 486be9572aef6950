//! The smoltcp device between the guest and the MMDS stack: one guest frame
//! at a time in, a bounded queue of reply frames out.

use std::collections::VecDeque;

use smoltcp::phy::{self, Checksum, ChecksumCapabilities, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

/// Reply frames held for the guest at most; past it smoltcp is told the
/// device is busy and keeps its segments for later.
pub const MAX_QUEUED_REPLIES: usize = 64;

/// Largest frame the stack sends: a 1500-byte IP packet in Ethernet.
pub const REPLY_MTU: usize = 1514;

/// Guest frames in, reply frames out.
#[derive(Debug, Default)]
pub(super) struct FramePipe {
    /// The guest frame being processed.
    pub(super) inbound: Option<Vec<u8>>,
    /// Reply frames for the guest, oldest first.
    pub(super) replies: VecDeque<Vec<u8>>,
    /// Replies dropped because the queue was full.
    pub(super) dropped_replies: u64,
}

impl FramePipe {
    fn has_room(&self) -> bool {
        self.replies.len() < MAX_QUEUED_REPLIES
    }
}

/// Hands smoltcp the one inbound frame.
pub(super) struct InboundToken(Vec<u8>);

/// Lets smoltcp write one reply frame into the queue.
pub(super) struct ReplyToken<'a>(&'a mut FramePipe);

impl phy::RxToken for InboundToken {
    fn consume<R, F>(self, f: F) -> R
    where
        F: FnOnce(&[u8]) -> R,
    {
        f(&self.0)
    }
}

impl phy::TxToken for ReplyToken<'_> {
    fn consume<R, F>(self, len: usize, f: F) -> R
    where
        F: FnOnce(&mut [u8]) -> R,
    {
        let mut frame = vec![0u8; len];
        let result = f(&mut frame);
        // An ingress reply (ARP, RST) is taken even when egress would wait:
        // one frame per guest frame, which the caller already let in.
        if self.0.replies.len() <= MAX_QUEUED_REPLIES {
            self.0.replies.push_back(frame);
        } else {
            self.0.dropped_replies += 1;
        }
        result
    }
}

impl phy::Device for FramePipe {
    type RxToken<'a> = InboundToken;
    type TxToken<'a> = ReplyToken<'a>;

    fn receive(&mut self, _now: Instant) -> Option<(InboundToken, ReplyToken<'_>)> {
        let frame = self.inbound.take()?;
        Some((InboundToken(frame), ReplyToken(self)))
    }

    fn transmit(&mut self, _now: Instant) -> Option<ReplyToken<'_>> {
        self.has_room().then_some(ReplyToken(self))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = REPLY_MTU;
        caps.max_burst_size = Some(1);
        let mut checksum = ChecksumCapabilities::default();
        // The IP header checksum is always the guest's; the TCP one may be
        // left to an offload the guest negotiated (VIRTIO_NET_F_CSUM), so it
        // is not verified, as Firecracker does not. Replies carry both.
        checksum.ipv4 = Checksum::Both;
        checksum.tcp = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smoltcp::phy::{Device, TxToken};

    #[test]
    fn transmit_stops_at_the_queue_cap() {
        let mut pipe = FramePipe::default();
        for _ in 0..MAX_QUEUED_REPLIES {
            let token = pipe.transmit(Instant::ZERO).map(|t| t.consume(60, |_| ()));
            assert!(token.is_some());
        }
        assert!(pipe.transmit(Instant::ZERO).is_none());
        assert_eq!(pipe.replies.len(), MAX_QUEUED_REPLIES);
    }
}
