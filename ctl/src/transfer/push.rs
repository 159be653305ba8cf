//! One target of a push: connect, subscribe to the [`Hub`], stream every event to the agent,
//! and read its verdicts as they come.

use std::sync::Arc;
use std::time::Instant;

use rexec_shared::files::source::Event;
use rexec_shared::files::wire::{PushRequest, TransferDone};
use rexec_shared::keyfile::KeyEntry;
use rexec_shared::message::{kind, Request, ServerMsg, StreamMsg};
use rexec_shared::ProtocolError;
use tokio::sync::mpsc;

use super::hub::Hub;
use super::{safe, Transfer};
use crate::outcome::Failure;
use crate::remote;
use crate::target::Target;

/// Pushes the hub's sources to `target`; `note` gets each entry the agent could not write.
pub async fn run(
    target: &Target,
    key: &KeyEntry,
    (connect_timeout, retries, mut cancel): remote::Patience,
    hub: &Arc<Hub>,
    request: PushRequest,
    note: &mut (dyn FnMut(&str) + Send),
) -> Transfer {
    let started = Instant::now();
    let ticket = hub.arrive();
    let conn =
        match remote::connect_retrying(target, key, connect_timeout, retries, &mut cancel).await {
            Ok(conn) => conn,
            Err(failure) => return Transfer::failed(failure),
        };
    let events = ticket.ready();
    let (mut reader, mut writer) = conn.into_parts();
    if let Err(e) = writer.send_request(&Request::Push(request)).await {
        return Transfer::failed(remote::stream_failure(e));
    }
    let send = send_all(&mut writer, events);
    let receive = async {
        let mut result = Transfer::default();
        let verdict =
            loop {
                match reader.next_server_msg().await {
                    Ok(Some(ServerMsg::FileError(e))) => {
                        let message = safe(&e.message);
                        note(&message);
                        result.entry_failed(message);
                    }
                    Ok(Some(ServerMsg::TransferDone(done))) => break Ok(done),
                    Ok(Some(ServerMsg::Error(text))) => break Err(Failure::Agent(safe(&text))),
                    Ok(Some(_)) => break Err(Failure::Stream(
                        "protocol error: the agent answered a push with another kind of message"
                            .into(),
                    )),
                    Ok(None) => break Err(Failure::Stream(
                        "stream truncated: connection closed before the agent confirmed the files"
                            .into(),
                    )),
                    Err(e) => break Err(remote::stream_failure(e)),
                }
            };
        (result, verdict)
    };
    tokio::pin!(send, receive);
    // Sending may end first (normally) or fail (the agent closed: what it said comes next).
    let mut local: Option<TransferDone> = None;
    let mut sending = true;
    let (mut result, verdict) = loop {
        tokio::select! {
            sent = &mut send, if sending => {
                sending = false;
                local = sent.ok().flatten();
            }
            verdict = &mut receive => break verdict,
        }
    };
    match verdict {
        Ok(done) => {
            result.files = done.files;
            result.bytes = done.bytes;
            // What could not be read here fails on every target, and is reported once, by the
            // hub; the agent's failures were noted as they came.
            let local_failed = local.map_or(0, |l| l.failed);
            result.failed = result.failed.max(done.failed) + local_failed;
            if local.is_none() {
                result.entry_failed("the sources were not all sent".into());
            }
        }
        Err(failure) => result.failure = Some(failure),
    }
    result.duration = started.elapsed();
    result
}

/// Sends every event of a pass; returns the source's totals once the agent was told the end.
async fn send_all<W: tokio::io::AsyncWrite + Unpin>(
    writer: &mut rexec_shared::transport::SealedWriter<W>,
    mut events: mpsc::Receiver<Event>,
) -> Result<Option<TransferDone>, ProtocolError> {
    loop {
        let event = tokio::select! {
            event = events.recv() => match event {
                Some(event) => event,
                None => return Ok(None),
            },
            // Waiting on a slower target's pace (the hub) or a slow local disk, the agent
            // still hears from ctl.
            () = writer.heartbeat_due() => {
                writer.send_heartbeat().await?;
                continue;
            }
        };
        match event {
            Event::Header(h) => writer.send_stream(&StreamMsg::FileHeader(h)).await?,
            // The body is the data itself: sealed straight from the shared chunk.
            Event::Data(data) => writer.send(kind::PUSH_DATA, &data).await?,
            Event::End(end) => writer.send_stream(&StreamMsg::FileEnd(end)).await?,
            Event::Failed { .. } => {}
            Event::Done(done) => {
                writer.send_stream(&StreamMsg::PushDone).await?;
                return Ok(Some(done));
            }
        }
    }
}
