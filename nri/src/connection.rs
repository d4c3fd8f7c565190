//! The plugin's side of an NRI connection: connect, multiplex, serve the plugin service,
//! register, and reconnect whenever the runtime goes away.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use tokio::net::UnixStream;
use ttrpc::r#async::transport::{Listener, Socket};
use ttrpc::r#async::{Client, Server};

use crate::api::{RegisterPluginRequest, api_ttrpc};
use crate::mux::{Mux, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use crate::plugin::{FleetPlugin, PluginService};

/// How long registration may take; the runtime's own default registration timeout is 5 s.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on closing the ttrpc server after the trunk is gone (its handlers see EOF at once).
const SERVER_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a connection to the runtime ended or could not be made.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The socket could not be reached.
    #[error("connecting to {path}: {source}")]
    Connect {
        /// The NRI socket.
        path: String,
        /// The I/O error.
        source: std::io::Error,
    },
    /// ttrpc failed (server start or registration).
    #[error("{what}: {detail}")]
    Ttrpc {
        /// The step.
        what: &'static str,
        /// The ttrpc error.
        detail: String,
    },
}

/// Wraps one logical stream as a ttrpc listener that yields it once and then stays open.
pub fn single_connection_listener(conn: tokio::io::DuplexStream) -> Listener {
    Listener::new(
        futures::stream::once(async move { Ok::<_, std::io::Error>(conn) })
            .chain(futures::stream::pending()),
    )
}

/// One connection's life: returns (why it ended) once the runtime closes it.
pub async fn session(plugin: &Arc<FleetPlugin>) -> Result<String, ConnectionError> {
    let cfg = plugin.config();
    let stream =
        UnixStream::connect(&cfg.socket)
            .await
            .map_err(|source| ConnectionError::Connect {
                path: cfg.socket.display().to_string(),
                source,
            })?;
    let (mut mux, mut conns) = Mux::new(stream, &[PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN]);
    let runtime_conn = conns.pop().expect("two connections");
    let plugin_conn = conns.pop().expect("two connections");

    let service = api_ttrpc::create_plugin(Arc::new(PluginService(plugin.clone())));
    let mut server = Server::new()
        .register_service(service)
        .add_listener(single_connection_listener(plugin_conn));
    server.start().await.map_err(|e| ConnectionError::Ttrpc {
        what: "starting the plugin service",
        detail: e.to_string(),
    })?;

    let client = api_ttrpc::RuntimeClient::new(Client::new(Socket::new(runtime_conn)));
    let req = RegisterPluginRequest {
        plugin_name: cfg.plugin_name.clone(),
        plugin_idx: cfg.plugin_index.clone(),
        ..Default::default()
    };
    let registered = tokio::select! {
        r = client.register_plugin(
            ttrpc::context::with_timeout(REGISTER_TIMEOUT.as_nanos() as i64),
            &req,
        ) => r.map_err(|e| ConnectionError::Ttrpc { what: "registering with the runtime", detail: e.to_string() }),
        e = mux.closed() => Err(ConnectionError::Ttrpc { what: "registering with the runtime", detail: e.to_string() }),
    };
    let reason = match registered {
        Ok(_) => {
            crate::metrics::Metrics::inc(&plugin.metrics.registrations);
            plugin
                .metrics
                .registered
                .store(true, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(
                socket = %cfg.socket.display(),
                name = %cfg.plugin_name,
                index = %cfg.plugin_index,
                "registered with the runtime"
            );
            Ok(mux.closed().await.to_string())
        }
        Err(e) => Err(e),
    };
    plugin
        .metrics
        .registered
        .store(false, std::sync::atomic::Ordering::Relaxed);
    drop(client);
    drop(mux);
    let _ = tokio::time::timeout(SERVER_SHUTDOWN_TIMEOUT, server.shutdown()).await;
    reason
}
