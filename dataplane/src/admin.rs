//! The admin endpoint: a unix socket (mode 0600) speaking one JSON request and one JSON
//! reply per line, and [`AdminClient`], its typed Rust client (what the control plane uses).
//!
//! ```text
//! {"op":"status"}                                  -> {"status":{...}}
//! {"op":"get_config"}                              -> {"config":{...}}
//! {"op":"set_config","config":{...}}               -> "ok" | {"error":"..."}
//! {"op":"upsert_peer","peer":{...}}                -> "ok" | {"error":"..."}
//! {"op":"remove_peer","public_key":"base64"}       -> "ok" | {"error":"..."}
//! {"op":"upsert_route","route":{"cidr":..,"peer":..}} -> "ok" | {"error":"..."}
//! {"op":"remove_route","cidr":"10.0.0.0/8"}        -> "ok" | {"error":"..."}
//! {"op":"reload"}                                  -> "ok" | {"error":"..."} (re-reads the file)
//! ```
//! Changes are validated and applied atomically; other peers' traffic keeps flowing.
//! A reload (admin or SIGHUP) replaces runtime changes with the file's content.

use std::path::{Path, PathBuf};

use fleetboard_dataplane_core::{
    DataplaneConfig, DataplaneStatus, PeerConfig, PublicKey, RouteConfig,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

/// One admin request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Peers, counters, drops.
    Status,
    /// The applied config.
    GetConfig,
    /// Replace the whole config (peers, routes, key; interface and socket need a restart).
    SetConfig {
        /// The new config.
        config: Box<DataplaneConfig>,
    },
    /// Add a peer, or update the one with the same public key.
    UpsertPeer {
        /// The peer.
        peer: PeerConfig,
    },
    /// Remove a peer (and its routes).
    RemovePeer {
        /// Its public key.
        public_key: PublicKey,
    },
    /// Add or replace an extra route.
    UpsertRoute {
        /// The route.
        route: RouteConfig,
    },
    /// Remove an extra route.
    RemoveRoute {
        /// Its prefix.
        cidr: IpNet,
    },
    /// Re-read the config file (like SIGHUP).
    Reload,
}

/// One admin reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Response {
    /// Done.
    Ok,
    /// The status.
    Status(Box<DataplaneStatus>),
    /// The config.
    Config(Box<DataplaneConfig>),
    /// It failed; the message names the field for config errors.
    Error(String),
}

/// A request on its way to the driver, with where to answer.
pub type AdminCall = (Request, oneshot::Sender<Response>);

/// Errors of the admin client.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    /// The socket could not be reached or broke.
    #[error("admin socket {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The reply was not understood.
    #[error("admin reply not understood: {0}")]
    Protocol(String),
    /// The dataplane refused the request.
    #[error("dataplane refused: {0}")]
    Refused(String),
}

/// Binds the admin socket (replacing a stale one), mode 0600.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(l)
}

/// Serves an already bound listener.
pub async fn serve_listener(
    listener: UnixListener,
    calls: mpsc::Sender<AdminCall>,
) -> std::io::Result<()> {
    loop {
        let (stream, _) = listener.accept().await?;
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, calls).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
        });
    }
}

async fn serve_conn(stream: UnixStream, calls: mpsc::Sender<AdminCall>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    while let Some(line) = lines.next_line().await? {
        let resp = match serde_json::from_str::<Request>(&line) {
            Err(e) => Response::Error(format!("bad request: {e}")),
            Ok(req) => {
                let (tx, rx) = oneshot::channel();
                if calls.send((req, tx)).await.is_err() {
                    Response::Error("dataplane is shutting down".into())
                } else {
                    rx.await
                        .unwrap_or_else(|_| Response::Error("dataplane dropped the request".into()))
                }
            }
        };
        let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        out.push(b'\n');
        w.write_all(&out).await?;
    }
    Ok(())
}

/// Typed client of the admin socket.
#[derive(Debug, Clone)]
pub struct AdminClient {
    path: PathBuf,
}

