//! The API's counters: requests per method and per route under Firecracker's
//! names (`put_api_requests.drive_count`, ...), the server's own counts, the
//! latencies of pausing and resuming, and the process's start-up time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ember_vmm::MetricGroup;

use crate::request::{ApiRequest, VmStateRequest};
use crate::routes::Method;
use crate::snapshot::SnapshotType;

/// A route Firecracker counts: its method, path (with `/{id}` when the path
/// takes an id), and the names of its request and failure counters.
struct CountedRoute {
    method: Method,
    path: &'static str,
    count: &'static str,
    fails: Option<&'static str>,
}

const fn counted(
    method: Method,
    path: &'static str,
    count: &'static str,
    fails: Option<&'static str>,
) -> CountedRoute {
    CountedRoute {
        method,
        path,
        count,
        fails,
    }
}

/// The routes Ember serves that Firecracker counts, and their counters.
const COUNTED_ROUTES: &[CountedRoute] = &[
    counted(Method::Get, "/", "instance_info_count", None),
    counted(Method::Get, "/version", "vmm_version_count", None),
    counted(Method::Get, "/machine-config", "machine_cfg_count", None),
    counted(
        Method::Put,
        "/machine-config",
        "machine_cfg_count",
        Some("machine_cfg_fails"),
    ),
    counted(
        Method::Put,
        "/actions",
        "actions_count",
        Some("actions_fails"),
    ),
    counted(
        Method::Put,
        "/boot-source",
        "boot_source_count",
        Some("boot_source_fails"),
    ),
    counted(
        Method::Put,
        "/drives/{id}",
        "drive_count",
        Some("drive_fails"),
    ),
    counted(Method::Put, "/logger", "logger_count", Some("logger_fails")),
    counted(
        Method::Put,
        "/metrics",
        "metrics_count",
        Some("metrics_fails"),
    ),
    counted(
        Method::Put,
        "/network-interfaces/{id}",
        "network_count",
        Some("network_fails"),
    ),
    counted(Method::Put, "/vsock", "vsock_count", Some("vsock_fails")),
    counted(Method::Put, "/serial", "serial_count", Some("serial_fails")),
    counted(
        Method::Patch,
        "/drives/{id}",
        "drive_count",
        Some("drive_fails"),
    ),
    counted(
        Method::Patch,
        "/network-interfaces/{id}",
        "network_count",
        Some("network_fails"),
    ),
    counted(
        Method::Patch,
        "/machine-config",
        "machine_cfg_count",
        Some("machine_cfg_fails"),
    ),
    counted(Method::Get, "/mmds", "mmds_count", None),
    counted(Method::Put, "/mmds", "mmds_count", Some("mmds_fails")),
    counted(Method::Patch, "/mmds", "mmds_count", Some("mmds_fails")),
];

/// The Firecracker group of a method's request counters.
fn requests_group(method: Method) -> &'static str {
    match method {
        Method::Get => "get_api_requests",
        Method::Put => "put_api_requests",
        Method::Patch => "patch_api_requests",
    }
}

/// Whether `path` (without a trailing `/`) is the route `template`.
fn matches(template: &str, path: &str) -> bool {
    match template.strip_suffix("{id}") {
        Some(prefix) => path
            .strip_prefix(prefix)
            .is_some_and(|id| !id.is_empty() && !id.contains('/')),
        None => template == path,
    }
}

/// The index in [`COUNTED_ROUTES`] of the route `method` and `path` name.
fn counted_route(method: Method, path: &str) -> Option<usize> {
    let path = match path.strip_suffix('/') {
        Some(p) if !p.is_empty() => p,
        _ => path,
    };
    // Firecracker counts every `/mmds/...` (`/mmds/config` too) as `/mmds`.
    let path = if path.starts_with("/mmds/") {
        "/mmds"
    } else {
        path
    };
    COUNTED_ROUTES
        .iter()
        .position(|r| r.method == method && matches(r.path, path))
}

