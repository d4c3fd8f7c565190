//! The event loop: one task owns the core, the TUN device and the UDP socket.
//!
//! Each turn waits for the first of: an admin call, SIGHUP, the core's timer, the UDP socket
//! or the TUN device becoming readable. A readable source is drained up to [`BATCH`]
//! packets before the loop looks at the others again (bounded work per turn, so a flood on
//! one side never starves the other or the admin endpoint). Buffers are allocated once and
//! reused; nothing is allocated per packet. Packets from peers are decrypted straight into
//! the TUN write queue ([`TunTx`]), which is written with GRO coalescing at the end of every
//! receive batch; packets for peers are encrypted straight into the UDP GSO batch.

use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, UdpSocket as StdUdpSocket};
use std::path::PathBuf;
use std::time::Instant;

use fleetboard_dataplane_core::{Action, Dataplane, DataplaneConfig, DropReason};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;

use crate::admin::{self, AdminCall, Request, Response};
use crate::tun::{TunIo, TunRx, TunTx};
use crate::udp::{RX_BUFFERS, RxBatch, TxBatch, UdpIo};
use crate::{config_file, metrics};

/// Packets taken from one source per loop turn. 64 keeps a turn under ~100 µs of crypto
/// at 1400-byte packets while amortising the readiness wake-up over many packets.
pub const BATCH: usize = 64;
/// Queued admin/metrics calls before callers wait.
const ADMIN_QUEUE: usize = 16;

/// What to check when opening `/dev/net/tun` is refused: its mode (often 0600, root's) and
/// the NET_ADMIN capability.
fn tun_hint(e: &io::Error) -> &'static str {
    match e.kind() {
        io::ErrorKind::PermissionDenied => {
            " (/dev/net/tun must be readable and writable by this user, often only root, and \
             the process needs CAP_NET_ADMIN)"
        }
        io::ErrorKind::NotFound => " (no /dev/net/tun: load the tun module or mount the device)",
        _ => "",
    }
}

