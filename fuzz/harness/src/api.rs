//! `api_request`: arbitrary (method, path, body) through
//! `ember_api::routes::parse`, what the API server does with each request.
//!
//! Invariants: nothing panics; every error is a 400 whose body is a JSON
//! object with a string `fault_message` (and nothing else); every request
//! accepted is, once its path is read as Firecracker reads it (leading
//! slashes dropped, the first segment the resource, the second its id or
//! sub-resource, the rest ignored), on a route of `ROUTES` for its method;
//! requests that take no body were given none; a drive's or interface's id
//! is the one in the path, and made of alphanumeric characters and `_`.
//!
//! Input format: a method byte (modulo 3: GET, PUT, PATCH), a byte whose low
//! bit says whether there is a body, then the path up to the first newline
//! (lossily decoded as UTF-8, as the HTTP layer hands over a string) and the
//! body after it.

use ember_api::request::ApiRequest;
use ember_api::routes::{self, Method, ROUTES};

const METHODS: [Method; 3] = [Method::Get, Method::Put, Method::Patch];

/// Encodes an input.
pub fn encode(method: Method, path: &str, body: Option<&[u8]>) -> Vec<u8> {
    let m = METHODS.iter().position(|&x| x == method).expect("method") as u8;
    let mut out = vec![m, u8::from(body.is_some())];
    out.extend_from_slice(path.as_bytes());
    out.push(b'\n');
    out.extend_from_slice(body.unwrap_or_default());
    out
}

/// Whether `path` matches the route template (`{x}` is one non-empty segment).
fn matches(template: &str, path: &str) -> bool {
    let t: Vec<&str> = template.split('/').collect();
    let p: Vec<&str> = path.split('/').collect();
    t.len() == p.len()
        && t.iter().zip(&p).all(|(t, p)| {
            if t.starts_with('{') {
                !p.is_empty()
            } else {
                t == p
            }
        })
}

/// The route `path` is read as: `/resource`, `/resource/id` for drives and
/// interfaces, `/vm/config` for a GET of it.
fn canonical(method: Method, path: &str) -> (String, Option<String>) {
    let mut segments = path.trim_start_matches('/').split_terminator('/');
    let resource = segments.next().unwrap_or_default();
    let second = segments.next();
    match (method, resource) {
        (_, "drives" | "network-interfaces") => {
            let id = second.unwrap_or_default().to_owned();
            (format!("/{resource}/{id}"), Some(id))
        }
        (Method::Get, "vm") => (format!("/vm/{}", second.unwrap_or_default()), None),
        _ => (format!("/{resource}"), None),
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let (Some(&m), Some(&flags)) = (data.first(), data.get(1)) else {
        return;
    };
    let method = METHODS[usize::from(m % 3)];
    let rest = &data[2..];
    let split = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
    let path = String::from_utf8_lossy(&rest[..split]);
    let body = (flags & 1 != 0).then(|| rest.get(split + 1..).unwrap_or_default());

    match routes::parse(method, &path, body) {
        Err(response) => {
            assert_eq!(response.status, 400, "{response:?}");
            let body = response.body.as_deref().expect("an error has a body");
            let value: serde_json::Value =
                serde_json::from_str(body).unwrap_or_else(|e| panic!("{body}: {e}"));
            let object = value.as_object().expect("the body is an object");
            assert!(object["fault_message"].is_string(), "{body}");
            assert_eq!(object.len(), 1, "{body}");
        }
        Ok(request) => {
            let (normalized, id) = canonical(method, &path);
            let routed = ROUTES.iter().any(|(template, methods)| {
                methods.contains(&method) && matches(template, &normalized)
            });
            assert!(
                routed,
                "{} {path} accepted but not in ROUTES",
                method.as_str()
            );
            if method == Method::Get {
                assert!(
                    body.is_none_or(<[u8]>::is_empty),
                    "GET with a body accepted"
                );
            }
            if let Some(id) = &id {
                assert!(
                    !id.is_empty() && id.chars().all(|c| c == '_' || c.is_alphanumeric()),
                    "id {id:?} accepted"
                );
            }
            let id = id.unwrap_or_default();
            match &request {
                ApiRequest::PutDrive(drive) => assert_eq!(drive.drive_id, id),
                ApiRequest::PatchDrive(update) => assert_eq!(update.drive_id, id),
                ApiRequest::PutNetworkInterface(iface) => assert_eq!(iface.iface_id, id),
                ApiRequest::PatchNetworkInterface(update) => assert_eq!(update.iface_id, id),
                _ => {}
            }
        }
    }
}
