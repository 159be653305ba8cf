//! SIGINT and SIGTERM: turned into a cancel of every running target, with a bound on how long
//! ctl then waits for the agents to confirm.

use std::time::Duration;

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

use crate::exit;

/// Time ctl waits after forwarding SIGINT/SIGTERM for the remote side to report.
const CANCEL_WAIT: Duration = Duration::from_secs(5);

/// Installs the handlers. The receiver holds the signal once one arrived; ctl then exits
/// 128+N. If the targets have not reported within [`CANCEL_WAIT`], ctl exits anyway.
pub fn watch() -> watch::Receiver<Option<i32>> {
    let (cancel, interrupted) = watch::channel(None);
    let installed =
        signal(SignalKind::interrupt()).and_then(|int| Ok((int, signal(SignalKind::terminate())?)));
    match installed {
        Ok((mut sigint, mut sigterm)) => {
            tokio::spawn(async move {
                let sig = tokio::select! {
                    _ = sigint.recv() => libc::SIGINT,
                    _ = sigterm.recv() => libc::SIGTERM,
                };
                let _ = cancel.send(Some(sig));
                tokio::time::sleep(CANCEL_WAIT).await;
                eprintln!(
                    "ctl: remote side did not confirm the cancel within {CANCEL_WAIT:?}; exiting"
                );
                std::process::exit(i32::from(exit::signalled(sig)));
            });
        }
        Err(e) => eprintln!("ctl: warning: cannot install signal handlers: {e}"),
    }
    interrupted
}
