//! ctl's own terminal during an interactive session (`exec -t`): raw mode while the session
//! lasts and the saved modes put back on every way out, the window size to send, and the
//! `~.` escape that drops a hung session as ssh's does.
//!
//! Raw mode hands every key to the remote terminal as typed: Ctrl-C, Ctrl-Z and Ctrl-D are
//! bytes for the remote line discipline, not signals or end of input for ctl.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use rustix::termios::{OptionalActions, Termios};

/// The terminal in raw mode and how to put it back; `None` when it is not raw. A global, so
/// that exits that skip destructors (`std::process::exit` on a forced exit) can restore it.
static SAVED: Mutex<Option<(OwnedFd, Termios)>> = Mutex::new(None);

/// Holds a terminal in raw mode; dropping it restores the modes it had.
#[derive(Debug)]
#[must_use = "the terminal goes back to its modes when this is dropped"]
pub struct RawMode(());

impl RawMode {
    /// Puts ctl's stdin terminal in raw mode; `Ok(None)` when stdin is not a terminal.
    pub fn enter() -> io::Result<Option<Self>> {
        let stdin = io::stdin();
        if !rustix::termios::isatty(stdin.as_fd()) {
            return Ok(None);
        }
        Self::enter_on(stdin.as_fd().try_clone_to_owned()?).map(Some)
    }

    /// Puts the terminal `fd` in raw mode.
    fn enter_on(fd: OwnedFd) -> io::Result<Self> {
        let saved = rustix::termios::tcgetattr(&fd)?;
        let mut raw = saved.clone();
        raw.make_raw();
        let mut slot = SAVED.lock().unwrap_or_else(|e| e.into_inner());
        rustix::termios::tcsetattr(&fd, OptionalActions::Now, &raw)?;
        *slot = Some((fd, saved));
        Ok(Self(()))
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        restore();
    }
}

/// Puts the terminal back in the modes it had before raw mode. Does nothing when it is not in
/// raw mode, so every exit path may call it, more than once.
pub fn restore() {
    let taken = SAVED.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some((fd, saved)) = taken {
        // Now, not Drain: an exit must not wait on output a stopped terminal never takes. The
        // line discipline processed what was written already, so nothing is mangled.
        let _ = rustix::termios::tcsetattr(&fd, OptionalActions::Now, &saved);
    }
}

/// The size of ctl's terminal (rows, columns); `None` when stdin is not a terminal or the
/// terminal does not know its size.
pub fn size() -> Option<(u16, u16)> {
    let ws = rustix::termios::tcgetwinsize(io::stdin().as_fd()).ok()?;
    (ws.ws_row > 0 && ws.ws_col > 0).then_some((ws.ws_row, ws.ws_col))
}

/// What the user asked for with an escape sequence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Send on what was typed.
    Forward,
    /// `~.` at the start of a line: drop the session.
    Disconnect,
}

/// Spots `~.` typed at the start of a line, as ssh's escape character. A `~` there is held
/// until the next key: `.` drops the session, `~` sends one `~`, anything else sends both.
#[derive(Debug, Clone)]
pub struct Escape {
    at_line_start: bool,
    held_tilde: bool,
}

impl Default for Escape {
    fn default() -> Self {
        // The session starts at the start of a line.
        Self {
            at_line_start: true,
            held_tilde: false,
        }
    }
}

impl Escape {
    /// Appends to `out` the bytes of `typed` to send on; stops at a `~.` and says so.
    pub fn feed(&mut self, typed: &[u8], out: &mut Vec<u8>) -> Action {
        for &byte in typed {
            if self.held_tilde {
                self.held_tilde = false;
                match byte {
                    b'.' => return Action::Disconnect,
                    b'~' => {
                        out.push(b'~');
                        self.at_line_start = false;
                        continue;
                    }
                    _ => out.push(b'~'),
                }
            } else if self.at_line_start && byte == b'~' {
                self.held_tilde = true;
                continue;
            }
            out.push(byte);
            self.at_line_start = matches!(byte, b'\r' | b'\n');
        }
        Action::Forward
    }
}

#[cfg(test)]
mod tests {
    use rustix::pty::OpenptFlags;
    use rustix::termios::LocalModes;

    use super::*;

    fn filter(escape: &mut Escape, typed: &[u8]) -> (Vec<u8>, Action) {
        let mut out = Vec::new();
        let action = escape.feed(typed, &mut out);
        (out, action)
    }

    #[test]
    fn tilde_dot_at_line_start_disconnects() {
        assert_eq!(
            filter(&mut Escape::default(), b"~."),
            (vec![], Action::Disconnect)
        );
        assert_eq!(
            filter(&mut Escape::default(), b"ls\r~."),
            (b"ls\r".to_vec(), Action::Disconnect)
        );
        assert_eq!(
            filter(&mut Escape::default(), b"x\n~.rest"),
            (b"x\n".to_vec(), Action::Disconnect)
        );
        // Split across reads: the tilde waits for the next key.
        let mut escape = Escape::default();
        assert_eq!(
            filter(&mut escape, b"\r~"),
            (b"\r".to_vec(), Action::Forward)
        );
        assert_eq!(filter(&mut escape, b"."), (vec![], Action::Disconnect));
    }

    #[test]
    fn other_tildes_pass_through() {
        // Not at the start of a line.
        assert_eq!(
            filter(&mut Escape::default(), b"a~."),
            (b"a~.".to_vec(), Action::Forward)
        );
        // `~~` sends one tilde, which then is not at the start of a line any more.
        assert_eq!(
            filter(&mut Escape::default(), b"~~."),
            (b"~.".to_vec(), Action::Forward)
        );
        // `~` and another key send both; a newline after it starts a line again.
        assert_eq!(
            filter(&mut Escape::default(), b"~x~\r~."),
            (b"~x~\r".to_vec(), Action::Disconnect)
        );
        assert_eq!(
            filter(&mut Escape::default(), b"~\r~."),
            (b"~\r".to_vec(), Action::Disconnect)
        );
        // Ctrl-C and other control keys are plain bytes.
        assert_eq!(
            filter(&mut Escape::default(), b"\x03\x1a\x04"),
            (b"\x03\x1a\x04".to_vec(), Action::Forward)
        );
    }

    /// Every mode, flag and special character, comparable (`Termios` has no `PartialEq`).
    fn modes(t: &Termios) -> String {
        format!("{t:?}")
    }

    #[test]
    fn raw_mode_is_undone_on_drop_and_by_restore() {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("open a pty");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(
            name.as_c_str(),
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
            rustix::fs::Mode::empty(),
        )
        .expect("open the slave");
        let before = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        assert!(before
            .local_modes
            .contains(LocalModes::ICANON | LocalModes::ECHO));

        let raw = RawMode::enter_on(slave.try_clone().expect("dup")).expect("raw mode");
        let during = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        assert!(!during
            .local_modes
            .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG));
        drop(raw);
        let after = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        assert_eq!(modes(&before), modes(&after));

        // An exit that skips the destructor restores through the global; twice is harmless.
        let raw = RawMode::enter_on(slave.try_clone().expect("dup")).expect("raw mode");
        std::mem::forget(raw);
        restore();
        restore();
        let after = rustix::termios::tcgetattr(&slave).expect("tcgetattr");
        assert_eq!(modes(&before), modes(&after));
    }
}
