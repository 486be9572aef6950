//! The balloon's API: the `balloon` object (`PUT`/`GET /balloon`, the config
//! file, `GET /vm/config`), the updates after the start (`PATCH /balloon`,
//! `PATCH /balloon/statistics`), the statistics (`GET
//! /balloon/statistics`) and free page hinting runs (`/balloon/hinting/*`),
//! answered in Firecracker's words.

use ember_vmm::{
    BalloonConfig, BalloonError, BalloonStats, HintingStatus, RunningVm, SharedBalloon,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::model::VmResources;
use crate::request::ApiResponse;
use crate::{Error, Result};

/// The `balloon` object.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Balloon {
    /// Target size in MiB.
    pub amount_mib: u32,
    /// Whether the guest deflates the balloon when it runs out of memory.
    pub deflate_on_oom: bool,
    /// Statistics polling interval in seconds (0: no statistics).
    #[serde(default)]
    pub stats_polling_interval_s: u16,
    /// Free page hinting: the host asks the guest for hints of its free
    /// pages with `PATCH /balloon/hinting/start`.
    #[serde(default)]
    pub free_page_hinting: bool,
    /// Free page reporting: the guest gives free pages back on its own.
    #[serde(default)]
    pub free_page_reporting: bool,
}

/// `PATCH /balloon`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonUpdate {
    /// New target size in MiB.
    pub amount_mib: u32,
}

/// `PATCH /balloon/statistics`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStatsUpdate {
    /// New polling interval in seconds.
    pub stats_polling_interval_s: u16,
}

/// `PATCH /balloon/hinting/start` (the body is optional).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BalloonStartCmd {
    /// End the run (`DONE`) as soon as the guest says it has finished
    /// (default true).
    #[serde(default = "acknowledge_by_default")]
    pub acknowledge_on_stop: bool,
}

impl Default for BalloonStartCmd {
    fn default() -> Self {
        BalloonStartCmd {
            acknowledge_on_stop: acknowledge_by_default(),
        }
    }
}

fn acknowledge_by_default() -> bool {
    true
}

/// `GET /balloon/hinting/status`, as Firecracker prints it (`guest_cmd`
/// is null until the guest sends a command).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
struct HintingStatusBody {
    host_cmd: u32,
    guest_cmd: Option<u32>,
}

impl From<HintingStatus> for HintingStatusBody {
    fn from(status: HintingStatus) -> Self {
        HintingStatusBody {
            host_cmd: status.host_cmd,
            guest_cmd: status.guest_cmd,
        }
    }
}

/// Firecracker's answer to a balloon larger than guest memory.
pub const TOO_MANY_PAGES: &str = "Amount of pages requested is too large.";
/// Firecracker's answer to a memory size below the balloon's target.
pub const INCOMPATIBLE_MEMORY: &str =
    "The memory size (MiB) is smaller than the previously set balloon device target size.";
/// Firecracker's answer when the VM has no balloon.
const NOT_FOUND: &str = "Failed perform action on device: Device not found";

impl Balloon {
    /// Refuses a balloon larger than `mem_size_mib`.
    pub fn validate(&self, mem_size_mib: u64) -> Result<()> {
        if u64::from(self.amount_mib) > mem_size_mib {
            return Err(Error::InvalidValue {
                field: "balloon.amount_mib",
                reason: TOO_MANY_PAGES.to_owned(),
            });
        }
        Ok(())
    }

    /// The device as the VMM takes it.
    pub fn to_balloon_config(&self) -> BalloonConfig {
        BalloonConfig {
            amount_mib: self.amount_mib,
            deflate_on_oom: self.deflate_on_oom,
            stats_polling_interval_s: self.stats_polling_interval_s,
            free_page_hinting: self.free_page_hinting,
            free_page_reporting: self.free_page_reporting,
        }
    }
}

/// Whether the configured balloon (if any) fits in `mem_size_mib`.
pub(crate) fn fits(resources: &VmResources, mem_size_mib: u64) -> bool {
    resources
        .balloon
        .is_none_or(|b| u64::from(b.amount_mib) <= mem_size_mib)
}

/// `PUT /balloon` before the start.
pub(crate) fn put(resources: &mut VmResources, balloon: Balloon) -> ApiResponse {
    match balloon.validate(resources.machine().mem_size_mib) {
        Ok(()) => {
            resources.balloon = Some(balloon);
            ApiResponse::no_content()
        }
        Err(Error::InvalidValue { reason, .. }) => config_error(&reason),
        Err(e) => ApiResponse::bad_request(&ember_vmm::error_chain(&e)),
    }
}

