//! From an HTTP method, path and body to an [`ApiRequest`]: the route table
//! (also what the OpenAPI document must list) and the JSON parsing, with a
//! clear `fault_message` for every way a request can be wrong.

use serde::de::DeserializeOwned;

use crate::model::{
    check_path_id, BootSource, Drive, Entropy, Logger, MachineConfig, Metrics, NetworkInterface,
    Vsock,
};
use crate::request::{
    ActionRequest, ApiRequest, ApiResponse, DriveUpdate, MachineConfigUpdate,
    NetworkInterfaceUpdate, VmPatch,
};

/// HTTP methods the API serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
}

impl Method {
    /// The method's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Put => "PUT",
            Method::Patch => "PATCH",
        }
    }
}

/// Every route: a path template (`{id}` for a path parameter) and its methods.
pub const ROUTES: &[(&str, &[Method])] = &[
    ("/", &[Method::Get]),
    ("/version", &[Method::Get]),
    (
        "/machine-config",
        &[Method::Get, Method::Put, Method::Patch],
    ),
    ("/boot-source", &[Method::Put]),
    ("/drives/{drive_id}", &[Method::Put, Method::Patch]),
    (
        "/network-interfaces/{iface_id}",
        &[Method::Put, Method::Patch],
    ),
    ("/vsock", &[Method::Put]),
    ("/balloon", &[Method::Get, Method::Put, Method::Patch]),
    ("/balloon/statistics", &[Method::Get, Method::Patch]),
    ("/balloon/hinting/start", &[Method::Patch]),
    ("/balloon/hinting/status", &[Method::Get]),
    ("/balloon/hinting/stop", &[Method::Patch]),
    ("/serial", &[Method::Put]),
    ("/entropy", &[Method::Put]),
    ("/logger", &[Method::Put]),
    ("/metrics", &[Method::Put]),
    ("/actions", &[Method::Put]),
    ("/vm", &[Method::Patch]),
    ("/vm/config", &[Method::Get]),
    ("/mmds", &[Method::Get, Method::Put, Method::Patch]),
    ("/mmds/config", &[Method::Put]),
    ("/snapshot/create", &[Method::Put]),
    ("/snapshot/load", &[Method::Put]),
];

/// Firecracker resources Ember does not serve yet, by their first path segment.
const MISSING_RESOURCES: &[&str] = &["cpu-config", "hotplug", "pmem"];

fn fault(message: &str) -> ApiResponse {
    ApiResponse::bad_request(message)
}

/// The request body as `T`, refused in Firecracker's words.
fn json<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiResponse> {
    serde_json::from_slice(body).map_err(|e| {
        fault(&format!(
            "An error occurred when deserializing the json body of a request: {e}."
        ))
    })
}

/// The resource id from the path, checked as Firecracker checks it.
fn checked_id(id: Option<&str>) -> Result<&str, ApiResponse> {
    let id = id.unwrap_or_default();
    check_path_id(id).map_err(fault)?;
    Ok(id)
}

/// Checks that the id in the path and the id in the body agree (drives).
fn same_drive_id(path_id: &str, body_id: &str) -> Result<(), ApiResponse> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(fault(
            "The id from the path does not match the id from the body!",
        ))
    }
}

/// Checks that the id in the path and the id in the body agree (interfaces).
fn same_iface_id(path_id: &str, body_id: &str) -> Result<(), ApiResponse> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(fault(&format!(
            "The id from the path [{path_id}] does not match the id from the body [{body_id}]!"
        )))
    }
}

/// `PUT /mmds` (the document) or `PUT /mmds/config`.
fn put_mmds(second: Option<&str>, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    match second {
        None => Ok(ApiRequest::PutMmds(json(body)?)),
        Some("config") => Ok(ApiRequest::PutMmdsConfig(json(body)?)),
        Some(other) => Err(fault(&format!("Unrecognized PUT request path `{other}`."))),
    }
}

