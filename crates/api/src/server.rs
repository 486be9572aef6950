//! The API thread: HTTP/1.1 on a Unix socket (dbs-uhttp, the micro_http
//! lineage made for VMM APIs), parsing each request and passing it to the VMM
//! thread through a channel plus an eventfd, then answering with what the VMM
//! replied. Requests are handled one at a time, in arrival order.
//!
//! The socket is created with mode 0600; an existing path is refused unless it
//! is a stale socket nobody listens on; [`SocketGuard`] removes it on exit.

use std::os::fd::IntoRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;

use dbs_uhttp::{Body, HttpServer, MediaType, Request, Response, StatusCode, Version};
use ember_vmm::seccomp::{self, BpfProgram};
use vmm_sys_util::eventfd::EventFd;

use crate::request::{ApiRequest, ApiResponse};
use crate::routes::{self, Method};
use crate::{Error, Result};

/// Largest request body accepted, as Firecracker's default.
pub const MAX_PAYLOAD_SIZE: usize = 51_200;

/// Counts of API requests, for metrics.
#[derive(Debug, Default)]
pub struct ApiCounters {
    /// GET requests.
    pub get: AtomicU64,
    /// PUT requests.
    pub put: AtomicU64,
    /// PATCH requests.
    pub patch: AtomicU64,
    /// Requests answered with a 4xx or 5xx status.
    pub failed: AtomicU64,
}

impl ApiCounters {
    /// The counters as (name, value) pairs.
    pub fn snapshot(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("get_count", self.get.load(Ordering::Relaxed)),
            ("put_count", self.put.load(Ordering::Relaxed)),
            ("patch_count", self.patch.load(Ordering::Relaxed)),
            ("failed_count", self.failed.load(Ordering::Relaxed)),
        ]
    }
}

/// Removes the API socket when dropped.
#[derive(Debug)]
pub struct SocketGuard(PathBuf);

impl Drop for SocketGuard {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Binds the API socket at `path` with mode 0600. An existing path is refused
/// unless it is a socket nobody accepts on (a leftover), which is replaced.
pub fn bind(path: &Path) -> Result<(UnixListener, SocketGuard)> {
    let socket_err = |reason: String| Error::ApiSocket {
        path: path.to_owned(),
        reason,
    };
    ember_vmm::host_files::clear_stale_socket(path).map_err(|e| socket_err(e.to_string()))?;
    // SAFETY: umask only changes this process's file-creation mask; it is
    // restored right after the bind, before any other thread exists.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old_mask) };
    let listener = bound.map_err(|e| socket_err(e.to_string()))?;
    let guard = SocketGuard(path.to_owned());
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| socket_err(format!("cannot set mode 0600: {e}")))?;
    Ok((listener, guard))
}

/// The API thread's end of the channel to the VMM.
#[derive(Debug)]
pub struct VmmChannel {
    /// Requests to the VMM.
    pub requests: Sender<ApiRequest>,
    /// The VMM's answers, one per request, in order.
    pub responses: Receiver<ApiResponse>,
    /// Wakes the VMM's event loop after a request is sent.
    pub wake: EventFd,
}

fn status_code(status: u16) -> StatusCode {
    match status {
        200 => StatusCode::OK,
        204 => StatusCode::NoContent,
        400 => StatusCode::BadRequest,
        404 => StatusCode::NotFound,
        405 => StatusCode::MethodNotAllowed,
        413 => StatusCode::PayloadTooLarge,
        501 => StatusCode::NotImplemented,
        503 => StatusCode::ServiceUnavailable,
        _ => StatusCode::InternalServerError,
    }
}

fn http_response(answer: ApiResponse) -> Response {
    let mut response = Response::new(Version::Http11, status_code(answer.status));
    response.set_server("Ember API");
    if let Some(body) = answer.body {
        response.set_content_type(MediaType::ApplicationJson);
        response.set_body(Body::new(body));
    }
    response
}

/// The VMM thread's end of the channel to the API thread.
#[derive(Debug)]
pub struct ApiEnd {
    /// Requests from the API thread.
    pub requests: Receiver<ApiRequest>,
    /// Answers, one per request, in order.
    pub responses: Sender<ApiResponse>,
    /// Becomes readable when a request is waiting.
    pub wake: EventFd,
}