impl AdminClient {
    /// A client for the socket at `path` (nothing is connected until a call).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Sends one request and waits for its reply.
    pub async fn call(&self, req: &Request) -> Result<Response, AdminError> {
        let io = |source| AdminError::Io {
            path: self.path.clone(),
            source,
        };
        let stream = UnixStream::connect(&self.path).await.map_err(io)?;
        let (r, mut w) = stream.into_split();
        let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Protocol(e.to_string()))?;
        line.push(b'\n');
        w.write_all(&line).await.map_err(io)?;
        let mut reply = String::new();
        BufReader::new(r).read_line(&mut reply).await.map_err(io)?;
        serde_json::from_str(&reply).map_err(|e| AdminError::Protocol(format!("{e}: {reply:?}")))
    }

    async fn expect_ok(&self, req: Request) -> Result<(), AdminError> {
        match self.call(&req).await? {
            Response::Ok => Ok(()),
            Response::Error(e) => Err(AdminError::Refused(e)),
            other => Err(AdminError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Peers, counters and drops.
    pub async fn status(&self) -> Result<DataplaneStatus, AdminError> {
        match self.call(&Request::Status).await? {
            Response::Status(s) => Ok(*s),
            Response::Error(e) => Err(AdminError::Refused(e)),
            other => Err(AdminError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// The applied config.
    pub async fn config(&self) -> Result<DataplaneConfig, AdminError> {
        match self.call(&Request::GetConfig).await? {
            Response::Config(c) => Ok(*c),
            Response::Error(e) => Err(AdminError::Refused(e)),
            other => Err(AdminError::Protocol(format!("unexpected reply {other:?}"))),
        }
    }

    /// Replaces the whole config atomically.
    pub async fn set_config(&self, config: DataplaneConfig) -> Result<(), AdminError> {
        self.expect_ok(Request::SetConfig {
            config: Box::new(config),
        })
        .await
    }

    /// Adds a peer or updates the one with the same key.
    pub async fn upsert_peer(&self, peer: PeerConfig) -> Result<(), AdminError> {
        self.expect_ok(Request::UpsertPeer { peer }).await
    }

    /// Removes a peer.
    pub async fn remove_peer(&self, public_key: PublicKey) -> Result<(), AdminError> {
        self.expect_ok(Request::RemovePeer { public_key }).await
    }

    /// Adds or replaces an extra route.
    pub async fn upsert_route(&self, route: RouteConfig) -> Result<(), AdminError> {
        self.expect_ok(Request::UpsertRoute { route }).await
    }

    /// Removes an extra route.
    pub async fn remove_route(&self, cidr: IpNet) -> Result<(), AdminError> {
        self.expect_ok(Request::RemoveRoute { cidr }).await
    }

    /// Re-reads the config file.
    pub async fn reload(&self) -> Result<(), AdminError> {
        self.expect_ok(Request::Reload).await
    }
}

/// Applies a mutating request to a copy of `config` (pure: the driver then applies it).
pub fn edit(config: &DataplaneConfig, req: Request) -> Result<DataplaneConfig, String> {
    let mut c = config.clone();
    match req {
        Request::SetConfig { config } => return Ok(*config),
        Request::UpsertPeer { peer } => {
            match c.peers.iter_mut().find(|p| p.public_key == peer.public_key) {
                Some(p) => *p = peer,
                None => c.peers.push(peer),
            }
        }
        Request::RemovePeer { public_key } => {
            let before = c.peers.len();
            c.peers.retain(|p| p.public_key != public_key);
            if c.peers.len() == before {
                return Err(format!("no peer with public key {public_key}"));
            }
            c.routes.retain(|r| r.peer != public_key);
        }
        Request::UpsertRoute { route } => {
            match c.routes.iter_mut().find(|r| r.cidr == route.cidr) {
                Some(r) => *r = route,
                None => c.routes.push(route),
            }
        }
        Request::RemoveRoute { cidr } => {
            let before = c.routes.len();
            c.routes.retain(|r| r.cidr != cidr);
            if c.routes.len() == before {
                return Err(format!("no route for {cidr}"));
            }
        }
        Request::Status | Request::GetConfig | Request::Reload => {}
    }
    Ok(c)
}
