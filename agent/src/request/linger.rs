//! The wait, after an exchange's final frame, for the client to close.
//!
//! A client still reading what was sent (its output paused in a pager) keeps sending
//! heartbeats. Closing the socket with those unread makes the kernel send a reset, which
//! discards what the client had not read yet, the final frame included. So the agent goes on
//! reading, and dropping, until the client closes, falls silent, the agent shuts down, or
//! [`MAX`] has passed. The audit record is written before this wait, not after it.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

/// Longest a client that keeps its connection open after the final frame is waited for.
pub const MAX: Duration = Duration::from_secs(600);

/// A task that reads the client's stream to its end.
pub struct Linger {
    done: Pin<Box<dyn Future<Output = ()> + Send>>,
    abort: AbortHandle,
}

impl std::fmt::Debug for Linger {
    fn fmt(&self, out: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        out.write_str("Linger")
    }
}

impl Linger {
    /// Waits for `reader`, a task that ends when the client's stream does.
    pub fn on<T: Send + 'static>(reader: JoinHandle<T>) -> Self {
        let abort = reader.abort_handle();
        Self {
            done: Box::pin(async move {
                let _ = reader.await;
            }),
            abort,
        }
    }

    /// Waits until the client closes or goes silent, the agent shuts down, or [`MAX`] passed.
    pub async fn wait(self, shutdown: &mut watch::Receiver<bool>) {
        tokio::select! {
            () = self.done => {}
            _ = shutdown.wait_for(|stop| *stop) => {}
            () = tokio::time::sleep(MAX) => {}
        }
        self.abort.abort();
    }
}
