//! One target of a pull: connect, ask for the paths, and write what the agent sends under
//! the target's directory with a [`sink`] that refuses every path and link leading out of it.

use std::path::PathBuf;
use std::time::Instant;

use rexec_shared::files::sink::{self, Event, Links, Op, Options};
use rexec_shared::files::wire::PullRequest;
use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::{Request, ServerMsg};
use rexec_shared::transport::Incoming;

use super::{safe, Transfer};
use crate::outcome::Failure;
use crate::remote;
use crate::target::Target;

/// Pulls `request` from `target` into `root`; `note` gets each entry not copied.
pub async fn run(
    target: &Target,
    key: &KeyEntry,
    (connect_timeout, retries, mut cancel): remote::Patience,
    request: PullRequest,
    root: PathBuf,
    keep_times: bool,
    note: &mut (dyn FnMut(&str) + Send),
) -> Transfer {
    let started = Instant::now();
    let conn =
        match remote::connect_retrying(target, key, connect_timeout, retries, &mut cancel).await {
            Ok(conn) => conn,
            Err(failure) => return Transfer::failed(failure),
        };
    let mut result = Transfer::default();
    let options = Options {
        root,
        rename_top: None,
        keep_times,
        links: Links::Inside,
    };
    let mut handle = match sink::spawn(move || Ok(options)).await {
        Ok(handle) => handle,
        Err(message) => {
            let message = safe(&message);
            note(&message);
            result.entry_failed(message);
            return result;
        }
    };
    let (mut reader, mut writer) = conn.into_parts();
    if let Err(e) = writer.send_request(&Request::Pull(request)).await {
        return Transfer::failed(remote::stream_failure(e));
    }
    // ctl sends nothing else during a pull; the agent must still hear from it.
    let beats = tokio::spawn(remote::keep_alive(writer));
    let mut seen = Vec::new();
    let mut local_failures = Vec::new();
    let spares = handle.spares.clone();
    let verdict: Result<(), Failure> = loop {
        // File data goes to the writer in the buffer it was read into, without a copy.
        let op = match reader.next_server_msg_owning_data(|| spares.take()).await {
            Ok(Some(Incoming::Data(data))) => Op::Data(data),
            Ok(Some(Incoming::Msg(ServerMsg::FileHeader(h)))) => Op::Header(h),
            Ok(Some(Incoming::Msg(ServerMsg::FileEnd(end)))) => Op::End(end),
            Ok(Some(Incoming::Msg(ServerMsg::FileError(e)))) => {
                let message = safe(&e.message);
                note(&message);
                result.entry_failed(message);
                continue;
            }
            Ok(Some(Incoming::Msg(ServerMsg::TransferDone(_)))) => break Ok(()),
            Ok(Some(Incoming::Msg(ServerMsg::Error(text)))) => {
                break Err(Failure::Agent(safe(&text)))
            }
            Ok(Some(Incoming::Msg(_))) => {
                break Err(Failure::Stream(
                    "protocol error: the agent answered a pull with another kind of message".into(),
                ))
            }
            Ok(None) => {
                break Err(Failure::Stream(
                    "stream truncated: connection closed before the agent sent every file".into(),
                ))
            }
            Err(e) => break Err(remote::stream_failure(e)),
        };
        if handle.send(op, &mut seen).await.is_err() {
            break Err(Failure::Stream(
                "the local writer thread ended early".into(),
            ));
        }
        local_failures.append(&mut seen);
        for event in local_failures.drain(..) {
            if let Event::Failed { message, .. } = event {
                note(&message);
                result.entry_failed(message);
            }
        }
    };
    beats.abort();
    if let Err(failure) = verdict {
        // Dropping the writer discards the file in progress: nothing partial is left.
        drop(handle);
        result.failure = Some(failure);
        result.duration = started.elapsed();
        return result;
    }
    let _ = handle.send(Op::Finish, &mut seen).await;
    for event in seen {
        if let Event::Failed { message, .. } = event {
            note(&message);
            result.entry_failed(message);
        }
    }
    while let Some(event) = handle.events.recv().await {
        match event {
            Event::Failed { message, .. } => {
                note(&message);
                result.entry_failed(message);
            }
            Event::Done(done) => {
                result.files = done.files;
                result.bytes = done.bytes;
                break;
            }
        }
    }
    result.duration = started.elapsed();
    result
}
