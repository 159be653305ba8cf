//! A man in the middle for tests: a TCP relay on 127.0.0.1 between one client and the agent that
//! records both directions and can flip one bit or cut the stream at a chosen byte offset.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Which way bytes travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Client to agent.
    ToAgent,
    /// Agent to client.
    ToClient,
}

/// What the proxy does to the stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Relay every byte unchanged.
    None,
    /// XOR the byte at `offset` (counted from the start of that direction) with `mask`.
    Flip {
        /// Direction of the altered byte.
        dir: Dir,
        /// Its offset in that direction.
        offset: usize,
        /// Bits to flip.
        mask: u8,
    },
    /// Relay the first `offset` bytes of `dir`, then end both directions with a clean FIN, as
    /// an attacker who injects a close would.
    Cut {
        /// Direction that is cut.
        dir: Dir,
        /// Bytes let through before the cut.
        offset: usize,
    },
}

/// Bound on the whole life of one relayed connection.
const LIFETIME: Duration = Duration::from_secs(60);

/// A proxy for one client connection.
pub struct Proxy {
    /// Where the client should connect.
    pub addr: SocketAddr,
    accept: Option<JoinHandle<Recorded>>,
}

/// The bytes that arrived from each side (before any fault was applied).
#[derive(Debug, Default, Clone)]
pub struct Recorded {
    /// From the client, towards the agent.
    pub to_agent: Vec<u8>,
    /// From the agent, towards the client.
    pub to_client: Vec<u8>,
}

impl Proxy {
    /// Listens on 127.0.0.1:0 and relays the first connection to `upstream` with `fault`.
    pub fn start(upstream: SocketAddr, fault: Fault) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        listener
            .set_nonblocking(true)
            .expect("nonblocking listener");
        let accept = std::thread::spawn(move || {
            let end = Instant::now() + LIFETIME;
            let client = loop {
                match listener.accept() {
                    Ok((stream, _)) => break stream,
                    Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < end => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(e) => panic!("proxy accept: {e}"),
                }
            };
            client
                .set_nonblocking(false)
                .expect("blocking client socket");
            let agent = TcpStream::connect(upstream).expect("proxy connects to the agent");
            relay(client, agent, fault)
        });
        Self {
            addr,
            accept: Some(accept),
        }
    }

    /// Waits (bounded by the proxy's lifetime) until both directions are done, and returns
    /// what was recorded.
    pub fn finish(mut self) -> Recorded {
        self.accept
            .take()
            .expect("not finished yet")
            .join()
            .expect("proxy thread")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        // A proxy whose client never came: connect to it ourselves so its thread ends.
        if let Some(accept) = self.accept.take() {
            if !accept.is_finished() {
                let _ = TcpStream::connect(self.addr);
            }
            let _ = accept.join();
        }
    }
}

fn relay(client: TcpStream, agent: TcpStream, fault: Fault) -> Recorded {
    for s in [&client, &agent] {
        let _ = s.set_nodelay(true);
        s.set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
    }
    let recorded = Arc::new(Mutex::new(Recorded::default()));
    let cut = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let pair = (
        client.try_clone().expect("clone"),
        agent.try_clone().expect("clone"),
    );
    let one_way = |src: TcpStream, dst: TcpStream, dir: Dir| {
        let recorded = recorded.clone();
        let cut = cut.clone();
        let (peer_src, peer_dst) = (
            pair.0.try_clone().expect("clone"),
            pair.1.try_clone().expect("clone"),
        );
        std::thread::spawn(move || {
            pump(src, dst, dir, fault, &recorded, &cut, (peer_src, peer_dst))
        })
    };
    let up = one_way(
        client.try_clone().expect("clone"),
        agent.try_clone().expect("clone"),
        Dir::ToAgent,
    );
    let down = one_way(agent, client, Dir::ToClient);
    let _ = up.join();
    let _ = down.join();
    let out = recorded.lock().expect("recorded").clone();
    out
}

/// Copies `src` to `dst`, applying `fault` to this direction, until `src` ends.
fn pump(
    mut src: TcpStream,
    mut dst: TcpStream,
    dir: Dir,
    fault: Fault,
    recorded: &Mutex<Recorded>,
    cut: &std::sync::atomic::AtomicBool,
    both: (TcpStream, TcpStream),
) {
    use std::sync::atomic::Ordering;
    let end = Instant::now() + LIFETIME;
    let mut offset = 0usize;
    let mut buf = [0u8; 16 * 1024];
    while Instant::now() < end {
        let n = match src.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(_) => break,
        };
        let chunk = &mut buf[..n];
        {
            let mut rec = recorded.lock().expect("recorded");
            match dir {
                Dir::ToAgent => rec.to_agent.extend_from_slice(chunk),
                Dir::ToClient => rec.to_client.extend_from_slice(chunk),
            }
        }
        if cut.load(Ordering::SeqCst) {
            // After a cut, keep reading so the peers never see a reset, but pass nothing on.
            offset += n;
            continue;
        }
        let mut pass = n;
        match fault {
            Fault::Flip {
                dir: d,
                offset: at,
                mask,
            } if d == dir && (offset..offset + n).contains(&at) => {
                chunk[at - offset] ^= mask;
            }
            Fault::Cut { dir: d, offset: at } if d == dir && offset + n > at => pass = at - offset,
            _ => {}
        }
        let sent = dst.write_all(&chunk[..pass]);
        offset += n;
        if pass < n {
            cut.store(true, Ordering::SeqCst);
            let _ = both.0.shutdown(Shutdown::Write);
            let _ = both.1.shutdown(Shutdown::Write);
            continue;
        }
        if sent.is_err() {
            break;
        }
    }
    let _ = dst.shutdown(Shutdown::Write);
}