/// The two ends of a new API channel.
pub fn channel() -> Result<(VmmChannel, ApiEnd)> {
    let (request_tx, request_rx) = std::sync::mpsc::channel();
    let (response_tx, response_rx) = std::sync::mpsc::channel();
    let wake = EventFd::new(vmm_sys_util::eventfd::EFD_NONBLOCK).map_err(Error::Io)?;
    let vmm = VmmChannel {
        requests: request_tx,
        responses: response_rx,
        wake: wake.try_clone().map_err(Error::Io)?,
    };
    let api = ApiEnd {
        requests: request_rx,
        responses: response_tx,
        wake,
    };
    Ok((vmm, api))
}

/// Serves requests on `listener` until the VMM side goes away. With `filter`,
/// the thread installs that seccomp filter once its socket and epoll exist.
pub fn serve(
    listener: UnixListener,
    vmm: VmmChannel,
    counters: Arc<ApiCounters>,
    filter: Option<&BpfProgram>,
) -> Result<()> {
    let mut server = HttpServer::new_from_fd(listener.into_raw_fd())
        .map_err(|e| Error::ApiServer(format!("{e:?}")))?;
    server.set_payload_max_size(MAX_PAYLOAD_SIZE);
    server
        .start_server()
        .map_err(|e| Error::ApiServer(format!("{e:?}")))?;
    if let Some(program) = filter {
        seccomp::apply(program).map_err(|e| Error::ApiServer(format!("seccomp: {e}")))?;
    }
    loop {
        let requests = match server.requests() {
            Ok(requests) => requests,
            Err(e) => {
                log::warn!("API server: {e:?}");
                continue;
            }
        };
        for request in requests {
            let mut vmm_gone = false;
            let response = request.process(|request| {
                let answer = answer(request, &vmm, &counters);
                vmm_gone = answer.is_none();
                http_response(
                    answer.unwrap_or_else(|| ApiResponse::error(503, "the VMM is shutting down")),
                )
            });
            if let Err(e) = server.respond(response) {
                log::warn!("API server: cannot answer: {e:?}");
            }
            if vmm_gone {
                return Ok(());
            }
        }
    }
}

/// The answer to one request; `None` when the VMM side is gone.
fn answer(request: &Request, vmm: &VmmChannel, counters: &ApiCounters) -> Option<ApiResponse> {
    let method = match request.method() {
        dbs_uhttp::Method::Get => Some(Method::Get),
        dbs_uhttp::Method::Put => Some(Method::Put),
        dbs_uhttp::Method::Patch => Some(Method::Patch),
        _ => None,
    };
    let path = request.uri().get_abs_path();
    let answer = match method {
        None => ApiResponse::bad_request(&format!(
            "invalid request method and/or path: {:?} {path}",
            request.method()
        )),
        Some(method) => {
            let counter = match method {
                Method::Get => &counters.get,
                Method::Put => &counters.put,
                Method::Patch => &counters.patch,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            let body = request.body.as_ref().map(|b| b.body.as_slice());
            match routes::parse(method, path, body) {
                Ok(parsed) => {
                    log::debug!("API request: {} {path}", method.as_str());
                    if vmm.requests.send(parsed).is_err() || vmm.wake.write(1).is_err() {
                        return None;
                    }
                    vmm.responses.recv().ok()?
                }
                Err(response) => response,
            }
        }
    };
    if answer.status >= 400 {
        counters.failed.fetch_add(1, Ordering::Relaxed);
        log::info!(
            "API request {path} failed ({}): {}",
            answer.status,
            answer.body.as_deref().unwrap_or("")
        );
    }
    Some(answer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_is_private_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        {
            let (_listener, _guard) = bind(&path).unwrap();
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
            // A second server on the same live socket is refused.
            let err = bind(&path).unwrap_err().to_string();
            assert!(err.contains("another process is listening"), "{err}");
        }
        assert!(!path.exists(), "removed on drop");
    }

    #[test]
    fn stale_sockets_are_replaced_and_files_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("api.sock");
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists(), "a leftover socket");
        let (_listener, _guard) = bind(&path).unwrap();

        let file = dir.path().join("file");
        std::fs::write(&file, "keep me").unwrap();
        let err = bind(&file).unwrap_err().to_string();
        assert!(err.contains("not a socket"), "{err}");
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
    }
}