/// Why the driver could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The config was rejected.
    #[error(transparent)]
    Config(#[from] fleetboard_dataplane_core::ConfigError),
    /// The TUN device could not be created.
    #[error("creating TUN device {name}: {source}{hint}", hint = tun_hint(source))]
    Tun {
        /// Device name.
        name: String,
        /// The error.
        source: io::Error,
    },
    /// The UDP socket could not be bound.
    #[error("binding UDP {addr}: {source}")]
    Udp {
        /// Address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The admin socket could not be bound.
    #[error("binding admin socket {path}: {source}")]
    Admin {
        /// Path.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
    /// The metrics address could not be bound.
    #[error("binding metrics address {addr}: {source}")]
    Metrics {
        /// Address.
        addr: SocketAddr,
        /// The error.
        source: io::Error,
    },
    /// The QUIC transport could not start (identity files, socket).
    #[error("quic transport: {0}")]
    Quic(#[from] crate::quic::QuicError),
    /// A fatal I/O error in the loop.
    #[error("dataplane I/O: {0}")]
    Io(#[from] io::Error),
}

/// The running dataplane's sockets and state.
pub struct DataplaneDriver {
    core: Dataplane,
    udp: UdpIo,
    tun: TunIo,
    config_path: Option<PathBuf>,
    calls_tx: mpsc::Sender<AdminCall>,
    calls_rx: mpsc::Receiver<AdminCall>,
    admin_listener: Option<tokio::net::UnixListener>,
    metrics_listener: Option<tokio::net::TcpListener>,
    admin_path: PathBuf,
    /// The QUIC transport, when the config has a QUIC identity.
    quic: Option<crate::quic::QuicLink>,
}

impl DataplaneDriver {
    /// Validates `config`, then creates the TUN device, binds the UDP socket, the admin
    /// socket and the metrics address. Nothing runs until [`DataplaneDriver::run`].
    pub async fn bind(
        config: DataplaneConfig,
        config_path: Option<PathBuf>,
    ) -> Result<Self, DriverError> {
        let core = Dataplane::new(config.clone(), Instant::now())?;
        let metrics_listener = match config.metrics_address {
            Some(addr) => Some(
                metrics::bind(addr)
                    .await
                    .map_err(|source| DriverError::Metrics { addr, source })?,
            ),
            None => None,
        };
        let bind_ip = config
            .listen_address
            .unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        let addr = SocketAddr::new(bind_ip, config.listen_port);
        let std_sock = StdUdpSocket::bind(addr)
            .and_then(|s| s.set_nonblocking(true).map(|_| s))
            .map_err(|source| DriverError::Udp { addr, source })?;
        let udp = UdpIo::new(std_sock).map_err(|source| DriverError::Udp { addr, source })?;
        let tun = TunIo::open(&config).map_err(|source| DriverError::Tun {
            name: config.interface.name.clone(),
            source,
        })?;
        let admin_path = config.admin.socket.clone();
        let admin_listener = admin::bind(&admin_path).map_err(|source| DriverError::Admin {
            path: admin_path.clone(),
            source,
        })?;
        let (calls_tx, calls_rx) = mpsc::channel(ADMIN_QUEUE);
        let mut quic = crate::quic::QuicLink::start(&config)?;
        if let Some(q) = quic.as_mut() {
            q.sync(&core);
        }
        tracing::info!(
            public_key = %core.public_key(),
            udp = %udp.local_addr()?,
            interface = %config.interface.name,
            peers = config.peers.len(),
            admin = %admin_path.display(),
            metrics = ?config.metrics_address,
            "dataplane up"
        );
        Ok(Self {
            core,
            udp,
            tun,
            config_path,
            calls_tx,
            calls_rx,
            admin_listener: Some(admin_listener),
            metrics_listener,
            admin_path,
            quic,
        })
    }

    /// The UDP address actually bound.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.udp.local_addr()
    }

    /// A sender for admin calls into the loop (what the admin socket and `/metrics` use).
    pub fn calls(&self) -> mpsc::Sender<AdminCall> {
        self.calls_tx.clone()
    }

    /// Runs until `shutdown` completes.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), DriverError> {
        if let Some(l) = self.admin_listener.take() {
            let calls = self.calls_tx.clone();
            tokio::spawn(async move {
                if let Err(e) = admin::serve_listener(l, calls).await {
                    tracing::error!(error = %e, "admin endpoint stopped");
                }
            });
        }
        if let Some(l) = self.metrics_listener.take() {
            let calls = self.calls_tx.clone();
            tokio::spawn(async move {
                if let Err(e) = metrics::serve(l, calls).await {
                    tracing::error!(error = %e, "metrics endpoint stopped");
                }
            });
        }
        let mut hup = signal(SignalKind::hangup())?;
        let mut rx = RxBatch::default();
        let mut tx = TxBatch::default();
        let mut tun_rx = TunRx::default();
        let mut tun_tx = TunTx::default();
        tokio::pin!(shutdown);
        loop {
            let deadline = self
                .core
                .poll_timeout()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + std::time::Duration::from_secs(1));
            tokio::select! {
                biased;
                _ = &mut shutdown => break,
                Some((req, reply)) = self.calls_rx.recv() => {
                    let r = self.handle_admin(req);
                    let _ = reply.send(r);
                }
                _ = hup.recv() => {
                    if let Err(e) = self.reload() {
                        tracing::error!(error = %e, "SIGHUP reload failed; keeping the running config");
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {
                    self.core.handle_timeout(Instant::now());
                    while let Some(peer) = self.core.poll_reconnect() {
                        if let Some(q) = &self.quic {
                            q.reconnect(peer);
                        }
                    }
                }
                r = self.udp.readable() => {
                    r?;
                    for _ in 0..BATCH.div_ceil(RX_BUFFERS) {
                        let n = match self.udp.try_recv(&mut rx) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                // ICMP errors surface here (port unreachable); not fatal.
                                tracing::debug!(error = %e, "udp recv");
                                break;
                            }
                        };
                        // Per receive call: handshake round trips are timed with it.
                        let now = Instant::now();
                        for i in 0..n {
                            let (from, buf, stride) = rx.buffer(i);
                            // Relay messages forwarded to one destination leave together,
                            // straight from the receive buffer: `fwd` is that run so far.
                            let mut fwd = ForwardRun::default();
                            for (k, d) in buf.chunks(stride).enumerate() {
                                let a = self.core.handle_udp(now, from, d, tun_tx.slot());
                                if let Action::Forward(t) = a
                                    && fwd.extends(t, k, d.len() == stride)
                                {
                                    continue;
                                }
                                fwd.send(buf, stride, &self.udp, &mut self.core).await;
                                if let Action::Forward(t) = a {
                                    fwd = ForwardRun::start(t, k, d.len() == stride);
                                    continue;
                                }
                                perform_rx(a, &mut tun_tx, &mut tx, &self.udp, &self.tun, &mut self.core, &mut self.quic).await;
                            }
                            fwd.send(buf, stride, &self.udp, &mut self.core).await;
                        }
                    }
                    flush_tun(&self.tun, &mut tun_tx, &mut self.core).await;
                }
                Some(m) = quic_recv(&mut self.quic) => {
                    let now = Instant::now();
                    let mut next = Some(m);
                    let mut done = 0;
                    while let Some(m) = next {
                        let a = self.core.handle_peer_packet(now, m.peer, &m.packet, tun_tx.slot());
                        perform_rx(a, &mut tun_tx, &mut tx, &self.udp, &self.tun, &mut self.core, &mut self.quic).await;
                        done += 1;
                        next = if done < BATCH {
                            self.quic.as_mut().and_then(|q| q.try_recv())
                        } else {
                            None
                        };
                    }
                    flush_tun(&self.tun, &mut tun_tx, &mut self.core).await;
                }
                r = self.tun.readable() => {
                    r?;
                    let mut taken = 0;
                    while taken < BATCH {
                        let n = match self.tun.try_recv(&mut tun_rx) {
                            Ok(n) => n,
                            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                            Err(e) => {
                                // A read the offload layer could not parse: drop, go on.
                                tracing::debug!(error = %e, "tun recv");
                                self.core.count_drop(None, DropReason::Malformed);
                                break;
                            }
                        };
                        let now = Instant::now();
                        for i in 0..n {
                            if let Some(q) = &self.quic {
                                q.clamp_mss(tun_rx.packet_mut(i));
                            }
                            let a = self.core.handle_tun(now, tun_rx.packet(i), tx.out());
                            perform(a, Origin::Tun, &mut tx, &self.udp, &self.tun, &mut self.core, &mut self.quic).await;
                        }
                        taken += n.max(1);
                    }
                }
            }
            // The probe interface's packets (probes, replies, echo replies) take the TUN path.
            let now = Instant::now();
            while let Some(a) = self.core.poll_probe(now, tx.out()) {
                perform(
                    a,
                    Origin::Tun,
                    &mut tx,
                    &self.udp,
                    &self.tun,
                    &mut self.core,
                    &mut self.quic,
                )
                .await;
            }
            while let Some(t) = self.core.poll_transmit(tx.out()) {
                tx.push(&self.udp, &mut self.core, t.dst, t.peer, t.len)
                    .await;
            }
            tx.flush(&self.udp, &mut self.core).await;
        }
        let _ = std::fs::remove_file(&self.admin_path);
        tracing::info!("dataplane stopped");
        Ok(())
    }

    fn handle_admin(&mut self, req: Request) -> Response {
        match req {
            Request::Status => {
                let mut st = self.core.status_at(Instant::now());
                if let Some(q) = &self.quic {
                    q.fill_status(&mut st);
                }
                Response::Status(Box::new(st))
            }
            Request::GetConfig => {
                Response::Config(Box::new(admin::RedactedConfig::of(self.core.config())))
            }
            Request::Reload => match self.reload() {
                Ok(()) => Response::Ok,
                Err(e) => Response::Error(e),
            },
            req => match admin::edit(self.core.config(), req) {
                Err(e) => Response::Error(e),
                Ok(c) => match self.apply(c) {
                    Ok(()) => Response::Ok,
                    Err(e) => Response::Error(e),
                },
            },
        }
    }

    fn apply(&mut self, c: DataplaneConfig) -> Result<(), String> {
        let old = self.core.config();
        if old.interface != c.interface
            || old.listen_port != c.listen_port
            || old.listen_address != c.listen_address
            || old.admin != c.admin
            || old.metrics_address != c.metrics_address
        {
            tracing::warn!("interface, listen, admin and metrics settings change only on restart");
        }
        self.core.apply_config(c).map_err(|e| e.to_string())?;
        if let Some(q) = self.quic.as_mut() {
            q.sync(&self.core);
        }
        tracing::info!(peers = self.core.config().peers.len(), "config applied");
        Ok(())
    }

    fn reload(&mut self) -> Result<(), String> {
        let Some(path) = self.config_path.clone() else {
            return Err("no config file to reload".into());
        };
        let c = config_file::load(&path).map_err(|e| e.to_string())?;
        self.apply(c)
    }
}

/// Where the packet behind an action came from: the local kernel (TUN) or a peer (relayed).
/// An ICMP error about a relayed packet must go back through the tunnel it came from; the
/// local kernel could not deliver it (it is not a router for the tunnel addresses).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Origin {
    Tun,
    Peer,
}

