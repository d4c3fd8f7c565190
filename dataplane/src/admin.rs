//! The admin endpoint: a unix socket (mode 0600) speaking one JSON request and one JSON
//! reply per line, and [`AdminClient`], its typed Rust client (what the control plane uses).
//!
//! ```text
//! {"op":"status"}                                  -> {"status":{...}}
//! {"op":"get_config"}                              -> {"config":{...}} (no private key)
//! {"op":"set_config","config":{...}}               -> "ok" | {"error":"..."}
//! {"op":"upsert_peer","peer":{...}}                -> "ok" | {"error":"..."}
//! {"op":"remove_peer","public_key":"base64"}       -> "ok" | {"error":"..."}
//! {"op":"upsert_route","route":{"cidr":..,"peer":..}} -> "ok" | {"error":"..."}
//! {"op":"remove_route","cidr":"10.0.0.0/8"}        -> "ok" | {"error":"..."}
//! {"op":"reload"}                                  -> "ok" | {"error":"..."} (re-reads the file)
//! ```
//! Changes are validated and applied atomically; other peers' traffic keeps flowing.
//! A reload (admin or SIGHUP) replaces runtime changes with the file's content.
//!
//! Hardening: the socket is never reachable by others, not even for a moment (see [`bind`]);
//! a request line is at most [`MAX_REQUEST`] bytes (a longer one is answered with an error and
//! the connection closed, nothing beyond the bound is buffered); at most [`MAX_CLIENTS`]
//! connections are served at once (more are told so and closed); a client that sends nothing
//! for [`IDLE_TIMEOUT`] or does not read its reply within it is disconnected. `get_config`
//! never returns the private key (it shows the public key instead: [`RedactedConfig`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetboard_dataplane_core::{
    DataplaneConfig, DataplaneStatus, PeerConfig, PublicKey, RouteConfig,
};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Longest request line accepted (a whole config with thousands of peers fits).
pub const MAX_REQUEST: usize = 1 << 20;
/// Admin connections served at once.
pub const MAX_CLIENTS: usize = 16;
/// A connection silent this long (or not reading its reply) is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    /// The config, without the private key.
    Config(Box<RedactedConfig>),
    /// It failed; the message names the field for config errors.
    Error(String),
}

/// The applied config as the admin API shows it: every field of [`DataplaneConfig`] but
/// `private_key`, which is replaced by `public_key`. Private material never leaves the
/// process through the admin socket (nor through `show`, `/metrics` or logs: `SecretKey`'s
/// `Debug` prints the public key).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RedactedConfig {
    /// This node's public key.
    pub public_key: PublicKey,
    /// The other fields, as in the config file.
    #[serde(flatten)]
    pub fields: serde_json::Map<String, serde_json::Value>,
}

impl RedactedConfig {
    /// `config` without its private key.
    pub fn of(config: &DataplaneConfig) -> Self {
        let mut fields = match serde_json::to_value(config) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        fields.remove("private_key");
        fields.remove("public_key");
        Self {
            public_key: config.private_key.public_key(),
            fields,
        }
    }

    /// The configured peers.
    pub fn peers(&self) -> Vec<PeerConfig> {
        self.fields
            .get("peers")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default()
    }

    /// The extra routes.
    pub fn routes(&self) -> Vec<RouteConfig> {
        self.fields
            .get("routes")
            .and_then(|p| serde_json::from_value(p.clone()).ok())
            .unwrap_or_default()
    }
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

/// Binds the admin socket (replacing a stale one) with mode 0600 from the start.
///
/// How: the socket is bound inside a fresh directory of mode 0700 next to `path` (created
/// with that mode by `mkdir`, so nobody else can ever reach into it), set to 0600 there, and
/// then renamed onto `path` (atomic; a bound socket keeps working under its new name). So at
/// no moment does a socket that others may connect to exist, without touching the process
/// umask: that is process-wide, and other threads (the QUIC identity files, the control
/// plane) create files at the same time. Binding at `path` and chmod-ing after, as before,
/// left a window in which any local user could connect.
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let parent = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    std::fs::create_dir_all(&parent)?;
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::other("admin socket path has no file name"))?;
    let mut private = parent.join(format!(
        ".{}.{}.bind",
        name.to_string_lossy(),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&private);
    std::fs::DirBuilder::new().mode(0o700).create(&private)?;
    let cleanup = |dir: &Path| {
        let _ = std::fs::remove_dir_all(dir);
    };
    let result = (|| {
        private.push(name);
        let l = UnixListener::bind(&private)?;
        std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600))?;
        std::fs::rename(&private, path)?;
        Ok(l)
    })();
    private.pop();
    cleanup(&private);
    result
}

