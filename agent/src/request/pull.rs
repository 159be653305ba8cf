//! `Pull`: sends the requested paths (trees with `recursive`) to the client.
//!
//! Reading is [`rexec_shared::files::source`], on a thread of its own per transfer: symlinks
//! below a requested path are sent as links and never followed, and every file is read once
//! and hashed as it goes. That thread is where a key's `user=` credentials attach, so that a
//! pull reads only what that user may.

use std::time::Instant;

use rexec_shared::files::source::{self, Event};
use rexec_shared::files::wire::{FileError, PullRequest};
use rexec_shared::files::Enter;
use rexec_shared::message::{kind, ServerMsg};
use rexec_shared::transport::{SealedReader, SealedWriter};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::watch;

use crate::credentials::Credentials;

use super::push::Outcome;

/// Serves one pull; returns when the exchange is over.
pub async fn run<R, W>(
    req: PullRequest,
    mut reader: SealedReader<R>,
    mut writer: SealedWriter<W>,
    mut shutdown: watch::Receiver<bool>,
    user: Option<Credentials>,
) -> Outcome
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let started = Instant::now();
    let mut outcome = Outcome::default();
    // Read on the reader's thread with the user's rights under `user=`.
    let (paths, enter) = match user {
        Some(user) => {
            let paths = req.paths.iter().map(|p| user.resolve(p)).collect();
            let enter: Enter = Box::new(move || user.enter_on_this_thread());
            (paths, Some(enter))
        }
        None => (req.paths, None),
    };
    let mut events = match source::spawn(paths, req.recursive, enter).await {
        Ok(rx) => rx,
        Err(text) => {
            let _ = writer.send_server(&ServerMsg::Error(text.clone())).await;
            let _ = writer.shutdown().await;
            outcome.error = Some(text);
            return outcome;
        }
    };
    let result: Result<(), String> = loop {
        tokio::select! {
            event = events.recv() => {
                let sent = match event {
                    Some(Event::Header(h)) => writer.send_server(&ServerMsg::FileHeader(h)).await,
                    Some(Event::Data(data)) => writer.send(kind::PULL_DATA, &data).await,
                    Some(Event::End(end)) => writer.send_server(&ServerMsg::FileEnd(end)).await,
                    Some(Event::Failed { path, message }) => {
                        writer.send_server(&ServerMsg::FileError(FileError { path, message })).await
                    }
                    Some(Event::Done(done)) => {
                        outcome.files = done.files;
                        outcome.bytes = done.bytes;
                        outcome.failed = done.failed;
                        let sent = writer.send_server(&ServerMsg::TransferDone(done)).await;
                        break sent
                            .and(writer.shutdown().await)
                            .map_err(|e| format!("could not send the result: {e}"));
                    }
                    None => break Err("the reader thread ended early".into()),
                };
                if let Err(e) = sent {
                    break Err(format!("sending to the client failed: {e}"));
                }
            }
            // The client sends nothing after its request: anything else, or its end, stops us.
            msg = reader.next_stream_msg() => break Err(match msg {
                Ok(Some(other)) => format!("protocol error: client sent frame kind 0x{:02x} during a pull", other.kind()),
                Ok(None) => "client went away in the middle of the transfer".into(),
                Err(e) => format!("client connection failed: {e}"),
            }),
            // A slow disk leaves the client without frames for a while.
            () = writer.heartbeat_due() => if let Err(e) = writer.send_heartbeat().await {
                break Err(format!("sending a heartbeat failed: {e}"));
            },
            // Yields (), not the watch guard, which must not live across the awaits below.
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                let _ = writer.send_server(&ServerMsg::Error("agent shutting down; the pull was not finished".into())).await;
                break Err("agent shutting down".into());
            }
        }
    };
    // Dropping the receiver stops the reader thread at its next chunk.
    drop(events);
    if let Err(e) = result {
        outcome.error = Some(e);
    }
    outcome.duration = started.elapsed();
    outcome
}