/// Carries out what the core decided for a packet that arrived from a peer (its bytes are at
/// `tun_tx.slot()`): queue it for the TUN (the common case, no copy), or copy it to the UDP
/// batch / QUIC link (relay, handshake replies).
async fn perform_rx(
    a: Action,
    tun_tx: &mut TunTx,
    tx: &mut TxBatch,
    udp: &UdpIo,
    tun: &TunIo,
    core: &mut Dataplane,
    quic: &mut Option<crate::quic::QuicLink>,
) {
    match a {
        // Forwarded relay messages leave from the UDP receive loop's own buffer (`ForwardRun`).
        Action::None | Action::Forward(_) => {}
        Action::WriteTun { len } => {
            tun_tx.commit(len);
            if tun_tx.is_full() {
                flush_tun(tun, tun_tx, core).await;
            }
        }
        Action::SendUdp(t) => {
            tx.out()[..t.len].copy_from_slice(&tun_tx.slot()[..t.len]);
            tx.push(udp, core, t.dst, t.peer, t.len).await;
        }
        Action::SendPeer { len, .. } => {
            tx.out()[..len].copy_from_slice(&tun_tx.slot()[..len]);
            perform(a, Origin::Peer, tx, udp, tun, core, quic).await;
        }
    }
}

/// Consecutive datagrams of one receive buffer that the relay forwards to the same
/// destination: datagrams `first..end` of the buffer (all full-size but the last).
#[derive(Default)]
struct ForwardRun {
    dst: Option<SocketAddr>,
    peer: Option<fleetboard_dataplane_core::PeerId>,
    first: usize,
    end: usize,
    /// The last datagram was shorter than the stride: nothing may follow it in one send.
    closed: bool,
}

