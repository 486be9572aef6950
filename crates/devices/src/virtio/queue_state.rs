//! A virtqueue's state as this crate's plain data ([`VirtqueueState`]), so
//! that device states can derive serde: `virtio_queue::QueueState` does not.

use virtio_queue::QueueState;

/// A virtqueue's configuration and ring positions: the fields of
/// `virtio_queue::QueueState`, converted to and from it with [`From`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct VirtqueueState {
    /// The largest size the device offers.
    pub max_size: u16,
    /// The next available-ring entry the device takes.
    pub next_avail: u16,
    /// The next used-ring entry the device fills.
    pub next_used: u16,
    /// Whether `VIRTIO_RING_F_EVENT_IDX` is in use.
    pub event_idx_enabled: bool,
    /// The size the driver chose.
    pub size: u16,
    /// Whether the driver enabled the queue (QueueReady).
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
}

impl From<QueueState> for VirtqueueState {
    fn from(q: QueueState) -> VirtqueueState {
        VirtqueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<VirtqueueState> for QueueState {
    fn from(q: VirtqueueState) -> QueueState {
        QueueState {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn converts_both_ways_and_through_json() {
        let state = VirtqueueState {
            max_size: 256,
            next_avail: 7,
            next_used: 5,
            event_idx_enabled: true,
            size: 128,
            ready: true,
            desc_table: 0x1000,
            avail_ring: 0x2000,
            used_ring: 0x3000,
        };
        let theirs = QueueState::from(state);
        assert_eq!((theirs.next_avail, theirs.used_ring), (7, 0x3000));
        assert_eq!(VirtqueueState::from(theirs), state);
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(
            serde_json::from_str::<VirtqueueState>(&json).unwrap(),
            state
        );
    }
}
