//! Output sinks for one target: ctl's own stdout and stderr, byte for byte, or memory.

use std::fs::File;
use std::io::{self, Write};
use std::mem::ManuallyDrop;
use std::os::fd::FromRawFd;

use crate::remote::Output;

/// Writes straight to file descriptors 1 and 2, unbuffered, so output appears as it comes.
pub struct Passthrough {
    stdout: ManuallyDrop<File>,
    stderr: ManuallyDrop<File>,
}

impl Passthrough {
    /// Wraps this process's stdout and stderr.
    pub fn new() -> Self {
        // SAFETY: fds 1 and 2 are open for the life of the process, and ManuallyDrop keeps
        // these handles from closing them.
        unsafe {
            Self {
                stdout: ManuallyDrop::new(File::from_raw_fd(1)),
                stderr: ManuallyDrop::new(File::from_raw_fd(2)),
            }
        }
    }
}

impl Output for Passthrough {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&mut self.stdout, data)
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        write_all(&mut self.stderr, data)
    }
}

/// `write_all` that also waits out a non-blocking descriptor inherited from the caller.
fn write_all(file: &mut File, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match file.write(data) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(std::time::Duration::from_millis(1)),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Keeps all output in memory, for `--json` and `--group`.
#[derive(Debug, Default, Clone)]
pub struct Captured {
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr.
    pub stderr: Vec<u8>,
}

impl Output for Captured {
    fn stdout(&mut self, data: &[u8]) -> io::Result<()> {
        self.stdout.extend_from_slice(data);
        Ok(())
    }

    fn stderr(&mut self, data: &[u8]) -> io::Result<()> {
        self.stderr.extend_from_slice(data);
        Ok(())
    }
}