/// `PUT /snapshot/create` or `PUT /snapshot/load`.
fn put_snapshot(second: Option<&str>, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    match second {
        Some("create") => Ok(ApiRequest::CreateSnapshot(json(body)?)),
        Some("load") => Ok(ApiRequest::LoadSnapshot(crate::snapshot::parse_load(body)?)),
        Some(other) => Err(fault(&format!(
            "Invalid request method and/or path: PUT /snapshot/{other}."
        ))),
        None => Err(fault("Missing snapshot operation type.")),
    }
}

/// `GET /balloon`, `GET /balloon/statistics` and `GET
/// /balloon/hinting/status`.
fn get_balloon(second: Option<&str>, third: Option<&str>) -> Result<ApiRequest, ApiResponse> {
    match (second, third) {
        (None, _) => Ok(ApiRequest::GetBalloon),
        (Some("statistics"), _) => Ok(ApiRequest::GetBalloonStats),
        (Some("hinting"), Some("status")) => Ok(ApiRequest::GetBalloonHintingStatus),
        (Some("hinting"), other) => Err(fault(&format!(
            "Unrecognized GET request path `/hinting/{}`.",
            other.unwrap_or_default()
        ))),
        (Some(other), _) => Err(fault(&format!("Unrecognized GET request path `{other}`."))),
    }
}

/// `PATCH /balloon/hinting/start` (an optional body) and `PATCH
/// /balloon/hinting/stop`.
fn patch_hinting(third: Option<&str>, body: Option<&[u8]>) -> Result<ApiRequest, ApiResponse> {
    match third {
        Some("start") => Ok(ApiRequest::StartBalloonHinting(match body {
            Some(body) => json(body)?,
            None => crate::balloon::BalloonStartCmd::default(),
        })),
        Some("stop") => Ok(ApiRequest::StopBalloonHinting),
        other => Err(fault(&format!(
            "Unrecognized PATCH request path `/hinting/{}`.",
            other.unwrap_or_default()
        ))),
    }
}

/// `PATCH /balloon` and `PATCH /balloon/statistics`.
fn patch_balloon(second: Option<&str>, body: &[u8]) -> Result<ApiRequest, ApiResponse> {
    match second {
        None => Ok(ApiRequest::PatchBalloon(json(body)?)),
        Some("statistics") => Ok(ApiRequest::PatchBalloonStats(json(body)?)),
        Some(_) => Err(invalid_path(Method::Patch, "balloon")),
    }
}

fn invalid_path(method: Method, resource: &str) -> ApiResponse {
    if MISSING_RESOURCES.contains(&resource) {
        return fault(&format!(
            "`/{resource}` is not supported by this version of Ember \
             (Invalid request method and/or path: {} {resource}.)",
            method.as_str()
        ));
    }
    fault(&format!(
        "Invalid request method and/or path: {} {resource}.",
        method.as_str()
    ))
}

