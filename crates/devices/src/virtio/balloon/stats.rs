//! The statistics buffer: `{le16 tag, le64 value}` entries, each tag one of
//! the virtio statistics, kept under Firecracker's field names.

use super::{pages_to_mib, MAX_PFNS_PER_BUFFER};

/// Size of one entry (packed: 2 + 8 bytes).
pub(crate) const STAT_SIZE: usize = 10;
/// Most entries read from one buffer.
pub(crate) const MAX_STATS: usize = MAX_PFNS_PER_BUFFER;

/// Firecracker's name of each virtio statistic, indexed by tag
/// (`VIRTIO_BALLOON_S_SWAP_IN` = 0 .. `VIRTIO_BALLOON_S_DIRECT_RECLAIM` = 15).
pub const STAT_NAMES: [&str; 16] = [
    "swap_in",
    "swap_out",
    "major_faults",
    "minor_faults",
    "free_memory",
    "total_memory",
    "available_memory",
    "disk_caches",
    "hugetlb_allocations",
    "hugetlb_failures",
    "oom_kill",
    "alloc_stall",
    "async_scan",
    "direct_scan",
    "async_reclaim",
    "direct_reclaim",
];

/// The latest statistics: the target and actual sizes, and each statistic
/// the driver has reported (`None` until it does).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct BalloonStats {
    /// Target size in pages.
    pub target_pages: u32,
    /// Pages the driver holds.
    pub actual_pages: u32,
    /// The last value of each statistic, by tag (see [`STAT_NAMES`]).
    pub values: [Option<u64>; 16],
}

impl BalloonStats {
    /// Target size in MiB.
    pub fn target_mib(&self) -> u32 {
        pages_to_mib(self.target_pages)
    }

    /// Actual size in MiB.
    pub fn actual_mib(&self) -> u32 {
        pages_to_mib(self.actual_pages)
    }

    /// The statistics reported, with their names, in tag order.
    pub fn reported(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        STAT_NAMES
            .iter()
            .zip(self.values.iter())
            .filter_map(|(name, value)| value.map(|v| (*name, v)))
    }

    /// Records the entries of `buf` (a partial trailing entry is ignored);
    /// returns how many had an unknown tag (ignored too).
    pub(crate) fn update(&mut self, buf: &[u8]) -> usize {
        let mut unknown = 0;
        for entry in buf.chunks_exact(STAT_SIZE).take(MAX_STATS) {
            let tag = usize::from(u16::from_le_bytes([entry[0], entry[1]]));
            let mut value = [0u8; 8];
            value.copy_from_slice(&entry[2..]);
            match self.values.get_mut(tag) {
                Some(slot) => *slot = Some(u64::from_le_bytes(value)),
                None => unknown += 1,
            }
        }
        unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tag: u16, value: u64) -> Vec<u8> {
        let mut e = tag.to_le_bytes().to_vec();
        e.extend_from_slice(&value.to_le_bytes());
        e
    }

    #[test]
    fn every_tag_maps_to_its_name_and_unknown_tags_are_counted() {
        let mut buf: Vec<u8> = (0..16u16)
            .flat_map(|t| entry(t, u64::from(t) * 10))
            .collect();
        buf.extend(entry(16, 1));
        buf.extend(entry(0xffff, 1));
        buf.extend([1, 2, 3]);
        let mut stats = BalloonStats::default();
        assert_eq!(stats.update(&buf), 2);
        let reported: Vec<_> = stats.reported().collect();
        assert_eq!(reported.len(), 16);
        assert_eq!(reported[4], ("free_memory", 40));
        assert_eq!(reported[15], ("direct_reclaim", 150));
        stats.update(&entry(4, 7));
        assert_eq!(stats.values[4], Some(7), "a later report replaces");
        assert_eq!(stats.values[5], Some(50), "others are kept");
    }
}
