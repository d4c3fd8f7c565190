//! The dataplane inside a control-plane process (the hub leader, a member's gateway).
//!
//! [`EmbeddedDataplane::start`] runs a [`DataplaneDriver`] on a thread of its own with its
//! own single-threaded tokio runtime (as `fleetboard dataplane` runs it). Stopping shuts the
//! driver down and drops that runtime, which ends every task the driver spawned (admin
//! socket, `/metrics`, QUIC): the TUN device, the UDP ports, the admin socket and the metrics
//! port are all free again when [`EmbeddedDataplane::stop`] returns, so a process that loses
//! and later regains leadership can start a new one at once.
//!
//! The controller talks to it through the admin socket (`config.admin.socket`, which callers
//! put under their state dir, see [`admin_socket`]), like any other client.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fleetboard_dataplane::core::{DataplaneConfig, DataplaneStatus};
use fleetboard_dataplane::{AdminClient, AdminError, DataplaneDriver, DriverError};
use tokio::sync::oneshot;

/// The admin socket path for a state dir.
pub fn admin_socket(state_dir: &Path) -> PathBuf {
    state_dir.join("dataplane.sock")
}

/// The QUIC port that goes with a WireGuard port: a `Peer`'s `spec.port` is its WireGuard
/// UDP port and its QUIC endpoint listens on the next one (the dataplane's defaults, 31820
/// and 31821, follow the same rule).
pub fn quic_port(port: u16) -> u16 {
    port.wrapping_add(1).max(1)
}

/// The TUN MTU for a cluster whose gateway carries `transport` (over a 1500-byte underlay):
/// every node of the cluster uses it, so no packet a node sends is too big for the gateway's
/// tunnel. wg: WireGuard's 1420 minus the 8-byte relay header of the end-to-end relay through
/// the hub (1412); quic: 1414 (its overhead over a dual-stack socket is IPv6's).
pub fn tunnel_mtu(transport: crate::crd::peer::Transport) -> u16 {
    use fleetboard_dataplane::core::config::DEFAULT_MTU;
    use fleetboard_dataplane::core::mtu::{self, Encapsulation, UnderlayFamily};
    use fleetboard_dataplane::core::relay::RELAY_HEADER;
    match transport {
        crate::crd::peer::Transport::Wg => DEFAULT_MTU - RELAY_HEADER as u16,
        crate::crd::peer::Transport::Quic => DEFAULT_MTU.min(mtu::tunnel_mtu(
            fleetboard_dataplane::core::quic_config::DEFAULT_UNDERLAY_MTU,
            Encapsulation::Quic,
            UnderlayFamily::V6,
        )),
    }
}

/// Why the embedded dataplane could not start or be reached.
#[derive(Debug, thiserror::Error)]
pub enum EmbeddedError {
    /// The driver refused the config or could not bind.
    #[error(transparent)]
    Driver(#[from] DriverError),
    /// The admin socket call failed.
    #[error(transparent)]
    Admin(#[from] AdminError),
    /// The dataplane thread could not start or died.
    #[error("dataplane thread: {0}")]
    Thread(String),
}

/// A dataplane running in this process.
pub struct EmbeddedDataplane {
    admin: AdminClient,
    local_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    done: Option<oneshot::Receiver<Result<(), String>>>,
}

impl std::fmt::Debug for EmbeddedDataplane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedDataplane")
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

impl EmbeddedDataplane {
    /// Validates `config`, creates the TUN device, binds the sockets and starts forwarding.
    /// Returns once everything is bound (or with the error that stopped it).
    pub async fn start(config: DataplaneConfig) -> Result<Self, EmbeddedError> {
        let admin = AdminClient::new(config.admin.socket.clone());
        let (bound_tx, bound_rx) = oneshot::channel::<Result<SocketAddr, DriverError>>();
        let (stop_tx, stop_rx) = oneshot::channel::<()>();
        let (done_tx, done_rx) = oneshot::channel();
        std::thread::Builder::new()
            .name("dataplane".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = bound_tx.send(Err(DriverError::Io(e)));
                        return;
                    }
                };
                let result = rt.block_on(async move {
                    let driver = match DataplaneDriver::bind(config, None).await {
                        Ok(d) => d,
                        Err(e) => {
                            let _ = bound_tx.send(Err(e));
                            return Ok(());
                        }
                    };
                    let addr = driver.local_addr().map_err(|e| e.to_string())?;
                    let _ = bound_tx.send(Ok(addr));
                    driver
                        .run(async {
                            let _ = stop_rx.await;
                        })
                        .await
                        .map_err(|e| e.to_string())
                });
                // Dropping the runtime ends the admin, metrics and QUIC tasks: ports free.
                drop(rt);
                if let Err(e) = &result {
                    tracing::error!(error = %e, "embedded dataplane failed");
                }
                let _ = done_tx.send(result);
            })
            .map_err(|e| EmbeddedError::Thread(e.to_string()))?;
        let local_addr = bound_rx
            .await
            .map_err(|_| EmbeddedError::Thread("exited before binding".into()))??;
        Ok(Self {
            admin,
            local_addr,
            stop: Some(stop_tx),
            done: Some(done_rx),
        })
    }

    /// The admin client of this dataplane.
    pub fn admin(&self) -> AdminClient {
        self.admin.clone()
    }

    /// The UDP (WireGuard) address bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Replaces the running config atomically (peers and routes; interface, ports and
    /// sockets keep their startup values).
    pub async fn apply(&self, config: DataplaneConfig) -> Result<(), EmbeddedError> {
        Ok(self.admin.set_config(config).await?)
    }

    /// Peers, counters, drops.
    pub async fn status(&self) -> Result<DataplaneStatus, EmbeddedError> {
        Ok(self.admin.status().await?)
    }

    /// The applied config (without the private key).
    pub async fn config(
        &self,
    ) -> Result<fleetboard_dataplane::admin::RedactedConfig, EmbeddedError> {
        Ok(self.admin.config().await?)
    }

    /// True when the dataplane stopped by itself (a fatal I/O error).
    pub fn has_exited(&mut self) -> bool {
        match self.done.as_mut().map(|d| d.try_recv()) {
            Some(Err(oneshot::error::TryRecvError::Empty)) => false,
            None => true,
            Some(_) => {
                self.done = None;
                true
            }
        }
    }

    /// Stops forwarding and waits until the TUN device and every socket are released.
    pub async fn stop(mut self) -> Result<(), EmbeddedError> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.done.take() {
            Some(d) => match d.await {
                Ok(Ok(())) | Err(_) => Ok(()),
                Ok(Err(e)) => Err(EmbeddedError::Thread(e)),
            },
            None => Ok(()),
        }
    }
}

impl Drop for EmbeddedDataplane {
    fn drop(&mut self) {
        // Dropped without `stop`: still shut the dataplane down (without waiting).
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}
