//! How a network interface is set up: [`NetConfig`] with Firecracker's
//! `network-interfaces` fields, the rate limiters, the guest's MAC address,
//! and the mapping between virtio-net offload features and TAP offloads.

use std::fmt;
use std::hash::BuildHasher;

use ember_ratelimit::{BucketConfig, BucketUpdate};
use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
};

use super::Error;
use crate::virtio::feature_bit;

/// A MAC address.
pub type MacAddr = [u8; 6];

/// One direction's rate limits, as Firecracker's `rate_limiter` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RateLimiterConfig {
    /// Bandwidth limit, in bytes of Ethernet frames (the virtio-net header
    /// is not counted).
    pub bandwidth: Option<BucketConfig>,
    /// Frames limit.
    pub ops: Option<BucketConfig>,
}

/// A change to one direction's rate limits (for a `PATCH` of the interface).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimiterUpdate {
    /// The bandwidth bucket.
    pub bandwidth: BucketUpdate,
    /// The frames bucket.
    pub ops: BucketUpdate,
}

impl RateLimiterUpdate {
    /// Leaves both buckets as they are.
    pub const KEEP: RateLimiterUpdate = RateLimiterUpdate {
        bandwidth: BucketUpdate::Keep,
        ops: BucketUpdate::Keep,
    };
}

/// How a network interface is set up, with the fields of Firecracker's
/// `network-interfaces` object.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The interface's ID (for the API and logs).
    pub iface_id: String,
    /// The host TAP interface to open (at most 15 bytes).
    pub host_dev_name: String,
    /// The guest's MAC address; a random locally administered one when `None`.
    pub guest_mac: Option<MacAddr>,
    /// The MTU advertised to the guest (`VIRTIO_NET_F_MTU`); none when `None`.
    pub mtu: Option<u16>,
    /// Limits on frames going to the guest.
    pub rx_rate_limiter: RateLimiterConfig,
    /// Limits on frames coming from the guest.
    pub tx_rate_limiter: RateLimiterConfig,
}

/// Formats a MAC address as `xx:xx:xx:xx:xx:xx`.
#[derive(Clone, Copy)]
pub struct DisplayMac<'a>(pub &'a MacAddr);

impl fmt::Display for DisplayMac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = *self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for DisplayMac<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// `mac` if a guest may use it (not multicast, not all zeroes).
pub(crate) fn check_mac(mac: MacAddr) -> Result<MacAddr, Error> {
    if mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(Error::InvalidMac(DisplayMac(&mac).to_string()));
    }
    Ok(mac)
}

/// A random unicast, locally administered MAC address (02:xx:... style),
/// from the standard library's per-process random hash keys.
pub(crate) fn random_mac(salt: &str) -> MacAddr {
    let random = std::collections::hash_map::RandomState::new().hash_one(salt);
    let bytes = random.to_le_bytes();
    let mut mac = [0u8; 6];
    mac.copy_from_slice(&bytes[..6]);
    // Unicast (bit 0 clear), locally administered (bit 1 set).
    mac[0] = (mac[0] & 0xfc) | 0x02;
    mac
}

/// A TAP offload (`TUN_F_*`) and the virtio-net features it makes possible:
/// the guest may receive such frames (`GUEST_*`), and, since a TAP with a
/// virtio-net header accepts them whenever it supports them, send them
/// (`HOST_*`, `CSUM`).
const OFFLOADS: [(u32, u32, u32); 4] = [
    (libc::TUN_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_CSUM),
    (
        libc::TUN_F_TSO4,
        VIRTIO_NET_F_GUEST_TSO4,
        VIRTIO_NET_F_HOST_TSO4,
    ),
    (
        libc::TUN_F_TSO6,
        VIRTIO_NET_F_GUEST_TSO6,
        VIRTIO_NET_F_HOST_TSO6,
    ),
    (
        libc::TUN_F_UFO,
        VIRTIO_NET_F_GUEST_UFO,
        VIRTIO_NET_F_HOST_UFO,
    ),
];

