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

/// What the pull loop does next.
enum Step {
    /// Send what the reader thread produced.
    Send(Event),
    /// Tell the client the agent is still there.
    Heartbeat,
}

/// Serves one pull; returns when the exchange is over.
pub async fn run<R, W>(
    req: PullRequest,
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
    // The client sends nothing after its request: anything else, its end or its silence stops
    // the pull. Read on a task of its own, so that a send stalled by a frozen client is cut
    // short when the silence is noticed.
    let mut client = tokio::spawn(async move {
        match reader.next_stream_msg().await {
            Ok(Some(other)) => format!(
                "protocol error: client sent frame kind 0x{:02x} during a pull",
                other.kind()
            ),
            Ok(None) => "client went away in the middle of the transfer".into(),
            Err(e) => format!("client connection failed: {e}"),
        }
    });
    let result: Result<(), String> = loop {
        let step = tokio::select! {
            event = events.recv() => match event {
                Some(event) => Step::Send(event),
                None => break Err("the reader thread ended early".into()),
            },
            // A slow disk leaves the client without frames for a while.
            () = writer.heartbeat_due() => Step::Heartbeat,
            why = &mut client => break Err(why.unwrap_or_else(|e| format!("client reader failed: {e}"))),
            // Yields (), not the watch guard, which must not live across the awaits below.
            () = async { let _ = shutdown.wait_for(|stop| *stop).await; } => {
                let _ = writer.send_server(&ServerMsg::Error("agent shutting down; the pull was not finished".into())).await;
                break Err("agent shutting down".into());
            }
        };
        let send = async {
            match step {
                Step::Heartbeat => writer.send_heartbeat().await.map(|()| None),
                Step::Send(Event::Header(h)) => writer
                    .send_server(&ServerMsg::FileHeader(h))
                    .await
                    .map(|()| None),
                Step::Send(Event::Data(data)) => {
                    writer.send(kind::PULL_DATA, &data).await.map(|()| None)
                }
                Step::Send(Event::End(end)) => writer
                    .send_server(&ServerMsg::FileEnd(end))
                    .await
                    .map(|()| None),
                Step::Send(Event::Failed { path, message }) => writer
                    .send_server(&ServerMsg::FileError(FileError { path, message }))
                    .await
                    .map(|()| None),
                Step::Send(Event::Done(done)) => {
                    writer.send_server(&ServerMsg::TransferDone(done)).await?;
                    writer.shutdown().await?;
                    Ok(Some(done))
                }
            }
        };
        // A frozen client's kernel keeps its window shut: the send is cut short when the
        // client's reader gives up on it.
        let sent = tokio::select! {
            sent = send => sent,
            why = &mut client => break Err(why.unwrap_or_else(|e| format!("client reader failed: {e}"))),
        };
        match sent {
            Ok(Some(done)) => {
                outcome.files = done.files;
                outcome.bytes = done.bytes;
                outcome.failed = done.failed;
                break Ok(());
            }
            Ok(None) => {}
            Err(e) => break Err(format!("sending to the client failed: {e}")),
        }
    };
    // Dropping the receiver stops the reader thread at its next chunk.
    drop(events);
    outcome.duration = started.elapsed();
    if result.is_ok() {
        outcome.linger = Some(crate::request::linger::Linger::on(client));
    } else {
        client.abort();
    }
    if let Err(e) = result {
        outcome.error = Some(e);
    }
    outcome
}
