//! Raw mode for a terminal on standard input while the guest owns the console;
//! the previous mode comes back when the guard is dropped.

use std::io::stdin;

use vmm_sys_util::terminal::Terminal;

/// Restores canonical mode on drop.
#[derive(Debug)]
pub struct RawTerminal;

impl RawTerminal {
    /// Puts standard input in raw mode if it is a terminal.
    pub fn enable_if_tty() -> Option<RawTerminal> {
        // SAFETY: isatty only inspects the descriptor number; fd 0 may or may not
        // be open and either answer is handled.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        match stdin().lock().set_raw_mode() {
            Ok(()) => Some(RawTerminal),
            Err(e) => {
                log::warn!("cannot put the terminal in raw mode: {e}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(e) = stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal mode: {e}");
        }
    }
}