fn config_error(reason: &str) -> ApiResponse {
    ApiResponse::bad_request(&format!("Balloon config error: {reason}"))
}

fn update_error(reason: &dyn std::fmt::Display) -> ApiResponse {
    ApiResponse::bad_request(&format!("Balloon update error: {reason}"))
}

/// `GET /balloon`: the configuration (before the start), or the device's
/// as it is now.
pub(crate) fn get(resources: &VmResources, vm: Option<&RunningVm>) -> ApiResponse {
    let Some(configured) = resources.balloon else {
        return match vm {
            None => config_error("No balloon device found."),
            Some(_) => ApiResponse::bad_request(&format!("Internal Vmm error: {NOT_FOUND}")),
        };
    };
    let live = vm
        .and_then(|vm| vm.balloon().ok())
        .map(|device| lock(&device).config());
    ApiResponse::ok(&live.map_or(configured, |config| Balloon {
        amount_mib: config.amount_mib,
        stats_polling_interval_s: config.stats_polling_interval_s,
        ..configured
    }))
}

/// `PATCH /balloon` after the start; the resources follow (for `GET
/// /vm/config`).
pub(crate) fn patch(
    resources: &mut VmResources,
    vm: &RunningVm,
    update: BalloonUpdate,
) -> ApiResponse {
    let Ok(device) = vm.balloon() else {
        return update_error(&NOT_FOUND);
    };
    let result = lock(&device).update_size(update.amount_mib);
    answer_update(result, resources, |b| b.amount_mib = update.amount_mib)
}

/// `PATCH /balloon/statistics` after the start: a new interval, never
/// from or to 0.
pub(crate) fn patch_stats(
    resources: &mut VmResources,
    vm: &RunningVm,
    update: BalloonStatsUpdate,
) -> ApiResponse {
    let Ok(device) = vm.balloon() else {
        return update_error(&NOT_FOUND);
    };
    let interval = update.stats_polling_interval_s;
    let result = lock(&device).update_stats_interval(interval);
    answer_update(result, resources, |b| b.stats_polling_interval_s = interval)
}

fn answer_update(
    result: std::result::Result<(), BalloonError>,
    resources: &mut VmResources,
    apply: impl FnOnce(&mut Balloon),
) -> ApiResponse {
    match result {
        Ok(()) => {
            if let Some(balloon) = resources.balloon.as_mut() {
                apply(balloon);
            }
            ApiResponse::no_content()
        }
        Err(e) => update_error(&format_args!("Balloon: {e}")),
    }
}

/// `PATCH /balloon/hinting/start` after the start.
pub(crate) fn start_hinting(vm: &RunningVm, cmd: BalloonStartCmd) -> ApiResponse {
    with_device(vm, |device| {
        lock(device)
            .start_hinting(cmd.acknowledge_on_stop)
            .map(|()| ApiResponse::no_content())
    })
}

/// `PATCH /balloon/hinting/stop` after the start.
pub(crate) fn stop_hinting(vm: &RunningVm) -> ApiResponse {
    with_device(vm, |device| {
        lock(device)
            .stop_hinting()
            .map(|()| ApiResponse::no_content())
    })
}

/// `GET /balloon/hinting/status` after the start.
pub(crate) fn hinting_status(vm: &RunningVm) -> ApiResponse {
    with_device(vm, |device| {
        let status = lock(device).hinting_status();
        status.map(|status| ApiResponse::ok(&HintingStatusBody::from(status)))
    })
}

/// Runs `action` on the VM's balloon; its errors (and a VM without a
/// balloon) answer as Firecracker's balloon updates do.
fn with_device(
    vm: &RunningVm,
    action: impl FnOnce(&SharedBalloon) -> std::result::Result<ApiResponse, BalloonError>,
) -> ApiResponse {
    let Ok(device) = vm.balloon() else {
        return update_error(&NOT_FOUND);
    };
    action(&device).unwrap_or_else(|e| update_error(&format_args!("Balloon: {e}")))
}

/// `GET /balloon/statistics` after the start.
pub(crate) fn get_stats(vm: &RunningVm) -> ApiResponse {
    let Ok(device) = vm.balloon() else {
        return ApiResponse::bad_request(&format!("Internal Vmm error: {NOT_FOUND}"));
    };
    let stats = lock(&device).latest_stats();
    match stats {
        Ok(stats) => ApiResponse::ok(&stats_json(&stats)),
        Err(e) => ApiResponse::bad_request(&format!("Internal Vmm error: Balloon: {e}")),
    }
}

