//! Runs a program (ctl) on a real pseudo-terminal, as a person at a terminal would: the test
//! holds the master, sets the window size, types keys and reads the screen with a deadline,
//! and can read the terminal's modes as the program left them.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;

use crate::util::KillOnDrop;

/// A program running on a pseudo-terminal of its own, killed when dropped.
pub struct Terminal {
    master: OwnedFd,
    /// Kept open so that the terminal's modes can be read after the program exits (and so
    /// the master never reads as closed: the program's exit is what ends a wait).
    slave: OwnedFd,
    child: KillOnDrop,
    screen: Vec<u8>,
    what: String,
    /// The modes before the program started, which it must leave behind.
    initial: String,
}

impl Terminal {
    /// Starts `cmd` with a new terminal of `rows` x `cols` as its stdin, stdout, stderr and
    /// controlling terminal, in a session of its own (so the kernel sends it SIGWINCH, and
    /// Ctrl-C typed there would reach it as SIGINT unless it puts the terminal in raw mode).
    pub fn spawn(mut cmd: Command, rows: u16, cols: u16) -> Self {
        let what = format!("{cmd:?}");
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)
                .expect("open a pseudo-terminal");
        rustix::pty::grantpt(&master).expect("grantpt");
        rustix::pty::unlockpt(&master).expect("unlockpt");
        let name = rustix::pty::ptsname(&master, Vec::new()).expect("ptsname");
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .expect("open the terminal");
        let terminal = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup the terminal"));
        cmd.stdin(terminal(&slave))
            .stdout(terminal(&slave))
            .stderr(terminal(&slave));
        // SAFETY: only setsid and an ioctl run between fork and exec: async-signal-safe.
        unsafe {
            cmd.pre_exec(|| {
                rustix::process::setsid()?;
                rustix::process::ioctl_tiocsctty(BorrowedFd::borrow_raw(0))?;
                Ok(())
            });
        }
        // Read before the spawn: the program may change them at once (ctl -t goes raw).
        let initial = modes(slave.as_fd());
        let mut term = Self {
            master,
            slave,
            child: KillOnDrop(cmd.spawn().expect("spawn on the terminal")),
            screen: Vec::new(),
            what,
            initial,
        };
        term.resize(rows, cols);
        term
    }

    /// Changes the window size; the kernel sends SIGWINCH to the terminal's foreground group.
    pub fn resize(&mut self, rows: u16, cols: u16) {
        let size = Winsize {
            ws_row: rows,
            ws_col: cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        rustix::termios::tcsetwinsize(&self.master, size).expect("set the window size");
    }

    /// Types `keys` at the terminal.
    pub fn type_keys(&mut self, keys: &[u8]) {
        let mut left = keys;
        while !left.is_empty() {
            match rustix::io::write(&self.master, left) {
                Ok(n) => left = &left[n..],
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => panic!("typing at {}: {e}", self.what),
            }
        }
    }

    /// Everything shown so far, lossily as text.
    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen).into_owned()
    }

    /// Reads what the program shows until the screen, from byte `from` on, contains `needle`;
    /// returns the offset just past it. Panics with the screen if that takes over `timeout`
    /// or the program exits first.
    #[track_caller]
    pub fn wait_for_after(&mut self, from: usize, needle: &str, timeout: Duration) -> usize {
        let end = Instant::now() + timeout;
        let mut exited = None;
        loop {
            let tail = &self.screen[from.min(self.screen.len())..];
            if let Some(at) = find(tail, needle.as_bytes()) {
                return from + at + needle.len();
            }
            if let Some(status) = exited {
                panic!(
                    "{} exited ({status:?}) before {needle:?} showed; screen:\n{}",
                    self.what,
                    self.screen()
                );
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                panic!(
                    "{needle:?} did not show within {timeout:?} on the terminal of {}; screen:\n{}",
                    self.what,
                    self.screen()
                );
            };
            if let Ok(Some(status)) = self.child.try_wait() {
                // What it wrote before exiting is still to be read, then the verdict.
                self.drain();
                exited = Some(status);
            } else {
                self.read_some(left.min(Duration::from_millis(50)));
            }
        }
    }

    /// [`Self::wait_for_after`] from the start of the screen.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str, timeout: Duration) -> usize {
        self.wait_for_after(0, needle, timeout)
    }

    /// Reads what is there, waiting at most `timeout` for something to come.
    fn read_some(&mut self, timeout: Duration) {
        let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
        let wait = Timespec::try_from(timeout).expect("timeout fits a timespec");
        match rustix::event::poll(&mut fds, Some(&wait)) {
            Ok(0) | Err(rustix::io::Errno::INTR) => return,
            Ok(_) => {}
            Err(e) => panic!("poll on the terminal: {e}"),
        }
        let mut buf = [0u8; 8192];
        match rustix::io::read(&self.master, &mut buf) {
            Ok(n) => self.screen.extend_from_slice(&buf[..n]),
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => {}
            Err(e) => panic!("read from the terminal: {e}"),
        }
    }

    /// Reads everything already waiting on the terminal.
    fn drain(&mut self) {
        while self.pending() {
            self.read_some(Duration::ZERO);
        }
    }

    /// Waits for the program to exit, reading the screen meanwhile (a program blocked writing
    /// to a full terminal would never exit); panics after `timeout`.
    #[track_caller]
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let end = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.drain();
                return status;
            }
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                panic!(
                    "{} did not exit within {timeout:?}; screen:\n{}",
                    self.what,
                    self.screen()
                );
            };
            self.read_some(left.min(Duration::from_millis(20)));
        }
    }

    /// Whether the terminal has output waiting to be read.
    fn pending(&self) -> bool {
        let mut fds = [PollFd::new(&self.master, PollFlags::IN)];
        matches!(rustix::event::poll(&mut fds, Some(&Timespec::default())), Ok(n) if n > 0)
    }

    /// The terminal's modes before the program started.
    pub fn modes_before(&self) -> String {
        self.initial.clone()
    }

    /// The terminal's modes right now (every flag and special character), comparable.
    pub fn modes(&self) -> String {
        modes(self.slave.as_fd())
    }

    /// Sends `signal` to the program.
    pub fn signal(&self, signal: i32) {
        self.child.signal(signal);
    }
}

/// A terminal's modes as text: `Termios` has no `PartialEq`, its `Debug` shows every field.
fn modes(fd: BorrowedFd<'_>) -> String {
    format!(
        "{:?}",
        rustix::termios::tcgetattr(fd).expect("read the terminal's modes")
    )
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}
