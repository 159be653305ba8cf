//! `ctl push` and `ctl pull`: file transfers to and from many targets, each target's result
//! reported in one line (or one JSON record), the run's in a summary.
//!
//! [`Push`] and [`Pull`] are jobs on the fan-out [`engine`](crate::engine), shown by
//! [`Transfers`](crate::render::transfer::Transfers). [`hub`] reads the sources once for all
//! the targets being pushed to; [`push`] and [`pull`] are the exchanges with one agent. Files are written with
//! [`rexec_shared::files::sink`] on both ends: atomically, checked against the sender's
//! digest (BLAKE3), and never through a symlink.

pub mod hub;
pub mod pull;
pub mod push;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rexec_shared::files::wire::{PullRequest, PushRequest};
use rexec_shared::keyfile::KeyEntry;
use tokio::sync::watch;

use crate::engine::Job;
use crate::exit;
use crate::outcome::Failure;
use crate::output::Output;
use crate::target::Target;

/// At most this many entry errors are kept per target for its JSON record; all are printed.
const ERRORS_KEPT: usize = 100;

/// How a transfer to or from one target ended.
#[derive(Debug, Clone, Default)]
pub struct Transfer {
    /// Files and links copied whole (directories are not counted).
    pub files: u64,
    /// Bytes of file content among them.
    pub bytes: u64,
    /// Entries that could not be read or written, on either side.
    pub failed: u64,
    /// Their messages (the first [`ERRORS_KEPT`]).
    pub errors: Vec<String>,
    /// Why the transfer as a whole did not complete.
    pub failure: Option<Failure>,
    /// `--timeout` ran out.
    pub timed_out: bool,
    /// Wall time from the start of the connection.
    pub duration: Duration,
}

impl Transfer {
    /// A transfer that failed as a whole.
    pub fn failed(failure: Failure) -> Self {
        Self {
            failure: Some(failure),
            ..Self::default()
        }
    }

    /// Records one entry that was not copied.
    pub fn entry_failed(&mut self, message: String) {
        self.failed += 1;
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push(message);
        }
    }

    /// Whether the target could not be reached or authenticated.
    pub fn unreachable(&self) -> bool {
        matches!(self.failure, Some(Failure::Connect(_) | Failure::Auth(_)))
    }

    /// ctl's exit status for this target: 255 for a connection, authentication or stream
    /// failure, 124 for `--timeout`, 1 for a file that could not be read or written.
    pub fn exit_code(&self) -> u8 {
        match &self.failure {
            Some(Failure::Connect(_) | Failure::Auth(_) | Failure::Stream(_)) => exit::UNREACHABLE,
            Some(Failure::Agent(_)) => exit::FAILURE,
            None if self.timed_out => exit::TIMED_OUT,
            None if self.failed > 0 => exit::FAILURE,
            None => 0,
        }
    }

    /// The one line that says what was copied, or why not.
    pub fn line(&self, target: &Target) -> String {
        let copied = format!(
            "{} file{}, {} bytes",
            self.files,
            if self.files == 1 { "" } else { "s" },
            self.bytes
        );
        match &self.failure {
            Some(failure) => format!("{target}: not copied: {failure}"),
            None if self.timed_out => format!("{target}: timed out after copying {copied}"),
            None if self.failed > 0 => format!("{target}: copied {copied}; {} failed", self.failed),
            None => format!("{target}: copied {copied}"),
        }
    }

    /// The `--json` record.
    pub fn json(&self, target: &Target) -> String {
        let record = serde_json::json!({
            "target": target.spelling,
            "status": self.exit_code(),
            "files": self.files,
            "bytes": self.bytes,
            "failed": self.failed,
            "errors": self.errors,
            "timed_out": self.timed_out,
            "duration_ms": self.duration.as_millis() as u64,
            "error": self.failure.as_ref().map(ToString::to_string),
            "error_kind": self.failure.as_ref().map(|f| match f {
                Failure::Connect(_) => "connect",
                Failure::Auth(_) => "auth",
                Failure::Stream(_) => "stream",
                Failure::Agent(_) => "agent",
            }),
        });
        format!("{record}\n")
    }
}

/// Text from an agent or a path, made safe to print: control characters are escaped so that
/// one target cannot forge or garble another's lines.
pub fn safe(text: &str) -> String {
    rexec_shared::files::path::display(text.as_bytes())
}

/// What every target of a transfer shares.
pub struct Common {
    /// The key to authenticate with.
    pub key: KeyEntry,
    /// Bound on connecting and authenticating, per target.
    pub connect_timeout: Duration,
    /// More tries for a target that could not be reached (`--retry`).
    pub retries: u32,
    /// Bound on one target's whole transfer.
    pub timeout: Option<Duration>,
}

/// `ctl push`: the hub's sources to each target.
pub struct Push {
    /// Key and time bounds.
    pub common: Common,
    /// The sources' shared reader.
    pub hub: Arc<hub::Hub>,
    /// The request every target gets.
    pub request: PushRequest,
}