/// Firecracker's `BalloonStats`: the sizes, then each statistic reported.
pub fn stats_json(stats: &BalloonStats) -> Value {
    let mut object = Map::new();
    for (key, value) in [
        ("target_pages", stats.target_pages),
        ("actual_pages", stats.actual_pages),
        ("target_mib", stats.target_mib()),
        ("actual_mib", stats.actual_mib()),
    ] {
        object.insert(key.to_owned(), Value::from(value));
    }
    for (name, value) in stats.reported() {
        object.insert(name.to_owned(), Value::from(value));
    }
    Value::Object(object)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_object_is_firecrackers() {
        let b: Balloon =
            serde_json::from_str(r#"{"amount_mib": 4, "deflate_on_oom": true}"#).expect("parses");
        assert_eq!(b.stats_polling_interval_s, 0);
        let printed = serde_json::to_value(b).expect("prints");
        assert_eq!(
            printed,
            serde_json::json!({"amount_mib": 4, "deflate_on_oom": true,
                "stats_polling_interval_s": 0, "free_page_hinting": false,
                "free_page_reporting": false})
        );
        assert!(serde_json::from_str::<Balloon>(r#"{"amount_mib": 4}"#).is_err());
        assert!(serde_json::from_str::<Balloon>(
            r#"{"amount_mib": 4, "deflate_on_oom": true, "x": 1}"#
        )
        .is_err());
    }

    #[test]
    fn start_commands_acknowledge_stops_unless_told_otherwise() {
        let cmd: BalloonStartCmd = serde_json::from_str("{}").expect("parses");
        assert_eq!(cmd, BalloonStartCmd::default());
        assert!(cmd.acknowledge_on_stop);
        let cmd: BalloonStartCmd =
            serde_json::from_str(r#"{"acknowledge_on_stop": false}"#).expect("parses");
        assert!(!cmd.acknowledge_on_stop);
        assert!(serde_json::from_str::<BalloonStartCmd>(r#"{"ack": true}"#).is_err());
        let body = HintingStatusBody::from(HintingStatus {
            host_cmd: 2,
            guest_cmd: None,
        });
        assert_eq!(
            serde_json::to_value(body).expect("prints"),
            serde_json::json!({"host_cmd": 2, "guest_cmd": null})
        );
    }

    #[test]
    fn too_large_is_refused_and_hinting_is_built() {
        let b = Balloon {
            amount_mib: 129,
            ..Balloon::default()
        };
        let err = b.validate(128).expect_err("too large").to_string();
        assert!(err.contains(TOO_MANY_PAGES), "{err}");
        b.validate(129).expect("fits");
        let hinting = Balloon {
            free_page_hinting: true,
            ..Balloon::default()
        };
        hinting.validate(128).expect("free page hinting is built");
        assert!(hinting.to_balloon_config().free_page_hinting);
        let reporting = Balloon {
            free_page_reporting: true,
            ..Balloon::default()
        };
        reporting
            .validate(128)
            .expect("free page reporting is built");
        assert!(reporting.to_balloon_config().free_page_reporting);
    }

    #[test]
    fn put_answers_in_firecrackers_words() {
        let mut resources = VmResources::default();
        let big = Balloon {
            amount_mib: 1000,
            ..Balloon::default()
        };
        let response = put(&mut resources, big);
        assert_eq!(response.status, 400);
        let body = response.body.unwrap_or_default();
        assert!(
            body.contains("Balloon config error: Amount of pages requested is too large."),
            "{body}"
        );
        assert!(resources.balloon.is_none());
        assert_eq!(put(&mut resources, Balloon::default()).status, 204);
        assert_eq!(resources.balloon, Some(Balloon::default()));
        let got = get(&resources, None);
        assert_eq!(got.status, 200);
        resources.balloon = Some(Balloon {
            amount_mib: 64,
            ..Balloon::default()
        });
        assert!(fits(&resources, 64));
        assert!(!fits(&resources, 63));
        let none = get(&VmResources::default(), None).body.unwrap_or_default();
        assert!(
            none.contains("Balloon config error: No balloon device found."),
            "{none}"
        );
    }

    #[test]
    fn statistics_carry_the_sizes_and_every_reported_value() {
        let mut stats = BalloonStats {
            target_pages: 512,
            actual_pages: 256,
            ..BalloonStats::default()
        };
        stats.values[4] = Some(100);
        stats.values[15] = Some(7);
        assert_eq!(
            stats_json(&stats),
            serde_json::json!({"target_pages": 512, "actual_pages": 256, "target_mib": 2,
                "actual_mib": 1, "free_memory": 100, "direct_reclaim": 7})
        );
    }
}