/// Admin requests refused before they reach the driver (unparsable, too long, too many
/// clients), in this process: `fleetboard_admin_refused_requests_total`.
pub static REFUSED_REQUESTS: AtomicU64 = AtomicU64::new(0);

fn refused() {
    REFUSED_REQUESTS.fetch_add(1, Ordering::Relaxed);
}

/// Serves an already bound listener: at most [`MAX_CLIENTS`] connections at once.
pub async fn serve_listener(
    listener: UnixListener,
    calls: mpsc::Sender<AdminCall>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    loop {
        let (mut stream, _) = listener.accept().await?;
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            refused();
            tracing::warn!(
                max = MAX_CLIENTS,
                "admin socket: too many clients, refusing one"
            );
            tokio::spawn(async move {
                let mut out = serde_json::to_vec(&Response::Error(format!(
                    "too many admin clients (at most {MAX_CLIENTS} at once)"
                )))
                .unwrap_or_default();
                out.push(b'\n');
                let _ = tokio::time::timeout(Duration::from_secs(1), stream.write_all(&out)).await;
            });
            continue;
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_conn(stream, calls).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
            drop(permit);
        });
    }
}

/// One request line read from `r`: `Ok(None)` at the end of the stream, `Err` for a line
/// longer than [`MAX_REQUEST`] (at most `MAX_REQUEST + 1` bytes are read of it).
pub async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(
    r: &mut R,
    buf: &mut Vec<u8>,
) -> std::io::Result<Option<Result<(), String>>> {
    buf.clear();
    let n = r
        .take(MAX_REQUEST as u64 + 1)
        .read_until(b'\n', buf)
        .await?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
    } else if buf.len() > MAX_REQUEST {
        return Ok(Some(Err(format!(
            "request longer than {MAX_REQUEST} bytes; closing the connection"
        ))));
    }
    Ok(Some(Ok(())))
}

async fn serve_conn(stream: UnixStream, calls: mpsc::Sender<AdminCall>) -> std::io::Result<()> {
    let (r, mut w) = stream.into_split();
    let mut r = BufReader::new(r);
    let mut line = Vec::new();
    loop {
        let read = tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut r, &mut line)).await;
        let Ok(read) = read else {
            return Ok(()); // idle: closed
        };
        let resp = match read? {
            None => return Ok(()),
            Some(Err(too_long)) => {
                refused();
                let mut out = serde_json::to_vec(&Response::Error(too_long))
                    .map_err(std::io::Error::other)?;
                out.push(b'\n');
                let _ = tokio::time::timeout(IDLE_TIMEOUT, w.write_all(&out)).await;
                return Ok(());
            }
            Some(Ok(())) => request_reply(&line, &calls).await,
        };
        let mut out = serde_json::to_vec(&resp).map_err(std::io::Error::other)?;
        out.push(b'\n');
        match tokio::time::timeout(IDLE_TIMEOUT, w.write_all(&out)).await {
            Ok(r) => r?,
            Err(_) => return Ok(()), // not reading its reply: closed
        }
    }
}

