//! `PUT /snapshot/create` and `PUT /snapshot/load`: Firecracker's request
//! bodies, checked as Firecracker checks them, and what the controller does
//! with them.

use std::path::PathBuf;

use serde::Deserialize;

use ember_vmm::{RunningVm, SnapshotFiles, SnapshotKind, SnapshotSection};

use crate::metrics::api::Timed;
use crate::model::{MachineConfig, VmResources};
use crate::request::{ApiRequest, ApiResponse};
use crate::server::ApiCounters;

/// Firecracker's words when both memory sources are given to a load.
pub const TOO_MANY_FIELDS: &str =
    "too many fields: either `mem_backend` or `mem_file_path` exclusively is required";
/// Firecracker's words when no memory source is given to a load.
pub const MISSING_FIELD: &str =
    "missing field: either `mem_backend` or `mem_file_path` is required";
/// Firecracker's deprecation warning for a load's old fields.
pub const LOAD_DEPRECATION: &str =
    "PUT /snapshot/load: mem_file_path and enable_diff_snapshots fields are deprecated.";
/// Firecracker's words for a load after a boot-specific configuration call.
pub const LOAD_NOT_ALLOWED: &str = "Load snapshot error: Loading a microVM snapshot not allowed \
                                    after configuring boot-specific resources.";

/// What a snapshot holds of guest memory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// The pages written since the last snapshot, into the existing memory file.
    Diff,
}

/// `PUT /snapshot/create` body.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreate {
    /// Full or diff.
    #[serde(default)]
    pub snapshot_type: SnapshotType,
    /// Where the VM state goes.
    pub snapshot_path: PathBuf,
    /// Where guest memory goes.
    pub mem_file_path: PathBuf,
}

/// Where a load takes guest memory from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum MemBackendType {
    /// A memory file, mapped privately.
    File,
    /// A userfaultfd handler process (not in Ember yet).
    Uffd,
}

/// `mem_backend` of a load.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemBackend {
    /// The memory file (or the handler's socket, for `Uffd`).
    pub backend_path: PathBuf,
    /// What `backend_path` is.
    pub backend_type: MemBackendType,
}

/// A network interface restored on another TAP.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface, by its id in the snapshot.
    pub iface_id: String,
    /// The TAP to use instead of the saved one.
    pub host_dev_name: String,
}

/// The vsock device restored on another Unix socket.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// The socket path to use instead of the saved one.
    pub uds_path: PathBuf,
}

