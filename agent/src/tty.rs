//! Pseudo-terminals for interactive sessions: open a pair, size it, make the slave the
//! controlling terminal of a command in a new session, and read and write the master without
//! blocking the runtime.
//!
//! The command's stdin, stdout and stderr are all the slave, so its output (both streams,
//! merged as on any terminal) is read from the master, and what the client types is written
//! to the master, where the terminal's line discipline turns Ctrl-C into SIGINT for the
//! foreground process group, echoes, and edits lines as a local terminal would.

use std::ffi::{CStr, OsString};
use std::io;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;

use rustix::buffer::spare_capacity;
use rustix::fs::{Mode, OFlags};
use rustix::pty::OpenptFlags;
use rustix::termios::Winsize;
use tokio::io::unix::AsyncFd;

use crate::spawn::Stdio;

/// A terminal's size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

impl Size {
    fn winsize(self) -> Winsize {
        Winsize {
            ws_row: self.rows,
            ws_col: self.cols,
            ws_xpixel: 0,
            ws_ypixel: 0,
        }
    }
}

/// A freshly opened pseudo-terminal pair, before its command starts.
pub struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

impl Pty {
    /// Opens a new pair whose terminal has `size`.
    pub fn open(size: Size) -> io::Result<Self> {
        let master =
            rustix::pty::openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY | OpenptFlags::CLOEXEC)?;
        rustix::pty::grantpt(&master)?;
        rustix::pty::unlockpt(&master)?;
        let name = rustix::pty::ptsname(&master, Vec::new())?;
        // NOCTTY: the agent itself must never acquire the terminal; the command takes it in
        // its own session (see `attach`).
        let slave = rustix::fs::open(
            name.as_c_str(),
            OFlags::RDWR | OFlags::NOCTTY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        rustix::termios::tcsetwinsize(&master, size.winsize())?;
        Ok(Self { master, slave })
    }

    /// Makes the terminal the user's: owned by `uid`, readable and writable by it alone.
    pub fn give_to(&self, uid: u32, gid: u32) -> io::Result<()> {
        let (uid, gid) = (
            rustix::fs::Uid::from_raw(uid),
            rustix::fs::Gid::from_raw(gid),
        );
        rustix::fs::fchown(&self.slave, Some(uid), Some(gid))?;
        rustix::fs::fchmod(&self.slave, Mode::RUSR | Mode::WUSR)?;
        Ok(())
    }

    /// Sets `cmd` up to run on this terminal: stdin, stdout and stderr on the slave, in a new
    /// session whose controlling terminal it is.
    pub fn attach(&self, cmd: &mut crate::spawn::Command) -> io::Result<()> {
        cmd.stdin(Stdio::Fd(self.slave.try_clone()?))
            .stdout(Stdio::Fd(self.slave.try_clone()?))
            .stderr(Stdio::Fd(self.slave.try_clone()?))
            .session_on_stdin();
        Ok(())
    }

    /// The master, for the session, once the command has started. The agent's copy of the
    /// slave is closed here, so that reading the master ends (EIO) once every process that
    /// has the terminal open has closed it.
    pub fn into_master(self) -> io::Result<Master> {
        drop(self.slave);
        rustix::io::ioctl_fionbio(&self.master, true)?;
        // SAFETY: an OwnedFd is a valid, open descriptor and always returns the same one; the
        // AsyncFd owns it until it is dropped.
        let fd = unsafe { AsyncFd::register(self.master) }.map_err(|e| e.into_parts().1)?;
        Ok(Master { fd })
    }
}

/// The master side of a terminal whose command is running.
pub struct Master {
    fd: AsyncFd<OwnedFd>,
}