/// The reply to one request line: parsed here, answered by the driver behind `calls`.
pub async fn request_reply(line: &[u8], calls: &mpsc::Sender<AdminCall>) -> Response {
    match serde_json::from_slice::<Request>(line) {
        Err(e) => {
            refused();
            Response::Error(format!("bad request: {e}"))
        }
        Ok(req) => {
            let (tx, rx) = oneshot::channel();
            if calls.send((req, tx)).await.is_err() {
                Response::Error("dataplane is shutting down".into())
            } else {
                rx.await
                    .unwrap_or_else(|_| Response::Error("dataplane dropped the request".into()))
            }
        }
    }
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

    /// The applied config, without the private key.
    pub async fn config(&self) -> Result<RedactedConfig, AdminError> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use fleetboard_dataplane_core::SecretKey;
    use std::os::unix::fs::PermissionsExt;
    use tokio::io::AsyncReadExt;

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("fb-admin-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Answers every call with `Ok` (status calls with an error: no core here).
    fn fake_driver() -> mpsc::Sender<AdminCall> {
        let (tx, mut rx) = mpsc::channel::<AdminCall>(4);
        tokio::spawn(async move {
            while let Some((_, reply)) = rx.recv().await {
                let _ = reply.send(Response::Ok);
            }
        });
        tx
    }

    #[test]
    fn socket_is_0600_at_once_and_no_temporary_directory_stays() {
        let dir = temp_dir("mode");
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let _guard = rt.enter();
        let path = dir.join("dp.sock");
        std::fs::write(&path, b"stale").unwrap();
        let _l = bind(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert_eq!(left.len(), 1, "only the socket is left: {left:?}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn oversized_request_gets_an_error_and_the_connection_closes() {
        let dir = temp_dir("long");
        let path = dir.join("dp.sock");
        let l = bind(&path).unwrap();
        tokio::spawn(serve_listener(l, fake_driver()));
        // A normal request works.
        assert_eq!(
            AdminClient::new(&path)
                .call(&Request::Reload)
                .await
                .unwrap(),
            Response::Ok
        );
        // One byte over the bound, no newline ever: refused as soon as the bound is passed.
        let mut s = UnixStream::connect(&path).await.unwrap();
        let big = vec![b'x'; MAX_REQUEST + 1];
        let (mut r, mut w) = s.split();
        let (_, reply) = tokio::join!(w.write_all(&big), async {
            let mut reply = Vec::new();
            r.read_to_end(&mut reply).await.map(|_| reply)
        });
        let reply = String::from_utf8(reply.unwrap()).unwrap();
        assert!(reply.contains("request longer than"), "{reply}");
        assert_eq!(reply.lines().count(), 1, "closed after the error");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[tokio::test]
    async fn clients_beyond_the_limit_are_told_and_closed() {
        let dir = temp_dir("many");
        let path = dir.join("dp.sock");
        let l = bind(&path).unwrap();
        tokio::spawn(serve_listener(l, fake_driver()));
        let mut idle = Vec::new();
        for _ in 0..MAX_CLIENTS {
            let s = UnixStream::connect(&path).await.unwrap();
            idle.push(s);
        }
        // Let the server take them all.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let err = AdminClient::new(&path)
            .call(&Request::Reload)
            .await
            .unwrap();
        assert!(
            matches!(&err, Response::Error(e) if e.contains("too many admin clients")),
            "{err:?}"
        );
        drop(idle);
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            AdminClient::new(&path)
                .call(&Request::Reload)
                .await
                .unwrap(),
            Response::Ok,
            "slots come back when clients leave"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn redacted_config_has_no_private_key() {
        let key = SecretKey::from_random_bytes([9; 32]);
        let yaml = format!(
            "interface: {{ name: fb0, mtu: 1420, addresses: [\"100.64.0.1/10\"] }}\n\
             private_key: \"{}\"\npeers:\n  - public_key: \"{}\"\n    allowed_ips: [\"100.64.1.0/24\"]\n",
            key.to_base64(),
            SecretKey::from_random_bytes([8; 32]).public_key()
        );
        let config: DataplaneConfig = serde_yaml::from_str(&yaml).unwrap();
        let r = RedactedConfig::of(&config);
        let json = serde_json::to_string(&Response::Config(Box::new(r.clone()))).unwrap();
        assert!(!json.contains(&key.to_base64()), "{json}");
        // (quic.private_key is the path of the QUIC key file, not key material.)
        assert!(!r.fields.contains_key("private_key"), "{json}");
        assert!(json.contains(&key.public_key().to_base64()));
        assert!(!format!("{config:?}").contains(&key.to_base64()), "Debug");
        let back: Response = serde_json::from_str(&json).unwrap();
        assert_eq!(back, Response::Config(Box::new(r.clone())));
        assert_eq!(r.peers().len(), 1);
        assert_eq!(r.public_key, key.public_key());
    }
}