/// Microseconds in `elapsed`, saturating.
fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// What Firecracker's `latencies_us` times: pause, resume and snapshots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timed {
    /// `PATCH /vm` to `Paused`.
    Pause,
    /// `PATCH /vm` to `Resumed`.
    Resume,
    /// `PUT /snapshot/create` of a full snapshot.
    FullCreateSnapshot,
    /// `PUT /snapshot/create` of a diff snapshot.
    DiffCreateSnapshot,
    /// `PUT /snapshot/load`.
    LoadSnapshot,
}

/// The `latencies_us` names of each [`Timed`], seen from the API thread and
/// in the VMM, in [`Timed`] order.
const TIMED_NAMES: [(&str, &str); 5] = [
    ("pause_vm", "vmm_pause_vm"),
    ("resume_vm", "vmm_resume_vm"),
    ("full_create_snapshot", "vmm_full_create_snapshot"),
    ("diff_create_snapshot", "vmm_diff_create_snapshot"),
    ("load_snapshot", "vmm_load_snapshot"),
];

impl Timed {
    /// What `request` does that Firecracker times, if anything.
    pub fn of(request: &ApiRequest) -> Option<Timed> {
        match request {
            ApiRequest::PatchVm(VmStateRequest::Paused) => Some(Timed::Pause),
            ApiRequest::PatchVm(VmStateRequest::Resumed) => Some(Timed::Resume),
            ApiRequest::CreateSnapshot(create) => Some(match create.snapshot_type {
                SnapshotType::Full => Timed::FullCreateSnapshot,
                SnapshotType::Diff => Timed::DiffCreateSnapshot,
            }),
            ApiRequest::LoadSnapshot(_) => Some(Timed::LoadSnapshot),
            _ => None,
        }
    }
}

/// Counts of API requests, for metrics.
#[derive(Debug)]
pub struct ApiCounters {
    /// GET requests.
    pub get: AtomicU64,
    /// PUT requests.
    pub put: AtomicU64,
    /// PATCH requests.
    pub patch: AtomicU64,
    /// Requests answered with a 4xx or 5xx status.
    pub failed: AtomicU64,
    /// Connections refused because too many were open.
    pub refused_connections: AtomicU64,
    /// Connections closed because they timed out.
    pub timed_out_connections: AtomicU64,
    /// Requests using a field Firecracker deprecates (`cpu_template` in
    /// `PUT /machine-config`, `vsock_id` in `PUT /vsock`).
    deprecated: AtomicU64,
    /// Per [`COUNTED_ROUTES`] entry: requests, and those refused before the VMM.
    routes: Vec<(AtomicU64, AtomicU64)>,
    /// `latencies_us`, per [`Timed`]: the last one at the API and in the VMM.
    latencies_us: [[AtomicU64; 2]; TIMED_NAMES.len()],
    /// Wall and CPU microseconds from the process start to the API serving.
    startup_us: AtomicU64,
    startup_cpu_us: AtomicU64,
}

impl Default for ApiCounters {
    fn default() -> Self {
        ApiCounters {
            get: AtomicU64::new(0),
            put: AtomicU64::new(0),
            patch: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            refused_connections: AtomicU64::new(0),
            timed_out_connections: AtomicU64::new(0),
            deprecated: AtomicU64::new(0),
            routes: COUNTED_ROUTES.iter().map(|_| Default::default()).collect(),
            latencies_us: Default::default(),
            startup_us: AtomicU64::new(0),
            startup_cpu_us: AtomicU64::new(0),
        }
    }
}

fn load(counter: &AtomicU64) -> u64 {
    counter.load(Ordering::Relaxed)
}

