//! Free page hinting (virtio 1.2, 5.5.6.7) as a state machine: the host
//! starts a run by publishing a new command id in the configuration space;
//! the driver answers with that id on the hinting queue, then hints free
//! ranges (device-writable buffers), then sends `STOP`; the host ends the
//! run with `DONE`, after which the driver takes its hinted pages back.
//! Hints are only taken while the driver's last command is the host's
//! current run id.

/// Command id: the driver has finished hinting (also the host's id when no
/// run was ever started).
pub const FREE_PAGE_HINT_STOP: u32 = 0;
/// Command id: the host is done with the hinted pages; the driver may use
/// them again.
pub const FREE_PAGE_HINT_DONE: u32 = 1;

/// `GET /balloon/hinting/status`: the host's current command and the
/// driver's last one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HintingStatus {
    /// The command id the host published last.
    pub host_cmd: u32,
    /// The command id the driver sent last (`None` until it sends one).
    pub guest_cmd: Option<u32>,
}

/// The hinting run as plain data.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct HintingState {
    /// The host's command and the driver's last one.
    pub status: HintingStatus,
    /// The id of the last run started (run ids are never 0 or 1).
    pub last_run_id: u32,
    /// End the run with `DONE` as soon as the driver sends `STOP`.
    pub acknowledge_on_stop: bool,
}

impl HintingState {
    /// Starts a new run and returns its command id (the next id after the
    /// last run's, skipping the reserved 0 and 1).
    pub fn start(&mut self, acknowledge_on_stop: bool) -> u32 {
        let mut id = self.last_run_id.wrapping_add(1);
        if id <= FREE_PAGE_HINT_DONE {
            id = FREE_PAGE_HINT_DONE + 1;
        }
        self.last_run_id = id;
        self.acknowledge_on_stop = acknowledge_on_stop;
        self.status.host_cmd = id;
        id
    }

    /// Ends the run: the driver may use its hinted pages again.
    pub fn finish(&mut self) {
        self.status.host_cmd = FREE_PAGE_HINT_DONE;
    }

    /// Records a command the driver sent; returns whether the host should
    /// now end the run (the driver stopped and the run acknowledges stops).
    pub fn guest_command(&mut self, cmd: u32) -> bool {
        self.status.guest_cmd = Some(cmd);
        let stopped = cmd == FREE_PAGE_HINT_STOP || cmd == FREE_PAGE_HINT_DONE;
        stopped && self.acknowledge_on_stop && self.running()
    }

    /// Whether a run is going on (the host published a run id).
    fn running(&self) -> bool {
        self.status.host_cmd > FREE_PAGE_HINT_DONE
    }

    /// Whether a hint now belongs to the current run: hints sent after
    /// `DONE`, before the driver acknowledged the run, or for an older run
    /// are ignored.
    pub fn takes_hints(&self) -> bool {
        self.running() && self.status.guest_cmd == Some(self.status.host_cmd)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_get_fresh_ids_never_the_reserved_ones() {
        let mut state = HintingState::default();
        assert!(!state.takes_hints(), "no run");
        assert_eq!(state.start(true), 2);
        assert_eq!(state.start(false), 3);
        assert!(!state.acknowledge_on_stop);
        state.last_run_id = u32::MAX;
        assert_eq!(state.start(true), 2, "wraps past 0 and 1");
    }

    #[test]
    fn hints_count_only_for_the_current_acknowledged_run() {
        let mut state = HintingState::default();
        let id = state.start(true);
        assert!(!state.takes_hints(), "the driver has not answered");
        assert!(!state.guest_command(id + 5));
        assert!(!state.takes_hints(), "an older run's id");
        assert!(!state.guest_command(id));
        assert!(state.takes_hints());
        assert!(state.guest_command(FREE_PAGE_HINT_STOP), "acknowledged");
        assert!(!state.takes_hints());
        state.finish();
        assert_eq!(
            state.status,
            HintingStatus {
                host_cmd: FREE_PAGE_HINT_DONE,
                guest_cmd: Some(FREE_PAGE_HINT_STOP)
            }
        );
        assert!(!state.guest_command(FREE_PAGE_HINT_STOP), "no run to end");
    }

    #[test]
    fn without_acknowledgement_the_host_ends_the_run() {
        let mut state = HintingState::default();
        let id = state.start(false);
        state.guest_command(id);
        assert!(!state.guest_command(FREE_PAGE_HINT_STOP));
        assert_eq!(state.status.host_cmd, id, "still the run's id");
        state.finish();
        assert!(!state.guest_command(id));
        assert!(!state.takes_hints(), "after DONE");
    }
}
