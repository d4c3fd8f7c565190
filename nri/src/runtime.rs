//! The runtime's side of NRI, as containerd plays it: listen on the socket, accept a plugin,
//! serve the runtime service on connection 2, wait for RegisterPlugin, then call Configure,
//! Synchronize and the pod events on connection 1. Used by the tests (with the same generated
//! stubs as the plugin) and handy for poking a plugin by hand.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UnixListener;
use tokio::sync::mpsc;
use ttrpc::r#async::transport::Socket;
use ttrpc::r#async::{Client, Server, TtrpcContext};

use crate::api::{self, PodSandbox, api_ttrpc};
use crate::connection::single_connection_listener;
use crate::mux::{Mux, MuxError, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};

/// Per-request timeout of the harness: generous, since tests run on busy machines.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(20);
/// ttrpc service name of the plugin service.
pub const PLUGIN_SERVICE: &str = "nri.pkg.api.v1alpha1.Plugin";

/// Errors of the runtime harness.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// Socket trouble.
    #[error("NRI socket {0}")]
    Io(#[from] std::io::Error),
    /// Nothing happened in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// A call failed.
    #[error("{0} failed: {1}")]
    Call(&'static str, ttrpc::Error),
    /// The connection went away.
    #[error("plugin connection closed: {0}")]
    Closed(MuxError),
}

/// A listening NRI socket.
pub struct NriRuntime {
    listener: UnixListener,
    path: PathBuf,
}

struct RuntimeService {
    registered: mpsc::UnboundedSender<api::RegisterPluginRequest>,
}

#[async_trait::async_trait]
impl api_ttrpc::Runtime for RuntimeService {
    async fn register_plugin(
        &self,
        _ctx: &TtrpcContext,
        req: api::RegisterPluginRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _ = self.registered.send(req);
        Ok(api::Empty::default())
    }
}

impl NriRuntime {
    /// Listens on `path` (a stale socket file there is replaced).
    pub fn bind(path: &Path) -> Result<Self, HarnessError> {
        let _ = std::fs::remove_file(path);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        Ok(Self {
            listener: UnixListener::bind(path)?,
            path: path.to_path_buf(),
        })
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Accepts the next plugin connection without speaking NRI on it (to send it garbage).
    pub async fn accept_raw(
        &self,
        within: Duration,
    ) -> Result<tokio::net::UnixStream, HarnessError> {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .map_err(|_| HarnessError::Timeout("a plugin to connect"))??;
        Ok(stream)
    }

    /// Accepts the next plugin and waits for its registration (no Configure yet).
    pub async fn accept(&self, within: Duration) -> Result<PluginConn, HarnessError> {
        let (stream, _) = tokio::time::timeout(within, self.listener.accept())
            .await
            .map_err(|_| HarnessError::Timeout("a plugin to connect"))??;
        let (mut mux, mut conns) = Mux::new(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
        let runtime_conn = conns.pop().expect("two connections");
        let plugin_conn = conns.pop().expect("two connections");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut server = Server::new()
            .register_service(api_ttrpc::create_runtime(Arc::new(RuntimeService {
                registered: tx,
            })))
            .add_listener(single_connection_listener(runtime_conn));
        server
            .start()
            .await
            .map_err(|e| HarnessError::Call("starting the runtime service", e))?;
        let raw = Client::new(Socket::new(plugin_conn));
        let reg = tokio::select! {
            r = tokio::time::timeout(within, rx.recv()) => r
                .map_err(|_| HarnessError::Timeout("RegisterPlugin"))?
                .ok_or(HarnessError::Timeout("RegisterPlugin"))?,
            e = mux.closed() => return Err(HarnessError::Closed(e)),
        };
        Ok(PluginConn {
            name: reg.plugin_name,
            index: reg.plugin_idx,
            client: api_ttrpc::PluginClient::new(raw.clone()),
            raw,
            mux,
            server,
        })
    }

    /// Accepts a plugin and brings it up as containerd does: registration, Configure (returns
    /// the subscribed event mask), Synchronize with `pods`.
    pub async fn accept_configured(
        &self,
        within: Duration,
        pods: Vec<PodSandbox>,
    ) -> Result<(PluginConn, i32), HarnessError> {
        let conn = self.accept(within).await?;
        let events = conn.configure().await?;
        conn.synchronize(pods).await?;
        Ok((conn, events))
    }
}

/// A registered plugin connection.
pub struct PluginConn {
    /// Registered name.
    pub name: String,
    /// Registered index.
    pub index: String,
    client: api_ttrpc::PluginClient,
    raw: Client,
    mux: Mux,
    server: Server,
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_timeout(REQUEST_TIMEOUT.as_nanos() as i64)
}

impl PluginConn {
    /// Configure; returns the plugin's event mask.
    pub async fn configure(&self) -> Result<i32, HarnessError> {
        let req = api::ConfigureRequest {
            runtime_name: "fleetboard-test-runtime".into(),
            runtime_version: "0.0.0".into(),
            NRI_version: "v0.10.0".into(),
            registration_timeout: 5000,
            request_timeout: 2000,
            ..Default::default()
        };
        let resp = self
            .client
            .configure(ctx(), &req)
            .await
            .map_err(|e| HarnessError::Call("Configure", e))?;
        Ok(resp.events)
    }

    /// Synchronize with the pods the runtime knows.
    pub async fn synchronize(&self, pods: Vec<PodSandbox>) -> Result<(), HarnessError> {
        let req = api::SynchronizeRequest {
            pods,
            ..Default::default()
        };
        self.client
            .synchronize(ctx(), &req)
            .await
            .map_err(|e| HarnessError::Call("Synchronize", e))?;
        Ok(())
    }

    /// Synchronize split into messages of `per_msg` pods (`more` set on all but the last), as
    /// containerd does when the pod list is too large for one message. Checks that the plugin
    /// answers `more` on the partial messages.
    pub async fn synchronize_split(
        &self,
        pods: Vec<PodSandbox>,
        per_msg: usize,
    ) -> Result<(), HarnessError> {
        let chunks: Vec<Vec<PodSandbox>> =
            pods.chunks(per_msg.max(1)).map(|c| c.to_vec()).collect();
        let n = chunks.len();
        for (i, chunk) in chunks.into_iter().enumerate() {
            let more = i + 1 < n;
            let req = api::SynchronizeRequest {
                pods: chunk,
                more,
                ..Default::default()
            };
            let resp = self
                .client
                .synchronize(ctx(), &req)
                .await
                .map_err(|e| HarnessError::Call("Synchronize", e))?;
            if resp.more != more {
                return Err(HarnessError::Call(
                    "Synchronize",
                    ttrpc::Error::Others("plugin does not handle split sync requests".into()),
                ));
            }
        }
        Ok(())
    }

    /// StateChange carrying a pod event (how older runtimes deliver pod events).
    pub async fn state_change(&self, event: api::Event, pod: &PodSandbox) -> ttrpc::Result<()> {
        let req = api::StateChangeEvent {
            event: event.into(),
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.client.state_change(ctx(), &req).await.map(|_| ())
    }

    /// RunPodSandbox.
    pub async fn run_pod(&self, pod: &PodSandbox) -> ttrpc::Result<()> {
        let req = api::RunPodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.client.run_pod_sandbox(ctx(), &req).await.map(|_| ())
    }

    /// StopPodSandbox.
    pub async fn stop_pod(&self, pod: &PodSandbox) -> ttrpc::Result<()> {
        let req = api::StopPodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.client.stop_pod_sandbox(ctx(), &req).await.map(|_| ())
    }

    /// RemovePodSandbox.
    pub async fn remove_pod(&self, pod: &PodSandbox) -> ttrpc::Result<()> {
        let req = api::RemovePodSandboxRequest {
            pod: Some(pod.clone()).into(),
            ..Default::default()
        };
        self.client
            .remove_pod_sandbox(ctx(), &req)
            .await
            .map(|_| ())
    }

    /// Calls `method` of the plugin service with an arbitrary payload (for malformed input).
    pub async fn raw_call(&self, method: &str, payload: Vec<u8>) -> ttrpc::Result<Vec<u8>> {
        let req = ttrpc::Request {
            service: PLUGIN_SERVICE.into(),
            method: method.into(),
            payload,
            timeout_nano: REQUEST_TIMEOUT.as_nanos() as i64,
            ..Default::default()
        };
        let resp = self.raw.request(req).await?;
        Ok(resp.payload)
    }

    /// Waits until the plugin closes the connection.
    pub async fn closed(&mut self) -> MuxError {
        self.mux.closed().await
    }

    /// Closes the connection as a runtime that exits would.
    pub async fn close(mut self) {
        drop(self.client);
        drop(self.raw);
        drop(self.mux);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.server.shutdown()).await;
    }
}

/// A pod sandbox as containerd describes it: with `netns` it has its own network namespace,
/// without it is a host-network pod.
pub fn pod_sandbox(id: &str, namespace: &str, name: &str, netns: Option<&Path>) -> PodSandbox {
    let mut pod = PodSandbox {
        id: id.into(),
        name: name.into(),
        uid: format!("uid-{id}"),
        namespace: namespace.into(),
        labels: HashMap::new(),
        ..Default::default()
    };
    if let Some(ns) = netns {
        let linux = api::LinuxPodSandbox {
            namespaces: vec![api::LinuxNamespace {
                type_: "network".into(),
                path: ns.display().to_string(),
                ..Default::default()
            }],
            ..Default::default()
        };
        pod.linux = Some(linux).into();
    }
    pod
}