/// Parses one request. The error is the response to send back.
///
/// Paths are read as Firecracker reads them: leading slashes are ignored,
/// the first segment names the resource, the second (if the resource takes
/// one) is the id or sub-resource, and any further segments are ignored. A
/// GET must come without a body, a PUT or PATCH with one (an empty body is
/// none).
pub fn parse(method: Method, path: &str, body: Option<&[u8]>) -> Result<ApiRequest, ApiResponse> {
    let body = body.filter(|b| !b.is_empty());
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or_default();
    let second = segments.next();
    let third = segments.next();
    use Method::*;
    let request = match (method, resource, body) {
        (Get, "", None) => ApiRequest::GetInstanceInfo,
        (Get, "version", None) => ApiRequest::GetVersion,
        (Get, "vm", None) if second == Some("config") => ApiRequest::GetVmConfig,
        (Get, "machine-config", None) => ApiRequest::GetMachineConfig,
        (Get, "mmds", None) => ApiRequest::GetMmds,
        (Get, "balloon", None) => get_balloon(second, third)?,
        (Get, _, Some(_)) => return Err(fault("GET request cannot have a body.")),
        (Put, "actions", Some(body)) => {
            ApiRequest::Action(json::<ActionRequest>(body)?.action_type)
        }
        (Put, "boot-source", Some(body)) => ApiRequest::PutBootSource(json::<BootSource>(body)?),
        (Put, "drives", Some(body)) => {
            let id = checked_id(second)?;
            let drive = json::<Drive>(body)?;
            same_drive_id(id, &drive.drive_id)?;
            ApiRequest::PutDrive(drive)
        }
        (Put, "logger", Some(body)) => ApiRequest::PutLogger(json::<Logger>(body)?),
        (Put, "machine-config", Some(body)) => {
            ApiRequest::PutMachineConfig(json::<MachineConfig>(body)?)
        }
        (Put, "metrics", Some(body)) => ApiRequest::PutMetrics(json::<Metrics>(body)?),
        (Put, "mmds", Some(body)) => put_mmds(second, body)?,
        (Put, "network-interfaces", Some(body)) => {
            let id = checked_id(second)?;
            let iface = json::<NetworkInterface>(body)?;
            same_iface_id(id, &iface.iface_id)?;
            ApiRequest::PutNetworkInterface(iface)
        }
        (Put, "vsock", Some(body)) => ApiRequest::PutVsock(json::<Vsock>(body)?),
        (Put, "balloon", Some(body)) if second.is_none() => ApiRequest::PutBalloon(json(body)?),
        (Put, "serial", Some(body)) => ApiRequest::PutSerial(json(body)?),
        (Put, "entropy", Some(body)) => ApiRequest::PutEntropy(json::<Entropy>(body)?),
        (Put, "snapshot", Some(body)) => put_snapshot(second, body)?,
        (Put, _, None) => return Err(fault("Empty PUT request.")),
        (Patch, "drives", Some(body)) => {
            let id = checked_id(second)?;
            let update = json::<DriveUpdate>(body)?;
            same_drive_id(id, &update.drive_id)?;
            ApiRequest::PatchDrive(update)
        }
        (Patch, "machine-config", Some(body)) => {
            let update = json::<MachineConfigUpdate>(body)?;
            if update.is_empty() {
                return Err(fault("Empty PATCH request."));
            }
            ApiRequest::PatchMachineConfig(update)
        }
        (Patch, "network-interfaces", Some(body)) => {
            let id = checked_id(second)?;
            let update = json::<NetworkInterfaceUpdate>(body)?;
            same_iface_id(id, &update.iface_id)?;
            ApiRequest::PatchNetworkInterface(update)
        }
        (Patch, "mmds", Some(body)) => ApiRequest::PatchMmds(json(body)?),
        (Patch, "balloon", body) if second == Some("hinting") => patch_hinting(third, body)?,
        (Patch, "balloon", Some(body)) => patch_balloon(second, body)?,
        (Patch, "vm", Some(body)) => ApiRequest::PatchVm(json::<VmPatch>(body)?.state),
        (Patch, _, None) => return Err(fault("Empty PATCH request.")),
        (method, resource, _) => return Err(invalid_path(method, resource)),
    };
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::request::{Action, VmStateRequest};

    fn fault(result: Result<ApiRequest, ApiResponse>) -> String {
        let response = result.expect_err("an error");
        assert_eq!(response.status, 400);
        let body: serde_json::Value =
            serde_json::from_str(response.body.as_deref().unwrap()).unwrap();
        body["fault_message"].as_str().unwrap().to_owned()
    }

    #[test]
    fn put_serial_takes_firecrackers_body_only() {
        let parsed = parse(
            Method::Put,
            "/serial",
            Some(br#"{"serial_out_path": "serial"}"#),
        );
        let Ok(ApiRequest::PutSerial(config)) = parsed else {
            panic!("serial: {parsed:?}")
        };
        assert_eq!(config.serial_out_path, Some("serial".into()));
        assert!(
            fault(parse(Method::Put, "/serial", Some(br#"{"path": "x"}"#)))
                .contains("unknown field `path`")
        );
        assert!(fault(parse(Method::Get, "/serial", None)).starts_with("Invalid request method"));
    }

    #[test]
    fn hinting_requests_parse_with_or_without_a_body() {
        use crate::balloon::BalloonStartCmd;
        assert_eq!(
            parse(Method::Patch, "/balloon/hinting/start", None),
            Ok(ApiRequest::StartBalloonHinting(BalloonStartCmd::default()))
        );
        assert_eq!(
            parse(
                Method::Patch,
                "/balloon/hinting/start",
                Some(br#"{"acknowledge_on_stop": false}"#)
            ),
            Ok(ApiRequest::StartBalloonHinting(BalloonStartCmd {
                acknowledge_on_stop: false
            }))
        );
        assert_eq!(
            parse(Method::Patch, "/balloon/hinting/stop", Some(b"")),
            Ok(ApiRequest::StopBalloonHinting)
        );
        assert_eq!(
            parse(Method::Get, "/balloon/hinting/status", None),
            Ok(ApiRequest::GetBalloonHintingStatus)
        );
    }

    #[test]
    fn entropy_requests_parse_and_unknown_fields_are_refused() {
        let Ok(ApiRequest::PutEntropy(entropy)) = parse(
            Method::Put,
            "/entropy",
            Some(br#"{"rate_limiter": {"ops": {"size": 10, "refill_time": 1000}}}"#),
        ) else {
            panic!("entropy")
        };
        let config = entropy.to_rng_config();
        assert_eq!(
            config.ops.map(|b| (b.size, b.refill_time_ms)),
            Some((10, 1000))
        );
        assert!(config.bandwidth.is_none());
        assert_eq!(
            parse(Method::Put, "/entropy", Some(b"{}")),
            Ok(ApiRequest::PutEntropy(Entropy::default()))
        );
        assert!(
            fault(parse(Method::Put, "/entropy", Some(br#"{"rate": 1}"#)))
                .contains("unknown field `rate`")
        );
        assert!(fault(parse(Method::Get, "/entropy", None)).contains("entropy"));
    }

    #[test]
    fn firecracker_requests_parse() {
        assert_eq!(
            parse(Method::Get, "/", None),
            Ok(ApiRequest::GetInstanceInfo)
        );
        assert_eq!(
            parse(
                Method::Put,
                "/actions",
                Some(br#"{"action_type": "InstanceStart"}"#)
            ),
            Ok(ApiRequest::Action(Action::InstanceStart))
        );
        assert_eq!(
            parse(Method::Patch, "/vm", Some(br#"{"state": "Paused"}"#)),
            Ok(ApiRequest::PatchVm(VmStateRequest::Paused))
        );
        let Ok(ApiRequest::PutMachineConfig(config)) = parse(
            Method::Put,
            "/machine-config",
            Some(br#"{"vcpu_count": 2, "mem_size_mib": 256}"#),
        ) else {
            panic!("machine-config")
        };
        assert_eq!((config.vcpu_count, config.mem_size_mib), (2, 256));
        let Ok(ApiRequest::PutDrive(drive)) = parse(
            Method::Put,
            "/drives/rootfs",
            Some(br#"{"drive_id": "rootfs", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#),
        ) else {
            panic!("drive")
        };
        assert!(drive.is_root_device);
        assert_eq!(
            parse(Method::Get, "/vm/config/", None),
            Ok(ApiRequest::GetVmConfig)
        );
        let Ok(ApiRequest::PutDrive(drive)) = parse(
            Method::Put,
            "/drives/rootfs",
            Some(br#"{"drive_id": "rootfs", "path_on_host": "/x", "is_root_device": true, "io_engine": "Sync", "socket": null}"#),
        ) else {
            panic!("drive")
        };
        assert_eq!(drive.is_read_only, None, "absent: false when built");
    }

    #[test]
    fn bad_requests_say_why_in_firecrackers_words() {
        let deserializing = "An error occurred when deserializing the json body of a request: ";
        let cases: &[(Method, &str, Option<&[u8]>, &str)] = &[
            (
                Method::Put,
                "/machine-config",
                Some(b"{nope"),
                deserializing,
            ),
            (
                Method::Put,
                "/machine-config",
                Some(br#"{"vcpu_count": 1, "mem_size_mib": 1, "turbo": true}"#),
                "unknown field `turbo`",
            ),
            (
                Method::Put,
                "/machine-config",
                Some(br#"{"mem_size_mib": 128}"#),
                "missing field `vcpu_count` at line 1 column 21.",
            ),
            (Method::Put, "/boot-source", None, "Empty PUT request."),
            (Method::Put, "/nowhere", None, "Empty PUT request."),
            (Method::Patch, "/vm", Some(b""), "Empty PATCH request."),
            (
                Method::Patch,
                "/machine-config",
                Some(b"{}"),
                "Empty PATCH request.",
            ),
            (
                Method::Get,
                "/",
                Some(b"{}"),
                "GET request cannot have a body.",
            ),
            (
                Method::Get,
                "/nowhere",
                None,
                "Invalid request method and/or path: GET nowhere.",
            ),
            (
                Method::Get,
                "/vm",
                None,
                "Invalid request method and/or path: GET vm.",
            ),
            (
                Method::Patch,
                "/boot-source",
                Some(b"{}"),
                "Invalid request method and/or path: PATCH boot-source.",
            ),
            (
                Method::Get,
                "/balloon/hinting/other",
                None,
                "Unrecognized GET request path `/hinting/other`.",
            ),
            (
                Method::Patch,
                "/balloon/hinting",
                None,
                "Unrecognized PATCH request path `/hinting/`.",
            ),
            (
                Method::Patch,
                "/balloon/hinting/start",
                Some(b"{\"ack\": 1}"),
                "unknown field `ack`",
            ),
            (
                Method::Get,
                "/balloon/other",
                None,
                "Unrecognized GET request path `other`.",
            ),
            (
                Method::Put,
                "/drives/",
                Some(b"{}"),
                "The ID cannot be empty.",
            ),
            (
                Method::Put,
                "/drives",
                Some(b"{}"),
                "The ID cannot be empty.",
            ),
            (
                Method::Put,
                "/drives/a-b",
                Some(b"{}"),
                "API Resource IDs can only contain alphanumeric characters and underscores.",
            ),
            (
                Method::Patch,
                "/network-interfaces/a.b",
                Some(b"{}"),
                "API Resource IDs can only contain",
            ),
            (
                Method::Put,
                "/drives/a",
                Some(br#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": true}"#),
                "The id from the path does not match the id from the body!",
            ),
            (
                Method::Put,
                "/network-interfaces/a",
                Some(br#"{"iface_id": "b", "host_dev_name": "tap0"}"#),
                "The id from the path [a] does not match the id from the body [b]!",
            ),
            (
                Method::Put,
                "/actions",
                Some(br#"{"action_type": "Explode"}"#),
                "unknown variant `Explode`",
            ),
        ];
        for (method, path, body, expected) in cases {
            let message = fault(parse(*method, path, *body));
            assert!(
                message.contains(expected),
                "{} {path}: {message}",
                method.as_str()
            );
        }
    }

    #[test]
    fn mmds_requests_parse_as_firecracker_parses_them() {
        let json = serde_json::json!({"latest": {"meta-data": {"ami-id": "x"}}});
        let text = json.to_string();
        assert_eq!(parse(Method::Get, "/mmds", None), Ok(ApiRequest::GetMmds));
        assert_eq!(
            parse(Method::Put, "/mmds", Some(text.as_bytes())),
            Ok(ApiRequest::PutMmds(json.clone()))
        );
        assert_eq!(
            parse(Method::Patch, "/mmds", Some(text.as_bytes())),
            Ok(ApiRequest::PatchMmds(json))
        );
        let Ok(ApiRequest::PutMmdsConfig(config)) = parse(
            Method::Put,
            "/mmds/config",
            Some(br#"{"network_interfaces": ["eth0"], "version": "V2"}"#),
        ) else {
            panic!("mmds config")
        };
        assert_eq!(config.version, ember_mmds::MmdsVersion::V2);
        let v1 = parse(
            Method::Put,
            "/mmds/config",
            Some(br#"{"network_interfaces": ["eth0"]}"#),
        )
        .unwrap();
        assert_eq!(
            v1.deprecation(),
            Some("PUT /mmds/config: V1 is deprecated. Use V2 instead.")
        );
        let cases: &[(Method, &str, Option<&[u8]>, &str)] = &[
            (
                Method::Put,
                "/mmds/other",
                Some(b"{}"),
                "Unrecognized PUT request path `other`.",
            ),
            (
                Method::Put,
                "/mmds",
                Some(b"{nope"),
                "An error occurred when deserializing the json body of a request",
            ),
            (
                Method::Put,
                "/mmds/config",
                Some(br#"{"network_interfaces": ["eth0"], "ipv4_address": ""}"#),
                "invalid IPv4 address syntax",
            ),
            (
                Method::Put,
                "/mmds/config",
                Some(br#"{"network_interfaces": [], "version": "V3"}"#),
                "unknown variant `V3`",
            ),
            (Method::Patch, "/mmds", None, "Empty PATCH request."),
            (
                Method::Get,
                "/mmds",
                Some(b"{}"),
                "GET request cannot have a body.",
            ),
        ];
        for (method, path, body, expected) in cases {
            let message = fault(parse(*method, path, *body));
            assert!(message.contains(expected), "{path}: {message}");
        }
    }

    #[test]
    fn paths_are_read_as_firecracker_reads_them() {
        let machine = |path: &str| parse(Method::Get, path, None);
        for path in [
            "/machine-config",
            "//machine-config",
            "/machine-config/",
            "/machine-config/extra",
        ] {
            assert_eq!(machine(path), Ok(ApiRequest::GetMachineConfig), "{path}");
        }
        for path in ["/", "//", ""] {
            assert_eq!(
                parse(Method::Get, path, None),
                Ok(ApiRequest::GetInstanceInfo),
                "{path}"
            );
        }
        assert_eq!(
            parse(Method::Get, "/vm/config/x", None),
            Ok(ApiRequest::GetVmConfig)
        );
        let drive = br#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false}"#;
        for path in ["/drives/d", "//drives/d/", "/drives/d/extra"] {
            assert!(
                matches!(
                    parse(Method::Put, path, Some(drive)),
                    Ok(ApiRequest::PutDrive(_))
                ),
                "{path}"
            );
        }
        // Firecracker's id rule: Unicode alphanumerics and `_`, any length.
        let long = "d".repeat(65);
        let body =
            format!(r#"{{"drive_id": "{long}", "path_on_host": "/x", "is_root_device": false}}"#);
        let path = format!("/drives/{long}");
        assert!(parse(Method::Put, &path, Some(body.as_bytes())).is_ok());
        let body = r#"{"iface_id": "é_1", "host_dev_name": "tap0"}"#;
        assert!(parse(
            Method::Put,
            "/network-interfaces/é_1",
            Some(body.as_bytes())
        )
        .is_ok());
    }

    #[test]
    fn deprecated_fields_are_flagged() {
        let put = |path: &str, body: &[u8]| parse(Method::Put, path, Some(body)).unwrap();
        let with = put(
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "None"}"#,
        );
        assert_eq!(
            with.deprecation(),
            Some("PUT /machine-config: cpu_template field is deprecated.")
        );
        let without = put(
            "/machine-config",
            br#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        );
        assert_eq!(without.deprecation(), None);
        let vsock = put(
            "/vsock",
            br#"{"vsock_id": "v", "guest_cid": 3, "uds_path": "/v"}"#,
        );
        assert_eq!(
            vsock.deprecation(),
            Some("PUT /vsock: vsock_id field is deprecated.")
        );
        let patch = parse(
            Method::Patch,
            "/machine-config",
            Some(br#"{"cpu_template": "None"}"#),
        )
        .unwrap();
        assert_eq!(
            patch.deprecation(),
            Some("PATCH /machine-config: cpu_template field is deprecated.")
        );
    }

    /// Whether another row serves `method` on the resource of `template`
    /// (`PATCH /vm/config` is `PATCH /vm`: further segments are ignored).
    fn served_elsewhere(template: &str, method: Method) -> bool {
        let first = |t: &str| {
            t.trim_start_matches('/')
                .split('/')
                .next()
                .map(str::to_owned)
        };
        ROUTES.iter().any(|(other, methods)| {
            *other != template
                && first(other) == first(template)
                && methods.contains(&method)
                && !other.contains("/{")
                && other.matches('/').count() == 1
        })
    }

    /// A body a request of `method` may carry: none for GET.
    fn body_for(method: Method) -> Option<&'static [u8]> {
        (method != Method::Get).then_some(b"{}")
    }

    #[test]
    fn nothing_outside_the_table_is_routed() {
        for (template, methods) in ROUTES {
            let path = template
                .replace("{drive_id}", "d")
                .replace("{iface_id}", "i");
            for method in [Method::Get, Method::Put, Method::Patch] {
                if methods.contains(&method) || served_elsewhere(template, method) {
                    continue;
                }
                let message = fault(parse(method, &path, body_for(method)));
                assert!(
                    message.contains("Invalid request method and/or path"),
                    "{} {path} is routed but not in the table",
                    method.as_str()
                );
            }
        }
    }

    #[test]
    fn every_route_in_the_table_parses_something() {
        for (template, methods) in ROUTES {
            let path = template
                .replace("{drive_id}", "d")
                .replace("{iface_id}", "i");
            for method in *methods {
                let result = parse(*method, &path, body_for(*method));
                if let Err(response) = result {
                    let message = response.body.unwrap_or_default();
                    assert!(
                        !message.contains("Invalid request method and/or path"),
                        "{} {path} is in the table but not routed",
                        method.as_str()
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod openapi {
    use super::*;

    /// (path, method) pairs the OpenAPI document declares, read from its
    /// `paths:` section (two-space path keys, four-space method keys).
    fn documented() -> Vec<(String, String)> {
        let text = include_str!("../openapi.yaml");
        let mut in_paths = false;
        let mut current = None;
        let mut found = Vec::new();
        for line in text.lines() {
            if !line.starts_with(' ') {
                in_paths = line == "paths:";
                continue;
            }
            if !in_paths {
                continue;
            }
            if let Some(path) = line.strip_prefix("  /").and_then(|l| l.strip_suffix(':')) {
                current = Some(format!("/{path}"));
            } else if let (Some(path), Some(method)) = (
                &current,
                line.strip_prefix("    ").and_then(|l| l.strip_suffix(':')),
            ) {
                if ["get", "put", "patch", "post", "delete"].contains(&method) {
                    found.push((path.clone(), method.to_uppercase()));
                }
            }
        }
        found
    }

    fn served() -> Vec<(String, String)> {
        ROUTES
            .iter()
            .flat_map(|(path, methods)| {
                methods
                    .iter()
                    .map(|m| ((*path).to_owned(), m.as_str().to_owned()))
            })
            .collect()
    }

    #[test]
    fn every_documented_route_is_served_and_every_served_route_documented() {
        let mut documented = documented();
        let mut served = served();
        documented.sort();
        served.sort();
        assert!(documented.len() >= 15, "{documented:?}");
        assert_eq!(documented, served);
    }
}
