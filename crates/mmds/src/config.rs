//! `mmds-config`: which interfaces reach the MMDS, at which address, and
//! how it answers (Firecracker's `PUT /mmds/config` body).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::store::MmdsVersion;
use crate::{Error, Result};

/// The MMDS address when none is given (EC2's).
pub const DEFAULT_IPV4_ADDRESS: Ipv4Addr = Ipv4Addr::new(169, 254, 169, 254);

/// The MMDS configuration.
///
/// # Example
///
/// ```
/// use ember_mmds::{MmdsConfig, MmdsVersion, DEFAULT_IPV4_ADDRESS};
///
/// let config: MmdsConfig =
///     serde_json::from_str(r#"{"version": "V2", "network_interfaces": ["eth0"]}"#).unwrap();
/// assert_eq!(config.version, MmdsVersion::V2);
/// assert_eq!(config.ipv4_address(), DEFAULT_IPV4_ADDRESS);
/// assert!(config.validate(|iface| iface == "eth0").is_ok());
/// assert!(config.validate(|_| false).is_err());
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmdsConfig {
    /// V1 or V2 (V1 when absent).
    #[serde(default)]
    pub version: MmdsVersion,
    /// The ids of the interfaces whose guest traffic to the address reaches
    /// the MMDS.
    pub network_interfaces: Vec<String>,
    /// The MMDS address ([`DEFAULT_IPV4_ADDRESS`] when absent).
    #[serde(default)]
    pub ipv4_address: Option<Ipv4Addr>,
    /// Render every value as IMDS plain text.
    #[serde(default)]
    pub imds_compat: bool,
}

/// Whether `address` is a link-local address (RFC 3927) a host may use:
/// in 169.254.0.0/16 but outside its first and last /24, as Firecracker checks.
pub fn is_link_local_valid(address: Ipv4Addr) -> bool {
    matches!(address.octets(), [169, 254, third, _] if third != 0 && third != 255)
}

impl MmdsConfig {
    /// The address, the default filled in.
    pub fn ipv4_address(&self) -> Ipv4Addr {
        self.ipv4_address.unwrap_or(DEFAULT_IPV4_ADDRESS)
    }

    /// Checks the configuration as Firecracker does, in its order: the
    /// address is link local, at least one interface is named, and each
    /// named one is among `existing` interface ids.
    pub fn validate(&self, existing: impl Fn(&str) -> bool) -> Result<()> {
        if !is_link_local_valid(self.ipv4_address()) {
            return Err(Error::InvalidIpv4Addr);
        }
        if self.network_interfaces.is_empty() {
            return Err(Error::EmptyNetworkIfaceList);
        }
        if !self.network_interfaces.iter().all(|id| existing(id)) {
            return Err(Error::InvalidNetworkInterfaceId);
        }
        Ok(())
    }

    /// The configuration as `GET /vm/config` shows it: the address filled in.
    pub fn reported(&self) -> MmdsConfig {
        MmdsConfig {
            ipv4_address: Some(self.ipv4_address()),
            ..self.clone()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(body: &str) -> MmdsConfig {
        serde_json::from_str(body).unwrap()
    }

    #[test]
    fn link_local_as_firecracker_checks_it() {
        for good in ["169.254.169.254", "169.254.1.0", "169.254.254.255"] {
            assert!(is_link_local_valid(good.parse().unwrap()), "{good}");
        }
        for bad in [
            "169.254.0.1",
            "169.254.255.1",
            "1.1.1.1",
            "169.253.1.1",
            "0.0.0.0",
        ] {
            assert!(!is_link_local_valid(bad.parse().unwrap()), "{bad}");
        }
    }

    #[test]
    fn defaults_and_validation() {
        let c = config(r#"{"network_interfaces": ["eth0"]}"#);
        assert_eq!(c.version, MmdsVersion::V1);
        assert!(!c.imds_compat);
        assert_eq!(c.ipv4_address(), DEFAULT_IPV4_ADDRESS);
        assert_eq!(c.reported().ipv4_address, Some(DEFAULT_IPV4_ADDRESS));
        let eth0 = |id: &str| id == "eth0";
        assert!(c.validate(eth0).is_ok());
        let cases = [
            (
                r#"{"network_interfaces": ["eth0"], "ipv4_address": "1.1.1.1"}"#,
                "The MMDS IPv4 address is not link local.",
            ),
            (
                r#"{"network_interfaces": []}"#,
                "The list of network interface IDs that allow forwarding MMDS requests is empty.",
            ),
            (
                r#"{"network_interfaces": ["eth0", "eth1"]}"#,
                "The list of network interface IDs provided contains at least one ID that does \
                 not correspond to any existing network interface.",
            ),
        ];
        for (body, message) in cases {
            assert_eq!(
                config(body).validate(eth0).unwrap_err().to_string(),
                message
            );
        }
        let v2 = config(
            r#"{"version": "V2", "network_interfaces": ["eth0"],
                "ipv4_address": "169.254.169.250", "imds_compat": true}"#,
        );
        assert_eq!(
            serde_json::to_value(v2.reported()).unwrap(),
            serde_json::json!({"version": "V2", "network_interfaces": ["eth0"],
                "ipv4_address": "169.254.169.250", "imds_compat": true})
        );
        for bad in [
            r#"{"network_interfaces": ["eth0"], "ipv4_address": ""}"#,
            r#"{"network_interfaces": ["eth0"], "version": "V3"}"#,
            r#"{"network_interfaces": ["eth0"], "extra": 1}"#,
            r#"{}"#,
        ] {
            assert!(serde_json::from_str::<MmdsConfig>(bad).is_err(), "{bad}");
        }
    }
}
