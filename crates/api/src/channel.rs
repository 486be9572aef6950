//! The link between the API thread and the VMM thread: requests one way,
//! answers the other, each direction with an eventfd that wakes the receiving
//! thread's poller. Neither thread ever blocks on the other.

use std::sync::mpsc::{Receiver, SendError, Sender, TryRecvError};

use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use crate::request::{ApiRequest, ApiResponse};
use crate::{Error, Result};

/// The API thread's end.
#[derive(Debug)]
pub struct VmmChannel {
    requests: Sender<ApiRequest>,
    wake_vmm: EventFd,
    responses: Receiver<ApiResponse>,
    answered: EventFd,
}

/// Why a request could not be passed on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VmmGone;

impl VmmChannel {
    /// Hands `request` to the VMM thread and wakes it.
    pub fn send(&self, request: ApiRequest) -> std::result::Result<(), VmmGone> {
        self.requests.send(request).map_err(|_| VmmGone)?;
        self.wake_vmm.write(1).map_err(|_| VmmGone)
    }

    /// The next answer, if one is waiting; `Err` once the VMM thread is gone.
    pub fn try_answer(&self) -> std::result::Result<Option<ApiResponse>, VmmGone> {
        let _ = self.answered.read();
        match self.responses.try_recv() {
            Ok(answer) => Ok(Some(answer)),
            Err(TryRecvError::Empty) => Ok(None),
            Err(TryRecvError::Disconnected) => Err(VmmGone),
        }
    }

    /// Becomes readable when an answer is waiting.
    pub fn answered_event(&self) -> &EventFd {
        &self.answered
    }
}

/// The VMM thread's end.
#[derive(Debug)]
pub struct ApiEnd {
    /// Requests from the API thread.
    pub requests: Receiver<ApiRequest>,
    /// Answers to the API thread, one per request, in order.
    pub responses: Responder,
    /// Becomes readable when a request is waiting.
    pub wake: EventFd,
}

/// Sends answers to the API thread and wakes it.
#[derive(Debug)]
pub struct Responder {
    responses: Sender<ApiResponse>,
    answered: EventFd,
}

impl Responder {
    /// Sends one answer; fails only when the API thread is gone.
    pub fn send(&self, response: ApiResponse) -> std::result::Result<(), SendError<ApiResponse>> {
        self.responses.send(response)?;
        // The eventfd is a counter that cannot overflow in practice; a failed
        // write only delays the API thread to its next wake-up.
        let _ = self.answered.write(1);
        Ok(())
    }
}

/// The two ends of a new channel.
pub fn channel() -> Result<(VmmChannel, ApiEnd)> {
    let (request_tx, request_rx) = std::sync::mpsc::channel();
    let (response_tx, response_rx) = std::sync::mpsc::channel();
    let wake = EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?;
    let answered = EventFd::new(EFD_NONBLOCK).map_err(Error::Io)?;
    let vmm = VmmChannel {
        requests: request_tx,
        wake_vmm: wake.try_clone().map_err(Error::Io)?,
        responses: response_rx,
        answered: answered.try_clone().map_err(Error::Io)?,
    };
    let api = ApiEnd {
        requests: request_rx,
        responses: Responder {
            responses: response_tx,
            answered,
        },
        wake,
    };
    Ok((vmm, api))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_answers_cross_with_wake_ups() {
        let (vmm, api) = channel().unwrap();
        assert_eq!(vmm.try_answer(), Ok(None));
        vmm.send(ApiRequest::GetVersion).unwrap();
        assert_eq!(api.wake.read().unwrap(), 1);
        assert_eq!(api.requests.try_recv().unwrap(), ApiRequest::GetVersion);
        api.responses.send(ApiResponse::no_content()).unwrap();
        assert_eq!(vmm.answered_event().read().unwrap(), 1);
        assert_eq!(vmm.try_answer(), Ok(Some(ApiResponse::no_content())));
        drop(api);
        assert_eq!(vmm.try_answer(), Err(VmmGone));
        assert_eq!(vmm.send(ApiRequest::GetVersion), Err(VmmGone));
    }
}
