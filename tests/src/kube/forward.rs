//! Reaching a TCP address inside a network namespace from the test process.
//!
//! A cluster started inside a namespace listens on an address only that namespace (and the
//! networks attached to it) can reach. The test's own clients live in the host namespace, so
//! [`Forwarder`] listens on host loopback and connects each accepted stream from a thread that
//! has entered the namespace (`setns` changes only the calling thread; a socket stays in the
//! namespace it was created in).

use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::os::fd::AsRawFd;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;

/// How long one connect inside the namespace may take (local addresses answer at once;
/// generous for a busy machine).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

type DialRequest = (SocketAddr, oneshot::Sender<std::io::Result<StdTcpStream>>);

/// Opens TCP connections from inside a named network namespace (`ip netns` name).
#[derive(Clone)]
pub struct NetnsDialer {
    tx: mpsc::Sender<DialRequest>,
}

impl NetnsDialer {
    /// Starts the dialing thread inside `/run/netns/<netns>`; it ends when the last clone drops.
    pub fn new(netns: &str) -> anyhow::Result<Self> {
        let path = format!("/run/netns/{netns}");
        let file = std::fs::File::open(&path).with_context(|| format!("opening {path}"))?;
        let (tx, rx) = mpsc::channel::<DialRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new()
            .name(format!("dial-{netns}"))
            .spawn(move || {
                // SAFETY: setns with a valid namespace fd affects only this thread, which
                // does nothing but open sockets for the forwarder.
                let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
                let entered = if rc == 0 {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                };
                let ok = entered.is_ok();
                let _ = ready_tx.send(entered);
                if !ok {
                    return;
                }
                while let Ok((addr, reply)) = rx.recv() {
                    let _ = reply.send(StdTcpStream::connect_timeout(&addr, CONNECT_TIMEOUT));
                }
            })?;
        ready_rx
            .recv()
            .context("dialer thread ended")?
            .with_context(|| format!("setns into {netns}"))?;
        Ok(Self { tx })
    }

    /// Connects to `addr` from inside the namespace.
    pub async fn connect(&self, addr: SocketAddr) -> std::io::Result<TcpStream> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send((addr, reply))
            .map_err(|_| std::io::Error::other("dialer thread ended"))?;
        let stream = rx
            .await
            .map_err(|_| std::io::Error::other("dialer thread ended"))??;
        stream.set_nonblocking(true)?;
        TcpStream::from_std(stream)
    }
}

/// Listens on 127.0.0.1 (host namespace) and forwards every connection to `target` inside a
/// namespace. Stops when dropped.
pub struct Forwarder {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Forwarder {
    /// Starts forwarding a fresh loopback port to `target` through `dialer`.
    pub async fn start(dialer: NetnsDialer, target: SocketAddr) -> anyhow::Result<Self> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
        let local = listener.local_addr()?;
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let dialer = dialer.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) = dialer.connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(Self { local, task })
    }

    /// The loopback address to connect to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        self.task.abort();
    }
}
