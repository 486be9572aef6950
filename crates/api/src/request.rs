//! What an API client can ask for, parsed and typed, and what it gets back.

use serde::{Deserialize, Serialize};

pub use crate::model::MachineConfigUpdate;
use crate::model::{BootSource, Drive, Logger, MachineConfig, Metrics, NetworkInterface};

/// `PUT /actions`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Action {
    /// Build and start the VM.
    InstanceStart,
    /// Inject Ctrl-Alt-Del through the i8042.
    SendCtrlAltDel,
    /// Write a metrics line now.
    FlushMetrics,
}

/// `PUT /actions` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActionRequest {
    /// The action.
    pub action_type: Action,
}

/// `PATCH /vm` states.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum VmStateRequest {
    /// Pause the vCPUs.
    Paused,
    /// Resume the vCPUs.
    Resumed,
}

/// `PATCH /vm` body.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmPatch {
    /// The state to move to.
    pub state: VmStateRequest,
}

/// `PATCH /drives/{id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive, which must match the path.
    pub drive_id: String,
    /// New backing file.
    pub path_on_host: Option<std::path::PathBuf>,
    /// New rate limiter.
    pub rate_limiter: Option<crate::model::RateLimiter>,
}

/// `PATCH /network-interfaces/{id}` body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface, which must match the path.
    pub iface_id: String,
    /// New limits on traffic to the guest.
    pub rx_rate_limiter: Option<crate::model::RateLimiter>,
    /// New limits on traffic from the guest.
    pub tx_rate_limiter: Option<crate::model::RateLimiter>,
}

/// A parsed API request.
#[derive(Clone, Debug, PartialEq)]
pub enum ApiRequest {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config`.
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config`.
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source`.
    PutBootSource(BootSource),
    /// `PUT /drives/{id}`.
    PutDrive(Drive),
    /// `PATCH /drives/{id}`.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}`.
    PutNetworkInterface(NetworkInterface),
    /// `PATCH /network-interfaces/{id}`.
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /vsock`.
    PutVsock(crate::model::Vsock),
    /// `PUT /balloon`.
    PutBalloon(crate::balloon::Balloon),
    /// `GET /balloon`.
    GetBalloon,
    /// `PATCH /balloon`.
    PatchBalloon(crate::balloon::BalloonUpdate),
    /// `GET /balloon/statistics`.
    GetBalloonStats,
    /// `PATCH /balloon/statistics`.
    PatchBalloonStats(crate::balloon::BalloonStatsUpdate),
    /// `PATCH /balloon/hinting/start`.
    StartBalloonHinting(crate::balloon::BalloonStartCmd),
    /// `GET /balloon/hinting/status`.
    GetBalloonHintingStatus,
    /// `PATCH /balloon/hinting/stop`.
    StopBalloonHinting,
    /// `PUT /serial`.
    PutSerial(crate::model::SerialConfig),
    /// `PUT /entropy`.
    PutEntropy(crate::model::Entropy),
    /// `PUT /logger`.
    PutLogger(Logger),
    /// `PUT /metrics`.
    PutMetrics(Metrics),
    /// `PUT /actions`.
    Action(Action),
    /// `PATCH /vm`.
    PatchVm(VmStateRequest),
    /// `GET /vm/config`.
    GetVmConfig,
    /// `GET /mmds`.
    GetMmds,
    /// `PUT /mmds`.
    PutMmds(serde_json::Value),
    /// `PATCH /mmds`.
    PatchMmds(serde_json::Value),
    /// `PUT /mmds/config`.
    PutMmdsConfig(ember_mmds::MmdsConfig),
    /// `PUT /snapshot/create`.
    CreateSnapshot(crate::snapshot::SnapshotCreate),
    /// `PUT /snapshot/load`.
    LoadSnapshot(crate::snapshot::SnapshotLoad),
}

impl ApiRequest {
    /// Firecracker's warning when the request uses a deprecated field; its
    /// answer then carries `Deprecation: true`.
    pub fn deprecation(&self) -> Option<&'static str> {
        match self {
            ApiRequest::PutMachineConfig(config) if config.cpu_template.is_some() => {
                Some("PUT /machine-config: cpu_template field is deprecated.")
            }
            ApiRequest::PatchMachineConfig(update) if update.cpu_template.is_some() => {
                Some("PATCH /machine-config: cpu_template field is deprecated.")
            }
            ApiRequest::PutVsock(vsock) if vsock.vsock_id.is_some() => {
                Some("PUT /vsock: vsock_id field is deprecated.")
            }
            ApiRequest::LoadSnapshot(load) if load.deprecated => {
                Some(crate::snapshot::LOAD_DEPRECATION)
            }
            ApiRequest::PutMmdsConfig(config) if config.version == ember_mmds::MmdsVersion::V1 => {
                Some("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
            }
            _ => None,
        }
    }
}

/// An answer to a request: an HTTP status and an optional JSON body.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: Option<String>,
    /// The request used a deprecated field or route (`Deprecation: true`).
    pub deprecated: bool,
}

/// The body of an error response.
#[derive(Serialize)]
struct Fault<'a> {
    fault_message: &'a str,
}

impl ApiResponse {
    /// 204 No Content.
    pub fn no_content() -> ApiResponse {
        ApiResponse {
            status: 204,
            body: None,
            deprecated: false,
        }
    }

    /// 200 OK with `value` as JSON.
    pub fn ok(value: &impl Serialize) -> ApiResponse {
        match serde_json::to_string(value) {
            Ok(body) => ApiResponse {
                status: 200,
                body: Some(body),
                deprecated: false,
            },
            Err(e) => ApiResponse::error(500, &format!("cannot serialize the response: {e}")),
        }
    }

    /// An error with `{"fault_message": ...}`.
    pub fn error(status: u16, message: &str) -> ApiResponse {
        let body = serde_json::to_string(&Fault {
            fault_message: message,
        })
        .unwrap_or_else(|_| String::from("{\"fault_message\":\"error\"}"));
        ApiResponse {
            status,
            body: Some(body),
            deprecated: false,
        }
    }

    /// 400 Bad Request with `message`.
    pub fn bad_request(message: &str) -> ApiResponse {
        ApiResponse::error(400, message)
    }
}