/// `ctl pull`: the request's paths from each target into `local_dir` (with `many`, into
/// `local_dir/<target>/`).
pub struct Pull {
    /// Key and time bounds.
    pub common: Common,
    /// The request every target gets.
    pub request: PullRequest,
    /// Where the files land.
    pub local_dir: PathBuf,
    /// One directory per target.
    pub many: bool,
    /// Set modification times (`-p`).
    pub keep_times: bool,
}

impl Job for Push {
    type Done = Transfer;

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> Transfer {
        let mut note = |message: &str| {
            let _ = sink.stderr(format!("{message}\n").as_bytes());
        };
        let c = &self.common;
        let work = push::run(
            target,
            &c.key,
            (c.connect_timeout, c.retries, stop.clone()),
            &self.hub,
            self.request.clone(),
            &mut note,
        );
        bounded(work, c.timeout, stop).await
    }

    fn failed(done: &Transfer) -> bool {
        done.exit_code() != 0
    }
}

impl Job for Pull {
    type Done = Transfer;

    async fn run<S: Output + Send>(
        &self,
        target: &Target,
        sink: &mut S,
        stop: watch::Receiver<Option<i32>>,
    ) -> Transfer {
        let mut note = |message: &str| {
            let _ = sink.stderr(format!("{message}\n").as_bytes());
        };
        let root = match pull_root(&self.local_dir, target, self.many) {
            Ok(root) => root,
            Err(message) => {
                note(&message);
                let mut t = Transfer::default();
                t.entry_failed(message);
                return t;
            }
        };
        let c = &self.common;
        let request = self.request.clone();
        let work = pull::run(
            target,
            &c.key,
            (c.connect_timeout, c.retries, stop.clone()),
            request,
            root,
            self.keep_times,
            &mut note,
        );
        bounded(work, c.timeout, stop).await
    }

    fn failed(done: &Transfer) -> bool {
        done.exit_code() != 0
    }
}

/// Runs one target's transfer within `--timeout`, until a stop. Either way the exchange is
/// dropped, and with it the connection: the agent discards the file in progress.
async fn bounded(
    work: impl std::future::Future<Output = Transfer>,
    timeout: Option<Duration>,
    mut stop: watch::Receiver<Option<i32>>,
) -> Transfer {
    let started = Instant::now();
    let work = async {
        match timeout {
            Some(limit) => tokio::time::timeout(limit, work).await.ok(),
            None => Some(work.await),
        }
    };
    tokio::select! {
        done = work => done.unwrap_or_else(|| Transfer {
            timed_out: true,
            duration: started.elapsed(),
            ..Transfer::default()
        }),
        _ = stop.wait_for(Option::is_some) => Transfer {
            failure: Some(Failure::Stream("interrupted; the file in progress was not kept".into())),
            duration: started.elapsed(),
            ..Transfer::default()
        },
    }
}

/// The directory a target's pulled files land in: `local_dir` itself for one target, else
/// `local_dir/<target as written>/`, created if missing and never a symlink.
fn pull_root(local_dir: &Path, target: &Target, many: bool) -> Result<PathBuf, String> {
    if !many {
        return Ok(local_dir.to_owned());
    }
    let name = &target.spelling;
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!("{} cannot name a directory", safe(name)));
    }
    let dir = local_dir.join(name);
    match std::fs::create_dir(&dir) {
        Ok(()) => Ok(dir),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            match std::fs::symlink_metadata(&dir) {
                Ok(meta) if meta.is_dir() => Ok(dir),
                _ => Err(format!("{} exists and is not a directory", dir.display())),
            }
        }
        Err(e) => Err(format!("cannot create {}: {e}", dir.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_lines_say_what_happened() {
        let t = Target::parse("web1", 1).unwrap();
        let ok = Transfer {
            files: 1,
            bytes: 5,
            ..Transfer::default()
        };
        assert_eq!(ok.exit_code(), 0);
        assert_eq!(ok.line(&t), "web1: copied 1 file, 5 bytes");
        let mut partial = ok.clone();
        partial.entry_failed("f: no space left on the device".into());
        assert_eq!(partial.exit_code(), 1);
        assert_eq!(partial.line(&t), "web1: copied 1 file, 5 bytes; 1 failed");
        let cut = Transfer::failed(Failure::Stream("stream truncated".into()));
        assert_eq!(cut.exit_code(), 255);
        assert_eq!(cut.line(&t), "web1: not copied: stream truncated");
        assert_eq!(
            Transfer::failed(Failure::Agent("no dir".into())).exit_code(),
            1
        );
        let json: serde_json::Value = serde_json::from_str(&partial.json(&t)).unwrap();
        assert_eq!(json["status"], 1);
        assert_eq!(json["errors"][0], "f: no space left on the device");
        assert_eq!(json["error"], serde_json::Value::Null);
        assert_eq!(safe("a\nb\x1b"), "a\\nb\\u{1b}");
    }
}