/// Huge pages for the restored memory (`Snapshot`: as saved).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum LoadHugePages {
    /// As the snapshot says (Ember saves only `None`).
    #[default]
    Snapshot,
    /// Normal pages.
    None,
    /// Transparent huge pages.
    Transparent,
    /// 2 MiB hugetlbfs pages.
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PUT /snapshot/load` body as sent.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LoadBody {
    snapshot_path: PathBuf,
    mem_file_path: Option<PathBuf>,
    mem_backend: Option<MemBackend>,
    #[serde(default)]
    enable_diff_snapshots: bool,
    #[serde(default)]
    track_dirty_pages: bool,
    #[serde(default)]
    resume_vm: bool,
    #[serde(default)]
    network_overrides: Vec<NetworkOverride>,
    vsock_override: Option<VsockOverride>,
    #[serde(default)]
    clock_realtime: bool,
    #[serde(default)]
    huge_pages: LoadHugePages,
}

/// `PUT /snapshot/load`, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotLoad {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file.
    pub mem_file_path: PathBuf,
    /// Track dirty pages for later diff snapshots.
    pub track_dirty_pages: bool,
    /// Resume the VM once loaded (otherwise it stays paused).
    pub resume_vm: bool,
    /// Interfaces moved to other TAPs.
    pub network_overrides: Vec<NetworkOverride>,
    /// The vsock device on another socket.
    pub vsock_override: Option<VsockOverride>,
    /// Whether deprecated fields were used.
    pub deprecated: bool,
}

fn fault(message: &str) -> ApiResponse {
    ApiResponse::bad_request(message)
}

fn deserialize_fault(reason: &str) -> ApiResponse {
    fault(&format!(
        "An error occurred when deserializing the json body of a request: {reason}."
    ))
}

/// The configuration a VM restored by `load` has: the saved one (when the
/// snapshot carries it) with the load's overrides applied, the machine as
/// restored.
pub fn restored_resources(
    sections: &[SnapshotSection],
    load: &SnapshotLoad,
    machine: &ember_vmm::MachineInfo,
) -> VmResources {
    let saved = sections
        .iter()
        .find(|s| s.id == RESOURCES_SECTION)
        .and_then(|s| match s.decode::<VmResources>() {
            Ok(resources) => Some(resources),
            Err(e) => {
                log::warn!("the snapshot's configuration cannot be read back: {e}");
                None
            }
        });
    let mut resources = saved.unwrap_or_default();
    for over in &load.network_overrides {
        for iface in resources
            .network_interfaces
            .iter_mut()
            .filter(|i| i.iface_id == over.iface_id)
        {
            iface.host_dev_name = over.host_dev_name.clone();
        }
    }
    if let (Some(vsock), Some(over)) = (resources.vsock.as_mut(), &load.vsock_override) {
        vsock.uds_path = over.uds_path.clone();
    }
    let cpu_template = resources
        .machine_config
        .as_ref()
        .and_then(|m| m.cpu_template);
    resources.machine_config = Some(MachineConfig {
        cpu_template,
        ..MachineConfig::restored(machine)
    });
    resources
}

/// Parses a `PUT /snapshot/load` body as Firecracker does, refusing what
/// Ember does not do yet by name.
pub fn parse_load(body: &[u8]) -> Result<SnapshotLoad, ApiResponse> {
    let body: LoadBody =
        serde_json::from_slice(body).map_err(|e| deserialize_fault(&e.to_string()))?;
    let mem_file_path =
        match (body.mem_backend, body.mem_file_path.clone()) {
            (Some(_), Some(_)) => return Err(deserialize_fault(TOO_MANY_FIELDS)),
            (None, None) => return Err(deserialize_fault(MISSING_FIELD)),
            (None, Some(path)) => path,
            (Some(backend), None) => match backend.backend_type {
                MemBackendType::File => backend.backend_path,
                MemBackendType::Uffd => return Err(fault(
                    "Load snapshot error: `mem_backend.backend_type: Uffd` is not supported by \
                     this version of Ember; use `File`.",
                )),
            },
        };
    if body.clock_realtime {
        return Err(fault(
            "Load snapshot error: `clock_realtime: true` is not supported by this version of \
             Ember.",
        ));
    }
    if !matches!(
        body.huge_pages,
        LoadHugePages::Snapshot | LoadHugePages::None
    ) {
        return Err(fault(
            "Load snapshot error: huge pages are not supported by this version of Ember \
             (`huge_pages` must be `Snapshot` or `None`).",
        ));
    }
    Ok(SnapshotLoad {
        snapshot_path: body.snapshot_path,
        mem_file_path,
        track_dirty_pages: body.track_dirty_pages || body.enable_diff_snapshots,
        resume_vm: body.resume_vm,
        network_overrides: body.network_overrides,
        vsock_override: body.vsock_override,
        deprecated: body.mem_file_path.is_some() || body.enable_diff_snapshots,
    })
}

/// Whether `request` configures a boot-specific resource: after one,
/// Firecracker refuses to load a snapshot.
pub fn is_boot_specific(request: &ApiRequest) -> bool {
    matches!(
        request,
        ApiRequest::PutBootSource(_)
            | ApiRequest::PutMachineConfig(_)
            | ApiRequest::PatchMachineConfig(_)
            | ApiRequest::PutDrive(_)
            | ApiRequest::PutNetworkInterface(_)
            | ApiRequest::PutVsock(_)
            | ApiRequest::PutBalloon(_)
            | ApiRequest::PutEntropy(_)
            | ApiRequest::PutMmdsConfig(_)
    )
}

/// The state file's section holding the API's view of the VM (what
/// `GET /vm/config` answers), optional for readers that do not know it.
pub const RESOURCES_SECTION: &str = "app.api.vm-config";

/// `PUT /snapshot/create` on a started VM: refused unless it is paused. The
/// VM's configuration (`resources`) is saved beside its state.
pub fn create(
    vm: &mut RunningVm,
    create: &SnapshotCreate,
    resources: &VmResources,
    counters: &ApiCounters,
) -> ApiResponse {
    let kind = match create.snapshot_type {
        SnapshotType::Full => SnapshotKind::Full,
        SnapshotType::Diff => SnapshotKind::Diff,
    };
    let mut files = SnapshotFiles::new(kind, &create.snapshot_path, &create.mem_file_path);
    match SnapshotSection::json(RESOURCES_SECTION, 1, resources) {
        Ok(mut section) => {
            section.required = false;
            files.extra.push(section);
        }
        Err(e) => return ApiResponse::error(500, &format!("Create snapshot error: {e}")),
    }
    match vm.snapshot(&files) {
        Ok(report) => {
            let timed = match kind {
                SnapshotKind::Full => Timed::FullCreateSnapshot,
                SnapshotKind::Diff => Timed::DiffCreateSnapshot,
            };
            counters.record_latency(timed, true, report.duration);
            ApiResponse::no_content()
        }
        Err(error) => fault(&format!(
            "Create snapshot error: {}",
            ember_vmm::error_chain(&error)
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault_of(body: &str) -> String {
        let response = parse_load(body.as_bytes()).expect_err("a fault");
        assert_eq!(response.status, 400);
        let body: serde_json::Value =
            serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
        body["fault_message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn loads_are_refused_as_test_negative_snapshot_load_api_expects() {
        assert!(fault_of(
            r#"{"snapshot_path":"foo","mem_backend":{"backend_type":"File","backend_path":"bar"},
                "mem_file_path":"bar"}"#
        )
        .contains(
            "too many fields: either `mem_backend` or `mem_file_path` exclusively is required."
        ));
        assert!(
            fault_of(r#"{"snapshot_path":"foo","mem_backend":{"backend_path":"bar"}}"#)
                .contains("missing field `backend_type`")
        );
        assert!(
            fault_of(r#"{"snapshot_path":"foo","mem_backend":{"backend_type":"File"}}"#)
                .contains("missing field `backend_path`")
        );
        assert!(fault_of(
            r#"{"snapshot_path":"foo","mem_backend":{"backend_type":"foo","backend_path":"bar"}}"#
        )
        .contains("unknown variant `foo`, expected `File` or `Uffd`"));
        assert!(
            fault_of(r#"{"mem_backend":{"backend_type":"File","backend_path":"bar"}}"#)
                .contains("missing field `snapshot_path`")
        );
        assert!(fault_of(r#"{"snapshot_path":"foo"}"#)
            .contains("missing field: either `mem_backend` or `mem_file_path` is required"));
    }

    #[test]
    fn the_old_fields_still_load_and_are_marked_deprecated() {
        let load = parse_load(
            br#"{"snapshot_path":"s","mem_file_path":"m","enable_diff_snapshots":true}"#,
        )
        .unwrap();
        assert_eq!(load.mem_file_path, PathBuf::from("m"));
        assert!(load.track_dirty_pages && load.deprecated && !load.resume_vm);
        let load = parse_load(
            br#"{"snapshot_path":"s","mem_backend":{"backend_type":"File","backend_path":"m"},
                 "resume_vm":true,"network_overrides":[{"iface_id":"eth0","host_dev_name":"tap1"}],
                 "vsock_override":{"uds_path":"/v.sock"}}"#,
        )
        .unwrap();
        assert!(!load.deprecated && load.resume_vm && !load.track_dirty_pages);
        assert_eq!(load.network_overrides[0].host_dev_name, "tap1");
        assert_eq!(
            load.vsock_override,
            Some(VsockOverride {
                uds_path: "/v.sock".into()
            })
        );
    }

    #[test]
    fn what_ember_does_not_do_yet_is_refused_by_name() {
        assert!(fault_of(
            r#"{"snapshot_path":"s","mem_backend":{"backend_type":"Uffd","backend_path":"u"}}"#
        )
        .contains("Uffd"));
        assert!(
            fault_of(r#"{"snapshot_path":"s","mem_file_path":"m","clock_realtime":true}"#)
                .contains("clock_realtime")
        );
        assert!(
            fault_of(r#"{"snapshot_path":"s","mem_file_path":"m","huge_pages":"2M"}"#)
                .contains("huge pages")
        );
        assert!(
            fault_of(r#"{"snapshot_path":"s","mem_file_path":"m","bogus":1}"#)
                .contains("unknown field `bogus`")
        );
    }
}