/// Finds the offloads `try_offload` accepts: checksums alone, then each
/// segmentation offload with checksums. The TAP is left with none.
pub(crate) fn probe_offloads(mut try_offload: impl FnMut(u32) -> bool) -> u32 {
    let mut accepted = 0;
    if try_offload(libc::TUN_F_CSUM) {
        accepted = libc::TUN_F_CSUM;
        for (flag, _, _) in &OFFLOADS[1..] {
            if try_offload(accepted | flag) {
                accepted |= flag;
            }
        }
    }
    if accepted != 0 && !try_offload(0) {
        log::warn!("net: cannot clear the TAP offloads after probing them");
    }
    accepted
}

/// The virtio-net features the TAP offloads `tun_flags` allow the device to offer.
pub(crate) fn offload_features(tun_flags: u32) -> u64 {
    OFFLOADS
        .iter()
        .filter(|(flag, _, _)| tun_flags & flag != 0)
        .fold(0, |acc, &(_, guest, host)| {
            acc | feature_bit(guest) | feature_bit(host)
        })
}

/// The TAP offloads to set for the features the driver accepted: those the
/// guest can receive. Segmentation offloads need checksum offload, in the
/// virtio spec and in the TAP; without `GUEST_CSUM` there are none.
pub(crate) fn tap_offloads(acked_features: u64) -> u32 {
    if acked_features & feature_bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    OFFLOADS
        .iter()
        .filter(|(_, guest, _)| acked_features & feature_bit(*guest) != 0)
        .fold(0, |acc, (flag, _, _)| acc | flag)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn random_macs_are_unicast_and_local() {
        let a = random_mac("eth0");
        let b = random_mac("eth0");
        for mac in [a, b] {
            assert_eq!(mac[0] & 0x03, 0x02, "{}", DisplayMac(&mac));
            assert!(check_mac(mac).is_ok());
        }
        assert_ne!(a, b, "random per device");
    }

    #[test]
    fn guest_macs_must_be_unicast() {
        assert!(check_mac([0x06, 0, 0, 0, 0, 1]).is_ok());
        assert!(matches!(
            check_mac([0x01, 0, 0x5e, 0, 0, 1]),
            Err(Error::InvalidMac(s)) if s == "01:00:5e:00:00:01"
        ));
        assert!(check_mac([0; 6]).is_err());
        assert!(check_mac([0xff; 6]).is_err());
    }

    #[test]
    fn probing_keeps_what_the_tap_accepts() {
        let mut tried = Vec::new();
        let accepted = probe_offloads(|flags| {
            tried.push(flags);
            flags & libc::TUN_F_UFO == 0
        });
        assert_eq!(
            accepted,
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_TSO6
        );
        assert_eq!(tried.last(), Some(&0), "left without offloads");
        assert_eq!(probe_offloads(|_| false), 0);
        let features = offload_features(accepted);
        for bit in [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
        ] {
            assert_ne!(features & feature_bit(bit), 0, "bit {bit}");
        }
        assert_eq!(features & feature_bit(VIRTIO_NET_F_GUEST_UFO), 0);
        assert_eq!(offload_features(0), 0);
    }

    #[test]
    fn tap_offloads_follow_the_guest_receive_features() {
        let csum = feature_bit(VIRTIO_NET_F_GUEST_CSUM);
        let tso4 = feature_bit(VIRTIO_NET_F_GUEST_TSO4);
        let ufo = feature_bit(VIRTIO_NET_F_GUEST_UFO);
        assert_eq!(tap_offloads(0), 0);
        assert_eq!(tap_offloads(tso4), 0, "TSO without checksum offload");
        assert_eq!(tap_offloads(csum), libc::TUN_F_CSUM);
        assert_eq!(
            tap_offloads(csum | tso4 | ufo | feature_bit(VIRTIO_NET_F_HOST_TSO6)),
            libc::TUN_F_CSUM | libc::TUN_F_TSO4 | libc::TUN_F_UFO
        );
    }
}