impl ApiCounters {
    /// Counts a request for `method` and `path` in its method's total and,
    /// for a route Firecracker counts, in that route's counter.
    pub fn count_request(&self, method: Method, path: &str) {
        let total = match method {
            Method::Get => &self.get,
            Method::Put => &self.put,
            Method::Patch => &self.patch,
        };
        total.fetch_add(1, Ordering::Relaxed);
        if let Some((count, _)) = counted_route(method, path).and_then(|i| self.routes.get(i)) {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts a request for `method` and `path` that the API refused before
    /// it reached the VMM (a body or path that does not parse), as
    /// Firecracker counts its `*_fails`.
    pub fn count_refused(&self, method: Method, path: &str) {
        if let Some((_, fails)) = counted_route(method, path).and_then(|i| self.routes.get(i)) {
            fails.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Counts `request` if it uses a field Firecracker deprecates.
    pub fn count_deprecated(&self, request: &ApiRequest) {
        let deprecated = match request {
            ApiRequest::PutMachineConfig(config) => config.cpu_template.is_some(),
            ApiRequest::PutVsock(vsock) => vsock.vsock_id.is_some(),
            ApiRequest::PutMmdsConfig(config) => config.version == ember_mmds::MmdsVersion::V1,
            ApiRequest::LoadSnapshot(load) => load.deprecated,
            _ => false,
        };
        if deprecated {
            self.deprecated.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records how long a timed operation took, seen from the API thread
    /// (`vmm: false`) or in the VMM (`vmm: true`).
    pub fn record_latency(&self, what: Timed, vmm: bool, elapsed: Duration) {
        self.latencies_us[what as usize][usize::from(vmm)]
            .store(micros(elapsed), Ordering::Relaxed);
    }

    /// Records the time from the process start to the API serving, each
    /// figure only when it was measured.
    pub fn record_startup(&self, wall_us: Option<u64>, cpu_us: Option<u64>) {
        if let Some(wall_us) = wall_us {
            self.startup_us.store(wall_us, Ordering::Relaxed);
        }
        if let Some(cpu_us) = cpu_us {
            self.startup_cpu_us.store(cpu_us, Ordering::Relaxed);
        }
    }

    /// The Firecracker groups of request counters, one per method.
    fn request_groups(&self) -> Vec<MetricGroup> {
        [Method::Get, Method::Put, Method::Patch]
            .into_iter()
            .map(|method| {
                let counters = COUNTED_ROUTES
                    .iter()
                    .zip(&self.routes)
                    .filter(|(route, _)| route.method == method)
                    .flat_map(|(route, (count, fails))| {
                        let fails = route.fails.map(|name| (name, load(fails)));
                        std::iter::once((route.count, load(count))).chain(fails)
                    })
                    .collect();
                MetricGroup::new(requests_group(method), counters)
            })
            .collect()
    }

    /// The counters, grouped (cumulative, under Firecracker's group names;
    /// those Firecracker has no name for go to the `ember` group).
    pub fn groups(&self) -> Vec<MetricGroup> {
        let mut groups = self.request_groups();
        groups.push(MetricGroup::new(
            "api_server",
            vec![
                ("process_startup_time_us", load(&self.startup_us)),
                ("process_startup_time_cpu_us", load(&self.startup_cpu_us)),
                ("get_count", load(&self.get)),
                ("put_count", load(&self.put)),
                ("patch_count", load(&self.patch)),
                ("failed_count", load(&self.failed)),
                ("refused_connection_count", load(&self.refused_connections)),
                (
                    "timed_out_connection_count",
                    load(&self.timed_out_connections),
                ),
            ],
        ));
        groups.push(MetricGroup::new(
            "deprecated_api",
            vec![("deprecated_http_api_calls", load(&self.deprecated))],
        ));
        let latencies = TIMED_NAMES.iter().zip(&self.latencies_us).flat_map(
            |((api, vmm), [at_api, in_vmm])| [(*api, load(at_api)), (*vmm, load(in_vmm))],
        );
        groups.push(MetricGroup::new("latencies_us", latencies.collect()));
        groups
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::schema;
    use crate::routes::ROUTES;

    fn value(groups: &[MetricGroup], group: &str, key: &str) -> u64 {
        groups
            .iter()
            .filter(|g| g.name == group)
            .flat_map(|g| &g.counters)
            .find(|(k, _)| *k == key)
            .map_or_else(|| panic!("{group}.{key} missing"), |(_, v)| *v)
    }

    #[test]
    fn requests_are_counted_per_route_and_method() {
        let counters = ApiCounters::default();
        counters.count_request(Method::Put, "/drives/rootfs");
        counters.count_request(Method::Put, "/drives/data/");
        counters.count_refused(Method::Put, "/drives/data/");
        counters.count_request(Method::Patch, "/drives/rootfs");
        counters.count_request(Method::Get, "/");
        counters.count_request(Method::Get, "/vm/config");
        counters.count_request(Method::Put, "/drives");
        let groups = counters.groups();
        assert_eq!(value(&groups, "put_api_requests", "drive_count"), 2);
        assert_eq!(value(&groups, "put_api_requests", "drive_fails"), 1);
        assert_eq!(value(&groups, "patch_api_requests", "drive_count"), 1);
        assert_eq!(value(&groups, "patch_api_requests", "drive_fails"), 0);
        assert_eq!(value(&groups, "get_api_requests", "instance_info_count"), 1);
        assert_eq!(value(&groups, "api_server", "put_count"), 3);
        assert_eq!(value(&groups, "api_server", "get_count"), 2);
    }

    #[test]
    fn every_mmds_path_counts_as_mmds() {
        let counters = ApiCounters::default();
        counters.count_request(Method::Get, "/mmds");
        counters.count_request(Method::Put, "/mmds");
        counters.count_request(Method::Put, "/mmds/config");
        counters.count_refused(Method::Put, "/mmds/config");
        counters.count_request(Method::Patch, "/mmds/");
        counters.count_refused(Method::Patch, "/mmds");
        let groups = counters.groups();
        assert_eq!(value(&groups, "get_api_requests", "mmds_count"), 1);
        assert_eq!(value(&groups, "put_api_requests", "mmds_count"), 2);
        assert_eq!(value(&groups, "put_api_requests", "mmds_fails"), 1);
        assert_eq!(value(&groups, "patch_api_requests", "mmds_count"), 1);
        assert_eq!(value(&groups, "patch_api_requests", "mmds_fails"), 1);
    }

    #[test]
    fn counted_routes_are_served_and_named_as_firecracker_names_them() {
        for route in COUNTED_ROUTES {
            assert!(
                ROUTES.iter().any(|(path, methods)| {
                    path.split('{').next() == route.path.split('{').next()
                        && methods.contains(&route.method)
                }),
                "{} {} is not served",
                route.method.as_str(),
                route.path
            );
            let group = schema::group_of(requests_group(route.method)).unwrap();
            for name in std::iter::once(route.count).chain(route.fails) {
                assert!(group.kind(name).is_some(), "{}.{name}", group.name);
            }
        }
    }

    #[test]
    fn deprecated_fields_are_counted() {
        let counters = ApiCounters::default();
        let parse = |method, path, body: &str| {
            crate::routes::parse(method, path, Some(body.as_bytes())).unwrap()
        };
        let requests = [
            parse(
                Method::Put,
                "/vsock",
                r#"{"guest_cid": 3, "uds_path": "/v"}"#,
            ),
            parse(
                Method::Put,
                "/vsock",
                r#"{"vsock_id": "v", "guest_cid": 3, "uds_path": "/v"}"#,
            ),
            parse(
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 64, "cpu_template": "None"}"#,
            ),
            parse(
                Method::Put,
                "/machine-config",
                r#"{"vcpu_count": 1, "mem_size_mib": 64}"#,
            ),
            parse(
                Method::Put,
                "/mmds/config",
                r#"{"network_interfaces": ["eth0"]}"#,
            ),
            parse(
                Method::Put,
                "/mmds/config",
                r#"{"network_interfaces": ["eth0"], "version": "V2"}"#,
            ),
        ];
        for request in &requests {
            counters.count_deprecated(request);
        }
        let groups = counters.groups();
        assert_eq!(
            value(&groups, "deprecated_api", "deprecated_http_api_calls"),
            3
        );
    }

    #[test]
    fn latencies_keep_the_last_value() {
        let counters = ApiCounters::default();
        counters.record_latency(Timed::Pause, true, Duration::from_micros(70));
        counters.record_latency(Timed::Pause, true, Duration::from_micros(40));
        counters.record_latency(Timed::Resume, false, Duration::from_millis(2));
        let groups = counters.groups();
        assert_eq!(value(&groups, "latencies_us", "vmm_pause_vm"), 40);
        assert_eq!(value(&groups, "latencies_us", "resume_vm"), 2000);
        assert_eq!(value(&groups, "latencies_us", "pause_vm"), 0);
    }
}