impl ForwardRun {
    fn start(t: fleetboard_dataplane_core::Transmit, k: usize, full: bool) -> Self {
        Self {
            dst: Some(t.dst),
            peer: t.peer,
            first: k,
            end: k + 1,
            closed: !full,
        }
    }

    /// Adds datagram `k` (forwarded by `t`) when it continues this run.
    fn extends(&mut self, t: fleetboard_dataplane_core::Transmit, k: usize, full: bool) -> bool {
        if self.dst != Some(t.dst) || self.closed || self.end != k {
            return false;
        }
        self.end = k + 1;
        self.closed = !full;
        true
    }

    /// Sends the run (one GSO send) and empties it.
    async fn send(&mut self, buf: &[u8], stride: usize, udp: &UdpIo, core: &mut Dataplane) {
        if let Some(dst) = self.dst.take() {
            let bytes = &buf[self.first * stride..(self.end * stride).min(buf.len())];
            crate::udp::send_segments(udp, core, dst, self.peer, bytes, stride).await;
        }
    }
}

/// Writes the packets queued for the TUN.
async fn flush_tun(tun: &TunIo, tun_tx: &mut TunTx, core: &mut Dataplane) {
    if let Err(e) = tun.flush(tun_tx).await {
        tracing::debug!(error = %e, "tun send");
        core.count_drop(None, DropReason::SendFailed);
    }
}