impl Master {
    /// Reads what the terminal's programs wrote into `buf`'s spare capacity; `Ok(0)` once no
    /// process holds the terminal open any more.
    pub async fn read_buf(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.spare_capacity_mut().is_empty() {
            buf.reserve(4096);
        }
        loop {
            let mut ready = self.fd.readable().await?;
            match ready.try_io(|fd| Ok(rustix::io::read(fd.get_ref(), spare_capacity(buf))?)) {
                Ok(Ok(n)) => return Ok(n),
                // Linux reports a master whose slave is closed everywhere as EIO: the end.
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    /// Reads what the terminal holds right now into `buf`'s spare capacity, without waiting
    /// and whatever the runtime has seen of its readiness; `Ok(0)` at its end, a `WouldBlock`
    /// error when nothing is there.
    pub fn read_now(&self, buf: &mut Vec<u8>) -> io::Result<usize> {
        if buf.spare_capacity_mut().is_empty() {
            buf.reserve(4096);
        }
        match rustix::io::read(self.fd.get_ref(), spare_capacity(buf)) {
            Ok(n) => Ok(n),
            Err(e) if e.raw_os_error() == libc::EIO => Ok(0),
            Err(e) => Err(e.into()),
        }
    }

    /// Writes all of `data` to the terminal, as if typed.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut ready = self.fd.writable().await?;
            match ready.try_io(|fd| Ok(rustix::io::write(fd.get_ref(), data)?)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }

    /// Changes the terminal's size; the kernel sends SIGWINCH to its foreground group.
    pub fn resize(&self, size: Size) -> io::Result<()> {
        rustix::termios::tcsetwinsize(self.fd.get_ref(), size.winsize())?;
        Ok(())
    }

    /// The terminal's current size.
    #[cfg(test)]
    fn size(&self) -> io::Result<Size> {
        let ws = rustix::termios::tcgetwinsize(self.fd.get_ref())?;
        Ok(Size {
            rows: ws.ws_row,
            cols: ws.ws_col,
        })
    }
}

/// The login shell of user `uid` from the user database, `/bin/sh` when it names none.
pub fn login_shell(uid: u32) -> PathBuf {
    let mut buf = vec![0u8; 4096];
    loop {
        // SAFETY: all-zero is a valid `passwd` (null pointers and zero ids), only read after
        // getpwuid_r filled it in.
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        // SAFETY: the pointers are valid for the call; `buf` holds the strings `pwd` points
        // into and outlives every use of them below.
        let rc = unsafe {
            libc::getpwuid_r(
                uid,
                &mut pwd,
                buf.as_mut_ptr().cast(),
                buf.len(),
                &mut found,
            )
        };
        if rc == libc::ERANGE && buf.len() < 1 << 20 {
            buf.resize(buf.len() * 4, 0);
            continue;
        }
        if rc != 0 || found.is_null() || pwd.pw_shell.is_null() {
            return PathBuf::from("/bin/sh");
        }
        // SAFETY: getpwuid_r succeeded, so pw_shell is a NUL-terminated string inside `buf`.
        let shell = unsafe { CStr::from_ptr(pwd.pw_shell) }.to_bytes().to_vec();
        return if shell.is_empty() {
            PathBuf::from("/bin/sh")
        } else {
            PathBuf::from(OsString::from_vec(shell))
        };
    }
}

/// The command that starts `shell` as a login shell: `argv[0]` is its name with a leading
/// `-`, as login(1) and sshd do, so that it reads the user's profile.
pub fn login_command(shell: &std::path::Path) -> crate::spawn::Command {
    let name = shell
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_else(|| OsString::from("sh"));
    let mut arg0 = OsString::from("-");
    arg0.push(name);
    let mut cmd = crate::spawn::Command::new(shell);
    cmd.arg0(arg0);
    cmd
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// Runs `script` with `sh -c` on a new terminal of `size`, typing `input` after
    /// `after_start` ran; returns everything the terminal showed and the exit status.
    async fn run_on_pty(
        script: &str,
        size: Size,
        after_start: impl FnOnce(&Master),
        input: &[u8],
    ) -> (String, std::process::ExitStatus) {
        let pty = Pty::open(size).expect("open a pty");
        let mut cmd = crate::spawn::Command::new("/bin/sh");
        cmd.arg("-c").arg(script);
        pty.attach(&mut cmd).expect("attach");
        let (mut child, _tree) = crate::process::spawn(cmd, None).await.expect("spawn sh");
        let master = pty.into_master().expect("master");
        after_start(&master);
        master.write_all(input).await.expect("type");
        let mut screen = Vec::new();
        let read_all =
            async { while master.read_buf(&mut screen).await.expect("read the master") > 0 {} };
        tokio::time::timeout(Duration::from_secs(30), read_all)
            .await
            .expect("the terminal closes when the command ends");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("the command ends")
            .expect("wait");
        (String::from_utf8_lossy(&screen).into_owned(), status)
    }

    #[tokio::test]
    async fn a_command_gets_the_terminal_as_controlling_terminal_in_its_own_session() {
        let size = Size {
            rows: 33,
            cols: 101,
        };
        // `tty` names the slave; `stty size` reads the size through the controlling terminal
        // (/dev/tty), so it fails unless the terminal became the session's; $$ leads the
        // session (field 6 of /proc/PID/stat is its session id).
        let script = "tty; stty size </dev/tty; echo \"pid $$ sid $(cut -d' ' -f6 /proc/$$/stat)\"; echo err >&2";
        let (screen, status) = run_on_pty(script, size, |_| {}, b"").await;
        assert!(status.success(), "{status:?}: {screen}");
        assert!(screen.contains("/dev/pts/"), "{screen:?}");
        assert!(screen.contains("33 101"), "{screen:?}");
        let words: Vec<&str> = screen
            .lines()
            .find(|l| l.starts_with("pid "))
            .expect("pid line")
            .split_whitespace()
            .collect();
        assert_eq!(words[1], words[3], "not a session leader: {screen:?}");
        // stderr is the terminal too; the line discipline turns \n into \r\n.
        assert!(screen.contains("err\r\n"), "{screen:?}");
    }

    #[tokio::test]
    async fn a_resize_reaches_the_running_command() {
        let first = Size { rows: 24, cols: 80 };
        let second = Size {
            rows: 50,
            cols: 132,
        };
        // The command waits for a line, so the resize lands before it looks.
        let script = "read line; stty size";
        let (screen, status) = run_on_pty(
            script,
            first,
            |master| {
                master.resize(second).expect("resize");
                assert_eq!(master.size().expect("size"), second);
            },
            b"go\n",
        )
        .await;
        assert!(status.success(), "{status:?}: {screen}");
        assert!(screen.contains("50 132"), "{screen:?}");
    }

    #[tokio::test]
    async fn ctrl_c_typed_interrupts_the_foreground_program() {
        let pty = Pty::open(Size { rows: 24, cols: 80 }).expect("open");
        let mut cmd = crate::spawn::Command::new("/bin/sh");
        cmd.arg("-c").arg("exec sleep 60");
        pty.attach(&mut cmd).expect("attach");
        let (mut child, _tree) = crate::process::spawn(cmd, None).await.expect("spawn");
        let master = pty.into_master().expect("master");
        // Ready once `sleep` runs in front: the line discipline signals whoever is there.
        let pid = child.id();
        let ready = async {
            loop {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                if cmdline.starts_with(b"sleep\0") {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(30), ready)
            .await
            .expect("sleep starts");
        master.write_all(b"\x03").await.expect("type ^C");
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
            .await
            .expect("sleep ends after ^C")
            .expect("wait");
        assert_eq!(
            std::os::unix::process::ExitStatusExt::signal(&status),
            Some(libc::SIGINT),
            "{status:?}"
        );
    }

    #[test]
    fn the_login_shell_comes_from_the_user_database() {
        let shell = login_shell(0);
        assert!(shell.is_absolute(), "{shell:?}");
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        let root = passwd
            .lines()
            .find(|l| l.starts_with("root:"))
            .and_then(|l| l.rsplit(':').next())
            .expect("root's line");
        assert_eq!(shell, PathBuf::from(root));
    }

    #[test]
    fn a_login_command_names_itself_with_a_leading_dash() {
        let mut cmd = login_command(std::path::Path::new("/bin/sh"));
        cmd.arg("-c")
            .arg("echo \"$0\"")
            .stdout(crate::spawn::Stdio::Piped);
        let started = crate::spawn::spawn(cmd, None, None).expect("run sh");
        let mut out = String::new();
        std::io::Read::read_to_string(
            &mut std::fs::File::from(started.stdout.expect("stdout")),
            &mut out,
        )
        .expect("read");
        crate::spawn::wait_blocking(started.pid).expect("wait");
        assert_eq!(out, "-sh\n");
    }
}
