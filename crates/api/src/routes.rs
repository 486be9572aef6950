//! From an HTTP method, path and body to an [`ApiRequest`]: the route table
//! (also what the OpenAPI document must list) and the JSON parsing, with a
//! clear `fault_message` for every way a request can be wrong.

use serde::de::DeserializeOwned;

use crate::model::{BootSource, Drive, Logger, MachineConfig, Metrics, NetworkInterface, Vsock};
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
    ("/logger", &[Method::Put]),
    ("/metrics", &[Method::Put]),
    ("/actions", &[Method::Put]),
    ("/vm", &[Method::Patch]),
    ("/vm/config", &[Method::Get]),
];

fn json<T: DeserializeOwned>(body: Option<&[u8]>, what: &str) -> Result<T, ApiResponse> {
    let body = body.filter(|b| !b.is_empty()).ok_or_else(|| {
        ApiResponse::bad_request(&format!("{what}: the request needs a JSON body"))
    })?;
    serde_json::from_slice(body)
        .map_err(|e| ApiResponse::bad_request(&format!("{what}: invalid JSON body: {e}")))
}

fn no_body(body: Option<&[u8]>, what: &str) -> Result<(), ApiResponse> {
    match body {
        Some(b) if !b.is_empty() => Err(ApiResponse::bad_request(&format!(
            "{what}: this request takes no body"
        ))),
        _ => Ok(()),
    }
}

/// Checks that the id in the path and the id in the body agree.
fn same_id(path_id: &str, body_id: &str, field: &str) -> Result<(), ApiResponse> {
    if path_id == body_id {
        Ok(())
    } else {
        Err(ApiResponse::bad_request(&format!(
            "the path names `{path_id}` but the body's {field} is `{body_id}`"
        )))
    }
}

fn path_id<'a>(path: &'a str, prefix: &str) -> Option<&'a str> {
    path.strip_prefix(prefix)
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Parses one request. The error is the response to send back.
pub fn parse(method: Method, path: &str, body: Option<&[u8]>) -> Result<ApiRequest, ApiResponse> {
    let what = format!("{} {path}", method.as_str());
    let path = path
        .strip_suffix('/')
        .filter(|p| !p.is_empty())
        .unwrap_or(path);
    use Method::*;
    let request = match (method, path) {
        (Get, "/") => {
            no_body(body, &what)?;
            ApiRequest::GetInstanceInfo
        }
        (Get, "/version") => {
            no_body(body, &what)?;
            ApiRequest::GetVersion
        }
        (Get, "/machine-config") => {
            no_body(body, &what)?;
            ApiRequest::GetMachineConfig
        }
        (Put, "/machine-config") => {
            ApiRequest::PutMachineConfig(json::<MachineConfig>(body, &what)?)
        }
        (Patch, "/machine-config") => {
            ApiRequest::PatchMachineConfig(json::<MachineConfigUpdate>(body, &what)?)
        }
        (Put, "/boot-source") => ApiRequest::PutBootSource(json::<BootSource>(body, &what)?),
        (Put, "/vsock") => ApiRequest::PutVsock(json::<Vsock>(body, &what)?),
        (Put, "/logger") => ApiRequest::PutLogger(json::<Logger>(body, &what)?),
        (Put, "/metrics") => ApiRequest::PutMetrics(json::<Metrics>(body, &what)?),
        (Put, "/actions") => ApiRequest::Action(json::<ActionRequest>(body, &what)?.action_type),
        (Patch, "/vm") => ApiRequest::PatchVm(json::<VmPatch>(body, &what)?.state),
        (Get, "/vm/config") => {
            no_body(body, &what)?;
            ApiRequest::GetVmConfig
        }
        (Put, p) if path_id(p, "/drives/").is_some() => {
            let drive = json::<Drive>(body, &what)?;
            same_id(
                path_id(p, "/drives/").unwrap_or(""),
                &drive.drive_id,
                "drive_id",
            )?;
            ApiRequest::PutDrive(drive)
        }
        (Patch, p) if path_id(p, "/drives/").is_some() => {
            let update = json::<DriveUpdate>(body, &what)?;
            same_id(
                path_id(p, "/drives/").unwrap_or(""),
                &update.drive_id,
                "drive_id",
            )?;
            ApiRequest::PatchDrive(update)
        }
        (Put, p) if path_id(p, "/network-interfaces/").is_some() => {
            let iface = json::<NetworkInterface>(body, &what)?;
            let id = path_id(p, "/network-interfaces/").unwrap_or("");
            same_id(id, &iface.iface_id, "iface_id")?;
            ApiRequest::PutNetworkInterface(iface)
        }
        (Patch, p) if path_id(p, "/network-interfaces/").is_some() => {
            let update = json::<NetworkInterfaceUpdate>(body, &what)?;
            let id = path_id(p, "/network-interfaces/").unwrap_or("");
            same_id(id, &update.iface_id, "iface_id")?;
            ApiRequest::PatchNetworkInterface(update)
        }
        _ => {
            return Err(ApiResponse::bad_request(&format!(
                "invalid request method and/or path: {what}"
            )))
        }
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
    }

    #[test]
    fn bad_requests_say_why() {
        assert!(fault(parse(Method::Put, "/machine-config", Some(b"{nope")))
            .contains("invalid JSON body"));
        assert!(fault(parse(
            Method::Put,
            "/machine-config",
            Some(br#"{"vcpu_count": 1, "mem_size_mib": 1, "turbo": true}"#)
        ))
        .contains("unknown field `turbo`"));
        assert!(fault(parse(
            Method::Put,
            "/machine-config",
            Some(br#"{"vcpu_count": "one", "mem_size_mib": 1}"#)
        ))
        .contains("invalid type"));
        assert!(fault(parse(Method::Put, "/boot-source", None)).contains("needs a JSON body"));
        assert!(fault(parse(Method::Get, "/nowhere", None))
            .contains("invalid request method and/or path: GET /nowhere"));
        assert!(
            fault(parse(Method::Patch, "/boot-source", Some(b"{}"))).contains("PATCH /boot-source")
        );
        assert!(fault(parse(Method::Put, "/drives/", Some(b"{}"))).contains("invalid request"));
        assert!(fault(parse(Method::Get, "/", Some(b"{}"))).contains("takes no body"));
        assert!(fault(parse(
            Method::Put,
            "/drives/a",
            Some(br#"{"drive_id": "b", "path_on_host": "/x", "is_root_device": true, "is_read_only": false}"#)
        ))
        .contains("`a`"));
        assert!(fault(parse(
            Method::Put,
            "/actions",
            Some(br#"{"action_type": "Explode"}"#)
        ))
        .contains("unknown variant"));
    }

    #[test]
    fn nothing_outside_the_table_is_routed() {
        for (template, methods) in ROUTES {
            let path = template
                .replace("{drive_id}", "d")
                .replace("{iface_id}", "i");
            for method in [Method::Get, Method::Put, Method::Patch] {
                if methods.contains(&method) {
                    continue;
                }
                let message = fault(parse(method, &path, Some(b"{}")));
                assert!(
                    message.contains("invalid request method and/or path"),
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
                let result = parse(*method, &path, Some(b"{}"));
                if let Err(response) = result {
                    let message = response.body.unwrap_or_default();
                    assert!(
                        !message.contains("invalid request method and/or path"),
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