/// Carries out what the core decided for one packet (its bytes are at `tx.out()`).
async fn perform(
    mut a: Action,
    origin: Origin,
    tx: &mut TxBatch,
    udp: &UdpIo,
    tun: &TunIo,
    core: &mut Dataplane,
    quic: &mut Option<crate::quic::QuicLink>,
) {
    // At most two rounds: the packet, then the ICMP error answering it.
    for round in 0..2 {
        match a {
            // Forward answers only a datagram from the network (the UDP receive loop).
            Action::None | Action::Forward(_) => {}
            Action::SendUdp(t) => tx.push(udp, core, t.dst, t.peer, t.len).await,
            Action::WriteTun { len } => {
                if let Err(e) = tun.send(&tx.out()[..len]).await {
                    tracing::debug!(error = %e, "tun send");
                    core.count_drop(None, DropReason::SendFailed);
                }
            }
            Action::SendPeer {
                peer,
                transport: fleetboard_dataplane_core::Transport::Quic,
                len,
            } if quic.is_some() => {
                if let Some(q) = quic.as_mut()
                    && let Some(next) = send_quic(q, peer, len, origin, round == 0, tx, tun, core)
                {
                    a = next;
                    continue;
                }
            }
            Action::SendPeer {
                peer, transport, ..
            } => {
                tracing::trace!(%transport, "no such transport in this build");
                core.count_drop(Some(peer), DropReason::TransportUnavailable);
            }
        }
        break;
    }
}

/// Hands the packet at `tx.out()[..len]` to the QUIC transport. A too-big one is answered
/// with ICMP: on the TUN when the local kernel sent it, else routed back to the peer it came
/// from (returned as the next action). `answer` is false for the ICMP error itself.
#[allow(clippy::too_many_arguments)]
fn send_quic(
    q: &mut crate::quic::QuicLink,
    peer: fleetboard_dataplane_core::PeerId,
    len: usize,
    origin: Origin,
    answer: bool,
    tx: &mut TxBatch,
    tun: &TunIo,
    core: &mut Dataplane,
) -> Option<Action> {
    use crate::quic::LinkSend;
    match q.send(peer, &tx.out()[..len]) {
        LinkSend::Sent => None,
        LinkSend::Dropped(r) => {
            core.count_drop(Some(peer), r);
            None
        }
        LinkSend::TooBig { icmp_len } => {
            core.count_drop(Some(peer), DropReason::TooLarge);
            if icmp_len == 0 || !answer {
                return None;
            }
            let icmp = q.icmp(icmp_len);
            match origin {
                Origin::Tun => {
                    if let Err(e) = tun.try_send(icmp) {
                        tracing::debug!(error = %e, "tun send icmp");
                    }
                    None
                }
                Origin::Peer => Some(core.handle_local(Instant::now(), icmp, tx.out())),
            }
        }
    }
}

/// The next packet of the QUIC transport; pending forever without one.
async fn quic_recv(
    q: &mut Option<crate::quic::QuicLink>,
) -> Option<crate::quic::Received<fleetboard_dataplane_core::PeerId>> {
    match q {
        Some(q) => q.recv().await,
        None => std::future::pending().await,
    }
}
