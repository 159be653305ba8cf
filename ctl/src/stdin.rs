//! Where a command's stdin comes from: ctl's own stdin (read on a thread of its own, since a
//! blocking read must not stall the runtime), fixed bytes (`--script`), or nothing.

use std::io::Read;
use std::sync::Arc;

use tokio::sync::mpsc;

/// Chunk size for reading ctl's stdin and for sending fixed input.
const CHUNK: usize = 256 * 1024;

/// Stdin bytes for a command: chunks, then the end of the channel as end of input.
pub type StdinChunks = mpsc::Receiver<Vec<u8>>;

/// Reads ctl's stdin on its own thread and hands chunks over as they come; the channel closes
/// at end of input.
pub fn forward() -> StdinChunks {
    let (tx, rx) = mpsc::channel(4);
    std::thread::spawn(move || {
        let mut stdin = std::io::stdin().lock();
        let mut buf = vec![0u8; CHUNK];
        loop {
            match stdin.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if tx.blocking_send(buf[..n].to_vec()).is_err() {
                        break;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("ctl: reading stdin failed, sending end of input: {e}");
                    break;
                }
            }
        }
    });
    rx
}

/// A stdin that delivers `bytes` and then ends.
pub fn fixed(bytes: Arc<[u8]>) -> StdinChunks {
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(async move {
        for chunk in bytes.chunks(CHUNK) {
            if tx.send(chunk.to_vec()).await.is_err() {
                return;
            }
        }
    });
    rx
}
