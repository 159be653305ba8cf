//! The accept loop: the connection limit, admission of new connections and the shutdown
//! signal in one place. Each accepted connection is handed to [`connection::serve`].

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch, Semaphore};

use crate::admission::{self, Admission};
use crate::config::Config;
use crate::connection::{self, Connection};
use crate::keystore::KeyStore;

/// Serves connections from `listener` until `shutdown` resolves, then stops running commands
/// and returns once every connection has ended (or the shutdown grace ran out).
pub async fn run(
    listener: TcpListener,
    keys: Arc<KeyStore>,
    config: Config,
    shutdown: impl Future<Output = ()>,
) {
    let admission = Admission::new(
        config.max_unauthenticated,
        config.max_unauthenticated_per_source,
    );
    let config = Arc::new(config);
    let limit = Arc::new(Semaphore::new(config.max_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    // Every connection task holds a clone; recv() returns None once all of them have ended.
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    tokio::pin!(shutdown);

    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, or a connection reset before accept: back off.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Every slot taken: if handshakes in progress hold some, one gives way (chosen as at the
        // unauthenticated limit), so idle handshakes never keep out a client that would
        // authenticate. Only when authenticated clients hold them all does the new one wait.
        let permit = match limit.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => {
                admission.make_room(peer.ip());
                tokio::select! {
                    p = limit.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    () = &mut shutdown => break,
                }
            }
        };
        let Some(ticket) = admission.admit(peer.ip()) else {
            // Rate-limited like every other pre-authentication line: a flood must not flood the log.
            admission::log_unauthenticated_close(
                peer,
                "too many unauthenticated connections from this address",
            );
            continue;
        };
        let conn = Connection {
            stream,
            peer,
            config: config.clone(),
            keys: keys.clone(),
            ticket,
            shutdown: stop_rx.clone(),
        };
        let alive = alive_tx.clone();
        tokio::spawn(async move {
            connection::serve(conn).await;
            drop(permit);
            drop(alive);
        });
    }

    drop(listener);
    tracing::info!("shutting down: no new connections; stopping running commands");
    let _ = stop_tx.send(true);
    drop(alive_tx);
    let grace = config.kill_grace + config.shutdown_grace;
    if tokio::time::timeout(grace, alive_rx.recv()).await.is_err() {
        tracing::warn!("some connections did not end within {grace:?}; exiting anyway");
    }
}
