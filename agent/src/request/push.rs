//! `Push`: writes the tree the client streams under the request's destination.
//!
//! The writing itself is [`rexec_shared::files::sink`], on a thread of its own per transfer
//! (atomic files, nothing followed below the destination). Under a key's `user=` that thread
//! takes on the user's rights before it looks at the destination, so pushed files are written
//! with those rights and owned by that user. This module resolves the destination, moves
//! messages between the socket and the thread, and reports.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::{Duration, Instant};

use rexec_shared::files::path::display;
use rexec_shared::files::sink::{self, Event, Links, Op, Options};
use rexec_shared::files::wire::{FileError, PushRequest};
use rexec_shared::message::{ServerMsg, StreamMsg};
use rexec_shared::transport::{Incoming, SealedReader, SealedWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::credentials::Credentials;

/// How one transfer ended, for the audit log.
#[derive(Debug, Default)]
pub struct Outcome {
    /// Entries written (not counting directories) or sent.
    pub files: u64,
    /// Bytes of file content among them.
    pub bytes: u64,
    /// Entries that failed.
    pub failed: u64,
    /// Why the transfer as a whole did not finish, if it did not.
    pub error: Option<String>,
    /// Time from the request to the end.
    pub duration: Duration,
    /// The wait for the client to close, once the result was sent.
    pub linger: Option<crate::request::linger::Linger>,
}

/// Where a push writes: the root directory and, for a new path, the name the one top-level
/// entry takes.
fn destination(req: &PushRequest) -> Result<Options, String> {
    let dest = Path::new(std::ffi::OsStr::from_bytes(&req.dest));
    let shown = display(&req.dest);
    let options = |root: &Path, rename_top: Option<Vec<u8>>| Options {
        root: root.to_owned(),
        rename_top,
        keep_times: req.keep_times,
        links: Links::Any,
    };
    match std::fs::metadata(dest) {
        Ok(meta) if meta.is_dir() => return Ok(options(dest, None)),
        Ok(_) if req.into_dir => {
            return Err(format!(
                "destination {shown} is not a directory (several sources go into a directory)"
            ))
        }
        // Renaming over /dev/null or a FIFO would replace it: refused, as the sink refuses it.
        Ok(meta) if !meta.is_file() => {
            return Err(format!(
                "destination {shown} is a device, FIFO or socket; a file is never put in its place"
            ))
        }
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && req.into_dir => {
            return Err(format!(
                "destination directory {shown} does not exist (several sources go into a directory)"
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot use destination {shown}: {e}")),
    }
    let Some(name) = dest.file_name() else {
        return Err(format!("destination {shown} names no file"));
    };
    let parent = match dest.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    match std::fs::metadata(parent) {
        Ok(meta) if meta.is_dir() => Ok(options(parent, Some(name.as_bytes().to_vec()))),
        Ok(_) => Err(format!(
            "cannot write {shown}: {} is not a directory",
            parent.display()
        )),
        Err(e) => Err(format!(
            "cannot write {shown}: directory {}: {}",
            parent.display(),
            if e.kind() == std::io::ErrorKind::NotFound {
                "does not exist".to_owned()
            } else {
                e.to_string()
            }
        )),
    }
}

/// Serves one push; returns when the exchange is over.
pub async fn run<R, W>(
    req: PushRequest,
    mut reader: SealedReader<R>,
    mut writer: SealedWriter<W>,
    mut shutdown: watch::Receiver<bool>,
    user: Option<Credentials>,
) -> Outcome
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut outcome = Outcome::default();
    // The destination is looked at and written on the writer's thread, with the user's rights
    // under `user=`.
    let prepare = {
        let req = req.clone();
        move || {
            if let Some(user) = &user {
                user.enter_on_this_thread()?;
                return destination(&PushRequest {
                    dest: user.resolve(&req.dest),
                    ..req
                });
            }
            destination(&req)
        }
    };
    let handle = sink::spawn(prepare).await;
    let mut handle = match handle {
        Ok(handle) => handle,
        Err(text) => {
            let _ = writer.send_server(&ServerMsg::Error(text.clone())).await;
            let _ = writer.shutdown().await;
            outcome.error = Some(text);
            outcome.duration = started.elapsed();
            return outcome;
        }
    };
    let mut reporting = true;
    let mut finishing = false;
    let mut seen = Vec::new();
    let spares = handle.spares.clone();
    let result: Result<(), String> = loop {
        for event in seen.drain(..) {
            if let Event::Failed { path, message } = event {
                report(&mut writer, &mut reporting, FileError { path, message }).await;
            }
        }
        tokio::select! {
            // File data goes to the writer in the buffer it was read into, without a copy.
            msg = reader.next_stream_msg_owning_data(|| spares.take()), if !finishing => {
                let op = match msg {
                    Ok(Some(Incoming::Data(data))) => Op::Data(data),
                    Ok(Some(Incoming::Msg(StreamMsg::FileHeader(h)))) => Op::Header(h),
                    Ok(Some(Incoming::Msg(StreamMsg::FileEnd(end)))) => Op::End(end),
                    Ok(Some(Incoming::Msg(StreamMsg::PushDone))) => Op::Finish,
                    Ok(Some(Incoming::Msg(other))) => break Err(format!("protocol error: client sent frame kind 0x{:02x} during a push", other.kind())),
                    Ok(None) => break Err("client went away in the middle of the transfer".into()),
                    Err(e) => break Err(format!("client connection failed: {e}")),
                };
                finishing = matches!(op, Op::Finish);
                // The disk may be slow: the client still hears from us meanwhile.
                match writer.beating(handle.send(op, &mut seen)).await {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break Err("the writer thread ended early".into()),
                    Err(e) => break Err(format!("sending a heartbeat failed: {e}")),
                }
            }
            event = handle.events.recv() => match event {
                Some(Event::Done(done)) => {
                    outcome.files = done.files;
                    outcome.bytes = done.bytes;
                    outcome.failed = done.failed;
                    let sent = writer.send_server(&ServerMsg::TransferDone(done)).await;
                    if let Err(e) = sent.and(writer.shutdown().await) {
                        break Err(format!("could not send the result: {e}"));
                    }
                    break Ok(());
                }
                Some(event) => seen.push(event),
                None => break Err("the writer thread ended early".into()),
            },
            // While files are written the client hears nothing else from us.
            () = writer.heartbeat_due() => if let Err(e) = writer.send_heartbeat().await {
                break Err(format!("sending a heartbeat failed: {e}"));
            },
            // Yields (), not the watch guard, which must not live across the awaits below.
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                let _ = writer.send_server(&ServerMsg::Error("agent shutting down; the file in progress was not written".into())).await;
                break Err("agent shutting down".into());
            }
        }
    };
    // Dropping the sender ends the thread; a file in progress is discarded with it.
    drop(handle);
    outcome.duration = started.elapsed();
    match result {
        // Heartbeats the client sent while the last files were made safe are still unread.
        Ok(()) => {
            let drain =
                tokio::spawn(
                    async move { while let Ok(Some(_)) = reader.next_stream_msg().await {} },
                );
            outcome.linger = Some(crate::request::linger::Linger::on(drain));
        }
        Err(e) => outcome.error = Some(e),
    }
    outcome
}

/// Tells the client about one entry that was not written; stops trying once that fails (the
/// transfer then goes on to its end or its cut).
async fn report<W: AsyncWrite + Unpin>(
    writer: &mut SealedWriter<W>,
    reporting: &mut bool,
    error: FileError,
) {
    if *reporting {
        *reporting = writer
            .send_server(&ServerMsg::FileError(error))
            .await
            .is_ok();
    }
}
