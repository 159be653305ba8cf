//! SIGINT and SIGTERM, turned into a value every part of a run can watch: the engine's
//! [`Stop`](crate::engine::Stop) cancels every running target from it.

use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::watch;

/// Installs the handlers. The receiver holds the signal once one arrived; ctl then exits
/// 128+N.
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
                // Keep the sender (and so the value) alive for the rest of the run.
                std::future::pending::<()>().await;
            });
        }
        Err(e) => eprintln!("ctl: warning: cannot install signal handlers: {e}"),
    }
    interrupted
}
